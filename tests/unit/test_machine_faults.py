"""A machine's fault, read from what a trainer printed (DESIGN §7): a full disk or a failed GPU is
the machine's, whatever exit code came with it; the run's own errors keep their classes. The real
outputs of torch.save and of the counter trainer on a full filesystem are checked in
tests/integration/test_machine_faults.py; these are the samples operators report."""

from __future__ import annotations

import errno

import pytest
from pydantic import ValidationError

from relaytrain.api import models as m
from relaytrain.contract import (
    ExitCode,
    FailureClass,
    MachineFault,
    classify_exit,
    disk_full,
    exit_code_for,
    machine_fault,
)
from relaytrain.errors import ArtifactError, CheckpointError
from relaytrain.worker.machine import DiskNeed, fault_of, store_unreachable

DISK = [
    "OSError: [Errno 28] No space left on device",
    "OSError: [Errno 122] Disk quota exceeded: '/work/runs/r/checkpoints/.tmp-step_40-x/optimizer.pt'",
    "RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 4051584 vs 4051472",
    "RuntimeError: [enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/3: "
    "file write failed",
    "relaytrain.errors.CheckpointError: saving step 40 failed: No space left on device",
]
GPU = [
    "NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.",
    "RuntimeError: CUDA error: uncorrectable ECC error encountered\nCUDA kernel errors might be reported later",
    "torch.AcceleratorError: CUDA error: an uncorrectable ECC error was detected (cudaErrorECCUncorrectable)",
    "[Xid (PCI:0000:00:1e): 48] uncorrectable ECC error encountered",
]


def tail(line: str) -> str:
    return f"step 39 loss 0.5\nTraceback (most recent call last):\n  File \"x.py\", line 1, in save\n{line}\n"


@pytest.mark.parametrize("line", DISK)
@pytest.mark.parametrize("code", [1, ExitCode.TEMPFAIL, -9])
def test_a_full_disk_is_the_machines_whatever_the_code(line, code):
    exit_ = classify_exit(code, tail(line), stop_requested=False, killed_for=None)
    assert (exit_.failure_class, exit_.fault) == (FailureClass.MACHINE, MachineFault.DISK)
    assert "disk fault" in exit_.message


@pytest.mark.parametrize("line", GPU)
def test_a_failed_gpu_is_the_machines(line):
    assert machine_fault(line) is MachineFault.GPU
    exit_ = classify_exit(1, tail(line), stop_requested=False, killed_for=None)
    assert (exit_.failure_class, exit_.fault) == (FailureClass.MACHINE, MachineFault.GPU)


@pytest.mark.parametrize(("line", "failure"), [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", FailureClass.TRANSIENT),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", FailureClass.TRANSIENT),
    ("NCCL watchdog thread terminated with exception: Watchdog caught collective operation timeout",
     FailureClass.TRANSIENT),
    ("ModuleNotFoundError: No module named 'rewards'", FailureClass.PERMANENT),
    ("OSError: [Errno 2] No such file or directory: 'data.jsonl'", FailureClass.TRANSIENT),
])
def test_the_runs_own_errors_are_not_the_machines(line, failure):
    assert machine_fault(line) is None
    exit_ = classify_exit(1, tail(line), stop_requested=False, killed_for=None)
    assert (exit_.failure_class, exit_.fault) == (failure, None)


def test_a_config_exit_and_a_requested_stop_stay_what_they_are():
    full = tail(DISK[0])
    assert classify_exit(ExitCode.CONFIG, full, stop_requested=False, killed_for=None).failure_class \
        == FailureClass.PERMANENT
    assert classify_exit(-15, full, stop_requested=True, killed_for=None).failure_class is None
    assert classify_exit(0, full, stop_requested=False, killed_for=None).failure_class is None
    assert classify_exit(1, full, stop_requested=False, killed_for="hung: no progress").failure_class \
        == FailureClass.TRANSIENT


def test_the_trainer_exits_tempfail_on_a_full_disk():
    """The trainer side: a full disk is not a crash to let through, nor a configuration error."""
    assert exit_code_for(OSError(errno.ENOSPC, "No space left on device")) == ExitCode.TEMPFAIL
    assert exit_code_for(OSError(errno.EDQUOT, "Disk quota exceeded")) == ExitCode.TEMPFAIL
    assert exit_code_for(RuntimeError(DISK[2].removeprefix("RuntimeError: "))) == ExitCode.TEMPFAIL
    assert exit_code_for(OSError(errno.ENOENT, "No such file")) is None


def test_the_workers_own_errors_are_traced_to_their_cause():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise ArtifactError("downloading file:///store/r/step_10 failed") from exc
    except ArtifactError as wrapped:
        assert disk_full(wrapped) and fault_of(wrapped) is MachineFault.DISK
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as exc:
            raise ArtifactError("s3://b/r: could not connect") from exc
    except ArtifactError as wrapped:
        assert store_unreachable(wrapped) and fault_of(wrapped) is MachineFault.STORE

    class EndpointConnectionError(Exception):  # botocore's name, not its class: the worker imports no boto3
        pass

    assert store_unreachable(EndpointConnectionError("Could not connect to the endpoint URL"))
    assert fault_of(CheckpointError("step 10: sha256 mismatch")) is None
    assert fault_of(ArtifactError("s3://b/r/step_10: no such checkpoint in the store")) is None


def test_the_disk_need_counts_the_checkpoints_kept_here():
    need = DiskNeed(checkpoint=8 << 20, keep=6)
    assert need.total == 48 << 20
    assert DiskNeed(checkpoint=0, keep=3).total == 3 << 20  # nothing measured: a megabyte each, not zero


def test_a_degraded_worker_says_why():
    m.WorkerHealth(condition="degraded", reason="disk full")
    m.WorkerHealth(condition="ok")
    for bad in ({"condition": "degraded"}, {"condition": "ok", "reason": "x"},
                {"condition": "ok", "reason": ""}, {"condition": "degraded", "reason": ""},
                {"condition": "sick", "reason": "x"}):
        with pytest.raises(ValidationError, match="condition|reason"):
            m.WorkerHealth(**bad)
