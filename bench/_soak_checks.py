"""The soak's checks and report (bench/soak.py): what the trainers' journals, /proc, the
commander's attempts table, the store and the ledger say after the faults.

A journal line is ``<epoch> <pid> <step> <time.time()>``, one per trained step, appended by the
counter trainer (``COUNTER_JOURNAL``) of every attempt of a run to one shared file.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relaytrain.api.status import AttemptOutcome, RunStatus
from relaytrain.checkpoint import verify
from relaytrain.worker.fence import FENCE_ENV
from tests.support.relay import counter_final_state

ENDED_BY_RELAY = frozenset({AttemptOutcome.SUCCEEDED, AttemptOutcome.CANCELLED})
"""Outcomes no fault is charged for: the run ended, or the bench's drain cancelled it."""
SIGNALS = frozenset({"worker_kill", "worker_term"})
WORKER_FAULTS = SIGNALS | {"disk_full"}


# -- the journals ---------------------------------------------------------------------------------


def journal_path(root: Path, run_id: str) -> Path:
    return root / "journal" / f"{run_id}.txt"


def read_journal(root: Path, run_id: str) -> list[tuple[int, int, int, float]]:
    """``(epoch, pid, step, time)`` of every complete line."""
    path = journal_path(root, run_id)
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) == 4:  # a line cut by a kill -9 is left out
            rows.append((int(parts[0]), int(parts[1]), int(parts[2]), float(parts[3])))
    return rows


def last_journal_step(root: Path, run_id: str, epoch: int) -> int | None:
    steps = [step for e, _, step, _ in read_journal(root, run_id) if e == epoch]
    return steps[-1] if steps else None


def overlaps(rows: list[tuple[int, int, int, float]]) -> list[dict[str, Any]]:
    """Pairs of epochs whose training intervals (first to last journal line) intersect."""
    spans: dict[int, list[float]] = {}
    for epoch, _, _, t in rows:
        span = spans.setdefault(epoch, [t, t])
        span[0], span[1] = min(span[0], t), max(span[1], t)
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    return [{"epochs": [a, b], "first_ends": spans[a][1], "second_starts": spans[b][0]}
            for i, (a, _) in enumerate(ordered) for b, _ in ordered[i + 1:] if spans[b][0] < spans[a][1]]


# -- orphans --------------------------------------------------------------------------------------


def trainer_processes(root: Path) -> dict[int, dict[str, Any]]:
    """Live processes of a trainer tree started under ``root`` (by the fence's mark and the run
    root in their environment): pid → run id, epoch, worker id."""
    found = {}
    prefix = str(root) + os.sep
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if "\nState:\tZ" in Path(f"/proc/{name}/status").read_text():
                continue
            env = dict(item.split("=", 1) for item in Path(f"/proc/{name}/environ").read_bytes().decode(
                errors="replace").split("\0") if "=" in item)
        except OSError:  # gone meanwhile
            continue
        run_root = env.get("RELAY_RUN_ROOT", "")
        if FENCE_ENV in env and run_root.startswith(prefix):
            found[int(name)] = {"run_id": env.get("RELAY_RUN_ID"), "epoch": int(env.get("RELAY_EPOCH") or 0),
                                "worker_id": Path(run_root).parent.parent.name}
    return found


class OrphanWatcher:
    """Finds trainer processes alive ``grace_s`` after their attempt ended or their worker died.

    ``ended()`` gives the ``(run id, epoch)`` of every ended attempt (the commander's table);
    ``worker_alive(worker_id)`` whether that worker process still runs."""

    def __init__(self, root: Path, ended: Callable[[], set[tuple[str, int]]], worker_alive: Callable[[str], bool],
                 grace_s: float) -> None:
        self.root, self.ended, self.worker_alive, self.grace_s = root, ended, worker_alive, grace_s
        self.suspect_since: dict[int, float] = {}
        self.orphans: dict[int, dict[str, Any]] = {}
        self.scans = 0

    def sample(self) -> list[int]:
        """One scan; the pids of the trainer processes alive now."""
        procs = trainer_processes(self.root)
        self.suspect_since = {pid: t for pid, t in self.suspect_since.items() if pid in procs}
        ended = self.ended() if procs else set()
        now = time.time()
        for pid, info in procs.items():
            why = ("its attempt ended" if (info["run_id"], info["epoch"]) in ended
                   else None if self.worker_alive(info["worker_id"]) else "its worker died")
            if why is None:
                self.suspect_since.pop(pid, None)
                continue
            since = self.suspect_since.setdefault(pid, now)
            if now - since > self.grace_s and pid not in self.orphans:
                self.orphans[pid] = {**info, "pid": pid, "why": why, "seen_at": now}
                print(f"ORPHAN pid {pid}: {info} alive {now - since:.0f}s after {why}", flush=True)
        self.scans += 1
        return list(procs)


def double_grants(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairs of attempts of one run that were open at once: the later granted before the
    earlier ended (an attempt not ended is open for ever)."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for a in attempts:
        by_run.setdefault(a["run_id"], []).append(a)
    pairs = []
    for run_id, tries in by_run.items():
        tries.sort(key=lambda a: a["epoch"])
        for i, a in enumerate(tries):
            end = a["ended_at"] if a["ended_at"] is not None else float("inf")
            pairs += [{"run_id": run_id, "epochs": [a["epoch"], b["epoch"]]} for b in tries[i + 1:]
                      if b["granted_at"] < end]
    return pairs


# -- the analysis ---------------------------------------------------------------------------------


def cause(attempt: dict[str, Any], faults: list[Any], window_s: float,
          died: dict[str, float] | None = None) -> Any | None:
    """The fault an attempt that ended badly is charged to: if its worker exited by itself
    (``died``: worker id → when it was found dead) before the attempt ended, the last fault on
    that worker before then (if none, the attempt counts as ended at the death); a kill or
    SIGTERM of its worker (a worker is signalled once, and that is its end); else the latest of a
    full disk on its worker (until ``window_s`` after the disk was emptied) and a commander or
    PostgreSQL restart (until ``window_s`` after it)."""
    end = attempt["ended_at"] if attempt["ended_at"] is not None else float("inf")
    worker = attempt["worker_id"]
    if worker in (died or {}) and died[worker] <= end:
        own = [f for f in faults if f.worker_id == worker and f.at <= died[worker]]
        if own:
            return own[-1]
        end = died[worker]  # no fault of its own: whatever shared fault was near its death
    signalled = [f for f in faults if f.kind in SIGNALS and f.worker_id == worker and f.at <= end]
    if signalled:
        return signalled[-1]
    near = [f for f in faults if f.at <= end and (
        (f.kind == "disk_full" and f.worker_id == worker and end <= (f.until or f.at) + window_s)
        or (f.kind not in WORKER_FAULTS and end <= f.at + window_s))]
    return max(near, key=lambda f: f.at) if near else None


def _final_state(client: Any, run_id: str, max_steps: int) -> dict[str, Any]:
    run = client.run(run_id)
    out: dict[str, Any] = {"run_id": run_id, "status": str(run.status), "max_steps": max_steps,
                           "attempts": len(run.attempts), "retries_used": run.retries_used, "step": None,
                           "exact": False, "last_error": run.last_error}
    ref = run.latest_checkpoint
    if ref is None:
        out["note"] = "no durable checkpoint"
        out["exact"] = run.status != RunStatus.SUCCEEDED
        return out
    path = Path(ref.uri.removeprefix("file://"))
    check = verify(path)
    state = json.loads((path / "state.json").read_text()) if check.ok else None
    out["step"] = ref.step
    out["exact"] = (check.ok and state == {"step": ref.step, "state": counter_final_state(ref.step)}
                    and (run.status != RunStatus.SUCCEEDED or ref.step == max_steps))
    if not out["exact"]:
        out["note"] = f"manifest {'ok' if check.ok else check.reason}; state {state}"
    return out


def analyse(stack: Any, faults: list[Any], watcher: OrphanWatcher, args: Any, start: float) -> dict[str, Any]:
    attempts = stack.store.attempts_table()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for a in sorted(attempts, key=lambda a: (a["run_id"], a["epoch"])):
        by_run.setdefault(a["run_id"], []).append(a)
    with stack.client() as client:
        finals = [_final_state(client, run_id, steps) for run_id, steps in stack.submitted.items()]
        ledger = client.providers_ledger().total.model_dump()
    doubles = double_grants(attempts)
    journals = {run_id: read_journal(stack.root, run_id) for run_id in stack.submitted}
    overlapping = [{"run_id": run_id, **o} for run_id, rows in journals.items() for o in overlaps(rows)]
    # steps lost, charged to faults
    window = 3 * args.ttl_s + args.commander_down_s + 30
    durable = {f["run_id"]: f["step"] or 0 for f in finals}
    charged: dict[int, list[dict[str, Any]]] = {id(f): [] for f in faults}
    unattributed = []
    for run_id, tries in by_run.items():
        for i, a in enumerate(tries):
            if a["outcome"] in ENDED_BY_RELAY:
                continue
            last = max((s for e, _, s, _ in journals.get(run_id, []) if e == a["epoch"]), default=None)
            resumed = tries[i + 1]["step_start"] if i + 1 < len(tries) else durable.get(run_id, 0)
            row = {"run_id": run_id, "epoch": a["epoch"], "worker_id": a["worker_id"], "outcome": a["outcome"],
                   "failure_class": a["failure_class"], "message": (a["message"] or "")[:300],
                   "steps_lost_table": a["steps_lost"] or 0,
                   "steps_lost_true": None if last is None else max(0, last - resumed)}
            charged_to = cause(a, faults, window, {d['worker_id']: d['at'] for d in stack.died})
            (charged[id(charged_to)] if charged_to is not None else unattributed).append(row)
    per_fault = []
    for f in faults:
        rows = charged[id(f)]
        per_fault.append({"kind": f.kind, "t_s": round(f.at - start, 1), "detail": f.detail, "attempts_ended": rows,
                          "steps_lost_table": sum(r["steps_lost_table"] for r in rows),
                          "steps_lost_true": sum(r["steps_lost_true"] or 0 for r in rows)})
    kinds: dict[str, dict[str, Any]] = {}
    for f in per_fault:
        k = kinds.setdefault(f["kind"], {"faults": 0, "attempts_ended": 0, "steps_lost_table": 0,
                                         "steps_lost_true": 0})
        k["faults"] += 1
        k["attempts_ended"] += len(f["attempts_ended"])
        k["steps_lost_table"] += f["steps_lost_table"]
        k["steps_lost_true"] += f["steps_lost_true"]
    for k in kinds.values():
        k["steps_lost_true_per_fault"] = round(k["steps_lost_true"] / k["faults"], 2)
    statuses: dict[str, int] = {}
    for f in finals:
        statuses[f["status"]] = statuses.get(f["status"], 0) + 1
    checks = {"final_state_exact": sum(f["exact"] for f in finals), "runs": len(finals),
              "overlapping_intervals": len(overlapping), "double_grants": len(doubles),
              "orphans": len(watcher.orphans)}
    return {
        "ok": (checks["final_state_exact"] == checks["runs"] and not overlapping and not doubles
               and not watcher.orphans),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "soak_s": round(time.time() - start, 1),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "folders": {"root": str(stack.root), "postgres": str(stack.pg.folder)},
        "checks": checks,
        "runs_by_status": statuses,
        "retries_used": sum(f["retries_used"] for f in finals),
        "faults_by_kind": kinds,
        "unattributed_attempts": unattributed,
        "ledger": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in ledger.items() if k != "failover_s"},
        "failover_s": {"count": len(ledger["failover_s"]),
                       "p50": round(statistics.median(ledger["failover_s"]), 2) if ledger["failover_s"] else None,
                       "max": round(max(ledger["failover_s"]), 2) if ledger["failover_s"] else None},
        "workers_died": stack.died,
        "notes": stack.notes,
        "faults": per_fault,
        "not_exact": [f for f in finals if not f["exact"]],
        "overlaps": overlapping,
        "double_grant_pairs": doubles,
        "orphan_processes": list(watcher.orphans.values()),
        "orphan_scans": watcher.scans,
        "runs": finals,
    }


# -- the report -----------------------------------------------------------------------------------


def table(report: dict[str, Any]) -> str:
    """The human summary: paste-able into docs/benchmarks.md."""
    s, c = report["settings"], report["checks"]
    lines = [f"soak: {s['minutes']:g} min of faults (seed {s['seed']}), {report['soak_s']:.0f} s in all; "
             f"{s['in_flight']} runs in flight of {s['min_steps']}-{s['max_steps']} steps × {s['step_s']:g} s, "
             f"checkpoint every {s['every']}, ttl {s['ttl_s']:g} s; workers given "
             f"{'one URL' if s['one_url'] else 'both replica URLs'}; "
             f"load average {report['load_average_1m']} at the end",
             "",
             "| check | result | target |", "|---|---|---|",
             f"| every run's final state exact | {c['final_state_exact']} / {c['runs']} | all |",
             f"| overlapping training intervals | {c['overlapping_intervals']} | 0 |",
             f"| double grants | {c['double_grants']} | 0 |",
             f"| orphan trainer processes ({report['orphan_scans']} scans) | {c['orphans']} | 0 |",
             f"| runs by status | {', '.join(f'{k} {v}' for k, v in sorted(report['runs_by_status'].items()))} | "
             "all succeeded |",
             f"| retries spent | {report['retries_used']} | |",
             f"| workers that exited without a fault | {len(report['workers_died'])} | 0 |",
             f"| ETTR (ledger, all runs) | {report['ledger'].get('ettr')} | |",
             f"| failover p50 / max (s) | {report['failover_s']['p50']} / {report['failover_s']['max']} | |", "",
             "| fault | injected | attempts ended | steps lost (table) | steps lost (true) | true per fault |",
             "|---|---|---|---|---|---|"]
    for kind, k in sorted(report["faults_by_kind"].items()):
        lines.append(f"| {kind} | {k['faults']} | {k['attempts_ended']} | {k['steps_lost_table']} | "
                     f"{k['steps_lost_true']} | {k['steps_lost_true_per_fault']} |")
    if report["unattributed_attempts"]:
        lines.append(f"| (no fault found) | | {len(report['unattributed_attempts'])} | "
                     f"{sum(r['steps_lost_table'] for r in report['unattributed_attempts'])} | "
                     f"{sum(r['steps_lost_true'] or 0 for r in report['unattributed_attempts'])} | |")
    lines += ["", "faults:"]
    for f in report["faults"]:
        ended = "; ".join(f"{r['run_id']}#{r['epoch']} {r['outcome']}"
                          f"{'/' + r['failure_class'] if r['failure_class'] else ''} lost {r['steps_lost_true']}"
                          f"{': ' + r['message'][:120] if r['message'] else ''}" for r in f["attempts_ended"])
        lines.append(f"  t={f['t_s']:7.1f}s {f['kind']:18} {f['detail']}" + (f"\n{'':13}→ {ended}" if ended else ""))
    for r in report["unattributed_attempts"]:
        lines.append(f"  UNATTRIBUTED {r['run_id']}#{r['epoch']} on {r['worker_id']}: {r['outcome']} {r['message']}")
    for f in report["not_exact"]:
        lines.append(f"  NOT EXACT {f['run_id']} ({f['status']}, step {f['step']}): {f.get('note')} "
                     f"{f['last_error'] or ''}")
    for label, items in (("OVERLAP", report["overlaps"]), ("DOUBLE GRANT", report["double_grant_pairs"]),
                         ("ORPHAN", report["orphan_processes"])):
        lines += [f"  {label} {item}" for item in items]
    lines += [f"  WORKER DIED {d['worker_id']} (exit {d['exit_code']}): {d['last_line']}"
              for d in report["workers_died"]]
    lines += [f"  note: {n}" for n in report["notes"]]
    lines.append(f"\nsafety and exactness: {'ok' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


def write(report: dict[str, Any] | None, out: Path) -> None:
    if report is None:
        return
    text = table(report)
    (out / "soak.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "soak.txt").write_text(text + "\n")
    print("\n" + text)
