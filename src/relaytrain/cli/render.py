"""How ``relay`` draws what it shows: tables, run details, transfer progress, the demo's screen.

Commands fetch and decide; the functions here only print, to :data:`~relaytrain.cli.common.console`
(results) or :data:`~relaytrain.cli.common.err_console` (progress and warnings).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from .common import console, err_console, print_error, print_warning

if TYPE_CHECKING:
    from relaytrain.demo import DemoFrame, DemoSummary


# -- values --------------------------------------------------------------------------------------


def when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    delta = time.time() - ts
    return f"in {-delta:.0f}s" if delta < 0 else f"{delta:.0f}s ago"


def steps_list(steps: list[int]) -> str:
    return ", ".join(map(str, steps)) or "-"


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# -- runs ----------------------------------------------------------------------------------------


def shown_status(status: str, unschedulable: str | None) -> str:
    """A run's status as the CLI shows it: ``unschedulable`` for a queued run nobody can take."""
    from relaytrain.api.status import UNSCHEDULABLE

    return UNSCHEDULABLE if unschedulable else status


def print_runs(page: Any) -> None:
    table = Table("run", "kind", "status", "step", "epoch", "holder", "retries", "updated")
    for r in page.items:
        table.add_row(r.run_id, r.kind, shown_status(r.status, r.unschedulable), f"{r.step}/{r.max_steps}",
                      str(r.epoch), r.holder or "-", f"{r.retries_used}/{r.max_retries}", ago(r.updated_at))
    console.print(table)
    for r in page.items:
        if r.unschedulable:
            console.print(f"[yellow]{r.run_id} is unschedulable:[/yellow] {escape(r.unschedulable)}")
    if page.total > len(page.items):
        console.print(f"{len(page.items)} of {page.total} runs shown")


def print_degraded(workers: list[dict[str, Any]]) -> None:
    """The degraded ones among ``workers``, each with its reason."""
    from relaytrain.api.status import WorkerCondition

    for w in workers:
        if w["condition"] == WorkerCondition.DEGRADED:
            console.print(f"[yellow]worker {escape(w['worker_id'])} is degraded[/yellow] since "
                          f"{when(w['condition_since'])} (claims nothing): {escape(w['condition_reason'] or '')}")


def print_workers(items: list[dict[str, Any]]) -> None:
    table = Table("worker", "provider", "host", "alive", "condition", "run", "last heartbeat", "reason")
    for w in items:
        table.add_row(escape(w["worker_id"]), w["provider"], escape(w["hostname"] or "-"),
                      "yes" if w["alive"] else "no", w["condition"], w["current_run"] or "-", ago(w["last_heartbeat"]),
                      escape(w["condition_reason"] or "-"))
    console.print(table)


def print_ledger(ledger: dict[str, Any]) -> None:
    if not ledger["attempts"]:
        return
    table = Table("", "wall", "ETTR", "GPU-h", "$", "steps lost", "failover", title="ledger")
    rows = [("run", ledger["total"])] + ([(f"provider {k}", v) for k, v in ledger["providers"].items()]
                                         if len(ledger["providers"]) > 1 else [])
    for label, s in rows:
        failover = f"{s['failover_mean_s']:.1f}s mean of {len(s['failover_s'])}" if s["failover_s"] else "-"
        table.add_row(label, f"{s['wall_s']:.0f}s", "-" if s["ettr"] is None else f"{s['ettr']:.2f}",
                      f"{s['gpu_hours']:.3f}", f"{s['dollars']:.2f}", str(s["steps_lost"]), failover)
    console.print(table)


def print_run(run: dict[str, Any]) -> None:
    from relaytrain.api.status import FailureClass, RunStatus

    shown = shown_status(run["status"], run.get("unschedulable"))
    console.print(f"[bold]{run['run_id']}[/bold]  {run['kind']}  [bold]{shown}[/bold]"
                  f"  step {run['step']}/{run['max_steps']}  epoch {run['epoch']}")
    if run.get("unschedulable"):
        console.print(f"[yellow]unschedulable:[/yellow] {escape(run['unschedulable'])} (queued; granted as soon as "
                      "a worker that fits asks)")
    if run["holder"]:
        console.print(f"held by {run['holder']}, lease expires {ago(run['lease_expires_at'])}")
    if run["cancel_requested"] and run["status"] == RunStatus.RUNNING:
        console.print("cancel requested")
    machine = sum(a["failure_class"] == FailureClass.MACHINE for a in run["attempts"])
    console.print(f"retries {run['retries_used']}/{run['max_retries']}"
                  + (f", {machine} machine fault{'s' * (machine != 1)} not counted" if machine else "")
                  + (f", next try {ago(run['not_before'])}" if run["status"] == RunStatus.QUEUED else ""))
    if run.get("avoid_worker") and run["status"] == RunStatus.QUEUED and (run["avoid_until"] or 0) > time.time():
        console.print(f"kept from {run['avoid_worker']} until {when(run['avoid_until'])} "
                      "(its machine failed the last attempt) unless another worker takes it")
    ckpt = run["latest_checkpoint"]
    console.print(f"latest durable checkpoint: step {ckpt['step']} at {ckpt['uri']}" if ckpt
                  else "latest durable checkpoint: none")
    if run["attempts"]:
        table = Table("epoch", "worker", "start", "end", "outcome", "steps", "lost", title="attempts")
        for a in run["attempts"]:
            outcome = a["outcome"] or RunStatus.RUNNING
            if a["failure_class"]:
                outcome += f" ({a['failure_class']})"
            if a["failure_class"] == FailureClass.MACHINE:
                outcome += ", not counted in retries"
            end = a["step_end"] if a["step_end"] is not None else "…"
            table.add_row(str(a["epoch"]), a["worker_id"], when(a["granted_at"]), when(a["ended_at"]), outcome,
                          f"{a['step_start']}→{end}", "-" if a["steps_lost"] is None else str(a["steps_lost"]))
        console.print(table)
    for ev in run.get("evaluations") or []:
        names = sorted({k for scores in ev["scores"].values() for k in scores if k != "eval_ok"})
        table = Table("step", *names, title=f"evaluation {ev['run_id']} on {ev['dataset']} ({ev['status']})")
        for step in sorted(ev["scores"], key=int):
            scores = ev["scores"][step]
            failed = scores.get("eval_ok") == 0
            table.add_row(str(step), *["failed" if failed else f"{scores[n]:.4g}" if n in scores else "-"
                                       for n in names])
        console.print(table)
    if run["last_error"]:
        console.print(f"[red]last error:[/red] {run['last_error']}")
    failed = [a for a in run["attempts"] if a["stderr_tail"]]
    if failed:
        console.print(f"[dim]stderr tail of epoch {failed[-1]['epoch']}:[/dim]")
        console.print(failed[-1]["stderr_tail"], markup=False, highlight=False)


def print_rollout_pool(endpoint: dict[str, Any]) -> None:
    """A run's rollout manager and each rollout worker as the manager last reported it."""
    version = "-" if endpoint["version"] is None else str(endpoint["version"])
    title = (f"rollout pool: manager {escape(endpoint['url'])} (epoch {endpoint['epoch']}), weight version "
             f"{version}, reported {ago(endpoint['updated_at'])}")
    if not endpoint["pool"]:
        console.print(f"{title}: no rollout workers attached")
        return
    table = Table("rollout worker", "version", "in flight", "tokens/s", "groups done", "last seen", title=title)
    for w in endpoint["pool"]:
        table.add_row(escape(w["worker_id"]), "-" if w["version"] is None else str(w["version"]),
                      str(w["groups_in_flight"]), f"{w['tokens_per_s']:.1f}", str(w["groups_done"]),
                      ago(endpoint["updated_at"] - w["last_seen_s"]))
    console.print(table)


def print_checkpoints(run_id: str, items: list[Any]) -> None:
    table = Table("step", "epoch", "manifest sha256", "uri", "committed")
    for c in items:
        table.add_row(str(c.step), str(c.epoch), c.manifest_sha256[:16] + "…", c.uri, when(c.created_at))
    console.print(table if items else f"{run_id} has no durable checkpoint yet")


# -- metrics -------------------------------------------------------------------------------------


def print_metrics(run_id: str, points: list[Any]) -> None:
    """A row per (step, epoch), a column per metric; superseded rows dimmed and marked."""
    names = sorted({p.name for p in points})
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    superseded: set[tuple[int, int]] = set()
    for p in points:
        rows.setdefault((p.step, p.epoch), {})[p.name] = p.value
        if p.superseded:
            superseded.add((p.step, p.epoch))
    table = Table("step", "epoch", *names, title=f"{run_id}: {len(names)} metric(s), {len(rows)} step(s)")
    for key in sorted(rows):
        values = rows[key]
        cells = [str(key[0]), str(key[1]) + (" superseded" if key in superseded else "")]
        cells += [f"{values[n]:.6g}" if n in values else "" for n in names]
        table.add_row(*cells, style="dim" if key in superseded else None)
    console.print(table if points else f"{run_id}: no metrics reported")


# -- hosts ---------------------------------------------------------------------------------------


def print_hosts(items: list[dict[str, Any]]) -> None:
    table = Table("host", "address", "reachable", "GPUs", "free", "workers", "labels", "error")
    for h in items:
        reachable = "?" if h["reachable"] is None else ("yes" if h["reachable"] else "[red]no[/red]")
        if not h["enabled"]:
            reachable += " (disabled)"
        gpus = ", ".join(f"{g['index']}:{g['name']}" for g in h["gpus"]) or "-"
        table.add_row(h["name"], f"{h['user']}@{h['address']}:{h['port']}", reachable, gpus,
                      ",".join(map(str, h["free_gpus"])) or "-", ", ".join(w["worker_id"] for w in h["workers"]) or "-",
                      ",".join(f"{k}={v}" for k, v in h["labels"].items()) or "-", (h["last_error"] or "")[:80])
    console.print(table if items else "no hosts: add one with relay hosts add")


def print_tokens(items: list[Any]) -> None:
    """``relay token list``: what each token is and whether it still works; never the token."""
    table = Table("id", "name", "scope", "state", "created", "expires", "revoked", "last used")
    now = time.time()
    for t in items:
        expired = t.expires_at is not None and t.expires_at <= now
        state = "[red]revoked[/red]" if t.revoked_at is not None else "[red]expired[/red]" if expired else "live"
        table.add_row(str(t.id), escape(t.name), t.scope, state, when(t.created_at),
                      "never" if t.expires_at is None else when(t.expires_at), when(t.revoked_at),
                      ago(t.last_used_at))
    console.print(table if items else "no tokens: create one with relay token create")


# -- stores --------------------------------------------------------------------------------------


@contextmanager
def transfers() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """Progress bars on stderr; yields ``factory(label) -> progress(done, total)``."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as bars:
        def factory(label: str) -> Callable[[int, int], None]:
            task = bars.add_task(label, total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield factory


def print_backups(reports: list[Any]) -> None:
    """The backup table, then a warning per checkpoint left out and an error per failed one."""
    table = Table("run", "uploaded", "already there", "invalid locally", "failed", "cleaned up")
    for r in reports:
        table.add_row(r.run_id, steps_list(r.uploaded), steps_list(r.already), steps_list([s for s, _ in r.invalid]),
                      steps_list([s for s, _ in r.failed]), steps_list(r.cleaned))
    console.print(table)
    for r in reports:
        for step, reason in r.invalid:
            print_warning(f"{r.run_id} step {step} not backed up: {reason}")
        for step, reason in r.failed:
            print_error(f"{r.run_id} step {step}: {reason}")


def print_backup_listing(found: dict[str, list[Any]]) -> None:
    table = Table("run", "step", "size", "files", "epoch")
    for run_id, items in found.items():
        for item in items:
            table.add_row(run_id, str(item.step), size(item.size), str(item.files),
                          "-" if item.epoch is None else str(item.epoch))
        if not items:
            table.add_row(run_id, "-", "-", "-", "-")
    console.print(table)
    total = sum(item.size for items in found.values() for item in items)
    console.print(f"{len(found)} run(s), {sum(map(len, found.values()))} checkpoint(s), {size(total)}")


# -- relay demo ----------------------------------------------------------------------------------


class DemoScreen:
    """The demo's :class:`~relaytrain.demo.DemoView` on a rich console: lines, a live table, a summary."""

    def __init__(self, out: Any = console) -> None:
        self.out = out

    def note(self, text: str) -> None:
        self.out.print(escape(text), soft_wrap=True)  # an address stays on one line, to be copied

    def alert(self, label: str, text: str) -> None:
        self.out.print(f"[red]{escape(label)}[/red] {escape(text)}")

    @contextmanager
    def watching(self) -> Iterator[Callable[[DemoFrame], None]]:
        from rich.live import Live

        with Live(console=self.out, refresh_per_second=2, transient=False) as live:
            yield lambda frame: live.update(self._frame(frame))

    @staticmethod
    def _frame(frame: DemoFrame) -> Any:
        from rich.console import Group

        table = Table("run", "status", "holder", "step", "epoch", "hand-offs", "loss / reward", title=None)
        for run_id, run in frame.runs.items():
            m = frame.metrics.get(run_id, {})
            shown = next((f"{k} {m[k]:.3f}" for k in ("reward_mean", "loss") if k in m), "-")
            table.add_row(run_id, run.status, run.holder or "-", f"{run.step}/{run.max_steps}", str(run.epoch),
                          str(max(0, len(run.attempts) - 1)), shown)
        return Group(table, f"{frame.elapsed_s:.0f}s elapsed\n")

    def summary(self, s: DemoSummary) -> None:
        from relaytrain.api.status import RunStatus

        c = self.out
        c.rule("relay demo: summary")
        acc = Table("model", "held-out exact match")
        for label, value in s.scores.items():
            acc.add_row(label, f"{value:.1%}")
        c.print(acc)
        attempts = Table("run", "epoch", "worker", "outcome", "steps", "lost")
        for run_id, run in s.runs.items():
            for a in run.attempts:
                attempts.add_row(run_id, str(a.epoch), a.worker_id, a.outcome or RunStatus.RUNNING,
                                 f"{a.step_start}→{a.step_end}", str(a.steps_lost or 0))
        c.print(attempts)
        c.print(f"hand-offs: {s.handoffs}; steps lost: {s.steps_lost}; wall time: {s.wall_s:.0f}s")
        if s.rollout:
            r = s.rollout
            c.print(f"rollout pool: {r.get('rollout/worker_generated', 0):.0f} groups generated by rollout workers, "
                    f"{r.get('rollout/trainer_generated', 0):.0f} by the trainer; "
                    f"{r.get('rollout/groups_requeued', 0):.0f} re-queued, "
                    f"{r.get('rollout/dropped_stale', 0):.0f} dropped as stale; "
                    f"staleness at most {r.get('rollout/staleness_max', 0):.0f}")
        for run_id, run in s.runs.items():
            c.print(f"{run_id}: {run.status}; checkpoints in {s.checkpoints[run_id] or '(none)'}")
        c.print(f"logs in {s.root / 'logs'}; commander database {s.root / 'relay.db'}")
        for problem in s.problems:
            c.print(f"[red]FAILED:[/red] {escape(problem)}")
        if not s.problems:
            c.print("[green]the models learned, and the run survived its worker's death[/green]")
