"""Commander outage benchmark: what killing and restarting the commander costs a running run.

    python -m bench.commander_outage                      # ttl 6 s, a checkpoint every 20 steps of 0.05 s, down 15 s
    python -m bench.commander_outage --down-s 30 --json out.json

A real commander (``relay serve`` on SQLite, sweeping every ``--sweep-interval-s``, 5 s as
``relay serve``'s default) and one ``relay worker`` train one run of the reference counter trainer
(``examples/trainers/counter_trainer.py``) with ``lease.ttl_s = --ttl-s`` (margin a quarter of it).
When the run has reached ``--kill-at`` steps (mid checkpoint cycle) the commander is sent SIGKILL,
left down ``--down-s`` seconds, and started again on the same database, as an operator restarting
it would. The worker pauses its trainer (lease jeopardy) and resumes it when the restarted
commander, having extended the lease by its downtime, confirms it.

Figures: the run's attempts and epochs; steps lost (``steps_lost`` summed over attempts, and the
final state checked against the hash chain: no step skipped or repeated); kill → trainer tree
stopped (every process in state T, polled in /proc); the pause the worker logs; the extension the
commander records. ``--jeopardy-s 0`` gives the behaviour before lease jeopardy (the self-fence
stops the trainer), for comparison: issue 13 measured 69 steps lost and a new epoch.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from relaytrain.checkpoint import verify
from relaytrain.worker import fence
from tests.support.commander import Commander, wait_until
from tests.support.relay import WorkerProc, counter_final_state, counter_run


def tree_stopped(fence_pid: int) -> bool:
    states = []
    for pid in fence.descendants(fence_pid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        states.append(stat[stat.rfind(")") + 2:].split()[0])
    return bool(states) and all(s == "T" for s in states)


def measure(root: Path, args: argparse.Namespace) -> dict:
    commander = Commander(db=str(root / "relay.db"), token=secrets.token_urlsafe(16), workdir=root,
                          sweep_interval=args.sweep_interval_s).start()
    client = commander.client()
    worker = WorkerProc(commander.url, client.create_token("bench").token, "w1", root / "w1").start()
    try:
        config = counter_run("outage", root / "artifacts", max_steps=args.max_steps, every=args.every,
                             step_s=args.step_s)
        config["lease"] = {"ttl_s": args.ttl_s, "margin_s": args.ttl_s / 4, "grace_s": args.ttl_s / 8,
                           "jeopardy_s": args.jeopardy_s}
        client.submit(config)
        wait_until(lambda: client.run("outage").step >= args.kill_at, 120, f"step {args.kill_at}")
        (fence_pid,) = worker.trainer_pids("outage")
        commander.stop(signal.SIGKILL)
        killed = time.monotonic()
        kill_to_paused = None
        if args.jeopardy_s:
            wait_until(lambda: tree_stopped(fence_pid), 3 * args.ttl_s, "the trainer tree to pause")
            kill_to_paused = round(time.monotonic() - killed, 2)
        time.sleep(max(0.0, killed + args.down_s - time.monotonic()))  # the outage itself
        commander.start()
        restarted = time.monotonic() - killed
        run = wait_until(lambda: (r := client.run("outage")).status in ("succeeded", "failed") and r, 300,
                         "the run to finish")
        path = Path(run.latest_checkpoint.uri.removeprefix("file://"))
        state = json.loads((path / "state.json").read_text())
        extended = [e.data["extended_s"] for e in client.events("outage", limit=1000).items
                    if e.kind == "lease_extended"]
        pauses = [float(x) for x in re.findall(r"after ([0-9.]+)s in jeopardy", worker.log())]
        return {
            "ttl_s": args.ttl_s, "down_s": args.down_s, "checkpoint_every": args.every, "step_s": args.step_s,
            "status": run.status,
            "attempts": len(run.attempts), "epochs": [a.epoch for a in run.attempts],
            "steps_lost": sum(a.steps_lost or 0 for a in run.attempts),
            "final_state_exact": verify(path).ok and state == {"step": args.max_steps,
                                                               "state": counter_final_state(args.max_steps)},
            "jeopardy_s": args.jeopardy_s, "kill_to_paused_s": kill_to_paused,
            "kill_to_serving_again_s": round(restarted, 2),
            "paused_s": pauses, "lease_extended_s": [round(x, 1) for x in extended],
        }
    finally:
        worker.stop()
        client.close()
        commander.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ttl-s", type=float, default=6.0)
    parser.add_argument("--down-s", type=float, default=15.0, help="how long the commander stays killed")
    parser.add_argument("--every", type=int, default=20, help="checkpoint interval, steps")
    parser.add_argument("--step-s", type=float, default=0.05)
    parser.add_argument("--kill-at", type=int, default=70, help="the step at which the commander is killed")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--sweep-interval-s", type=float, default=5.0)
    parser.add_argument("--jeopardy-s", type=float, default=600.0,
                        help="lease.jeopardy_s; 0 gives the behaviour before lease jeopardy (self-fence kills)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="relay-outage-"))
    try:
        figures = measure(root, args)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0 if figures["status"] == "succeeded" and figures["final_state_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
