"""One way to show a pydantic validation error: one line per problem, ``field.path: message``.

Used for run files, stack files, the commander's 422 answers and the CLI's flag errors, so
a user reads the same line wherever a value is refused. A refused value is quoted back, less
what :mod:`.redact` hides (credentials in a URL), and not at all when it is text under a name that
looks secret: an error is shown and logged, so it must not carry the secret it refused. Imports
nothing of ours but that rule.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol

from .redact import is_secret_name, redact_secrets

_UNION_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")
_SHOWN_INPUT = 60


class _HasErrors(Protocol):
    def errors(self) -> Sequence[Any]: ...


def _location(loc: Iterable[Any], hidden: Collection[str],
              unions: Mapping[tuple[str, ...], tuple[str, Sequence[str]]]) -> list[str]:
    parts = [str(part) for part in loc if str(part) not in hidden]
    for at, (_field, tags) in unions.items():
        n = len(at)
        if len(parts) > n and tuple(parts[:n]) == at and parts[n] in tags:
            return [*parts[:n], *parts[n + 1:]]  # the union's tag is not a field the user wrote
    return parts


def _got(err: Mapping[str, Any]) -> str:
    if err["type"] == "missing" or err["type"] in _UNION_TAG_ERRORS or "input" not in err:
        return ""
    if isinstance(err["input"], dict | list):
        return ""
    if isinstance(err["input"], str) and any(is_secret_name(str(part)) for part in err.get("loc", ())):
        return ""
    shown = repr(redact_secrets(err["input"]))
    return f" (got {shown[:_SHOWN_INPUT]}{'…' if len(shown) > _SHOWN_INPUT else ''})"


def validation_error_lines(exc: _HasErrors, *, hidden: Collection[str] = (),
                           unions: Mapping[tuple[str, ...], tuple[str, Sequence[str]]] | None = None,
                           top: str = "(top level)") -> list[str]:
    """One ``field.path: message (got value)`` line per error of ``exc`` (a pydantic
    ``ValidationError`` or anything with the same ``errors()``, such as FastAPI's).

    ``hidden``: location parts that are not fields (FastAPI's ``body``, ``query``).
    ``unions``: for each discriminated union, its location → ``(tag field, tag values)``;
    the tag value pydantic puts in the path is dropped, and a missing or unknown tag is
    reported on the tag field with the values it may take. ``top``: the name of an empty path.
    """
    unions = unions or {}
    lines = []
    for err in exc.errors():
        loc = _location(err.get("loc", ()), hidden, unions)
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        union = unions.get(tuple(loc))
        if err["type"] in _UNION_TAG_ERRORS and union is not None:
            loc = [*loc, union[0]]
            if err["type"] == "union_tag_not_found":
                message = f"Field required (one of: {', '.join(union[1])})"
        lines.append(f"{'.'.join(loc) or top}: {message}{_got(err)}")
    return lines


def format_validation_error(exc: _HasErrors, *, hidden: Collection[str] = (),
                            unions: Mapping[tuple[str, ...], tuple[str, Sequence[str]]] | None = None,
                            top: str = "(top level)") -> str:
    """``validation_error_lines`` joined by newlines (the options are the same)."""
    return "\n".join(validation_error_lines(exc, hidden=hidden, unions=unions, top=top))
