"""One factory: a stack file's ``provider: {type: …}`` section → the provider that implements it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relaytrain.config import LiumProviderConfig, LocalProviderConfig, ProviderConfig, SshProviderConfig

from .base import Provider


def resolve(base_dir: Path, path: str) -> Path:
    """A path from a stack file: absolute as written, else relative to the stack file's folder."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else (base_dir / candidate).resolve()


def make_provider(config: ProviderConfig, *, base_dir: Path, sdk: Any | None = None) -> Provider:
    """Build the provider a stack file asks for. ``sdk`` replaces the Lium SDK client (tests)."""
    if isinstance(config, LocalProviderConfig):
        from .local import LocalProvider

        return LocalProvider(resolve(base_dir, config.root), python=config.python)
    if isinstance(config, SshProviderConfig):
        from .ssh import SshProvider

        hosts = [h.model_copy(update={"key_path": str(resolve(base_dir, h.key_path))}) for h in config.hosts]
        return SshProvider(hosts, connect_timeout_s=config.connect_timeout_s)
    if isinstance(config, LiumProviderConfig):
        from .lium import LiumProvider

        return LiumProvider(config, sdk=sdk)
    raise AssertionError(f"unknown provider config {type(config).__name__}")
