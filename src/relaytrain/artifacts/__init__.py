"""Artifact stores: where checkpoints become durable (DESIGN §10).

``open_store(uri)`` returns an ``ArtifactStore``: ``LocalStore`` for paths and ``file://``,
``S3Store`` for ``s3://bucket/prefix`` (boto3), ``HFStore`` for ``hf://user/repo[@branch]``
(huggingface_hub). Every store uploads atomically and verifies sizes and sha256 against the
checkpoint's manifest. ``fetch_for_resume`` is what a resuming worker calls;
``relaytrain.artifacts.sync`` is what ``relay sync`` does. boto3 and huggingface_hub are
imported only when a store of theirs is opened.
"""

from relaytrain.artifacts.base import ArtifactStore, ProgressFn
from relaytrain.artifacts.factory import open_store
from relaytrain.artifacts.hf import HFStore
from relaytrain.artifacts.local import LocalStore
from relaytrain.artifacts.resume import fetch_for_resume, verify_durable
from relaytrain.artifacts.s3 import S3Store

__all__ = ["ArtifactStore", "HFStore", "LocalStore", "ProgressFn", "S3Store", "fetch_for_resume", "open_store",
           "verify_durable"]
