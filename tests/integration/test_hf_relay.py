"""A run on a Hugging Face Hub store handed from one attempt to the next, with the worker's own
``Attempt`` (in this process), a real ``relay serve`` and the counter trainer.

The Hub cannot be reached from here, so ``huggingface_hub.HfApi`` is replaced at its boundary
by the in-memory ``tests.support.fake_hf.FakeHfApi`` (one repository host shared by every
client made in this process).
"""

from __future__ import annotations

import time
from pathlib import Path

import huggingface_hub
import pytest

from relaytrain.api import models as m
from relaytrain.artifacts import HFStore
from relaytrain.checkpoint import CheckpointManager
from relaytrain.worker.attempt import Attempt
from tests.support.commander import Commander
from tests.support.fake_hf import FakeHfApi
from tests.support.relay import counter_run

pytestmark = pytest.mark.slow

REPO = "me/relay-run"


def test_the_next_holder_anchors_at_the_recorded_commit_and_resumes_from_it(tmp_path: Path, monkeypatch) -> None:
    repos: dict = {}
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FakeHfApi(token, repos))
    monkeypatch.setenv("HF_TOKEN", "hf_TestT0kenValue1234567890")
    anchors: list[str | None] = []
    real_anchor = HFStore.anchor
    monkeypatch.setattr(HFStore, "anchor", lambda self, revision: (anchors.append(revision),
                                                                    real_anchor(self, revision))[1])
    commander = Commander(db=f"sqlite:///{tmp_path / 'relay.db'}", token="admin", workdir=tmp_path).start()
    try:
        admin = commander.client()
        worker = commander.client(admin.create_token("w").token)

        def attempt(worker_id: str) -> m.Grant:
            worker.register(m.RegisterWorker(worker_id=worker_id))
            grant = worker.claim(m.ClaimRequest(worker_id=worker_id, wait_s=5))
            assert grant is not None
            outcome = Attempt(worker, grant, worker_id=worker_id, workdir=tmp_path / worker_id,
                              granted_at_monotonic=time.monotonic()).run()
            assert outcome == "succeeded", admin.run(grant.run_id).attempts[-1]
            return grant

        admin.submit(counter_run("hub", f"hf://{REPO}", max_steps=20, every=10))  # type: ignore[arg-type]
        first = attempt("w1")
        recorded = admin.checkpoints("hub").items[-1]
        assert (recorded.step, recorded.epoch) == (20, 1) and recorded.revision
        hub = FakeHfApi(None, repos)
        files_at = set(hub.list_repo_files(REPO, revision=recorded.revision))
        assert "checkpoints/step_00000020/manifest.json" in files_at  # the recorded commit holds it
        assert first.checkpoint is None and anchors == []

        # A late writer of the old epoch overwrites step 20 on the Hub after it was recorded.
        late = CheckpointManager(tmp_path / "late").save({"state.json": {"step": 20, "state": "garbage"}}, 20,
                                                         epoch=1)
        HFStore(REPO, api=FakeHfApi(None, repos)).put_checkpoint(late, "hub", 20)
        assert hub.head(REPO)[0] != recorded.revision

        admin.resume("hub", additional_steps=10)
        second = attempt("w2")  # a machine that has never seen the run: an empty workdir
        assert second.epoch == 2 and second.checkpoint is not None
        assert second.checkpoint.revision == recorded.revision
        assert anchors == [recorded.revision]
        run = admin.run("hub")
        resumed = run.attempts[-1]
        assert (resumed.step_start, resumed.resume_note) == (20, None)  # the recorded step 20, not the late one
        final = admin.checkpoints("hub").items[-1]
        assert (final.step, final.epoch) == (30, 2) and final.revision == hub.head(REPO)[0]
        titles = [c.title for c in hub.list_repo_commits(REPO)]
        assert titles[0] == "relaytrain: hub step 30 (epoch 2)"
    finally:
        commander.stop()
