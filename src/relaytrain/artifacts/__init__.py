"""Artifact stores: where checkpoints become durable (DESIGN §10).

``open_store(uri)`` returns an ``ArtifactStore`` (today: ``LocalStore`` for paths and
``file://``); every store uploads atomically and verifies sizes and sha256 against the
checkpoint's manifest. ``fetch_for_resume`` is what a resuming worker calls.
"""

from relaytrain.artifacts.base import ArtifactStore, ProgressFn
from relaytrain.artifacts.factory import open_store
from relaytrain.artifacts.local import LocalStore
from relaytrain.artifacts.resume import fetch_for_resume

__all__ = ["ArtifactStore", "LocalStore", "ProgressFn", "fetch_for_resume", "open_store"]
