"""``relay sync`` (the typer sub-app) against a real S3 endpoint on loopback (moto server)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from relaytrain.artifacts import S3Store
from relaytrain.artifacts.sync import best_steps, prune_store
from relaytrain.checkpoint import CheckpointManager, list_checkpoints, manifest_sha256, read_latest, verify
from relaytrain.cli.sync import sync_app
from tests.support.moto_server import MotoServer

STEPS = (100, 200, 300)


@pytest.fixture(scope="module")
def moto():
    with MotoServer() as server:
        yield server


@pytest.fixture
def env(moto, tmp_path, monkeypatch) -> dict[str, str]:
    """AWS configuration for the moto server, and an isolated workdir."""
    values = {**moto.env(), "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE":
              str(tmp_path / "none"), "RELAY_WORKDIR": str(tmp_path / "work")}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def uri(moto, env) -> str:
    bucket = f"relay-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/relay"


def make_run(workdir: Path, run_id: str, steps: tuple[int, ...] = STEPS) -> Path:
    out = workdir / "runs" / run_id / "checkpoints"
    manager = CheckpointManager(out)
    for step in steps:
        manager.save({"model/weights.bin": bytes([step % 251]) * 20000, "optimizer.bin": b"o" * 500,
                      "trainer_state.json": {"step": step}}, step, epoch=1)
    return out


def relay(*args: str) -> tuple[int, str]:
    """Exit code and output (rich's boxes and line wrapping removed) of ``relay sync ARGS``."""
    result = CliRunner().invoke(sync_app, list(args))
    text = "".join(" " if ch in "│╭╮╰╯─" else ch for ch in result.output)
    return result.exit_code, " ".join(text.split())


def store_of(uri: str) -> S3Store:
    return S3Store.from_uri(uri)


def test_backup_list_restore_round_trip(tmp_path, uri) -> None:
    out = make_run(tmp_path / "work", "run-1")
    (out / "step_00000300" / "optimizer.bin").write_bytes(b"x" * 500)  # an invalid local checkpoint
    code, output = relay("backup", "run-1", "--to", uri)
    assert code == 0, output
    assert "step 300 not backed up" in output and "optimizer.bin: blake3 mismatch in bytes 0-500" in output
    assert store_of(uri).list_checkpoints("run-1") == [100, 200]
    code, output = relay("backup", "run-1", "--to", uri)  # again: nothing to send
    assert code == 0 and "100, 200" in output

    code, output = relay("list-backups", uri)
    assert code == 0, output
    assert "run-1" in output and "200" in output and "2 checkpoint(s)" in output
    code, output = relay("list-backups", uri, "--json")
    listing = json.loads(output)
    assert [c["step"] for c in listing["run-1"]] == [100, 200]
    assert listing["run-1"][0]["size"] == sum(p.stat().st_size for p in (out / "step_00000100").rglob("*")
                                              if p.is_file())

    elsewhere = tmp_path / "elsewhere"
    code, output = relay("restore", "run-1", "--from", uri, "--to", str(elsewhere))
    assert code == 0, output
    restored = elsewhere / "runs" / "run-1" / "checkpoints"
    assert list_checkpoints(restored) == [100, 200] and read_latest(restored) == "step_00000200"
    for step in (100, 200):
        assert verify(restored / f"step_{step:08d}").ok
        assert manifest_sha256(restored / f"step_{step:08d}") == manifest_sha256(out / f"step_{step:08d}")
    code, output = relay("restore", "run-1", "--from", uri, "--to", str(elsewhere))
    assert code == 0 and "already present 100, 200" in output

    only = tmp_path / "only"
    code, output = relay("restore", "run-1", "--from", uri, "--to", str(only), "--step", "100")
    assert code == 0, output
    assert list_checkpoints(only / "runs" / "run-1" / "checkpoints") == [100]
    assert read_latest(only / "runs" / "run-1" / "checkpoints") == "step_00000100"


def test_restore_of_a_corrupt_object_aborts_naming_the_file(tmp_path, moto, uri) -> None:
    make_run(tmp_path / "work", "run-1")
    assert relay("backup", "run-1", "--to", uri)[0] == 0
    bucket = uri.split("/")[2]
    key = "relay/run-1/checkpoints/step_00000200/model/weights.bin"
    client = moto.client()
    metadata = client.head_object(Bucket=bucket, Key=key)["Metadata"]
    client.put_object(Bucket=bucket, Key=key, Body=b"\0" * 20000, Metadata=metadata)
    dest = tmp_path / "restore"
    code, output = relay("restore", "run-1", "--from", uri, "--to", str(dest))
    assert code == 1
    assert "model/weights.bin: sha256 mismatch" in output
    restored = dest / "runs" / "run-1" / "checkpoints"
    assert list_checkpoints(restored) == [100]  # step 200 never appeared; 300 was not reached
    assert read_latest(restored) is None


def test_prune_keeps_last_every_best_and_never_the_newest(tmp_path, uri) -> None:
    make_run(tmp_path / "work", "run-1", (100, 200, 300, 400, 500, 600))
    assert relay("backup", "run-1", "--to", uri)[0] == 0
    code, output = relay("prune", "run-1", "--store", uri, "--keep-last", "2", "--keep-every", "300", "--dry-run")
    assert code == 0 and "would delete 100, 200, 400" in output
    assert store_of(uri).list_checkpoints("run-1") == [100, 200, 300, 400, 500, 600]

    evals = tmp_path / "evals"
    (evals / "arithmetic").mkdir(parents=True)
    (evals / "arithmetic" / "consolidated_metrics.csv").write_text(
        "step,exact_match,status\n100,0.4,ok\n200,0.9,ok\n300,0.5,ok\n400,,failed\n500,0.7,ok\n600,0.6,ok\n")
    code, output = relay("prune", "run-1", "--store", uri, "--keep-last", "1", "--keep-best", "exact_match",
                         "--evals", str(evals))
    assert code == 0, output
    assert "kept 200, 600" in output and "best: step 200" in output
    assert store_of(uri).list_checkpoints("run-1") == [200, 600]

    # keep-last 1 with the newest scored worst: the newest stays anyway.
    report = prune_store(store_of(uri), "run-1", keep_last=1, keep_best="exact_match:min", evals_dir=evals)
    assert report.kept == [200, 600] or report.kept == [600]
    assert 600 in store_of(uri).list_checkpoints("run-1")


def test_keep_best_needs_eval_tables(tmp_path, uri) -> None:
    make_run(tmp_path / "work", "run-1")
    assert relay("backup", "run-1", "--to", uri)[0] == 0
    empty = tmp_path / "no-evals"
    empty.mkdir()
    code, output = relay("prune", "run-1", "--store", uri, "--keep-last", "1", "--keep-best", "exact_match",
                         "--evals", str(empty))
    assert code == 2 and "consolidated_metrics.csv" in output and "--keep-best" in output
    code, output = relay("prune", "run-1", "--store", uri, "--keep-last", "1", "--keep-best", "exact_match")
    assert code == 2 and "--evals" in output
    assert store_of(uri).list_checkpoints("run-1") == list(STEPS)  # nothing changed
    for table in ("a", "b"):
        (empty / table).mkdir()
        (empty / table / "consolidated_metrics.csv").write_text("step,exact_match,status\n100,0.5,ok\n")
    with pytest.raises(ValueError, match="write DATASET/exact_match"):
        best_steps(empty, "exact_match")
    assert best_steps(empty, "b/exact_match:min") == {100: -0.5}


def test_backup_all_with_cleanup_keeps_the_newest(tmp_path, uri) -> None:
    work = tmp_path / "work"
    first = make_run(work, "run-1")
    second = make_run(work, "run-2", (10, 20))
    code, output = relay("backup-all", "--to", uri, "--cleanup", "--keep-latest")
    assert code == 0, output
    assert store_of(uri).list_runs() == ["run-1", "run-2"]
    assert list_checkpoints(first) == [300] and list_checkpoints(second) == [20]
    assert read_latest(first) == "step_00000300" and verify(first / "step_00000300").ok
    code, output = relay("backup-all", "--to", uri, "--cleanup", "--no-keep-latest")
    assert code == 0, output
    assert list_checkpoints(first) == [] and read_latest(first) is None
    assert store_of(uri).list_checkpoints("run-1") == list(STEPS)


def test_bad_input_names_the_argument_and_changes_nothing(tmp_path, uri) -> None:
    make_run(tmp_path / "work", "run-1")
    code, output = relay("backup", "no-such-run", "--to", uri)
    assert code == 2 and "RUN_ID" in output and "no run 'no-such-run'" in output
    code, output = relay("backup", "run-1", "--to", "gs://bucket/x")
    assert code == 2 and "--to" in output and "unknown store scheme" in output
    code, output = relay("backup", "../etc", "--to", uri)
    assert code == 2 and "RUN_ID" in output
    code, output = relay("restore", "run-1", "--from", uri)
    assert code == 2 and "holds no checkpoint" in output
    assert relay("backup", "run-1", "--to", uri)[0] == 0
    code, output = relay("restore", "run-1", "--from", uri, "--step", "150", "--to", str(tmp_path / "x"))
    assert code == 2 and "--step" in output and "100, 200, 300" in output
    assert not (tmp_path / "x").exists()
    code, output = relay("prune", "run-1", "--store", uri, "--keep-last", "0")
    assert code == 2 and "--keep-last" in output
    assert store_of(uri).list_checkpoints("run-1") == list(STEPS)


def test_missing_bucket_fails_with_one_clear_line(tmp_path, moto, env) -> None:
    make_run(tmp_path / "work", "run-1")
    code, output = relay("backup", "run-1", "--to", "s3://relay-missing-bucket/x")
    assert code == 1
    assert f"bucket 'relay-missing-bucket' at {moto.url} does not exist" in output
