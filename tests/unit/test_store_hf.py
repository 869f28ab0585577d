"""HFStore: dry-run plans, the calls it makes to the Hub, stale writers, and the token.

The Hub cannot be reached from tests, so ``HfApi`` is replaced at its boundary by
``tests.support.fake_hf.FakeHfApi``. The cases every store shares (round trip, corruption,
missing checkpoints, files) are in tests/integration/test_artifact_store_contract.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import typer
from huggingface_hub import errors as hub_errors
from huggingface_hub.hf_api import GitCommitInfo
from typer.testing import CliRunner

from relaytrain.artifacts import HFStore, fetch_for_resume, open_store
from relaytrain.artifacts.hf import PLAN_NAME, RUN_MARKER, parse_hf_uri
from relaytrain.artifacts.sync import push_latest
from relaytrain.checkpoint import CheckpointManager, manifest_sha256, read_manifest, verify
from relaytrain.cli.sync import push_latest_command
from relaytrain.config import StoreConfig
from relaytrain.errors import ArtifactError
from tests.support.fake_hf import FakeHfApi, http_error

TOKEN = "hf_SeCrEtT0kenValue1234567890"
STATE = {"model/model.bin": b"w" * 5000, "optimizer.bin": b"o" * 300, "trainer_state.json": {"step": 1}}


def checkpoint(out: Path, step: int, epoch: int = 1, **changes: object) -> Path:
    path = CheckpointManager(out).save({**STATE, **changes}, step, epoch=epoch)
    assert path is not None
    return path


@pytest.fixture
def api() -> FakeHfApi:
    return FakeHfApi(token=TOKEN)


@pytest.fixture
def store(api: FakeHfApi) -> HFStore:
    return HFStore("me/relay-run", api=api, token=TOKEN)


def test_uri_parsing_and_factory(monkeypatch) -> None:
    assert parse_hf_uri("hf://me/repo") == ("me/repo", "main")
    assert parse_hf_uri("hf://me/repo@exp-1") == ("me/repo", "exp-1")
    for bad in ("hf://repo", "hf://me/repo@", "hf://me/re po", "s3://me/repo"):
        with pytest.raises(ArtifactError):
            parse_hf_uri(bad)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    opened = open_store(StoreConfig(uri="hf://me/repo@exp", dry_run=True))
    assert isinstance(opened, HFStore) and opened.dry_run and opened.branch == "exp"
    assert isinstance(open_store("hf://me/repo"), HFStore)


def test_put_is_one_commit_with_every_file_then_verified(tmp_path, api, store) -> None:
    local = checkpoint(tmp_path / "run" / "checkpoints", 100, epoch=3)
    progress: list[tuple[int, int]] = []
    uri = store.put_checkpoint(local, "run-1", 100, progress=lambda d, t: progress.append((d, t)))
    assert uri == "hf://me/relay-run/checkpoints/step_00000100" == store.uri_for("run-1", 100)
    commits = [kw for name, kw in api.calls if name == "create_commit"]
    assert len(commits) == 1
    paths = [op.path_in_repo for op in commits[0]["operations"]]
    assert paths[-1] == "checkpoints/step_00000100/manifest.json"  # the manifest goes last
    assert sorted(paths) == sorted([RUN_MARKER, "checkpoints/step_00000100/manifest.json",
                                    "checkpoints/step_00000100/model/model.bin",
                                    "checkpoints/step_00000100/optimizer.bin",
                                    "checkpoints/step_00000100/trainer_state.json"])
    assert commits[0]["revision"] == "main" and commits[0]["parent_commit"] == "c0"  # the head it read
    assert commits[0]["commit_message"] == "relaytrain: run-1 step 100 (epoch 3)"
    assert ("create_repo", {"repo_id": "me/relay-run", "private": True, "exist_ok": True, "repo_type": "model"}) \
        in api.calls
    head, files = api.head("me/relay-run")
    assert store.last_commit == store.parent_commit == head
    assert files["checkpoints/step_00000100/manifest.json"] == (local / "manifest.json").read_bytes()
    assert any(name == "get_paths_info" and kw["revision"] == head for name, kw in api.calls)
    assert progress[0] == (0, progress[-1][1]) and progress[-1][0] == progress[-1][1]

    api.calls.clear()
    store.put_checkpoint(local, "run-1", 100)  # already there: no second commit
    assert not [name for name, _ in api.calls if name == "create_commit"]


def test_a_stale_writer_is_refused_after_a_newer_epoch_committed(tmp_path, api) -> None:
    first = HFStore("me/relay-run", api=api, token=TOKEN)
    mine = checkpoint(tmp_path / "a", 100)
    first.put_checkpoint(mine, "run-1", 100)
    recorded = first.last_commit
    second = HFStore("me/relay-run", api=api, token=TOKEN)  # a new worker, told the recorded commit
    second.put_checkpoint(checkpoint(tmp_path / "b", 200, epoch=2), "run-1", 200, parent_commit=recorded)
    newer = second.last_commit
    assert [kw["parent_commit"] for n, kw in api.calls if n == "create_commit"] == ["c0", recorded]
    head_before = api.head("me/relay-run")[0]
    assert head_before == newer

    # The first (stale) worker, anchored at its own commit, and fresh epoch-1 stores, anchored or not.
    late = checkpoint(tmp_path / "a", 300)
    refused = f"commit {newer} .*by epoch 2, newer than this checkpoint's \\(epoch 1\\): this writer is stale"
    for stale in (first, HFStore("me/relay-run", api=api, token=TOKEN, parent_commit=recorded),
                  HFStore("me/relay-run", api=api, token=TOKEN)):
        with pytest.raises(ArtifactError, match=refused):
            stale.put_checkpoint(late, "run-1", 300)
    assert api.head("me/relay-run")[0] == head_before
    assert first.list_checkpoints("run-1") == [100, 200]
    assert first.last_commit == first.parent_commit == recorded  # unchanged by the refused commit

    source = tmp_path / "notes.txt"
    source.write_text("x")
    first.put_file(source, "run-1", "notes.txt")  # files and deletions are not fenced, nor move the anchor
    first.put_checkpoint(mine, "run-1", 100)  # already held: nothing written, the anchor stays
    assert first.parent_commit == recorded and first.last_commit == api.head("me/relay-run")[0]
    with pytest.raises(ArtifactError, match=refused):
        first.put_checkpoint(late, "run-1", 300)

    second.put_checkpoint(checkpoint(tmp_path / "b", 300, epoch=2), "run-1", 300)  # follows its own commit
    assert second.list_checkpoints("run-1") == [100, 200, 300]
    assert second.head_commit() == second.last_commit


def test_an_anchored_store_commits_after_eval_files_and_deletions(tmp_path, api) -> None:
    def other() -> HFStore:
        return HFStore("me/relay-run", api=api, token=TOKEN)

    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"acc": 1}')
    first = other()
    first.put_checkpoint(checkpoint(tmp_path / "a", 100), "run-1", 100)
    first.put_checkpoint(checkpoint(tmp_path / "a", 200), "run-1", 200)
    other().put_file(metrics, "run-1", "evals/a/step_00000200/metrics.json")  # an eval run
    other().delete_checkpoint("run-1", 100)  # retention
    first.put_checkpoint(checkpoint(tmp_path / "a", 300), "run-1", 300)  # the same holder goes on
    recorded = first.last_commit
    assert recorded == api.head("me/relay-run")[0]

    other().put_file(metrics, "run-1", "evals/a/step_00000300/metrics.json")
    other().delete_checkpoint("run-1", 200)
    before = api.head("me/relay-run")[0]
    successor = other()
    successor.anchor(recorded)  # a new holder, anchored at what the commander recorded
    successor.put_checkpoint(checkpoint(tmp_path / "b", 400, epoch=2), "run-1", 400)
    assert [kw["parent_commit"] for n, kw in api.calls if n == "create_commit"][-1] == before
    assert successor.last_commit == successor.parent_commit == api.head("me/relay-run")[0]
    assert successor.list_checkpoints("run-1") == [300, 400]
    assert "files/evals/a/step_00000300/metrics.json" in api.head("me/relay-run")[1]


def test_a_new_holder_is_not_blocked_by_a_late_stale_commit(tmp_path, api) -> None:
    stale = HFStore("me/relay-run", api=api, token=TOKEN)
    stale.put_checkpoint(checkpoint(tmp_path / "a", 100), "run-1", 100)
    recorded = stale.last_commit
    stale.put_checkpoint(checkpoint(tmp_path / "a", 200), "run-1", 200)  # lands after the new grant
    holder = HFStore("me/relay-run", api=api, token=TOKEN, parent_commit=recorded)
    mine = checkpoint(tmp_path / "b", 200, epoch=2, **{"optimizer.bin": b"p" * 300})
    holder.put_checkpoint(mine, "run-1", 200)  # commits over the stale step 200
    stored = api.head("me/relay-run")[1]["checkpoints/step_00000200/manifest.json"]
    assert hashlib.sha256(stored).hexdigest() == manifest_sha256(mine)
    assert holder.verify_checkpoint("run-1", 200).manifest["epoch"] == 2
    with pytest.raises(ArtifactError, match="this writer is stale"):
        stale.put_checkpoint(checkpoint(tmp_path / "a", 300), "run-1", 300)


def test_an_anchor_missing_from_the_history_is_refused(tmp_path, api, store) -> None:
    store.put_checkpoint(checkpoint(tmp_path / "a", 100), "run-1", 100)
    head = api.head("me/relay-run")[0]
    lost = "f" * 40
    elsewhere = HFStore("me/relay-run", api=api, token=TOKEN, parent_commit=lost)
    with pytest.raises(ArtifactError, match=f"recorded commit {lost} is not in the history of branch 'main'"):
        elsewhere.put_checkpoint(checkpoint(tmp_path / "b", 200, epoch=2), "run-1", 200)
    assert api.head("me/relay-run")[0] == head and elsewhere.last_commit is None


def test_a_commit_landing_while_committing_is_refused_by_the_hub(tmp_path) -> None:
    class RacingApi(FakeHfApi):
        """Another writer commits right after the store has read the branch's commits."""

        racer: HFStore | None = None

        def list_repo_commits(self, repo_id: str, **kwargs: Any) -> list[GitCommitInfo]:
            commits = super().list_repo_commits(repo_id, **kwargs)
            if self.racer is not None:
                racer, self.racer = self.racer, None
                racer.put_file(source, "run-1", "evals/x.json")
            return commits

    source = tmp_path / "x.json"
    source.write_text("{}")
    api = RacingApi(token=TOKEN)
    store = HFStore("me/relay-run", api=api, token=TOKEN)
    store.put_checkpoint(checkpoint(tmp_path / "a", 100), "run-1", 100)
    read = api.head("me/relay-run")[0]
    api.racer = HFStore("me/relay-run", api=api, token=TOKEN)
    with pytest.raises(ArtifactError, match=f"moved past parent commit {read}"):
        store.put_checkpoint(checkpoint(tmp_path / "a", 200), "run-1", 200)
    assert store.list_checkpoints("run-1") == [100]
    store.put_checkpoint(checkpoint(tmp_path / "a", 200), "run-1", 200)  # a retry reads the branch again
    assert store.list_checkpoints("run-1") == [100, 200]


def test_fetch_for_resume_reads_the_recorded_revision(tmp_path, api, store) -> None:
    durable = checkpoint(tmp_path / "a", 100)
    store.put_checkpoint(durable, "run-1", 100)
    recorded, sha = store.last_commit, manifest_sha256(durable)
    overwrite = checkpoint(tmp_path / "b", 100, **{"optimizer.bin": b"z" * 300})  # same epoch, unanchored
    HFStore("me/relay-run", api=api, token=TOKEN).put_checkpoint(overwrite, "run-1", 100)
    assert api.head("me/relay-run")[0] != recorded

    reader = HFStore("me/relay-run", api=api, token=TOKEN)
    with pytest.raises(ArtifactError, match="manifest"):  # the head holds another checkpoint now
        fetch_for_resume(reader, "run-1", 100, sha, tmp_path / "head")
    path = fetch_for_resume(reader, "run-1", 100, sha, tmp_path / "resume", revision=recorded)
    assert verify(path).ok and manifest_sha256(path) == sha
    assert (path / "optimizer.bin").read_bytes() == b"o" * 300


def test_dry_run_writes_the_plan_and_makes_no_call(tmp_path, monkeypatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a dry run must not create an HfApi")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "run" / "checkpoints"
    local = checkpoint(out, 100, epoch=2)
    trajectories = tmp_path / "run" / "rollouts"
    trajectories.mkdir()
    (trajectories / "rollout_00000100.jsonl").write_text('{"prompt": "1+1", "completion": "2"}\n')
    store = open_store(StoreConfig(uri="hf://me/relay-run@exp", dry_run=True))
    assert isinstance(store, HFStore)
    uri = store.put_checkpoint(local, "run-1", 100, parent_commit="abc123", trajectories_dir=trajectories)
    assert uri == "hf://me/relay-run@exp/checkpoints/step_00000100"

    plan = json.loads((out / PLAN_NAME).read_text())  # next to the checkpoint
    assert verify(local).ok  # the checkpoint itself is untouched
    assert plan["repo_id"] == "me/relay-run" and plan["branch"] == "exp" and plan["private"] is True
    assert plan["parent_commit"] == "abc123"
    assert plan["commit_message"] == "relaytrain: run-1 step 100 (epoch 2)"
    assert plan["manifest_sha256"] == manifest_sha256(local)
    manifest = read_manifest(local)
    by_path = {f["path_in_repo"]: f for f in plan["files"]}
    for name, entry in manifest["files"].items():
        planned = by_path[f"checkpoints/step_00000100/{name}"]
        assert (planned["size"], planned["sha256"]) == (entry["size"], entry["sha256"])
        assert Path(planned["local_path"]) == local / name
    assert "checkpoints/step_00000100/trajectories/rollout_00000100.jsonl" in by_path
    assert plan["files"][-1]["path_in_repo"] == "checkpoints/step_00000100/manifest.json"
    assert plan["total_bytes"] == sum(f["size"] for f in plan["files"])
    assert TOKEN not in (out / PLAN_NAME).read_text()

    elsewhere = HFStore("me/relay-run", dry_run=True, plan_dir=tmp_path / "plans")
    elsewhere.put_checkpoint(local, "run-1", 100)
    assert json.loads((tmp_path / "plans" / PLAN_NAME).read_text())["parent_commit"] is None


def test_push_latest_command_dry_run_end_to_end(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any network use would fail
    run_root = tmp_path / "runs" / "run-1"
    checkpoint(run_root / "checkpoints", 100)
    newest = checkpoint(run_root / "checkpoints", 200)
    app = typer.Typer()
    app.command("push-latest")(push_latest_command)
    app.command("unused")(lambda: None)
    result = CliRunner().invoke(app, ["push-latest", "--run-root", str(run_root), "--repo-id", "me/relay-run",
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    plan = json.loads((run_root / "checkpoints" / PLAN_NAME).read_text())
    assert plan["step"] == 200 and plan["run_id"] == "run-1"
    assert plan["manifest_sha256"] == manifest_sha256(newest)
    bad = CliRunner().invoke(app, ["push-latest", "--run-root", str(tmp_path / "nope"), "--repo-id", "me/r"])
    assert bad.exit_code == 2 and "--run-root" in bad.output
    bad = CliRunner().invoke(app, ["push-latest", "--run-root", str(run_root), "--repo-id", "no-slash"])
    assert bad.exit_code == 2 and "--repo-id" in bad.output


def test_push_latest_commits_the_newest_valid_checkpoint(tmp_path, api) -> None:
    run_root = tmp_path / "run-7"
    checkpoint(run_root / "checkpoints", 100)
    result = push_latest(run_root, "me/relay-run", "exp", api=api)
    assert result.step == 100 and result.commit == api.head("me/relay-run", "exp")[0]
    assert ("create_branch", {"repo_id": "me/relay-run", "branch": "exp"}) in api.calls
    assert result.uri == "hf://me/relay-run@exp/checkpoints/step_00000100"


def test_the_token_never_appears_in_logs_or_errors(tmp_path, monkeypatch, caplog) -> None:
    class LeakyApi(FakeHfApi):
        """Errors that quote the token, as a careless HTTP layer might."""

        def create_commit(self, *args: Any, **kwargs: Any) -> Any:
            raise http_error(hub_errors.HfHubHTTPError, 500,
                             f"500 Server Error for url https://huggingface.co/api?token={self.token} "
                             f"(Authorization: Bearer {self.token})")

        def list_repo_files(self, repo_id: str, **kwargs: Any) -> list[str]:
            raise http_error(hub_errors.HfHubHTTPError, 401, f"401 Unauthorized: invalid token {self.token}")

    FakeHfApi.instances.clear()
    monkeypatch.setattr(huggingface_hub, "HfApi", LeakyApi)  # replaced at its boundary
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    store = open_store("hf://me/relay-run")
    assert TOKEN not in repr(store)
    local = checkpoint(tmp_path / "run", 100)
    texts = []
    for action in (lambda: store.put_checkpoint(local, "run-1", 100), lambda: store.list_checkpoints("run-1")):
        with pytest.raises(ArtifactError) as caught:
            action()
        texts.append("".join(traceback.format_exception(caught.value)))
    assert FakeHfApi.instances[-1].token == TOKEN  # the store did use it
    assert "not authorized" in texts[1] and "HF_TOKEN" in texts[1]
    for text in [*texts, caplog.text]:
        assert TOKEN not in text
        assert TOKEN[3:12] not in text


def test_one_repo_holds_one_run_and_trajectories_ride_along(tmp_path, api, store) -> None:
    trajectories = tmp_path / "rollouts"
    trajectories.mkdir()
    (trajectories / "rollout_00000100.jsonl").write_text("{}\n")
    store.put_checkpoint(checkpoint(tmp_path / "a", 100), "run-1", 100, trajectories_dir=trajectories)
    assert "checkpoints/step_00000100/trajectories/rollout_00000100.jsonl" in api.head("me/relay-run")[1]
    assert store.verify_checkpoint("run-1", 100).ok  # trajectories are not part of the manifest
    dest = tmp_path / "restore" / "step_00000100"
    store.get_checkpoint("run-1", 100, dest)
    assert verify(dest).ok
    other = HFStore("me/relay-run", api=api, token=TOKEN)
    with pytest.raises(ArtifactError, match="holds run 'run-1', not 'run-2'"):
        other.put_checkpoint(checkpoint(tmp_path / "b", 200), "run-2", 200)
    assert other.list_checkpoints("run-2") == []


def test_missing_repo_and_deletes_in_commits_of_their_own(tmp_path, api, store) -> None:
    with pytest.raises(ArtifactError, match="me/relay-run not found, or not accessible"):
        store.list_checkpoints("run-1")
    store.put_checkpoint(checkpoint(tmp_path / "a", 100), "run-1", 100)
    store.put_checkpoint(checkpoint(tmp_path / "a", 200), "run-1", 200)
    api.calls.clear()
    store.delete_checkpoint("run-1", 100)
    assert [kw["commit_message"] for name, kw in api.calls if name == "create_commit"] == [
        "relaytrain: run-1 delete step 100"]
    api.calls.clear()
    store.delete_checkpoint("run-1", 100)  # absent: no commit
    assert not [name for name, _ in api.calls if name == "create_commit"]


def test_several_files_go_up_in_one_commit(tmp_path, api, store) -> None:
    """Trajectories uploaded after a checkpoint: one Hub commit for the batch, each file readable."""
    files = []
    for step in (1, 2, 3):
        path = tmp_path / f"rollout_{step:08d}.jsonl"
        path.write_text(f'{{"step": {step}}}\n')
        files.append((path, f"rollouts/{path.name}"))
    api.calls.clear()
    uris = store.put_files(files, "run-1")
    commits = [kw["commit_message"] for name, kw in api.calls if name == "create_commit"]
    assert commits == ["relaytrain: run-1 3 files"]
    assert uris == [f"hf://me/relay-run/files/rollouts/rollout_{s:08d}.jsonl" for s in (1, 2, 3)]
    for path, name in files:
        assert store.get_file("run-1", name, tmp_path / "back" / path.name).read_text() == path.read_text()
    with pytest.raises(ArtifactError, match="no such file"):
        store.put_files([(tmp_path / "missing.jsonl", "rollouts/missing.jsonl")], "run-1")
