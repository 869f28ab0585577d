"""``open_store``: the one place that maps a store URI to its implementation."""

from __future__ import annotations

import importlib.util
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


def _require(module: str, extra: str, uri: str) -> None:
    """ArtifactError unless ``module`` (the ``[extra]`` dependency) can be imported."""
    if importlib.util.find_spec(module) is None:
        raise ArtifactError(f"{uri}: this store needs {module}: pip install 'relaytrain[{extra}]'")


def open_store(uri_or_config: str | os.PathLike[str] | _HasUri) -> ArtifactStore:
    """Open the artifact store at a URI: a path or ``file:///abs/path`` (``LocalStore``),
    ``s3://bucket/prefix`` (``S3Store``; the config's ``endpoint_url`` and ``region`` apply)
    or ``hf://user/repo[@branch]`` (``HFStore``; the config's ``dry_run`` applies).

    Accepts a string, a path, or any object with a ``.uri`` attribute (``StoreConfig``).
    Raises ArtifactError for unknown schemes, or when the scheme's extra is not installed.
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
        if getattr(uri_or_config, "dry_run", False):
            raise ArtifactError(f"{uri}: dry_run is supported by hf:// stores only")
        _require("boto3", "s3", uri)
        from relaytrain.artifacts.s3 import S3Store

        return S3Store.from_uri(uri, endpoint_url=getattr(uri_or_config, "endpoint_url", None),
                                region=getattr(uri_or_config, "region", None))
    if scheme == "hf":
        _require("huggingface_hub", "hf", uri)
        from relaytrain.artifacts.hf import HFStore

        return HFStore.from_uri(uri, dry_run=bool(getattr(uri_or_config, "dry_run", False)))
    raise ArtifactError(f"{uri}: unknown store scheme {scheme!r}; use a path, file://, s3:// or hf://")
