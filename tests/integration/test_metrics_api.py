"""The metrics API of a real commander process (SQLite and PostgreSQL): series, names,
downsampling, superseded points through the client, bad parameters, per-run Prometheus gauges."""

from __future__ import annotations

import httpx
import pytest

from relaytrain.api import models as m
from relaytrain.errors import NotFound, RequestInvalid

RUN = {"run_id": "m-run", "kind": "command", "max_steps": 5000, "lease": {"ttl_s": 60},
       "trainer": {"command": ["python", "train.py"]}}
SHA = "cd" * 32


@pytest.fixture
def client(commander):
    with commander.client() as c:
        yield c


def claim(client, worker_id: str) -> m.Grant:
    grant = client.claim(m.ClaimRequest(worker_id=worker_id, wait_s=0))
    assert grant is not None
    return grant


def progress(client, worker: str, epoch: int, steps, **metrics) -> None:
    points = [m.ProgressPoint(step=s, metrics={k: f(s) for k, f in metrics.items()}) for s in steps]
    for i in range(0, len(points), 1000):
        client.progress(RUN["run_id"], m.ProgressRequest(worker_id=worker, epoch=epoch, points=points[i:i + 1000]))


def test_series_names_and_downsampling(client):
    client.submit(RUN)
    grant = claim(client, "w")
    progress(client, "w", grant.epoch, range(1, 2001), loss=lambda s: 1000.0 / s, reward=lambda s: s % 7)
    assert client.metric_names("m-run") == ["loss", "reward"]

    every = client.metrics("m-run").items
    assert [(p.name, p.step) for p in every] == [(n, s) for n in ("loss", "reward") for s in range(1, 2001)]
    assert client.metrics("m-run", "reward").items == [p for p in every if p.name == "reward"]
    assert client.metrics("m-run", ["reward", "loss"]).items == every

    small = client.metrics("m-run", ["loss", "reward"], max_points=101).items
    for name in ("loss", "reward"):
        series = [p for p in small if p.name == name]
        assert 2 < len(series) <= 101
        assert (series[0].step, series[-1].step) == (1, 2000)
        assert [p.step for p in series] == sorted(p.step for p in series)
    reward = [p for p in small if p.name == "reward"]
    assert all(p.value == p.step % 7 for p in reward)  # real points, not bucket averages
    assert {0, 6} <= {p.value for p in reward[1:-1]}  # each bucket's min and max


def test_superseded_points_through_the_api(client):
    client.submit(RUN)
    first = claim(client, "a")
    progress(client, "a", first.epoch, range(1, 31), loss=lambda s: float(s))
    client.commit_checkpoint("m-run", m.CheckpointCommit(worker_id="a", epoch=first.epoch, step=20,
                                                         uri="file:///c/20", manifest_sha256=SHA))
    client.release("m-run", m.ReleaseRequest(worker_id="a", epoch=first.epoch, outcome="preempted"))
    second = claim(client, "b")
    client.resumed("m-run", m.ResumeReport(worker_id="b", epoch=second.epoch, step=20))
    progress(client, "b", second.epoch, range(21, 26), loss=lambda s: -float(s))

    shown = client.metrics("m-run", "loss").items
    assert [(p.step, p.epoch) for p in shown] == [(s, 1) for s in range(1, 21)] + [(s, 2) for s in range(21, 26)]
    assert not any(p.superseded for p in shown)
    every = client.metrics("m-run", "loss", include_superseded=True).items
    assert sorted((p.step, p.epoch) for p in every if p.superseded) == [(s, 1) for s in range(21, 31)]


def test_bad_parameters_name_the_field(commander, client):
    client.submit(RUN)
    with httpx.Client(base_url=commander.url, headers={"Authorization": f"Bearer {commander.token}"}) as http:
        for params, field in (({"max_points": 1}, "max_points"), ({"max_points": 20_001}, "max_points"),
                              ({"name": "loss,,reward"}, "name"), ({"include_superseded": "maybe"},
                                                                   "include_superseded")):
            response = http.get("/api/v1/runs/m-run/metrics", params=params)
            assert response.status_code == 422, response.text
            assert field in response.json()["detail"]
    with pytest.raises(RequestInvalid, match="name"):
        client.metrics("m-run", "loss,")
    with pytest.raises(NotFound):
        client.metrics("no-such-run")
    with pytest.raises(NotFound):
        client.metric_names("no-such-run")


def test_prometheus_per_run_gauges_for_running_runs_only(commander, client):
    client.submit(RUN)
    client.submit({**RUN, "run_id": "still-queued", "priority": -1})
    grant = claim(client, "w")
    progress(client, "w", grant.epoch, [10, 20], tokens_per_s=lambda s: s * 1.5)
    headers = {"Authorization": f"Bearer {commander.token}"}
    text = httpx.get(f"{commander.url}/metrics", headers=headers).text
    assert 'relay_run_step{run_id="m-run"} 20.0' in text
    assert 'relay_run_max_steps{run_id="m-run"} 5000.0' in text
    assert 'relay_run_tokens_per_second{run_id="m-run"} 30.0' in text
    assert 'relay_run_status{run_id="m-run",status="running"} 1.0' in text
    assert 'relay_run_ettr{run_id="m-run"}' in text
    assert "still-queued" not in text
    client.release("m-run", m.ReleaseRequest(worker_id="w", epoch=grant.epoch, outcome="succeeded"))
    text = httpx.get(f"{commander.url}/metrics", headers=headers).text
    assert 'run_id="m-run"' not in text


def test_a_control_character_in_a_name_is_refused(commander, client):
    client.submit(RUN)
    with httpx.Client(base_url=commander.url, headers={"Authorization": f"Bearer {commander.token}"}) as http:
        response = http.get("/api/v1/runs/m-run/metrics", params={"name": "lo\x00ss"})
    assert response.status_code == 422 and "name" in response.json()["detail"]
