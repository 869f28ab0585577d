"""One exception hierarchy for relaytrain.

Every class's docstring is its default message. Low-level errors are wrapped with
``raise SomeRelayError(...) from exc`` so the cause stays visible.
"""

from __future__ import annotations


class RelayError(Exception):
    """relaytrain failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(RelayError, ValueError):
    """The configuration is invalid."""


class StoreError(RelayError):
    """The commander's database failed."""


class RunExists(RelayError):
    """A run with this run_id already exists."""


class NotFound(RelayError):
    """No such object."""


class LeaseLost(RelayError):
    """The lease is no longer ours: its epoch is stale or it has expired. Stop now."""


class InvalidState(RelayError):
    """The object is not in a state that allows this operation."""


class AuthError(RelayError):
    """Missing or wrong credentials."""


class Forbidden(RelayError):
    """These credentials do not reach this endpoint."""


class BadRequest(RelayError):
    """The request was rejected as invalid."""


class CommanderUnavailable(RelayError):
    """The commander could not be reached."""


class CheckpointError(RelayError):
    """A checkpoint is invalid or could not be written."""


class ArtifactError(RelayError):
    """An artifact store operation failed."""


class StaleWriter(ArtifactError):
    """The store refused a write because a newer epoch (lease holder) has written since: the
    writer has lost its lease, whether or not it knows yet."""
