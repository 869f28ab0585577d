"""What a worker frees for a full disk (worker/machine.py): copies only, never what the run's
operator reads (logs, progress, trajectories, tracker files), and no more than the need."""

from __future__ import annotations

from pathlib import Path

from relaytrain.api.status import WorkerCondition
from relaytrain.contract import MachineFault, RunLayout
from relaytrain.worker.machine import MachineHealth, checkpoint_bytes, free_space


def a_run(workdir: Path, run_id: str) -> RunLayout:
    layout = RunLayout.in_workdir(workdir, run_id, epoch=1)
    layout.make()
    for name, size in (("step_00000010", 3000), ("step_00000020", 5000), (".tmp-step_30-x", 1000)):
        (layout.checkpoints / name).mkdir()
        (layout.checkpoints / name / "weights.bin").write_bytes(b"w" * size)
    (layout.checkpoints / "latest").write_text("step_00000020\n")
    (layout.init / "parent").mkdir(parents=True)
    (layout.logs / "stderr.log").write_text("OSError: [Errno 28] No space left on device\n")
    layout.progress.write_text('{"step": 20}\n')
    layout.tracking.mkdir()
    (layout.tracking / "events").write_text("x")
    return layout


def test_nothing_is_freed_when_the_need_fits(tmp_path):
    layout = a_run(tmp_path, "r")
    assert free_space(tmp_path, need=1) == 0
    assert (layout.checkpoints / ".tmp-step_30-x").exists() and (layout.checkpoints / "step_00000020").exists()


def test_copies_go_and_what_the_operator_reads_stays(tmp_path):
    runs = [a_run(tmp_path, name) for name in ("old", "new")]
    assert checkpoint_bytes(runs[0].checkpoints) == 5000
    free_space(tmp_path, need=1 << 62)  # more than any disk: everything the worker may free goes
    for layout in runs:
        assert not layout.checkpoints.exists() and not layout.init.exists()
        assert (layout.logs / "stderr.log").exists() and layout.progress.exists()
        assert (layout.tracking / "events").exists() and layout.rollouts.exists()


def test_a_gpu_fault_degrades_until_the_worker_restarts(tmp_path):
    health = MachineHealth("w", tmp_path)
    assert health.recheck() and health.condition == WorkerCondition.OK
    health.after_fault(MachineFault.GPU, "GPU fault on worker w (NVRM: Xid 79)", None)
    assert health.degraded and health.reason.startswith("GPU fault (restart the worker once the GPU is fixed)")
    assert not health.recheck()


def test_an_unreachable_store_degrades_nothing(tmp_path):
    health = MachineHealth("w", tmp_path)
    health.after_fault(MachineFault.STORE, "the store cannot be reached from worker w", None)
    assert not health.degraded
