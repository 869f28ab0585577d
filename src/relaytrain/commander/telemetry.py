"""Prometheus metrics of one commander (claims, grants, renewals, expiries, 409s, latency), and
per-run gauges of the running runs (step, tokens/s, ETTR, status). Only running runs get a
series, so the ``run_id`` label's cardinality is bounded by the workers, not by the history."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .store import Store

COUNTERS = {
    "claims": "Claim requests answered.",
    "grants": "Leases granted.",
    "renewals": "Leases renewed.",
    "releases": "Leases released.",
    "expiries": "Leases reclaimed after their deadline.",
    "fenced": "Requests refused with 409 (stale epoch, expired lease, conflicting state).",
}

RUN_GAUGES = {
    "step": ("step", "The running run's step."),
    "max_steps": ("max_steps", "The running run's target step."),
    "epoch": ("epoch", "The running run's lease epoch (attempts so far)."),
    "tokens_per_s": ("tokens_per_second", "The running run's latest reported tokens_per_s."),
    "ettr": ("ettr", "The running run's ETTR so far: useful training time / wall time."),
}
"""Per running run: the key of :meth:`Store.running_gauges` → (gauge name after ``relay_run_``, help)."""


class _StoreCollector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Any]:
        counts = self.telemetry.snapshot()
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"relay_{name}", help_text)
            family.add_metric([], counts.get(name, 0))
            yield family
        runs = GaugeMetricFamily("relay_runs", "Runs by status.", labels=["status"])
        for status, n in self.telemetry.store.status_counts().items():
            runs.add_metric([status], n)
        yield runs
        yield from self._per_run()

    def _per_run(self) -> Iterator[Any]:
        families = {key: GaugeMetricFamily(f"relay_run_{name}", help_text, labels=["run_id"])
                    for key, (name, help_text) in RUN_GAUGES.items()}
        status = GaugeMetricFamily("relay_run_status", "1 for the run's status (running runs only).",
                                   labels=["run_id", "status"])
        for run in self.telemetry.store.running_gauges():
            status.add_metric([run["run_id"], run["status"]], 1)
            for key, family in families.items():
                if run[key] is not None:
                    family.add_metric([run["run_id"]], run[key])
        yield status
        yield from families.values()


class Telemetry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.counts: Counter[str] = Counter()
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "relay_request_seconds",
            "HTTP request latency by route.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60),
        )
        self.registry.register(_StoreCollector(self))

    def snapshot(self) -> Counter[str]:
        counts = Counter(self.counts)
        counts["expiries"] += self.store.counters["expiries"]
        return counts

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: Any) -> Any:
        """ASGI middleware timing every HTTP request, labelled by its route template."""

        async def timed(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = {"code": 500}

            async def send_status(message: dict) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                route = getattr(scope.get("route"), "path", "unmatched")
                self.latency.labels(scope["method"], route, str(status["code"])).observe(time.perf_counter() - start)

        return timed
