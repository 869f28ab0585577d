"""The worker's pure parts: exit classification and the progress tailer."""

from __future__ import annotations

import json

import pytest

from relaytrain.worker.process import classify_exit
from relaytrain.worker.reporter import ProgressTailer


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
    assert tailer.read_new() == [{"step": 1}]
    with open(path, "a") as f:
        f.write('rics": {"loss": 0.5}}\nnot json\n[1, 2]\n{"event": "checkpoint", "step": 2, "path": "/x"}\n')
    assert tailer.read_new() == [{"step": 2, "metrics": {"loss": 0.5}},
                                 {"event": "checkpoint", "step": 2, "path": "/x"}]
    assert tailer.read_new() == []
