"""``relay rollout-worker``: generate a GRPO run's prompt groups for its rollout manager."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from relaytrain import TOKEN_ENV

from .common import DEFAULT_COMMANDER, CaCertOpt, CommanderOpt, LogLevelOpt, bad_parameter, parse_labels


def rollout_worker(
    commander: CommanderOpt = DEFAULT_COMMANDER,
    ca_cert: CaCertOpt = None,
    token: Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV,
                                              help="Bearer token of scope rollout (or admin).")] = None,
    worker_id: Annotated[str, typer.Option("--worker-id", envvar="WORKER_ID", help="Unique id; default: hostname.")]
    = "",
    run: Annotated[str | None, typer.Option("--run", help="Serve only this run; default: any run whose labels this "
                                                          "worker offers.")] = None,
    label: Annotated[list[str], typer.Option("--label", "--labels", help="KEY=VALUE a run may require; repeatable "
                                             "or comma-separated.")] = [],  # noqa: B006
    threads: Annotated[int, typer.Option(min=1, max=1024, help="CPU threads of the engine.")] = 1,
    max_groups: Annotated[int, typer.Option(min=1, max=1024, help="Groups leased and generated per batch.")] = 4,
    streams: Annotated[int, typer.Option(min=1, max=64, help="Parallel connections of a weight pull.")] = 4,
    device: Annotated[str | None, typer.Option(help="torch device (cpu, cuda, cuda:1); default: CUDA if any.")]
    = None,
    log_level: LogLevelOpt = "info",
) -> None:
    """Run a rollout worker: find a GRPO run that takes rollout workers (or --run), pull its weights from
    its trainer's rollout manager, and generate the prompt groups it hands out, following the run
    wherever it is handed. SIGTERM or SIGINT posts the batch in hand, leaves the pool and exits 0."""
    import logging
    import socket

    from relaytrain.api.models import RUN_ID_PATTERN
    from relaytrain.rollout.protocol import WORKER_ID_PATTERN
    from relaytrain.rollout.worker import CommanderDirectory, RolloutWorker, RolloutWorkerSettings

    worker_id = worker_id or socket.gethostname()
    if not re.fullmatch(WORKER_ID_PATTERN, worker_id):
        bad_parameter(f"{worker_id!r} must match {WORKER_ID_PATTERN}", "'--worker-id'")
    if run is not None and not re.fullmatch(RUN_ID_PATTERN, run):
        bad_parameter(f"{run!r} must match {RUN_ID_PATTERN}", "'--run'")
    labels = parse_labels([item for value in label for item in value.split(",") if item], "--label")
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)s [{worker_id}] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = RolloutWorkerSettings(worker_id=worker_id, run_id=run, labels=labels, threads=threads,
                                     max_groups=max_groups, streams=streams, device=device)
    raise typer.Exit(RolloutWorker(settings, CommanderDirectory(commander, token, ca_cert)).run())
