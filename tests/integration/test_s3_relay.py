"""A new machine: a run trained by one worker into S3 is continued by a worker with an empty
workdir, from the store alone, and ends bit-identical to a straight run."""

from __future__ import annotations

import signal
import uuid

import pytest

from relaytrain.artifacts import S3Store
from tests.integration.test_sft_resume import digests, finish, start
from tests.support.commander import wait_until
from tests.support.moto_server import MotoServer

pytest.importorskip("transformers")
pytest.importorskip("boto3")
pytestmark = pytest.mark.slow


def test_empty_workdir_resumes_from_s3_alone_bit_exact(cluster, tmp_path, monkeypatch):
    steps = 40
    with MotoServer() as moto:
        for name, value in {**moto.env(), "AWS_CONFIG_FILE": str(tmp_path / "none"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
            monkeypatch.setenv(name, value)  # the workers inherit them: the standard AWS configuration
        bucket = f"relay-{uuid.uuid4().hex[:12]}"
        moto.client().create_bucket(Bucket=bucket)
        straight = start(tmp_path / "straight", steps, "--checkpoint-every", "10")
        cluster.client.submit({
            "run_id": "s3-relay", "kind": "sft", "model": "tiny", "data": {"builtin": "arithmetic"},
            "max_steps": steps, "checkpoint": {"every_steps": 10, "keep_last": 10},
            "store": {"uri": f"s3://{bucket}/relay"},
        })
        first = cluster.worker("first", None, "--max-runs", "1")
        wait_until(lambda: (c := cluster.run("s3-relay").latest_checkpoint) and c.step >= 20, 120, "a durable step")
        first.signal(signal.SIGTERM)
        assert first.proc.wait(timeout=60) == 0
        assert cluster.run("s3-relay").latest_checkpoint.uri.startswith(f"s3://{bucket}/relay/s3-relay/")
        second = cluster.worker("second")  # a new machine: its workdir has never seen the run
        run = cluster.wait_status("s3-relay", ("succeeded", "failed"), timeout_s=180)
        assert run.status == "succeeded", cluster.logs()
        assert [a.worker_id for a in run.attempts] == ["first", "second"]
        assert run.attempts[1].step_start >= 20 and run.attempts[1].resume_note is None
        assert "downloaded" in second.log() or (second.workdir / "runs" / "s3-relay").is_dir()
        finish(straight, tmp_path / "straight")
        stored = S3Store.from_uri(f"s3://{bucket}/relay").get_checkpoint("s3-relay", steps, tmp_path / "from-s3")
        relayed, direct = digests(stored), digests(tmp_path / "straight" / f"step_{steps:08d}")
        assert relayed.keys() == direct.keys()
        assert [k for k in relayed if relayed[k] != direct[k]] == []
