"""``relay worker``: claim runs, supervise their trainers, keep their leases; ``relay workers``: list them."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from .common import (
    DEFAULT_COMMANDER,
    DEFAULT_WORKDIR,
    CaCertOpt,
    CommanderOpt,
    JsonOpt,
    LogLevelOpt,
    TokenOpt,
    WorkerWorkdirOpt,
    client,
    fail,
    parse_labels,
    print_json,
)


def worker(
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
    worker_id: Annotated[str, typer.Option("--worker-id", envvar="WORKER_ID", help="Unique id; default: hostname.")]
    = "",
    workdir: WorkerWorkdirOpt = DEFAULT_WORKDIR,
    label: Annotated[list[str], typer.Option("--label", help="KEY=VALUE a run may require; repeatable.")] = [],  # noqa: B006
    kind: Annotated[list[str], typer.Option("--kind", help="Serve only these run kinds; repeatable.")] = [],  # noqa: B006
    max_runs: Annotated[int | None, typer.Option(min=1, help="Exit after this many attempts.")] = None,
    price_per_hour: Annotated[float | None, typer.Option(min=0, help="What this machine costs, $/hour.")] = None,
    provider: Annotated[str, typer.Option(help="local, ssh or lium (for the ledger).")] = "local",
    claim_wait: Annotated[float, typer.Option(min=0, max=60, help="Long-poll seconds per claim.")] = 10.0,
    advertise_host: Annotated[str | None, typer.Option(
        "--advertise-host", help="Host name or address rollout workers reach this machine's trainers by (behind NAT "
        "or a port mapping); default: the address of the interface that routes to the commander.")] = None,
    command_runs: Annotated[bool, typer.Option(
        "--command-runs/--no-command-runs", help="Whether to claim kind: command runs (any command, from anyone "
        "whose token may submit runs); --no-command-runs serves only the built-in kinds.")] = True,
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", min=1, max=64, help="Ranks a distributed built-in run (trainer.distributed with "
        "nproc_per_node 0, or resources.gpus > 1) starts here; default: one per GPU this worker sees.")] = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run a worker: claim runs, supervise their trainers, keep their leases, make checkpoints durable.

    SIGTERM or SIGINT checkpoints the current run, releases it as preempted, and exits.
    """
    import logging
    import socket

    from relaytrain.api.models import WORKER_ID_PATTERN
    from relaytrain.config import RUN_KINDS
    from relaytrain.netaddr import is_host
    from relaytrain.worker import Worker, WorkerSettings

    worker_id = worker_id or socket.gethostname()
    if not re.fullmatch(WORKER_ID_PATTERN, worker_id):
        fail(f"--worker-id: {worker_id!r} must match {WORKER_ID_PATTERN}")
    bad = [k for k in kind if k not in RUN_KINDS]
    if bad:
        fail(f"--kind: unknown kind {bad[0]!r} (one of {', '.join(RUN_KINDS)})")
    if not command_runs and "command" in kind:
        fail("--no-command-runs: contradicts --kind command")
    if advertise_host is not None and not is_host(advertise_host):
        fail(f"--advertise-host: {advertise_host!r} is not a host name or an IP address (no scheme, port or path)")
    labels = parse_labels(label)
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)s [{worker_id}] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = WorkerSettings(
        commander=commander, token=token, ca_cert=ca_cert, worker_id=worker_id, workdir=workdir.resolve(),
        labels=labels, kinds=kind or None, max_runs=max_runs, price_per_hour=price_per_hour,
        provider=provider, claim_wait_s=claim_wait, advertise_host=advertise_host, command_runs=command_runs,
        nproc_per_node=nproc_per_node,
    )
    raise typer.Exit(Worker(settings).run())


def workers(
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the workers: alive or not, the run each holds, and whether its machine is degraded (and why)."""
    from .render import print_workers

    with client(commander, token, ca_cert) as api:
        items = api.workers()
    if as_json:
        print_json([w.model_dump(mode="json") for w in items])
        return
    print_workers([w.model_dump() for w in items])
