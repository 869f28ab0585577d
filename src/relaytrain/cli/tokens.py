"""``relay token create|list|revoke``: the commander's API tokens (the admin token manages them).

A token is printed once, at its creation, and stored hashed; a list shows names, scopes and dates,
never a token. ``--expires-in`` takes the one duration format (:func:`relaytrain.config.ttl_seconds`);
without it a token never expires (a worker token on a machine you keep may be meant to live).
"""

from __future__ import annotations

from typing import Annotated

import typer

from .common import (
    DEFAULT_COMMANDER,
    AdminTokenOpt,
    CaCertOpt,
    CommanderOpt,
    JsonOpt,
    client,
    console,
    err_console,
    fail,
    print_json,
    relay_errors,
)

token_app = typer.Typer(help="Manage API tokens: create, list, revoke.", no_args_is_help=True)

SCOPE_HELP = ("admin (everything), submit (submit, cancel and resume runs, command runs included; read "
              "what a viewer reads, configs unredacted), worker (worker endpoints only), rollout (a rollout "
              "worker's endpoints only) or viewer (read-only: what the dashboard reads, configs redacted).")


def _scope(scope: str) -> str:
    from typing import get_args

    from relaytrain.api.models import TokenScope

    scopes = get_args(TokenScope)
    if scope not in scopes:
        fail(f"--scope: must be one of {', '.join(scopes)}, not {scope!r}")
    return scope


def _expires_in(value: str | None) -> int | None:
    """``--expires-in`` in seconds (None: never expires); a bad value fails naming the flag."""
    if value is None:
        return None
    from relaytrain.api.models import TOKEN_EXPIRES_IN_MAX_S
    from relaytrain.config import ttl_seconds

    try:
        seconds = ttl_seconds(value)
    except ValueError as exc:
        fail(f"--expires-in: {value!r} {exc}")
    if seconds > TOKEN_EXPIRES_IN_MAX_S:
        fail(f"--expires-in: {value!r} is over {TOKEN_EXPIRES_IN_MAX_S // 86400}d; leave it out for a token "
             "that never expires")
    return seconds


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "worker",
    scope: Annotated[str, typer.Option(help=SCOPE_HELP)] = "worker",
    expires_in: Annotated[str | None, typer.Option(
        "--expires-in", help="Refuse the token after this long: 30m, 12h, 7d; default: it never expires.")] = None,
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a token (needs the admin token): it is printed once, on stdout, and stored hashed."""
    from .render import when

    scope = _scope(scope)
    seconds = _expires_in(expires_in)
    with relay_errors(), client(commander, token, ca_cert) as api:
        created = api.create_token(name, scope, expires_in_s=seconds)
    if as_json:
        print_json(created.model_dump(mode="json"))
        return
    expiry = "never expires" if created.expires_at is None else f"expires {when(created.expires_at)}"
    err_console.print(f"token {created.name!r} (id {created.id}, scope {created.scope}) {expiry}; "
                      "it is shown only this once", soft_wrap=True, highlight=False, markup=False)
    console.print(created.token, soft_wrap=True, highlight=False, markup=False)


@token_app.command("list")
def token_list(
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: AdminTokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List tokens: id, name, scope, created, expires, revoked, last used (never a token or its hash)."""
    from .render import print_tokens

    with relay_errors(), client(commander, token, ca_cert) as api:
        items = api.tokens()
    if as_json:
        print_json([t.model_dump(mode="json") for t in items])
        return
    print_tokens(items)


@token_app.command("revoke")
def token_revoke(
    name_or_id: Annotated[str, typer.Argument(metavar="NAME_OR_ID",
                                              help="The token's id (a number) or its name (relay token list).")],
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: AdminTokenOpt = None,
) -> None:
    """Revoke a token: every commander refuses it within 30 s (its token cache).

    A name that several live tokens share is refused: give the id.
    """
    from relaytrain.api.models import TOKEN_CACHE_S

    with relay_errors(), client(commander, token, ca_cert) as api:
        if name_or_id.isdigit():
            token_id = int(name_or_id)
        else:
            named = [t for t in api.tokens() if t.name == name_or_id]
            live = [t for t in named if t.revoked_at is None]
            if not named:
                fail(f"NAME_OR_ID: no token is named {name_or_id!r} (relay token list)")
            if len(live) > 1:
                fail(f"NAME_OR_ID: {len(live)} live tokens are named {name_or_id!r} (ids "
                     f"{', '.join(str(t.id) for t in live)}): revoke one by its id")
            token_id = (live or named)[0].id
        revoked = api.revoke_token(token_id)
    console.print(f"token {revoked.name!r} (id {revoked.id}) revoked; commanders refuse it within "
                  f"{TOKEN_CACHE_S:.0f} s", soft_wrap=True, highlight=False, markup=False)
