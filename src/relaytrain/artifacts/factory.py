"""``open_store``: the one place that maps a store URI to its implementation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from relaytrain.artifacts.base import ArtifactStore
from relaytrain.artifacts.local import LocalStore
from relaytrain.errors import ArtifactError


class _HasUri(Protocol):
    uri: str


def store_uri(uri_or_config: str | os.PathLike[str] | _HasUri) -> str:
    """The store URI of a string, a path, or a config object with a ``.uri`` attribute
    (``relaytrain.config.StoreConfig``)."""
    if isinstance(uri_or_config, (str, os.PathLike)):
        return os.fspath(uri_or_config)
    uri = getattr(uri_or_config, "uri", None)
    if not isinstance(uri, str):
        raise ArtifactError(f"cannot open a store from {type(uri_or_config).__name__}: give a URI or a store config")
    return uri


def open_store(uri_or_config: str | os.PathLike[str] | _HasUri) -> ArtifactStore:
    """Open the artifact store at a URI: a path or ``file:///abs/path`` (``LocalStore``),
    ``s3://bucket/prefix`` or ``hf://user/repo`` (not available yet).

    Accepts a string, a path, or any object with a ``.uri`` attribute. Raises ArtifactError
    for unknown or unavailable schemes.
    """
    uri = store_uri(uri_or_config)
    if not uri:
        raise ArtifactError("empty store URI")
    if "://" not in uri:
        return LocalStore(Path(uri))
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"{uri}: file:// URIs must name a local path (file:///abs/path)")
        return LocalStore(Path(unquote(parsed.path)))
    if scheme == "s3":
        raise ArtifactError(f"{uri}: s3:// stores need the [s3] extra (boto3) and are not implemented yet")
    if scheme == "hf":
        raise ArtifactError(f"{uri}: hf:// stores need the [hf] extra (huggingface_hub) and are not implemented yet")
    raise ArtifactError(f"{uri}: unknown store scheme {scheme!r}; use a path, file://, s3:// or hf://")
