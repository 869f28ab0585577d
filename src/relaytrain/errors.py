"""One exception hierarchy for relaytrain.

Every class's docstring is its default message. Low-level errors are wrapped with
``raise SomeRelayError(...) from exc`` so the cause stays visible.

Every class also carries the HTTP status the commander answers it with (``http_status``). The
commander's exception handler and the API client's answer → exception map are both derived from
it (:func:`error_class`): an error raised in the commander reaches the client as the same class,
with the same message.
"""

from __future__ import annotations

from typing import ClassVar


class RelayError(Exception):
    """relaytrain failed."""

    http_status: ClassVar[int] = 500
    """What the commander answers when a request ends in this error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(RelayError, ValueError):
    """The configuration is invalid."""

    http_status = 422


class StoreError(RelayError):
    """The commander's database failed."""

    http_status = 503


class LeaseLost(RelayError):
    """The lease is no longer ours: its epoch is stale or it has expired. Stop now."""

    http_status = 409


class RunExists(RelayError):
    """A run with this run_id already exists."""

    http_status = 409


class NotFound(RelayError):
    """No such object."""

    http_status = 404


class InvalidState(RelayError):
    """The object is not in a state that allows this operation."""

    http_status = 409


class AuthError(RelayError):
    """Missing or wrong credentials."""

    http_status = 401


class Forbidden(RelayError):
    """These credentials do not reach this endpoint."""

    http_status = 403


class BadRequest(RelayError):
    """The request was rejected as invalid."""

    http_status = 400


class RequestInvalid(BadRequest):
    """The request does not match the API's schema."""

    http_status = 422


class PayloadTooLarge(BadRequest):
    """The request body is too large."""

    http_status = 413


class WorkerEnvMissing(RelayError):
    """A run references a variable (``{from_worker_env: NAME}``) that this worker's environment does
    not hold. The message names the variables and the worker; another worker may hold them."""


class CommanderUnavailable(RelayError):
    """The commander could not be reached."""


class TlsError(RelayError):
    """A TLS certificate or key is unusable, or the commander's certificate could not be verified.
    Not a :class:`CommanderUnavailable`: retrying cannot fix it, so nobody waits it out."""


class CommanderRecovering(RelayError):
    """The commander is back from an outage and has not yet extended the leases it interrupted:
    retry in a moment."""

    http_status = 503


class CheckpointError(RelayError):
    """A checkpoint is invalid or could not be written."""


class ArtifactError(RelayError):
    """An artifact store operation failed."""


class ArtifactMissing(ArtifactError):
    """The store holds no such file or checkpoint."""


class StaleWriter(ArtifactError):
    """The store refused a write because a newer epoch (lease holder) has written since: the
    writer has lost its lease, whether or not it knows yet."""


class ProviderError(RelayError):
    """A machine could not be created, reached or commanded."""


class EnvironmentUnavailable(RelayError, ConnectionError):
    """Every environment of a run stayed unreachable for ``env.down_timeout_s``, or one episode failed
    ``env.max_attempts`` times: transient (the trainer exits ``EX_TEMPFAIL``, the relay retries later).
    The message names the environments."""


class EnvironmentRejected(ConfigError):
    """An environment refused a request as invalid (a bad task at reset, an action that does not fit
    its schema): permanent, no retry can fix it. The message names the environment and the task."""


def error_classes() -> dict[str, type[RelayError]]:
    """Every class of the hierarchy by name (the ``error`` field of the API's error body)."""
    found: dict[str, type[RelayError]] = {"RelayError": RelayError}
    todo = [RelayError]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.setdefault(sub.__name__, sub)
            todo.append(sub)
    return found


def error_class(name: str | None, status: int) -> type[RelayError]:
    """The class an HTTP error answer stands for: by the body's ``error`` name; for an answer
    without a known name (a proxy's, say), the first class defined here with that 4xx status,
    else ``BadRequest`` for a 4xx and ``RelayError`` for the rest."""
    classes = error_classes()
    if name in classes:
        return classes[name]
    if 400 <= status < 500:
        return next((c for c in classes.values() if c.http_status == status), BadRequest)
    return RelayError


def commander_unreachable(exc: RelayError) -> bool:
    """Whether a failed call to the commander means it could not be reached or could not answer
    (a transport error, a timeout, a 5xx: :class:`CommanderUnavailable`, :class:`StoreError`, a
    proxy's 502–504), rather than an answer refusing the call (a 4xx such as :class:`LeaseLost`).
    A worker keeps a lease in jeopardy only through the first kind (DESIGN §4, docs/commander.md).
    Not a :class:`TlsError`: no retry can fix it, so no lease waits it out."""
    return exc.http_status >= 500 and not isinstance(exc, TlsError)
