"""A typed HTTP client of the commander, shared by the CLI and the worker.

The client may be given several commander URLs (replicas over one PostgreSQL database): it
sticks to the one that answers and moves to the next when a request to it fails to get an
answer: a transport error (refused, reset, a timeout) or a 502/503/504 (a proxy or the replica
saying it cannot serve). Each round of tries goes once over every replica, starting with the
current one, within one request timeout in all, so a killed replica costs a refused connection,
not a renewal interval, and a call never outlasts its timeout (the lease keeper's self-fence
counts on that). Failed rounds are retried with exponential backoff; a 4xx never is.
Errors come back as the named exceptions of :mod:`relaytrain.errors`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from relaytrain.api.rollout import (
    RegisterRolloutWorker,
    RolloutAnnounce,
    RolloutEndpoint,
    RolloutRun,
    RolloutWorkerInfo,
)
from relaytrain.errors import CommanderUnavailable, ConfigError, RelayError, error_class, error_classes
from relaytrain.tls import client_context, verification_error, verification_failure

from . import models as m

log = logging.getLogger(__name__)

_RETRY_STATUS = (502, 503, 504)


def commander_urls(value: str | Sequence[str]) -> list[str]:
    """The commander URLs of ``--commander`` / ``RELAY_COMMANDER``: one URL, several separated by
    commas, or a list of them; without trailing slashes, duplicates dropped, in their order.
    ConfigError naming the first that is not an ``http(s)://host[:port]`` URL."""
    items = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in items:
        url = item.strip().rstrip("/")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"commander URL {item.strip()!r} is not an http:// or https:// URL with a host "
                              f"(several are separated by commas)")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ConfigError("no commander URL given")
    return urls


def _error_for(response: httpx.Response) -> RelayError:
    """The exception an error answer stands for (:func:`relaytrain.errors.error_class`), with its detail."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str):
        detail = response.text[:500] or response.reason_phrase
    name = body.get("error") if isinstance(body, dict) else None
    name = name if isinstance(name, str) and name in error_classes() else None
    cls = error_class(name, response.status_code)
    return cls(f"{detail} (HTTP {response.status_code})" if name is None and cls is RelayError else detail)


class RelayClient:
    """Talks to a commander, through whichever of ``base_url``'s replicas answers (:func:`commander_urls`).
    ``retries`` bounds the further rounds over them when none answered; ``ca_cert`` is the CA an
    ``https://`` commander's certificate is verified with (None: the public CAs)."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        ca_cert: str | Path | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_urls = commander_urls(base_url)
        self._current = 0
        self._switch = threading.Lock()  # the worker's threads share one client
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(headers=headers, timeout=timeout_s, transport=transport,
                                  verify=client_context(ca_cert))

    @property
    def base_url(self) -> str:
        """The replica requests go to now (the last one that answered)."""
        return self.base_urls[self._current]

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail_over(self, failed: str, why: object) -> None:
        """``failed`` gave no answer: move on to the next replica, unless another thread already did."""
        if len(self.base_urls) == 1:
            return
        with self._switch:
            if self.base_url != failed:
                return
            self._current = (self._current + 1) % len(self.base_urls)
        log.warning("commander %s gave no answer (%s); moving to %s", failed, why, self.base_url)

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                timeout_s: float | None = None, retries: int | None = None) -> Any:
        """Send one request; fail over and retry transport failures; raise a named error on any non-2xx."""
        rounds = (self.retries if retries is None else retries) + 1
        timeout = timeout_s or self.timeout_s
        last: Exception | None = None
        for round_ in range(rounds):
            if round_:
                time.sleep(min(10.0, self.backoff_s * 2 ** (round_ - 1)))
            deadline = time.monotonic() + timeout
            for _ in self.base_urls:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                url = self.base_url
                try:
                    response = self._http.request(method, url + path, json=json, params=params,
                                                  timeout=httpx.Timeout(left))
                except httpx.TransportError as exc:
                    if (failure := verification_failure(exc)) is not None:
                        raise verification_error(url, failure) from exc
                    last = exc
                    log.debug("%s %s%s failed (%s), round %d/%d", method, url, path, exc, round_ + 1, rounds)
                    self._fail_over(url, exc)
                    continue
                if response.status_code in _RETRY_STATUS:
                    last = _error_for(response)
                    self._fail_over(url, f"HTTP {response.status_code}")
                    continue
                if response.is_success:
                    return response.json()
                raise _error_for(response)
        if isinstance(last, RelayError):  # the last answer was a 502/503/504: its own error
            raise last
        where = ", ".join(self.base_urls)
        hint = ""
        if isinstance(last, httpx.RemoteProtocolError) and any(u.startswith("http://") for u in self.base_urls):
            hint = " (if it serves https, use an https:// URL)"
        raise CommanderUnavailable(f"cannot reach the commander at {where}: {last}{hint}") from last

    # -- service -----------------------------------------------------------------------------

    def health(self) -> m.Health:
        return m.Health.model_validate(self.request("GET", "/api/v1/health"))

    def create_token(self, name: str, scope: str = "worker", *, expires_in_s: int | None = None) -> m.TokenCreated:
        body = {"name": name, "scope": scope, "expires_in_s": expires_in_s}
        return m.TokenCreated.model_validate(self.request("POST", "/api/v1/tokens", json=body, retries=0))

    def tokens(self) -> list[m.TokenInfo]:
        return [m.TokenInfo.model_validate(t) for t in self.request("GET", "/api/v1/tokens")]

    def revoke_token(self, token_id: int) -> m.TokenInfo:
        return m.TokenInfo.model_validate(self.request("POST", f"/api/v1/tokens/{token_id}/revoke"))

    # -- runs --------------------------------------------------------------------------------

    def submit(self, config: dict[str, Any]) -> m.RunDetail:
        return m.RunDetail.model_validate(self.request("POST", "/api/v1/runs", json=config, retries=0))

    def runs(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> m.RunList:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return m.RunList.model_validate(self.request("GET", "/api/v1/runs", params=params))

    def run(self, run_id: str) -> m.RunDetail:
        return m.RunDetail.model_validate(self.request("GET", f"/api/v1/runs/{run_id}"))

    def cancel(self, run_id: str) -> m.RunDetail:
        return m.RunDetail.model_validate(self.request("POST", f"/api/v1/runs/{run_id}/cancel"))

    def resume(self, run_id: str, *, from_step: int | None = None, additional_steps: int = 0) -> m.RunDetail:
        body = m.ResumeRequest(from_step=from_step, additional_steps=additional_steps).model_dump()
        return m.RunDetail.model_validate(self.request("POST", f"/api/v1/runs/{run_id}/resume", json=body, retries=0))

    def ledger(self, run_id: str) -> m.RunLedger:
        return m.RunLedger.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/ledger"))

    def providers_ledger(self) -> m.ProviderLedger:
        return m.ProviderLedger.model_validate(self.request("GET", "/api/v1/ledger"))

    def events(self, run_id: str, *, after: int = 0, limit: int = 100) -> m.EventList:
        params = {"after": after, "limit": limit}
        return m.EventList.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/events", params=params))

    def checkpoints(self, run_id: str) -> m.CheckpointList:
        return m.CheckpointList.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/checkpoints"))

    def metrics(self, run_id: str, name: str | list[str] | None = None, *, include_superseded: bool = False,
                max_points: int | None = None) -> m.MetricList:
        """A run's series (all, one ``name`` or a list of them), ordered by name then step; points a
        later attempt retrained only with ``include_superseded``; ``max_points`` per series, downsampled."""
        params: dict[str, Any] = {"include_superseded": include_superseded}
        if name:
            params["name"] = name if isinstance(name, str) else ",".join(name)
        if max_points is not None:
            params["max_points"] = max_points
        return m.MetricList.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/metrics", params=params))

    def logs(self, run_id: str, *, attempt: int | None = None, after: int | None = None,
             limit: int = 200) -> m.LogList:
        """One attempt's trainer output (default: the latest attempt) from offset ``after``."""
        params: dict[str, Any] = {"limit": limit}
        if attempt is not None:
            params["attempt"] = attempt
        if after is not None:
            params["after"] = after
        return m.LogList.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/logs", params=params))

    def metric_names(self, run_id: str) -> list[str]:
        return m.MetricNames.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/metrics/names")).names

    def workers(self) -> list[m.WorkerInfo]:
        return [m.WorkerInfo.model_validate(w) for w in self.request("GET", "/api/v1/workers")]

    # -- worker side -------------------------------------------------------------------------

    def register(self, req: m.RegisterWorker) -> m.WorkerInfo:
        return m.WorkerInfo.model_validate(self.request("POST", "/api/v1/workers/register", json=req.model_dump()))

    def heartbeat(self, worker_id: str, resources: m.WorkerResources | None = None,
                  health: m.WorkerHealth | None = None) -> m.WorkerInfo:
        body = m.Heartbeat(resources=resources, health=health).model_dump(mode="json")
        return m.WorkerInfo.model_validate(self.request("POST", f"/api/v1/workers/{worker_id}/heartbeat", json=body))

    def claim(self, req: m.ClaimRequest) -> m.Grant | None:
        """Long-poll for a run. Not retried: a lost answer only leaves a lease to expire."""
        body = self.request("POST", "/api/v1/leases/claim", json=req.model_dump(),
                            timeout_s=req.wait_s + self.timeout_s, retries=0)
        return m.ClaimResponse.model_validate(body).grant

    def renew(self, run_id: str, worker_id: str, epoch: int, *, timeout_s: float | None = None,
              retries: int | None = None) -> m.RenewResponse:
        body = {"worker_id": worker_id, "epoch": epoch}
        return m.RenewResponse.model_validate(
            self.request("POST", f"/api/v1/runs/{run_id}/lease/renew", json=body, timeout_s=timeout_s, retries=retries)
        )

    def release(self, run_id: str, req: m.ReleaseRequest) -> m.ReleaseResponse:
        return m.ReleaseResponse.model_validate(
            self.request("POST", f"/api/v1/runs/{run_id}/lease/release", json=req.model_dump())
        )

    def resumed(self, run_id: str, req: m.ResumeReport) -> None:
        self.request("POST", f"/api/v1/runs/{run_id}/lease/resumed", json=req.model_dump())

    def progress(self, run_id: str, req: m.ProgressRequest) -> int:
        return int(self.request("POST", f"/api/v1/runs/{run_id}/progress", json=req.model_dump())["step"])

    def append_logs(self, run_id: str, req: m.LogAppend, *, timeout_s: float | None = None,
                    retries: int | None = None) -> m.LogAck:
        """A holder ships chunks of its trainer's output (fenced by the epoch)."""
        return m.LogAck.model_validate(self.request("POST", f"/api/v1/runs/{run_id}/logs", json=req.model_dump(),
                                                    timeout_s=timeout_s, retries=retries))

    # -- the rollout pool -------------------------------------------------------------------

    def announce_rollout(self, run_id: str, req: RolloutAnnounce) -> RolloutEndpoint:
        """A training worker: where its trainer's rollout manager is (fenced by the epoch)."""
        return RolloutEndpoint.model_validate(
            self.request("PUT", f"/api/v1/runs/{run_id}/rollout", json=req.model_dump())
        )

    def rollout_endpoint(self, run_id: str) -> RolloutEndpoint:
        """A rollout worker: where the run's manager is now. NotFound while it has none."""
        return RolloutEndpoint.model_validate(self.request("GET", f"/api/v1/runs/{run_id}/rollout"))

    def rollout_runs(self) -> list[RolloutRun]:
        """A rollout worker: the running runs that take rollout workers, neediest first."""
        body = self.request("GET", "/api/v1/rollout/runs")
        return [RolloutRun.model_validate(r) for r in body]

    def register_rollout_worker(self, req: RegisterRolloutWorker) -> RolloutWorkerInfo:
        """A rollout worker says it exists (and which run it serves); called again as a heartbeat."""
        return RolloutWorkerInfo.model_validate(
            self.request("PUT", f"/api/v1/rollout/workers/{req.worker_id}", json=req.model_dump())
        )

    def rollout_workers(self) -> list[RolloutWorkerInfo]:
        """Every rollout worker the commander knows (admin)."""
        return [RolloutWorkerInfo.model_validate(w) for w in self.request("GET", "/api/v1/rollout/workers")]

    def commit_checkpoint(self, run_id: str, req: m.CheckpointCommit) -> m.CheckpointRef:
        return m.CheckpointRef.model_validate(
            self.request("POST", f"/api/v1/runs/{run_id}/checkpoints", json=req.model_dump())
        )
