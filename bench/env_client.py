"""The environment client's throughput: the scripted 3-turn calculator episode (reset, ``calc a+b``,
the answer) against the example environment run in-process (``env.module``) and the same
environment served by one OpenEnv server process over WebSocket on loopback (``env.urls``), at
concurrency 1 and 8.

    .venv/bin/python bench/env_client.py               # the figures of docs/benchmarks.md, ~2.5 min on 2 cores
    .venv/bin/python bench/env_client.py --quick       # a smoke run, ~40 s

What runs, in one invocation
----------------------------
1. Two servers (``python examples/envs/calculator/server.py``, as a user starts one): one whose step
   is instant, one whose step sleeps 50 ms (``CALC_STEP_DELAY_S=0.05``).
2. For each step delay (0 and 50 ms), each form (``inproc``, ``ws``) and each concurrency (1, 8): a
   pool (``open_pool``) runs ``--episodes`` episodes (``--slow-episodes`` with the delay) gathered at
   once, ``--repeats`` times after a warm-up of 16; every episode must score 1.0.

Figures
-------
- episodes/s: episodes ÷ wall time of the gather, the median over the repeats;
- **client overhead = ws ÷ inproc** episodes/s at the same delay and concurrency (< 1: what the
  wire, the server and the client cost);
- **concurrency speed-up = c8 ÷ c1** episodes/s of one form at one delay (the issue's target with a
  50 ms step: ≥ 5×). In-process calls run on the event loop's thread, by design (episodes are
  deterministic), so a step that blocks does not overlap others there: in-process speed-up is ~1×.

Prints a table and a JSON summary (``--json FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from relaytrain.config import EnvConfig  # noqa: E402
from relaytrain.envs import open_pool  # noqa: E402
from tests.support.envs import CALCULATOR, EnvServer, solve, start_all  # noqa: E402

WARMUP = 16


async def measure(config: EnvConfig, episodes: int, repeats: int) -> list[float]:
    """Seconds of each repeat of ``episodes`` episodes gathered at once (after a warm-up)."""
    pool = open_pool(config)
    await pool.start()
    try:
        async def play(session, seed: int) -> float | None:
            return (await solve(session, seed))[0]

        async def batch(n: int, offset: int) -> None:
            rewards = await asyncio.gather(*(pool.run_episode(lambda s, seed=offset + i: play(s, seed),
                                                              task=f"seed {offset + i}") for i in range(n)))
            if rewards != [1.0] * n:
                raise SystemExit(f"an episode did not score 1.0: {rewards}")

        await batch(WARMUP, 0)
        seconds = []
        for r in range(repeats):
            started = time.perf_counter()
            await batch(episodes, (r + 1) * 100_000)
            seconds.append(time.perf_counter() - started)
        metrics = pool.metrics()
        if metrics["env/retries"]:
            raise SystemExit(f"{config}: episodes were retried: {metrics}")
        return seconds
    finally:
        await pool.aclose()


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    sys.path.insert(0, str(CALCULATOR))  # the in-process form imports calculator_env
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fast, slow = start_all([EnvServer(Path(tmp), {}, fork=False),
                                EnvServer(Path(tmp), {"CALC_STEP_DELAY_S": str(args.delay_s)}, fork=False)])
        try:
            for delay, server, episodes in ((0.0, fast, args.episodes), (args.delay_s, slow, args.slow_episodes)):
                os.environ["CALC_STEP_DELAY_S"] = str(delay)  # what make_env reads in this process
                for form in ("inproc", "ws"):
                    for concurrency in args.concurrency:
                        source = {"module": "calculator_env:make_env"} if form == "inproc" else {"urls": [server.url]}
                        config = EnvConfig(**source, concurrency=concurrency)
                        seconds = asyncio.run(measure(config, episodes, args.repeats))
                        median = statistics.median(seconds)
                        rows.append({"delay_s": delay, "form": form, "concurrency": concurrency, "episodes": episodes,
                                     "seconds": seconds, "episodes_per_s": episodes / median})
                        print(f"  {form:<6} delay {delay:g} s  c{concurrency:<2} {episodes / median:8.1f} episodes/s",
                              flush=True)
        finally:
            os.environ.pop("CALC_STEP_DELAY_S", None)
            for server in (fast, slow):
                server.stop()
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rate = {(r["delay_s"], r["form"], r["concurrency"]): r["episodes_per_s"] for r in rows}
    delays = sorted({r["delay_s"] for r in rows})
    levels = sorted({r["concurrency"] for r in rows})
    return {
        "overhead_ws_over_inproc": {f"delay {d:g} s, c{c}": rate[(d, "ws", c)] / rate[(d, "inproc", c)]
                                    for d in delays for c in levels},
        "speedup_c_max_over_c1": {f"{f}, delay {d:g} s": rate[(d, f, levels[-1])] / rate[(d, f, levels[0])]
                                  for d in delays for f in ("inproc", "ws")},
    }


def print_table(rows: list[dict[str, Any]], figures: dict[str, Any]) -> None:
    print(f"\n{'form':<7} {'step delay':>10} {'concurrency':>11} {'episodes':>8} {'median s':>9} {'episodes/s':>10}")
    for r in rows:
        print(f"{r['form']:<7} {r['delay_s']:>9g}s {r['concurrency']:>11} {r['episodes']:>8} "
              f"{statistics.median(r['seconds']):>9.3f} {r['episodes_per_s']:>10.1f}")
    print()
    for name, value in figures["overhead_ws_over_inproc"].items():
        print(f"ws ÷ inproc episodes/s, {name}: {value:.3f}")
    for name, value in figures["speedup_c_max_over_c1"].items():
        print(f"concurrency speed-up, {name}: {value:.2f}×")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer episodes, one repeat")
    parser.add_argument("--episodes", type=int, default=400, help="episodes per repeat, instant steps")
    parser.add_argument("--slow-episodes", type=int, default=80, help="episodes per repeat, steps of --delay-s")
    parser.add_argument("--delay-s", type=float, default=0.05, help="the slow server's step delay (CALC_STEP_DELAY_S)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="write the rows and figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.episodes, args.slow_episodes, args.repeats = 100, 24, 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.monotonic()
    rows = run(args)
    figures = summary(rows)
    print_table(rows, figures)
    report = {"rows": rows, **figures, "wall_s": time.monotonic() - started}
    print(json.dumps(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
