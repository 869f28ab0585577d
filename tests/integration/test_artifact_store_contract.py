"""The contract every artifact store keeps (DESIGN §10, ``relaytrain.artifacts.base``), run
against each of them: a local folder, S3 (moto in server mode, its own process) and the
Hugging Face Hub (``FakeHfApi``, the Hub faked at its boundary).

Each store is reached through a ``Backend``: the store itself, the URIs it is expected to
give, and the store-side hooks a test needs to play the disk or the network (every object it
holds, corrupting one stored file). What only one store does (multipart uploads, resumed
transfers, conditional commits, Hub commits and anchors, credentials) is tested in that store's
own module: tests/unit/test_artifacts_local.py, tests/integration/test_store_s3.py and
tests/unit/test_store_hf.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaytrain.artifacts import ArtifactStore, HFStore, LocalStore, S3Store, fetch_for_resume
from relaytrain.artifacts.base import ProgressFn
from relaytrain.checkpoint import list_checkpoints, load_checkpoint, manifest_sha256, verify
from relaytrain.checkpoint.layout import step_dir_name
from relaytrain.errors import ArtifactError, ArtifactMissing
from tests.support.checkpoints import STATE, checkpoint, flip_byte, no_temporaries
from tests.support.fake_hf import FakeHfApi

RUN = "run-1"


class Unplugged(Exception):
    """The machine dies mid-transfer."""


def die_halfway(done: int, total: int) -> None:
    """A progress function whose machine dies halfway through the transfer."""
    if 0 < done < total:
        raise Unplugged("the machine died mid-upload")


@dataclass
class Backend:
    """One store under test and what the tests need to know or do on its side."""

    store: ArtifactStore
    checkpoint_uri: Callable[[str, int], str]
    """The URI the store gives a checkpoint (run_id, step)."""
    file_uri: Callable[[str, str], str]
    """The URI the store gives a file (run_id, name)."""
    objects: Callable[[], list[str]]
    """Every object (file, key, repository path) the store holds now."""
    corrupt: Callable[[int, str, bytes], None]
    """Replace one stored file of ``RUN``'s checkpoint (step, name in the manifest, new bytes)."""
    verify_reads_content: bool = True
    """``verify_checkpoint`` checks the stored bytes, not only sizes and recorded hashes."""
    resumes_downloads: bool = True
    """A failed download keeps its verified files next to the destination, for the next try."""
    unplug: Callable[[], ProgressFn | None] = lambda: die_halfway
    """Make the next upload die midway; returns the progress function to hand it, if that is how."""


def local_backend(tmp_path: Path) -> Backend:
    root = tmp_path / "store"

    def stored(step: int, name: str = "") -> Path:
        return root / RUN / "checkpoints" / step_dir_name(step) / name

    return Backend(
        store=LocalStore(root),
        checkpoint_uri=lambda run, step: (root / run / "checkpoints" / step_dir_name(step)).as_uri(),
        file_uri=lambda run, name: (root / run / "files" / name).as_uri(),
        objects=lambda: sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
        corrupt=lambda step, name, data: stored(step, name).write_bytes(data),
        resumes_downloads=False,
    )


def s3_backend(moto, bucket: str) -> Backend:
    prefix = "team/relay"
    client = moto.client()

    def corrupt(step: int, name: str, data: bytes) -> None:  # bit rot: the object's metadata stays
        key = f"{prefix}/{RUN}/checkpoints/{step_dir_name(step)}/{name}"
        metadata = client.head_object(Bucket=bucket, Key=key)["Metadata"]
        client.put_object(Bucket=bucket, Key=key, Body=data, Metadata=metadata)

    def objects() -> list[str]:
        listing = client.list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listing.get("Contents", []))

    return Backend(
        store=S3Store(bucket, prefix),
        checkpoint_uri=lambda run, step: f"s3://{bucket}/{prefix}/{run}/checkpoints/{step_dir_name(step)}",
        file_uri=lambda run, name: f"s3://{bucket}/{prefix}/{run}/files/{name}",
        objects=objects,
        corrupt=corrupt,
        verify_reads_content=False,  # sizes and the sha256 recorded with each object; get re-hashes
    )


def hf_backend() -> Backend:
    api = FakeHfApi(token="hf_x")
    repo = "me/relay-run"

    def corrupt(step: int, name: str, data: bytes) -> None:  # rewrite the head commit's file in place
        api.head(repo)[1][f"checkpoints/{step_dir_name(step)}/{name}"] = data

    def unplug() -> None:  # a commit is all or nothing: the connection drops while it uploads
        commit = api.create_commit

        def dropped(*args, **kwargs):
            api.create_commit = commit
            raise Unplugged("the machine died mid-upload")

        api.create_commit = dropped

    return Backend(
        store=HFStore(repo, api=api, token="hf_x"),
        checkpoint_uri=lambda run, step: f"hf://{repo}/checkpoints/{step_dir_name(step)}",
        file_uri=lambda run, name: f"hf://{repo}/files/{name}",
        objects=lambda: sorted(api.head(repo)[1]) if repo in api.repos else [],
        corrupt=corrupt,
        unplug=unplug,
    )


@pytest.fixture(params=["local", "s3", "hf"])
def backend(request, tmp_path) -> Backend:
    if request.param == "local":
        return local_backend(tmp_path)
    if request.param == "s3":
        moto = request.getfixturevalue("s3_env")
        bucket = f"relay-{uuid.uuid4().hex[:12]}"
        moto.client().create_bucket(Bucket=bucket)
        return s3_backend(moto, bucket)
    return hf_backend()





def monotonic_from_zero_to_total(progress: list[tuple[int, int]]) -> bool:
    total = progress[-1][1]
    done = [d for d, _ in progress]
    return progress[0] == (0, total) and progress[-1] == (total, total) and done == sorted(done)


# -- round trip ------------------------------------------------------------------------------------


def test_put_list_verify_get_round_trip(tmp_path, backend) -> None:
    store, local = backend.store, checkpoint(tmp_path / "run", 100)
    progress: list[tuple[int, int]] = []
    uri = store.put_checkpoint(local, RUN, 100, progress=lambda done, total: progress.append((done, total)))
    assert uri == store.uri_for(RUN, 100) == backend.checkpoint_uri(RUN, 100)
    assert monotonic_from_zero_to_total(progress)
    assert store.list_checkpoints(RUN) == [100]
    assert store.list_checkpoints("other-run") == []
    assert store.list_runs() == [RUN]
    assert store.verify_checkpoint(RUN, 100).ok
    assert store.read_manifest(RUN, 100) == (local / "manifest.json").read_bytes()  # identity survives the upload

    dest = tmp_path / "elsewhere" / "checkpoints" / "step_00000100"
    down: list[tuple[int, int]] = []
    got = store.get_checkpoint(RUN, 100, dest, lambda d, t: down.append((d, t)),
                               expected_manifest_sha256=manifest_sha256(local))
    assert got == dest and verify(dest).ok
    assert manifest_sha256(dest) == manifest_sha256(local)
    assert load_checkpoint(dest)["trainer_state.json"] == {"step": 100}
    assert monotonic_from_zero_to_total(down) and down[-1][1] == progress[-1][1]
    assert no_temporaries(dest.parent)


def test_put_again_sends_nothing(tmp_path, backend) -> None:
    local = checkpoint(tmp_path / "run", 100)
    backend.store.put_checkpoint(local, RUN, 100)
    before = backend.objects()
    calls: list[int] = []
    backend.store.put_checkpoint(local, RUN, 100, progress=lambda done, total: calls.append(done))
    assert not any(calls)  # already stored and intact: no byte sent (the Hub store reports its 0)
    assert backend.objects() == before and backend.store.verify_checkpoint(RUN, 100).ok


def test_get_replaces_an_existing_destination(tmp_path, backend) -> None:
    local = checkpoint(tmp_path / "run", 100)
    backend.store.put_checkpoint(local, RUN, 100)
    flip_byte(local / "optimizer.bin")
    (local / "junk.bin").write_bytes(b"junk")
    assert backend.store.get_checkpoint(RUN, 100, local) == local
    assert verify(local).ok and not (local / "junk.bin").exists()


def test_delete_leaves_nothing_and_an_absent_step_is_a_no_op(tmp_path, backend) -> None:
    store = backend.store
    store.put_checkpoint(checkpoint(tmp_path / "run", 100), RUN, 100)
    store.put_checkpoint(checkpoint(tmp_path / "run", 200), RUN, 200)
    store.delete_checkpoint(RUN, 100)
    assert store.list_checkpoints(RUN) == [200]
    assert not [name for name in backend.objects() if "step_00000100" in name]
    assert not store.verify_checkpoint(RUN, 100).ok
    with pytest.raises(ArtifactError, match="no such checkpoint"):
        store.get_checkpoint(RUN, 100, tmp_path / "x")
    before = backend.objects()
    store.delete_checkpoint(RUN, 100)  # absent: no-op
    assert backend.objects() == before
    assert store.verify_checkpoint(RUN, 200).ok


# -- what is refused, and named --------------------------------------------------------------------


def test_put_refuses_a_corrupt_local_checkpoint_naming_the_file(tmp_path, backend) -> None:
    local = checkpoint(tmp_path / "run", 100)
    flip_byte(local / "optimizer.bin")
    with pytest.raises(ArtifactError, match="optimizer.bin: sha256 mismatch"):
        backend.store.put_checkpoint(local, RUN, 100)
    assert not [name for name in backend.objects() if name.endswith("manifest.json")]
    assert no_temporaries(tmp_path / "store" / RUN / "checkpoints")  # the local store's staging folder


def test_put_checks_the_step_and_the_manifest(tmp_path, backend) -> None:
    local = checkpoint(tmp_path / "run", 100)
    with pytest.raises(ArtifactError, match="manifest says step 100"):
        backend.store.put_checkpoint(local, RUN, 200)
    (local / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="manifest.json missing"):
        backend.store.put_checkpoint(local, RUN, 100)
    assert backend.objects() == []


def test_an_interrupted_upload_is_never_listed_and_a_retry_completes(tmp_path, backend) -> None:
    local = checkpoint(tmp_path / "run", 100)
    with pytest.raises((Unplugged, ArtifactError), match="died mid-upload"):
        backend.store.put_checkpoint(local, RUN, 100, progress=backend.unplug())
    assert backend.store.list_checkpoints(RUN) == []
    assert not [name for name in backend.objects() if name.endswith("manifest.json")]
    assert no_temporaries(tmp_path / "store" / RUN / "checkpoints")  # the local store's staging folder
    backend.store.put_checkpoint(local, RUN, 100)
    assert backend.store.list_checkpoints(RUN) == [100] and backend.store.verify_checkpoint(RUN, 100).ok


def test_a_corrupt_stored_file_is_detected_and_named_then_repaired_by_a_put(tmp_path, backend) -> None:
    store, local = backend.store, checkpoint(tmp_path / "run", 100)
    store.put_checkpoint(local, RUN, 100)
    weights = bytearray(STATE["model/weights.bin"])
    weights[4000] ^= 0x01
    backend.corrupt(100, "model/weights.bin", bytes(weights))  # bit rot: same size
    if backend.verify_reads_content:
        # a local store verifies as a checkpoint reader does (format 2: chunk BLAKE3), the others by sha256
        assert store.verify_checkpoint(RUN, 100).reason in ("model/weights.bin: sha256 mismatch",
                                                            "model/weights.bin: blake3 mismatch in bytes 0-5000")
    dest = tmp_path / "restore" / "step_00000100"
    with pytest.raises(ArtifactError, match="model/weights.bin: sha256 mismatch"):
        store.get_checkpoint(RUN, 100, dest)
    assert not dest.exists()
    assert backend.resumes_downloads or no_temporaries(dest.parent)

    backend.corrupt(100, "model/weights.bin", STATE["model/weights.bin"])
    backend.corrupt(100, "optimizer.bin", b"o")  # truncated
    assert store.verify_checkpoint(RUN, 100).reason == "optimizer.bin: size 1 != 300"
    dest = tmp_path / "another-machine" / "step_00000100"  # no partial download to resume from
    with pytest.raises(ArtifactError, match="optimizer.bin: size 1 != 300"):
        store.get_checkpoint(RUN, 100, dest)
    assert not dest.exists()

    store.put_checkpoint(local, RUN, 100)  # the same checkpoint again repairs the damaged file
    assert store.verify_checkpoint(RUN, 100).ok
    assert verify(store.get_checkpoint(RUN, 100, dest)).ok


def test_a_missing_checkpoint_or_another_manifest_is_refused(tmp_path, backend) -> None:
    store = backend.store
    store.put_checkpoint(checkpoint(tmp_path / "run", 100), RUN, 100)
    with pytest.raises(ArtifactError, match="no such checkpoint"):
        store.get_checkpoint(RUN, 5, tmp_path / "x")
    with pytest.raises(ArtifactError, match="no such checkpoint"):
        store.read_manifest(RUN, 5)
    assert not store.verify_checkpoint(RUN, 5).ok
    with pytest.raises(ArtifactError, match="manifest.json sha256"):
        store.get_checkpoint(RUN, 100, tmp_path / "x", expected_manifest_sha256="0" * 64)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("run_id", ["", "a/b", "..", ".hidden", "../x"])
def test_bad_run_ids_are_refused(backend, run_id) -> None:
    with pytest.raises(ValueError):
        backend.store.list_checkpoints(run_id)


# -- files and resuming ----------------------------------------------------------------------------


def test_put_file_and_get_file(tmp_path, backend) -> None:
    store = backend.store
    source = tmp_path / "metrics.json"
    source.write_text('{"acc": 0.5}')
    name = "evals/arith/step_00000100/metrics.json"
    assert store.put_file(source, RUN, name) == backend.file_uri(RUN, name)
    fetched = store.get_file(RUN, name, tmp_path / "out" / "m.json")
    assert fetched == tmp_path / "out" / "m.json" and fetched.read_text() == '{"acc": 0.5}'
    source.write_text('{"acc": 0.75}')
    store.put_file(source, RUN, name)  # a new version replaces the old one
    assert store.get_file(RUN, name, fetched).read_text() == '{"acc": 0.75}'
    assert no_temporaries(fetched.parent)
    with pytest.raises(ArtifactMissing, match="no such file"):  # told apart from a store that fails
        store.get_file(RUN, "missing.json", tmp_path / "y")
    assert not (tmp_path / "y").exists()
    for bad in ("../escape.json", "/abs.json", "a//b.json", ""):
        with pytest.raises(ValueError):
            store.put_file(source, RUN, bad)


def test_fetch_for_resume_downloads_the_durable_copy(tmp_path, backend) -> None:
    store = backend.store
    durable = checkpoint(tmp_path / "durable", 100)
    store.put_checkpoint(durable, RUN, 100)
    sha = manifest_sha256(durable)

    out = tmp_path / "machine" / "checkpoints"  # this machine's copy was never made durable
    checkpoint(out, 100, **{"optimizer.bin": b"never made durable"})
    path = fetch_for_resume(store, RUN, 100, sha, out)
    assert path == out / "step_00000100" and manifest_sha256(path) == sha and verify(path).ok

    flip_byte(path / "optimizer.bin")  # a corrupt local copy is replaced too
    assert fetch_for_resume(store, RUN, 100, sha, out) == path
    assert verify(path).ok

    fresh = tmp_path / "new-machine" / "checkpoints"
    assert verify(fetch_for_resume(store, RUN, 100, sha, fresh)).ok
    assert list_checkpoints(fresh) == [100]
    with pytest.raises(ArtifactError, match="manifest.json sha256"):
        fetch_for_resume(store, RUN, 100, "f" * 64, tmp_path / "third")
