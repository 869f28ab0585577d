"""``python -m relaytrain.train``: flags to config, resume resolution, the worker entry's dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relaytrain.config import SFTRun
from relaytrain.contract import ExitCode
from relaytrain.errors import ConfigError
from relaytrain.train.run import RUNNERS, load_runner, main, read_config
from relaytrain.train.standalone import build_parser, resolve_resume


def parse(*argv: str) -> SFTRun:
    parser, available = build_parser()
    args = parser.parse_args(list(argv))
    return available[args.trainer].build_config(args)


def test_sft_flags_build_the_run_config(tmp_path: Path) -> None:
    config = parse(
        "sft", "--max-steps", "400", "--output-dir", str(tmp_path), "--lora", "--lora-r", "4",
        "--lr", "5e-3", "--batch-size", "16", "--checkpoint-every", "50", "--seed", "3",
        "--dataset", "reverse", "--template", "r1", "--schedule", "cosine", "--warmup-steps", "10",
    )  # fmt: skip
    assert config.kind == "sft" and config.max_steps == 400 and config.model == "tiny"
    assert config.data.builtin == "reverse" and config.data.template == "r1"
    assert config.trainer.learning_rate == 5e-3 and config.trainer.batch_size == 16 and config.trainer.seed == 3
    assert config.trainer.lora is not None and config.trainer.lora.r == 4
    assert config.checkpoint.every_steps == 50
    plain = parse("sft", "--max-steps", "5", "--output-dir", str(tmp_path), "--dataset", "data/x.jsonl")
    assert plain.trainer.lora is None and plain.data.path == "data/x.jsonl"


def test_resume_resolution(tmp_path: Path) -> None:
    assert resolve_resume("auto", tmp_path / "missing") is None
    assert resolve_resume("auto", tmp_path) is None  # an empty folder: a fresh start
    assert resolve_resume("none", tmp_path) is None
    assert resolve_resume(str(tmp_path), tmp_path) == tmp_path
    with pytest.raises(ConfigError, match="--resume-from"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)


def test_runner_registry() -> None:
    assert set(RUNNERS) >= {"sft", "grpo"}
    assert load_runner("sft").__name__ == "run_sft"
    with pytest.raises(ConfigError, match="eval"):
        load_runner("eval")


def test_worker_entry_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RELAY_RUN_CONFIG", "RELAY_OUTPUT_DIR"):
        monkeypatch.delenv(name, raising=False)
    assert main([]) == ExitCode.CONFIG  # no RELAY_RUN_CONFIG
    bad = tmp_path / "run.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config(bad)
    bad.write_text(json.dumps({"run_id": "x", "kind": "sft", "max_steps": 1}))
    assert main([str(bad)]) == ExitCode.CONFIG  # RELAY_OUTPUT_DIR missing


def test_a_configuration_error_is_one_line_without_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset that does not exist fails the run at start: exit 78, one line naming the field."""
    from relaytrain.train.standalone import main as train_main

    missing = tmp_path / "nope.jsonl"
    with caplog.at_level("INFO"):
        code = train_main(["sft", "--dataset", str(missing), "--max-steps", "2", "--output-dir", str(tmp_path / "o")])
    assert code == ExitCode.CONFIG
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "data.path: no such file or folder" in errors[0].getMessage()
    assert errors[0].exc_info is None and "Traceback" not in capsys.readouterr().err
