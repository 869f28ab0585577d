#!/usr/bin/env python3
"""The counter trainer, after it checked that the environment holds what the run referenced:

    python env_check_trainer.py WANDB_API_KEY=<sha256 of the expected value> [...]

Each variable named must be set, and its value's sha256 must match (the run file names the hash,
never the value); otherwise it exits 78 (EX_CONFIG) naming the variable, never printing a value.
Then it runs ``examples/trainers/counter_trainer.py`` in this process.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import sys
from pathlib import Path

COUNTER = Path(__file__).resolve().parents[2] / "examples" / "trainers" / "counter_trainer.py"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    for spec in sys.argv[1:]:
        name, _, expected = spec.partition("=")
        if name not in os.environ:
            print(f"{name} is not in the trainer's environment", file=sys.stderr)
            sys.exit(78)
        if sha256(os.environ[name]) != expected:
            print(f"{name} is not the value the test gave the worker", file=sys.stderr)
            sys.exit(78)
    sys.argv = [str(COUNTER)]
    runpy.run_path(str(COUNTER), run_name="__main__")


if __name__ == "__main__":
    main()
