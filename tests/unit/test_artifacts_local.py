"""LocalStore's own layout, open_store and fetch_for_resume, on real folders. What every store
does (round trip, corruption, missing checkpoints, files) is in
tests/integration/test_artifact_store_contract.py, run against this store too."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from relaytrain.artifacts import ArtifactStore, LocalStore, fetch_for_resume, open_store
from relaytrain.checkpoint import list_checkpoints, manifest_sha256, verify
from relaytrain.errors import ArtifactError
from tests.support.checkpoints import checkpoint, no_temporaries


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def test_a_checkpoint_is_a_folder_under_the_root(tmp_path, store) -> None:
    local = checkpoint(tmp_path / "run", 100)
    uri = store.put_checkpoint(local, "run-1", 100)
    stored = tmp_path / "store" / "run-1" / "checkpoints" / "step_00000100"
    assert uri == stored.as_uri() and uri.startswith("file:///")
    assert verify(stored).ok and manifest_sha256(stored) == manifest_sha256(local)
    assert list_checkpoints(stored.parent) == [100]
    store.delete_checkpoint("run-1", 100)
    assert not stored.exists() and no_temporaries(stored.parent)


def test_a_new_manifest_replaces_the_stored_step(tmp_path, store) -> None:
    first = checkpoint(tmp_path / "a", 100)
    store.put_checkpoint(first, "run-1", 100)
    second = checkpoint(tmp_path / "b", 100, **{"optimizer.bin": b"p" * 300})
    store.put_checkpoint(second, "run-1", 100)
    stored = tmp_path / "store" / "run-1" / "checkpoints" / "step_00000100"
    assert manifest_sha256(stored) == manifest_sha256(second)
    assert store.verify_checkpoint("run-1", 100).ok


def test_open_store_dispatches_on_scheme(tmp_path) -> None:
    by_path = open_store(str(tmp_path / "s"))
    assert isinstance(by_path, LocalStore) and isinstance(by_path, ArtifactStore)
    assert by_path.root == (tmp_path / "s").resolve()
    by_uri = open_store((tmp_path / "with space").as_uri())
    assert isinstance(by_uri, LocalStore) and by_uri.root == tmp_path / "with space"
    by_config = open_store(SimpleNamespace(uri=str(tmp_path / "c"), endpoint_url=None))
    assert isinstance(by_config, LocalStore) and by_config.root == tmp_path / "c"
    assert open_store(tmp_path / "p").root == tmp_path / "p"
    # s3:// and hf:// are dispatched to their own stores, tested with them.
    with pytest.raises(ArtifactError, match="unknown store scheme"):
        open_store("gs://bucket")
    with pytest.raises(ArtifactError, match="local path"):
        open_store("file://otherhost/x")


def test_fetch_for_resume_uses_a_matching_local_copy(tmp_path, store) -> None:
    out = tmp_path / "run" / "checkpoints"
    local = checkpoint(out, 100)
    sha = manifest_sha256(local)
    # The store holds nothing for this run: a download attempt would fail.
    assert fetch_for_resume(store, "run-1", 100, sha, out) == local
