"""The commander's HTTP API, one router per resource; each route takes the store (and telemetry,
the claim wakeup) with ``Depends`` from the app's state, and exactly one scope decision
(:class:`.deps.Access`: who may call it; the app refuses to start with a route that has none).

=============  ===========================================================================
runs           ``POST/GET /api/v1/runs``, ``GET /api/v1/runs/{id}``, ``…/cancel``, ``…/resume``,
               ``…/events``
leases         ``POST /api/v1/leases/claim``, ``…/{id}/lease/renew|release|resumed``, ``…/progress``
workers        ``POST /api/v1/workers/register``, ``…/{worker_id}/heartbeat``, ``GET /api/v1/workers``
checkpoints    ``GET/POST /api/v1/runs/{id}/checkpoints``
evals          ``GET /api/v1/runs/{id}/evaluations``
hosts          ``GET/PUT/PATCH/DELETE /api/v1/hosts[/{name}]``
rollout        ``PUT/GET /api/v1/runs/{id}/rollout``, ``…/rollout/pool``, ``GET /api/v1/rollout/runs``,
               ``PUT /api/v1/rollout/workers/{worker_id}``, ``GET /api/v1/rollout/workers``
tokens         ``POST/GET /api/v1/tokens``, ``POST /api/v1/tokens/{id}/revoke``
ledger         ``GET /api/v1/runs/{id}/ledger``, ``GET /api/v1/ledger``
metrics        ``GET /api/v1/runs/{id}/metrics``, ``GET /metrics``, ``GET /api/v1/health``
logs           ``POST/GET /api/v1/runs/{id}/logs``
dashboard      ``GET /`` (the page; its files under ``/ui``, mounted by ``create_app``)
=============  ===========================================================================
"""

from __future__ import annotations

from . import checkpoints, dashboard, evals, hosts, leases, ledger, logs, metrics, rollout, runs, tokens, workers

ROUTERS = [r.router for r in (leases, workers, runs, logs, checkpoints, rollout, evals, ledger, hosts, tokens,
                                metrics, dashboard)]
"""In the order a request is matched (FastAPI matches included routers one by one, per request):
the workers' hot paths (renew, progress, heartbeat) first. No two routers' paths overlap."""
