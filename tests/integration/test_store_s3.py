"""S3Store against a real S3 endpoint on loopback (moto in server mode, its own process; the
``moto`` and ``s3_env`` fixtures are in conftest.py): multipart transfers, resumed uploads and
downloads, conditional commits, epochs and credentials. What every store does (round trip,
corruption, missing checkpoints, files) is in test_artifact_store_contract.py, run against S3 too."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from relaytrain.artifacts import S3Store, open_store
from relaytrain.artifacts.s3 import SHA_KEY, parse_s3_uri
from relaytrain.checkpoint import CheckpointManager, manifest_sha256, verify
from relaytrain.config import StoreConfig, parse_run_config
from relaytrain.errors import ArtifactError, ConfigError
from tests.support.moto_server import MotoServer

MB = 1 << 20


@pytest.fixture
def bucket(s3_env) -> str:
    name = f"relay-{uuid.uuid4().hex[:12]}"
    s3_env.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(bucket) -> S3Store:
    return S3Store(bucket, "team/relay", multipart_threshold=5 * MB, multipart_chunksize=5 * MB)


def checkpoint(out: Path, step: int, epoch: int | None = 1, big: int = 0, **changes: object) -> Path:
    state: dict[str, object] = {"model/weights.bin": b"w" * 5000, "optimizer.bin": b"o" * 300,
                                "trainer_state.json": {"step": step}}
    if big:
        state["model/model.safetensors"] = os.urandom(big)
    path = CheckpointManager(out).save({**state, **changes}, step, epoch=epoch)
    assert path is not None
    return path


def keys(moto: MotoServer, bucket: str) -> list[str]:
    response = moto.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in response.get("Contents", []))


def test_uri_and_factory(s3_env) -> None:
    assert parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("s3://", "s3://bucket/a//b", "s3://bucket/../x", "gs://bucket"):
        with pytest.raises(ArtifactError):
            parse_s3_uri(bad)
    opened = open_store(StoreConfig(uri="s3://bkt/pre", endpoint_url="http://127.0.0.1:9", region="eu-west-3"))
    assert isinstance(opened, S3Store) and (opened.bucket, opened.prefix) == ("bkt", "pre")
    assert opened.endpoint == "http://127.0.0.1:9" and opened.client.meta.region_name == "eu-west-3"
    assert open_store("s3://bkt").endpoint == s3_env.url  # AWS_ENDPOINT_URL_S3, the standard configuration
    assert open_store(SimpleNamespace(uri="s3://bkt/x")).uri == "s3://bkt/x"
    with pytest.raises(ConfigError, match="dry_run is supported by hf:// stores only"):
        parse_run_config({"run_id": "r", "kind": "command", "max_steps": 1, "trainer": {"command": "x"},
                          "store": {"uri": "s3://bkt", "dry_run": True}})
    with pytest.raises(ArtifactError, match="dry_run is supported by hf:// stores only"):
        open_store(SimpleNamespace(uri="s3://bkt", dry_run=True, endpoint_url=None, region=None))


def test_round_trip_with_multipart(tmp_path, moto, bucket, store) -> None:
    local = checkpoint(tmp_path / "run", 100, big=12 * MB)
    progress: list[tuple[int, int]] = []
    uri = store.put_checkpoint(local, "run-1", 100, progress=lambda done, total: progress.append((done, total)))
    assert uri == f"s3://{bucket}/team/relay/run-1/checkpoints/step_00000100" == store.uri_for("run-1", 100)
    prefix = "team/relay/run-1/checkpoints/step_00000100/"
    assert keys(moto, bucket) == sorted([
        "team/relay/run-1/checkpoints/.claims/step_00000100.json", prefix + "manifest.json",
        prefix + "model/model.safetensors", prefix + "model/weights.bin", prefix + "optimizer.bin",
        prefix + "trainer_state.json"])
    head = moto.client().head_object(Bucket=bucket, Key=prefix + "model/model.safetensors")
    assert head["ETag"].strip('"').endswith("-3")  # uploaded in three parts
    assert head["Metadata"][SHA_KEY] == hashlib.sha256((local / "model/model.safetensors").read_bytes()).hexdigest()
    total = progress[-1][1]
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    stored = moto.client().get_object(Bucket=bucket, Key=prefix + "manifest.json")["Body"].read()
    assert hashlib.sha256(stored).hexdigest() == manifest_sha256(local)  # identity survives the upload

    assert store.verify_checkpoint("run-1", 100).ok
    dest = tmp_path / "elsewhere" / "step_00000100"
    down: list[tuple[int, int]] = []
    assert store.get_checkpoint("run-1", 100, dest, lambda d, t: down.append((d, t))) == dest
    assert verify(dest).ok and manifest_sha256(dest) == manifest_sha256(local)
    assert down[-1][0] == down[-1][1] == total
    assert [p.name for p in dest.parent.iterdir()] == ["step_00000100"]  # no temporaries left

    calls: list[int] = []
    store.put_checkpoint(local, "run-1", 100, progress=lambda done, total: calls.append(done))
    assert calls == []  # already stored and intact: nothing sent


def test_an_interrupted_upload_is_not_listed_and_resumes(tmp_path, moto, bucket, store) -> None:
    local = checkpoint(tmp_path / "run", 100, big=6 * MB)
    optimizer = (local / "optimizer.bin").read_bytes()

    def lose_a_file(done: int, total: int) -> None:  # the machine dies mid-upload
        (local / "optimizer.bin").unlink(missing_ok=True)

    with pytest.raises(ArtifactError, match="optimizer.bin: missing"):
        store.put_checkpoint(local, "run-1", 100, progress=lose_a_file)
    assert store.list_checkpoints("run-1") == []
    assert "team/relay/run-1/checkpoints/step_00000100/manifest.json" not in keys(moto, bucket)
    assert "team/relay/run-1/checkpoints/step_00000100/model/model.safetensors" in keys(moto, bucket)
    (local / "optimizer.bin").write_bytes(optimizer)
    progress: list[int] = []
    store.put_checkpoint(local, "run-1", 100, progress=lambda done, total: progress.append(done))
    assert progress[1] >= 6 * MB  # the big file, already stored intact, was not sent again
    assert store.list_checkpoints("run-1") == [100] and store.verify_checkpoint("run-1", 100).ok


def test_a_local_file_that_no_longer_matches_its_manifest_is_not_uploaded(tmp_path, moto, bucket, store) -> None:
    local = checkpoint(tmp_path / "run", 100, big=3 * MB)  # multipart: the transfer threads read the parts
    target = local / "model" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[2 * MB] ^= 1  # bit rot on the local disk after the checkpoint was written: same size
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.safetensors: sha256 mismatch"):
        store.put_checkpoint(local, "run-1", 100)
    assert store.list_checkpoints("run-1") == []  # nothing committed
    assert not any(k.endswith("model.safetensors") for k in keys(moto, bucket))  # the bad object is gone too


def test_download_resumes_from_partial_files(tmp_path, moto, bucket, store) -> None:
    local = checkpoint(tmp_path / "run", 100, big=12 * MB)
    store.put_checkpoint(local, "run-1", 100)
    key = "team/relay/run-1/checkpoints/step_00000100/optimizer.bin"
    client = moto.client()
    metadata = client.head_object(Bucket=bucket, Key=key)["Metadata"]
    client.put_object(Bucket=bucket, Key=key, Body=b"x" * 300, Metadata=metadata)
    dest = tmp_path / "restore" / "step_00000100"
    with pytest.raises(ArtifactError, match="optimizer.bin: sha256 mismatch"):
        store.get_checkpoint("run-1", 100, dest)  # the model files were fetched before it failed
    assert not dest.exists()
    (staging,) = dest.parent.glob(".tmp-step_00000100-s3-*")
    assert (staging / "model" / "model.safetensors").is_file()
    client.put_object(Bucket=bucket, Key=key, Body=(local / "optimizer.bin").read_bytes(), Metadata=metadata)
    progress: list[int] = []
    assert verify(store.get_checkpoint("run-1", 100, dest, lambda d, t: progress.append(d))).ok
    assert progress[1] >= 12 * MB  # kept, not downloaded again
    assert not list(dest.parent.glob(".tmp-*"))

    # A partial file with the right first part is continued with a ranged GET ...
    fresh = tmp_path / "again" / "step_00000100"
    part = fresh.parent / staging.name / "model" / "model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((local / "model/model.safetensors").read_bytes()[: 5 * MB])
    progress.clear()
    assert verify(store.get_checkpoint("run-1", 100, fresh, lambda d, t: progress.append(d))).ok
    assert progress[1] == 5 * MB
    # ... and one with a wrong first part is downloaded again from the start.
    shutil.rmtree(fresh)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * MB)
    assert verify(store.get_checkpoint("run-1", 100, fresh)).ok


def commit_concurrently(bucket: str, sources: list[Path], step: int) -> list[Any]:
    """Two writers put ``sources`` as ``step`` at the same moment; their results or errors."""
    barrier = threading.Barrier(len(sources))
    outcome: list[Any] = [None] * len(sources)

    def write(i: int) -> None:
        store = S3Store(bucket, "team/relay")
        barrier.wait()
        try:
            outcome[i] = store.put_checkpoint(sources[i], "run-1", step)
        except ArtifactError as exc:
            outcome[i] = exc

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(sources))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def test_two_concurrent_committers_of_one_step_exactly_one_wins(tmp_path, bucket, store) -> None:
    for step in (100, 200, 300, 400):
        sources = [checkpoint(tmp_path / f"writer-{i}-{step}", step, **{"optimizer.bin": bytes([i]) * 300})
                   for i in range(2)]
        outcome = commit_concurrently(bucket, sources, step)
        winners = [i for i, result in enumerate(outcome) if isinstance(result, str)]
        assert len(winners) == 1, outcome
        loser = outcome[1 - winners[0]]
        assert isinstance(loser, ArtifactError) and "refusing to overwrite" in str(loser)
        dest = store.get_checkpoint("run-1", step, tmp_path / "check" / f"step_{step:08d}")
        assert manifest_sha256(dest) == manifest_sha256(sources[winners[0]])
    assert store.list_checkpoints("run-1") == [100, 200, 300, 400]


def test_the_manifest_commit_is_conditional(tmp_path, moto, bucket, store) -> None:
    """Even past the claim, a manifest that appeared meanwhile is never overwritten."""
    mine = checkpoint(tmp_path / "mine", 100, big=6 * MB)
    theirs = checkpoint(tmp_path / "theirs", 100, **{"optimizer.bin": b"t" * 300})
    key = "team/relay/run-1/checkpoints/step_00000100/manifest.json"
    client = moto.client()

    def commit_theirs_midway(done: int, total: int) -> None:
        if done and not getattr(commit_theirs_midway, "done", False):
            commit_theirs_midway.done = True  # type: ignore[attr-defined]
            client.put_object(Bucket=bucket, Key=key, Body=(theirs / "manifest.json").read_bytes())

    with pytest.raises(ArtifactError, match="another writer committed step 100 first"):
        store.put_checkpoint(mine, "run-1", 100, progress=commit_theirs_midway)
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == (theirs / "manifest.json").read_bytes()


def test_a_newer_epoch_takes_a_step_over_and_the_stale_writer_stops(tmp_path, moto, bucket, store) -> None:
    old = checkpoint(tmp_path / "old", 100, epoch=3, big=6 * MB)
    new = checkpoint(tmp_path / "new", 100, epoch=4, **{"optimizer.bin": b"n" * 300})

    def overtaken(done: int, total: int) -> None:
        if done and not getattr(overtaken, "done", False):
            overtaken.done = True  # type: ignore[attr-defined]
            S3Store(bucket, "team/relay").put_checkpoint(new, "run-1", 100)

    with pytest.raises(ArtifactError, match="another writer took this step over"):
        store.put_checkpoint(old, "run-1", 100, progress=overtaken)
    assert store.list_checkpoints("run-1") == [100]
    dest = store.get_checkpoint("run-1", 100, tmp_path / "check" / "step_00000100")
    assert manifest_sha256(dest) == manifest_sha256(new)
    with pytest.raises(ArtifactError, match="epoch 4"):
        store.put_checkpoint(old, "run-1", 100)  # a lower epoch never replaces a committed step
    newest = checkpoint(tmp_path / "newest", 100, epoch=5, **{"optimizer.bin": b"z" * 300})
    store.put_checkpoint(newest, "run-1", 100)  # a committed step of an older epoch is replaced
    assert store.verify_checkpoint("run-1", 100).manifest["epoch"] == 5  # type: ignore[index]
    assert not [k for k in keys(moto, bucket) if k.endswith("model.safetensors")]  # stray objects removed


def test_missing_bucket_or_bad_credentials_fail_clearly_writing_nothing(tmp_path, moto, s3_env, bucket) -> None:
    local = checkpoint(tmp_path / "run", 100)
    missing = S3Store("relay-no-such-bucket", "x")
    with pytest.raises(ArtifactError, match=f"bucket 'relay-no-such-bucket' at {moto.url} does not exist"):
        missing.put_checkpoint(local, "run-1", 100)
    with pytest.raises(ArtifactError, match="does not exist"):
        missing.list_checkpoints("run-1")
    assert "relay-no-such-bucket" not in [b["Name"] for b in moto.client().list_buckets()["Buckets"]]

    store = S3Store(bucket, "team/relay")
    moto.enforce_auth(True)
    try:
        with pytest.raises(ArtifactError, match=f"access to bucket '{bucket}' at {moto.url} denied"):
            store.put_checkpoint(local, "run-1", 100)
        with pytest.raises(ArtifactError, match="denied"):
            store.get_checkpoint("run-1", 100, tmp_path / "x")
    finally:
        moto.enforce_auth(False)
    assert keys(moto, bucket) == []
    assert not (tmp_path / "x").exists()


def test_an_interrupted_download_keeps_its_complete_prefix_and_resumes(tmp_path, bucket) -> None:
    store = S3Store(bucket, "p", multipart_threshold=5 * MB, multipart_chunksize=5 * MB, max_concurrency=3)
    local = checkpoint(tmp_path / "run", 100, big=30 * MB)
    store.put_checkpoint(local, "run-1", 100)
    dest = tmp_path / "restore" / "step_00000100"

    class Unplugged(Exception):
        pass

    def unplug(done: int, total: int) -> None:
        # Bytes are counted as they arrive, and written later by s3transfer's writer thread in
        # any part order: cut late enough that the first part has surely landed (at 12 MB, under
        # load, none of it had once, and the clean prefix kept was rightly empty).
        if done > 24 * MB:
            raise Unplugged

    with pytest.raises(ArtifactError, match="Unplugged"):
        store.get_checkpoint("run-1", 100, dest, unplug)
    (part,) = dest.parent.glob(".tmp-*/model/model.safetensors.part")
    kept = part.stat().st_size
    assert 0 < kept < 30 * MB
    assert part.read_bytes() == (local / "model/model.safetensors").read_bytes()[:kept]  # a clean prefix
    progress: list[int] = []
    assert verify(store.get_checkpoint("run-1", 100, dest, lambda d, t: progress.append(d))).ok
    assert progress[1] == kept  # continued with a ranged GET
