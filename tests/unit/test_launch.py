"""The launcher's pure parts (no torch): the exit code from the ranks' codes, its last stderr
line and how the worker classifies it, the device check; the contract for ranks; which runs
are launched on several ranks; the standalone flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaytrain.config import parse_run_config
from relaytrain.config.distributed import DistributedPlan
from relaytrain.contract import Contract, ExitCode, classify_exit
from relaytrain.errors import ConfigError
from relaytrain.train.launch import check_devices, failure_line, launcher_exit, stderr_tail
from relaytrain.train.run import launch_plan
from relaytrain.train.standalone import build_parser

TERM, KILL, INT = 15, 9, 2


@pytest.mark.parametrize(("codes", "stop", "expected"), [
    ({0: 0, 1: 0}, None, 0),
    ({0: 0, 1: 0}, TERM, 0),                       # stopped as asked: every rank saved and exited 0
    ({1: 78}, None, 78),                           # the run is wrong: no retry
    ({0: 75, 1: 78}, None, 78),
    ({0: -KILL, 1: 78}, None, 78),
    ({1: -KILL}, None, 75),                        # a rank killed: transient
    ({1: 1}, None, 75),                            # a crash
    ({0: 75}, None, 75),
    ({1: -KILL}, TERM, 75),                        # killed by something else while stopping
    ({0: -TERM, 1: -TERM}, TERM, -TERM),           # killed by the stop signal before handling it
    ({0: -INT, 1: 0}, INT, -INT),
    ({0: -TERM, 1: 75}, TERM, 75),
    ({0: -TERM}, None, 75),                        # a SIGTERM the launcher never had: not a stop
])  # fmt: skip
def test_the_launcher_exit_code(codes, stop, expected):
    assert launcher_exit(codes, stop) == expected


@pytest.mark.parametrize(("code", "stop", "outcome", "failure_class"), [
    (75, False, "failed", "transient"),
    (78, False, "failed", "permanent"),
    (0, True, "stopped", None),
    (-TERM, True, "stopped", None),
    (-TERM, False, "failed", "transient"),
])  # fmt: skip
def test_the_worker_classifies_the_launcher_exit(code, stop, outcome, failure_class):
    line = failure_line(1, 2, -KILL, "(no stderr)", code)
    result = classify_exit(code, "[rank0]: something\n" + line, stop_requested=stop, killed_for=None)
    assert (result.outcome, result.failure_class) == (outcome, failure_class)
    if code > 0:
        assert "rank 1 of 2 failed (killed by SIGKILL)" in result.message


def test_the_last_line_names_the_rank_its_end_and_its_error():
    tail = stderr_tail("Traceback (most recent call last):\n  File x\n\nRuntimeError: boom\n")
    line = failure_line(1, 4, 3, tail, ExitCode.TEMPFAIL)
    assert line.startswith("relaytrain launcher: rank 1 of 4 failed (exit 3); exiting 75: ")
    assert line.endswith("Traceback (most recent call last): | File x | RuntimeError: boom")
    assert "\n" not in line
    assert "exit 78 (EX_CONFIG)" in failure_line(0, 2, 78, "", 78)
    assert stderr_tail("") == "(no stderr)"
    assert len(stderr_tail("x" * 5000)) <= 801


@pytest.mark.parametrize(("fault_line", "fault"), [
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus.", "gpu"),
    ("OSError: [Errno 28] No space left on device: '/runs/x/checkpoints/.tmp'", "disk"),
])
def test_a_machine_fault_in_a_rank_stderr_stays_in_the_line(fault_line, fault):
    """An Xid or ENOSPC line early in the rank's stderr survives the tail, so the worker
    blames the machine, not the run."""
    text = "\n".join(["starting", fault_line, *[f"  frame {i}" for i in range(30)], "RuntimeError: failed"])
    line = failure_line(0, 2, 1, stderr_tail(text), ExitCode.TEMPFAIL)
    assert fault_line in line
    result = classify_exit(ExitCode.TEMPFAIL, line, stop_requested=False, killed_for=None)
    assert (result.failure_class, result.fault) == ("machine", fault)


def sft(**trainer) -> object:
    return parse_run_config({"run_id": "d", "kind": "sft", "max_steps": 5, "trainer": trainer})


def test_check_devices_names_the_field_that_asks_for_too_many_gpus():
    config = sft(distributed={"nproc_per_node": 4})
    with pytest.raises(ConfigError, match=r"^trainer\.distributed\.nproc_per_node: 4 ranks need 4 GPUs.* has 2"):
        check_devices(DistributedPlan(4, "ddp", "auto"), config, 2)
    by_gpus = parse_run_config({"run_id": "d", "kind": "sft", "max_steps": 5, "resources": {"gpus": 8}})
    with pytest.raises(ConfigError, match=r"^resources\.gpus: 8 ranks"):
        check_devices(DistributedPlan(8, "ddp", "auto"), by_gpus, 1)
    check_devices(DistributedPlan(2, "ddp", "auto"), config, 2)
    check_devices(DistributedPlan(4, "ddp", "auto"), config, None)  # no CUDA: gloo ranks on the CPU
    with pytest.raises(ConfigError, match=r"^trainer\.distributed\.backend: 'nccl' needs GPUs"):
        check_devices(DistributedPlan(2, "ddp", "nccl"), config, None)


def test_which_runs_are_launched_on_several_ranks(monkeypatch):
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert launch_plan(sft(distributed={"nproc_per_node": 2, "strategy": "fsdp"})) == DistributedPlan(2, "fsdp", "auto")
    assert launch_plan(sft(distributed={"nproc_per_node": 1})) is None
    assert launch_plan(sft()) is None
    gpus = parse_run_config({"run_id": "d", "kind": "sft", "max_steps": 5, "resources": {"gpus": 2}})
    assert launch_plan(gpus) == DistributedPlan(2, "ddp", "auto")
    command = parse_run_config({"run_id": "c", "kind": "command", "max_steps": 5, "resources": {"gpus": 2},
                                "trainer": {"command": "true"}})
    assert launch_plan(command) is None  # an external trainer launches its own ranks
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # already a rank: train
    assert launch_plan(sft(distributed={"nproc_per_node": 2})) is None


def test_a_run_that_fixes_no_rank_count_takes_what_the_worker_offers(monkeypatch):
    for name in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    auto = sft(distributed={"strategy": "fsdp"})
    assert launch_plan(auto, offered=2) == DistributedPlan(2, "fsdp", "auto")
    assert launch_plan(auto, offered=1) is None  # handed to a one-GPU machine: one process
    assert launch_plan(auto, offered=None) is None  # a CPU machine offers no number
    assert launch_plan(sft(distributed={"nproc_per_node": 2}), offered=4) == DistributedPlan(2, "ddp", "auto")
    eight = parse_run_config({"run_id": "d", "kind": "sft", "max_steps": 5, "resources": {"gpus": 2}})
    assert launch_plan(eight, offered=8) == DistributedPlan(8, "ddp", "auto")  # gpus is a minimum
    assert launch_plan(sft(), offered=8) is None  # not asked to spread: one process


def test_the_worker_offers_ranks_through_the_contract(tmp_path):
    from relaytrain.contract import Contract
    from relaytrain.train.run import offered_ranks

    env = rank_env(tmp_path, RELAY_NPROC_PER_NODE="3")
    assert Contract.from_env(env).nproc_per_node == 3
    assert offered_ranks(Contract.from_env(env)) == 3
    with pytest.raises(ConfigError, match="RELAY_NPROC_PER_NODE"):
        Contract.from_env(rank_env(tmp_path, RELAY_NPROC_PER_NODE="two"))


def rank_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"RELAY_OUTPUT_DIR": str(tmp_path / "ck"), "RELAY_PROGRESS_FILE": str(tmp_path / "progress.jsonl"),
            "RELAY_STOP_FILE": str(tmp_path / "STOP"), **extra}


def test_only_rank_0_reports(tmp_path):
    other = Contract.from_env(rank_env(tmp_path, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"))
    assert (other.rank, other.world_size, other.local_rank, other.is_main) == (1, 2, 1, False)
    other.report_progress(1, {"loss": 1.0})
    other.report_checkpoint(1, tmp_path / "ck" / "step_00000001")
    other.report_event("resumed", step=1)
    other.report_file(tmp_path / "f", "r", "f")
    assert not (tmp_path / "progress.jsonl").exists()
    main = Contract.from_env(rank_env(tmp_path, RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))
    assert main.is_main
    main.report_progress(1, {"loss": 1.0})
    main.close()
    assert (tmp_path / "progress.jsonl").read_text() == '{"step":1,"metrics":{"loss":1.0}}\n'
    alone = Contract.from_env(rank_env(tmp_path))
    assert (alone.rank, alone.world_size, alone.local_rank, alone.is_main) == (0, 1, 0, True)


def test_every_rank_honours_the_stop_file(tmp_path):
    ranks = [Contract.from_env(rank_env(tmp_path, RANK=str(r), WORLD_SIZE="2")) for r in (0, 1)]
    assert not any(c.should_stop() for c in ranks)
    (tmp_path / "STOP").write_text("stop\n")
    assert all(c.should_stop() for c in ranks)


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"^RANK: must be in \[0, WORLD_SIZE=2\), got 2"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"^WORLD_SIZE: must be ≥ 1"),
    ({"RANK": "x"}, r"^RANK: must be an integer"),
    ({"LOCAL_RANK": "-1"}, r"^LOCAL_RANK: must be ≥ 0"),
])  # fmt: skip
def test_bad_rank_variables_are_named(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        Contract.from_env(rank_env(tmp_path, **env))


def test_the_standalone_flags_set_trainer_distributed(tmp_path):
    parser, available = build_parser()
    base = ["--max-steps", "5", "--output-dir", str(tmp_path)]
    for trainer in available:
        args = parser.parse_args([trainer, *base, "--nproc-per-node", "2", "--strategy", "fsdp"])
        config = available[trainer].build_config(args)
        assert (config.trainer.distributed.nproc_per_node, config.trainer.distributed.strategy) == (2, "fsdp")
        args = parser.parse_args([trainer, *base, "--nproc-per-node", "2"])
        assert available[trainer].build_config(args).trainer.distributed.strategy == "ddp"
        args = parser.parse_args([trainer, *base])
        assert available[trainer].build_config(args).trainer.distributed is None
    with pytest.raises(SystemExit):
        parser.parse_args(["sft", *base, "--strategy", "zero"])
    help_text = parser._subparsers._group_actions[0].choices["sft"].format_help()  # noqa: SLF001
    assert "--nproc-per-node N" in help_text and "trainer.distributed.nproc_per_node" in help_text
