"""Episode throughput of a GRPO run against an environment whose step takes 50 ms:
``env.concurrency: 8`` against ``env.concurrency: 1``, the same run, the same machine.

    .venv/bin/python bench/env_episodes.py             # the figures of docs/benchmarks.md, ~1 min
    .venv/bin/python bench/env_episodes.py --quick     # a smoke run

What runs: one OpenEnv server (openenv-core, ``python bench/env_episodes.py --serve PORT``): a
*countdown* environment whose episodes last exactly ``--turns`` steps, each step sleeping
``--step-s`` (50 ms) before it answers. The tiny model (random weights: the environment ignores what
it says) plays groups of episodes through the GRPO trainer's own path (``GRPOSession.play_groups``:
the environment client, the episode loop, the batched policy turns), ``--prompts`` × ``--generations``
episodes a round, ``--rounds`` rounds per concurrency, alternating, after one warm-up round each.

Prints episodes/s at each concurrency and the ratio (target ≥ 5); what one policy turn costs alone
and 8 at once, and the bound that puts on the ratio; and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def serve(port: int, turns: int, step_s: float) -> None:
    """The countdown environment on ``port`` (a process of its own)."""
    import uvicorn
    from openenv.core.env_server import create_app
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class Say(Action):
        message: str

    class Left(Observation):
        text: str

    class Countdown(Environment):
        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self) -> None:
            super().__init__()
            self._left, self._state = turns, State()

        def reset(self, seed: int | None = None, **_: Any) -> Left:
            self._left = turns
            return Left(text=f"{turns} left\n", reward=None, done=False)

        def step(self, action: Say, **_: Any) -> Left:
            time.sleep(step_s)
            self._left -= 1
            return Left(text=f"{self._left} left\n", reward=1.0 if self._left == 0 else 0.0, done=self._left == 0)

        @property
        def state(self) -> State:
            return self._state

    app = create_app(Countdown, Say, Left, max_concurrent_envs=256)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def start_server(port: int, turns: int, step_s: float) -> subprocess.Popen[bytes]:
    import httpx

    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--turns", str(turns),
                                "--step-s", str(step_s)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the environment server exited {process.returncode}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the environment server did not answer /health in 120 s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, concurrency: int, args: argparse.Namespace, workdir: Path) -> list[float]:
    """Episodes/s of each round at ``concurrency``."""
    from relaytrain.config import parse_run_config
    from relaytrain.contract import Contract
    from relaytrain.train.grpo import GRPOSession

    config = parse_run_config({
        "run_id": f"bench-env-{concurrency}", "kind": "grpo", "max_steps": 1,
        "trainer": {"prompts_per_step": args.prompts, "num_generations": args.generations,
                    "max_new_tokens": args.max_new_tokens},
        "env": {"urls": [url], "concurrency": concurrency, "max_turns": args.turns, "observation_template": "{text}"},
    })
    session = GRPOSession(config, Contract.local(workdir / f"c{concurrency}"))
    per_round = args.prompts * args.generations
    rates = []
    try:
        for r in range(args.rounds + 1):
            positions = list(range(r * args.prompts, (r + 1) * args.prompts))
            started = time.perf_counter()
            batch, _ = session.play_groups(positions)
            seconds = time.perf_counter() - started
            assert int(batch.truncated.sum()) == 0, "an episode did not reach the countdown's end"
            if r:  # round 0 warms up (connections, first forward passes)
                rates.append(per_round / seconds)
        if concurrency > 1:  # what one policy turn costs here, alone and batched: the bound on the ratio
            context = batch.prompt_ids[0].tolist()[-4:] + batch.completion_ids[0].tolist()[:24]
            for width in (1, concurrency):
                started = time.perf_counter()
                for i in range(5):
                    session._sample_turns([context] * width, list(range(i * width, (i + 1) * width)))
                TURN_S[width] = (time.perf_counter() - started) / 5
    finally:
        session.close()
    return rates


TURN_S: dict[int, float] = {}
"""Seconds one batched policy turn takes, by batch width (measured in ``measure``)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--turns", type=int, default=4, help="Steps per episode (default 4).")
    parser.add_argument("--step-s", type=float, default=0.05, help="Seconds one step takes (default 0.05).")
    parser.add_argument("--prompts", type=int, default=4, help="Groups per round (default 4).")
    parser.add_argument("--generations", type=int, default=4, help="Episodes per group (default 4).")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="Tokens per turn (default 8).")
    parser.add_argument("--rounds", type=int, default=3, help="Measured rounds per concurrency (default 3).")
    parser.add_argument("--quick", action="store_true", help="One round each.")
    parser.add_argument("--json", type=Path, help="Also write the summary here.")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.turns, args.step_s)
        return
    if args.quick:
        args.rounds = 1
    import torch

    torch.set_num_threads(1)
    port = free_port()
    server = start_server(port, args.turns, args.step_s)
    rates: dict[int, list[float]] = {1: [], 8: []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for concurrency in (1, 8):
                rates[concurrency] = measure(f"http://127.0.0.1:{port}", concurrency, args, Path(tmp))
    finally:
        server.terminate()
        server.wait(timeout=30)
    median = {c: statistics.median(r) for c, r in rates.items()}
    summary = {
        "turns": args.turns, "step_s": args.step_s, "episodes_per_round": args.prompts * args.generations,
        "episodes_per_s": {str(c): [round(x, 2) for x in r] for c, r in rates.items()},
        "median": {str(c): round(m, 2) for c, m in median.items()},
        "ratio_8_over_1": round(median[8] / median[1], 2),
        "bound_c1": round(1 / (args.turns * args.step_s), 2),
        "turn_s": {str(w): round(t, 4) for w, t in TURN_S.items()},
        "lockstep_bound": round(8 * (TURN_S[1] + args.step_s) / (TURN_S[8] + args.step_s), 2),
        "machine": f"{os.cpu_count()} cores",
    }
    print(f"{'concurrency':>12} {'episodes/s (median)':>20}  rounds")
    for c in (1, 8):
        print(f"{c:>12} {median[c]:>20.2f}  {', '.join(f'{x:.2f}' for x in rates[c])}")
    print(f"ratio 8 ÷ 1: {summary['ratio_8_over_1']:.2f} (target ≥ 5); environment time alone bounds "
          f"concurrency 1 at {summary['bound_c1']:.2f} episodes/s")
    print(f"one policy turn: {TURN_S[1] * 1000:.0f} ms alone, {TURN_S[8] * 1000:.0f} ms for 8 at once: "
          f"while generation is not free, 8 episodes in step bound the ratio at 8 × (turn₁ + step) ÷ (turn₈ + step) = "
          f"{summary['lockstep_bound']:.2f}")
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
