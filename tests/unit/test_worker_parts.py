"""The worker's parts: exit classification, the progress tailer, and the uploader's commits."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from relaytrain.api.client import RelayClient
from relaytrain.artifacts import HFStore, LocalStore
from relaytrain.checkpoint import CheckpointManager, manifest_sha256, verify
from relaytrain.commander.app import create_app
from relaytrain.commander.store import Store
from relaytrain.config import parse_run_config
from relaytrain.contract import Event, Progress, classify_exit
from relaytrain.worker.reporter import ProgressTailer, Uploader
from tests.support.fake_hf import FakeHfApi


@pytest.mark.parametrize(
    ("code", "stderr", "stopping", "expected"),
    [
        (0, "", False, ("succeeded", None)),
        (0, "", True, ("stopped", None)),
        (75, "oops", False, ("failed", "transient")),
        (78, "bad config", False, ("failed", "permanent")),
        (-9, "", False, ("failed", "transient")),
        (-15, "", True, ("stopped", None)),
        (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", False, ("failed", "transient")),
        (1, "RuntimeError: NCCL communicator was aborted", False, ("failed", "transient")),
        (1, "Traceback…\nModuleNotFoundError: No module named 'slime'", False, ("failed", "permanent")),
        (1, "Traceback…\nFileNotFoundError: data/train.jsonl", False, ("failed", "permanent")),
        (1, "Traceback…\nValueError: nan loss", False, ("failed", "transient")),
    ],
)
def test_exit_classification(code, stderr, stopping, expected):
    result = classify_exit(code, stderr, stop_requested=stopping, killed_for=None)
    assert (result.outcome, result.failure_class) == expected


def test_a_hang_kill_is_transient_whatever_the_code():
    result = classify_exit(-9, "", stop_requested=False, killed_for="hung: no progress for 600s")
    assert (result.outcome, result.failure_class, result.message) == ("failed", "transient",
                                                                       "hung: no progress for 600s")


def test_failure_message_carries_the_last_stderr_line():
    result = classify_exit(78, "loading…\nConfigError: data.path: no such file\n\n", stop_requested=False,
                           killed_for=None)
    assert result.message == "exit 78 (EX_CONFIG): ConfigError: data.path: no such file"


def test_tailer_reads_whole_lines_only(tmp_path):
    path = tmp_path / "progress.jsonl"
    tailer = ProgressTailer(path)
    assert tailer.read_new() == []  # no file yet
    with open(path, "w") as f:
        f.write(json.dumps({"step": 1}) + "\n" + '{"step": 2, "met')
    assert tailer.read_new() == [Progress(1, {})]
    with open(path, "a") as f:
        f.write('rics": {"loss": 0.5}}\nnot json\n[1, 2]\n{"event": "checkpoint", "step": 2, "path": "/x"}\n')
    assert tailer.read_new() == [Progress(2, {"loss": 0.5}), Event("checkpoint", {"step": 2, "path": "/x"})]
    assert tailer.read_new() == []


def claimed_run(tmp_path: Path) -> Store:
    """A SQLite store holding the command run ``r``, claimed by worker ``w1`` (epoch 1)."""
    db = Store(str(tmp_path / "relay.db"))
    db.upgrade()
    db.submit_run(parse_run_config({"run_id": "r", "kind": "command", "max_steps": 100,
                                    "trainer": {"command": "true"}}), now=0)
    assert db.claim_run("w1")["epoch"] == 1
    return db


@contextlib.contextmanager
def worker_client(db: Store, intercept: Callable[[httpx.Request], httpx.Response | None] | None = None,
                  **options: Any) -> Iterator[RelayClient]:
    """A worker's ``RelayClient`` on the commander's real app over ``db``, in this process.
    ``intercept(request)`` sees each request first: it may answer it (or raise) as a fault would."""
    with TestClient(create_app(db, admin_token="admin")) as http:
        def forward(request: httpx.Request) -> httpx.Response:
            if intercept is not None and (faulty := intercept(request)) is not None:
                return faulty
            answer = http.request(request.method, str(request.url), content=request.read(),
                                  headers=dict(request.headers))
            return httpx.Response(answer.status_code, headers=answer.headers.raw, content=answer.content)

        client = RelayClient("http://testserver", db.create_token("w", "worker"),
                             transport=httpx.MockTransport(forward), **options)
        try:
            yield client
        finally:
            client.close()


def test_uploader_records_the_store_commit_of_each_checkpoint(tmp_path):
    """Through the commander's real API on SQLite, to a Hub faked at its boundary: each durable
    checkpoint is recorded with the commit holding it, and the uploader's own retention deletes
    (commits too) do not stop its next checkpoint."""
    db = claimed_run(tmp_path)
    api = FakeHfApi()
    hub = HFStore("me/relay-run", api=api, token="hf_x")
    stops: list[tuple[str, str]] = []
    with worker_client(db) as client:
        for step in (10, 20, 30):
            path = CheckpointManager(tmp_path / "out").save({"model.bin": b"w" * 2000, "step.json": {"step": step}},
                                                           step, epoch=1)
            uploader = Uploader(client, hub, "r", "w1", 1, lambda *why: stops.append(why), retention=(1, None))
            uploader.start().submit(step, path)
            uploader.drain()
            assert uploader.durable_step == step and not uploader.skipped, uploader.skipped
            recorded = db.list_checkpoints("r")[-1]
            assert recorded["step"] == step and recorded["revision"] == hub.last_commit
            files = api.list_repo_files("me/relay-run", revision=recorded["revision"])
            assert f"checkpoints/step_{step:08d}/manifest.json" in files  # the recorded commit holds it
        assert not stops
        assert hub.list_checkpoints("r") == [30]  # retention deleted 10 and 20 on the Hub, in commits of their own

        # A newer holder (epoch 2), anchored at the recorded commit, commits step 40; the epoch-1
        # uploader's next upload is refused by the store as stale and stops its attempt as lost.
        newer = HFStore("me/relay-run", api=api, token="hf_x")
        newer.anchor(db.list_checkpoints("r")[-1]["revision"])
        newer.put_checkpoint(CheckpointManager(tmp_path / "out2").save({"model.bin": b"v" * 2000}, 40, epoch=2),
                             "r", 40)
        path = CheckpointManager(tmp_path / "out").save({"model.bin": b"w" * 2000, "step.json": {"step": 50}},
                                                       50, epoch=1)
        uploader = Uploader(client, hub, "r", "w1", 1, lambda *why: stops.append(why), retention=(1, None))
        uploader.start().submit(50, path)
        uploader.drain()
        assert uploader.durable_step is None and [why for why, _ in stops] == ["lost"]
        assert "epoch 2" in stops[0][1] and "stale" in stops[0][1]
        assert [c["step"] for c in db.list_checkpoints("r")][-1] == 30
        assert hub.list_checkpoints("r") == [30, 40]
    assert [c["revision"] is not None for c in db.list_checkpoints("r")] == [True, True, True]
    db.close()


class _TrainerRaces(LocalStore):
    """A real local store, but as the upload of a checkpoint starts reading it, the trainer
    deletes it (its retention: steps in ``pruned``) or saves the same step again (``resaved``:
    the old folder moved away, a new one without a manifest in its place, as the counter
    trainer does when stopped just after a save)."""

    def __init__(self, root, pruned: set[int], resaved: set[int]) -> None:
        super().__init__(root)
        self.pruned, self.resaved = pruned, resaved

    def put_checkpoint(self, local_dir, run_id, step, progress=None):
        if step in self.pruned:
            shutil.rmtree(local_dir)
        if step in self.resaved:
            self.resaved.discard(step)
            old = local_dir.with_name(f".old-{local_dir.name}")
            local_dir.rename(old)
            shutil.copytree(old, local_dir, ignore=shutil.ignore_patterns("manifest.json"))
        return super().put_checkpoint(local_dir, run_id, step, progress)


def test_the_uploader_skips_a_checkpoint_pruned_under_it_and_uploads_one_saved_again(tmp_path):
    """The trainer owns its checkpoint folders while the uploader reads them: one it prunes is
    skipped and said so, one it saves again (its manifest gone) is uploaded anew; neither stops
    the uploader (it died of "manifest.json missing", failing a cancelled attempt, before)."""
    db = claimed_run(tmp_path)
    stops: list[tuple[str, str]] = []
    with worker_client(db) as client:
        store = _TrainerRaces(tmp_path / "store", pruned={10}, resaved={20})
        uploader = Uploader(client, store, "r", "w1", 1, lambda *why: stops.append(why)).start()
        out = tmp_path / "out"
        for step in (10, 20):
            folder = out / f"step_{step:08d}"
            folder.mkdir(parents=True)
            (folder / "state.json").write_text(json.dumps({"step": step}))  # an external trainer's: no manifest
            uploader.submit(step, folder)
        uploader.drain()
    assert not uploader.died and not stops
    assert uploader.skipped == [f"step 10: {out / 'step_00000010'} vanished during upload (pruned by the trainer?)"]
    assert uploader.durable_step == 20 and store.list_checkpoints("r") == [20]
    [recorded] = db.list_checkpoints("r")
    assert recorded["step"] == 20 and recorded["manifest_sha256"] == manifest_sha256(out / "step_00000020")
    assert verify(Path(recorded["uri"].removeprefix("file://"))).ok
    db.close()


class _RecordingUploader:
    """Stands in for the uploader (a collaborator, not the part under test): records requests."""

    def __init__(self) -> None:
        self.files: list[tuple[str, str, str]] = []
        self.checkpoints: list[int] = []

    def submit_file(self, path, run_id: str, name: str) -> None:
        self.files.append((str(path), run_id, name))

    def submit(self, step: int, path) -> None:
        self.checkpoints.append(step)


def test_the_reporter_stores_files_only_for_its_run_or_the_runs_it_may_write(tmp_path):
    from relaytrain.contract import Contract
    from relaytrain.worker.reporter import Reporter

    progress = tmp_path / "progress.jsonl"
    contract = Contract.local(tmp_path, progress_file=progress)
    for run_id in ("eval-run", "source-run", "someone-else"):
        contract.report_file(tmp_path / "metrics.json", run_id, f"evals/{run_id}.json")
    contract.close()
    uploader = _RecordingUploader()
    stopped: list[tuple[str, str]] = []
    reporter = Reporter(None, ProgressTailer(progress), uploader, tmp_path / "checkpoints", "eval-run", "w", 1,
                        lambda *why: stopped.append(why), file_runs=frozenset({"source-run"})).start()
    reporter.finish()
    assert [run_id for _, run_id, _ in uploader.files] == ["eval-run", "source-run"]
    assert not stopped and not uploader.checkpoints


def test_the_reporter_announces_rollout_managers_retries_and_stops_when_fenced(tmp_path, caplog):
    """Through the commander's real API on SQLite: a rollout event outside the contract is dropped
    (the log says which field, never its value: it may be the secret);
    one the commander cannot take (503) is kept and sent again; a stale epoch's is refused and stops
    its attempt as lost."""
    from relaytrain.contract import ROLLOUT_EVENT, event_line
    from relaytrain.worker.reporter import Reporter
    from tests.support.commander import wait_until

    db = claimed_run(tmp_path)
    down, puts = [True], []

    def database_down(request: httpx.Request) -> httpx.Response | None:
        if request.method == "PUT":
            puts.append(down[0])
            if down[0]:
                return httpx.Response(503, json={"error": "StoreError", "detail": "database is down"})
        return None

    with worker_client(db, database_down, retries=0) as client:

        def reporter(epoch: int, progress, stops) -> Reporter:
            return Reporter(client, ProgressTailer(progress), _RecordingUploader(), tmp_path / "checkpoints", "r",
                            "w1", epoch, lambda *why: stops.append(why), interval_s=0.2).start()

        progress, stops = tmp_path / "progress-1.jsonl", []
        progress.write_text(event_line(ROLLOUT_EVENT, url="http://10.0.0.1:4100", secret="leak-me-not")
                            + event_line(ROLLOUT_EVENT, url="http://10.0.0.1:4100", secret="k" * 20, version=1))
        first = reporter(1, progress, stops)
        wait_until(lambda: len(puts) >= 2, 30, "the announcement to be tried twice")
        down[0] = False
        announced = wait_until(lambda: _served(db), 30, "the announcement to be delivered")
        first.finish()
        assert (announced["epoch"], announced["url"], announced["version"]) == (1, "http://10.0.0.1:4100", 1)
        assert puts[-1] is False and not stops
        assert "outside the contract: secret:" in caplog.text and "leak-me-not" not in caplog.text

        db.release_lease("r", "w1", 1, outcome="preempted")
        assert db.claim_run("w1")["epoch"] == 2
        stale, stale_stops = tmp_path / "progress-2.jsonl", []
        stale.write_text(event_line(ROLLOUT_EVENT, url="http://10.0.0.2:4100", secret="k" * 20))
        reporter(1, stale, stale_stops).finish()
        assert [why for why, _ in stale_stops] == ["lost"] and "stale" in stale_stops[0][1]
    db.close()


def _served(db: Store) -> dict | None:
    from relaytrain.errors import NotFound

    try:
        return db.rollout_endpoint("r")
    except NotFound:
        return None


def test_a_commit_the_commander_cannot_take_is_retried_until_it_is_back(tmp_path):
    """Through the commander's real API on SQLite, its line cut at the transport: a checkpoint
    uploaded during an outage is committed once the commander answers again (never dropped after
    a few tries), and an uploader abandoned meanwhile (its lease given up) stops trying."""
    from relaytrain.artifacts import open_store
    from tests.support.commander import wait_until

    db = claimed_run(tmp_path)
    down, tries = [True], []

    def commander_unreachable(request: httpx.Request) -> None:
        if request.url.path.endswith("/checkpoints"):
            tries.append(down[0])
            if down[0]:
                raise httpx.ConnectError("connection refused", request=request)

    with worker_client(db, commander_unreachable, retries=0) as client:
        store, stops = open_store(tmp_path / "store"), []
        uploader = Uploader(client, store, "r", "w1", 1, lambda *why: stops.append(why), attempts=2).start()
        uploader.submit(10, CheckpointManager(tmp_path / "out").save({"model.bin": b"w" * 100}, 10, epoch=1))
        wait_until(lambda: len(tries) > 2, 30, "the commit to be tried more than `attempts` times")
        down[0] = False
        uploader.drain()
        assert uploader.durable_step == 10 and not uploader.skipped and not stops
        assert [c["step"] for c in db.list_checkpoints("r")] == [10]

        down[0], tries[:] = True, []
        uploader = Uploader(client, store, "r", "w1", 1, lambda *why: stops.append(why), attempts=2).start()
        uploader.submit(20, CheckpointManager(tmp_path / "out").save({"model.bin": b"v" * 100}, 20, epoch=1))
        wait_until(lambda: tries, 30, "the commit to be tried")
        uploader.abandon()
        uploader.drain(timeout_s=30)
        assert uploader.durable_step is None and "not committed" in uploader.skipped[0] and not stops
        assert [c["step"] for c in db.list_checkpoints("r")] == [10]
    db.close()


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        ("CommanderUnavailable", True),  # refused, reset, timed out: the client's own
        ("StoreError", True),  # 503: the commander's database is down
        ("CommanderRecovering", True),  # 503: back from an outage, leases not yet extended
        ("RelayError", True),  # a 5xx with no name of ours: a proxy's 502
        ("LeaseLost", False),  # 409: an answer, the lease is gone
        ("NotFound", False),
        ("AuthError", False),
        ("TlsError", False),  # no retry can fix it
    ],
)
def test_which_failures_keep_a_lease_in_jeopardy(error, unreachable):
    from relaytrain.errors import commander_unreachable, error_classes

    assert commander_unreachable(error_classes()[error]("x")) is unreachable
