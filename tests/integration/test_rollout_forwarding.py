"""A real ``relay worker`` forwards its trainer's rollout manager to a real commander (DESIGN §11):
a trainer writes rollout event lines into its progress file, the worker announces them under its
epoch (the first at once, then only the newest, at most once per second), rollout workers find
the manager there, and ``relay status`` shows the pool."""

from __future__ import annotations

import json
import re
import sys

import httpx
import pytest

from relaytrain.api.client import RelayClient
from relaytrain.api.rollout import RolloutEndpoint, RolloutRun, RolloutWorkerView
from relaytrain.errors import NotFound
from tests.integration.test_cli import relay
from tests.support.commander import wait_until

SECRET = "s" * 32
BURST, SPREAD = 200, 30
LAST = BURST + SPREAD - 1
# A trainer that hosts no manager but announces one: a burst of rollout events at once, then more,
# one every 0.1 s (the pool changing fast), then progress until the test lets it finish. It writes
# how long its events took (monotonic seconds) to SPREAD_FILE.
TRAINER = f"""
import os, time
from pathlib import Path
from relaytrain.contract import ROLLOUT_EVENT, event_line, progress_line
from relaytrain.netaddr import url_host

progress, go = Path(os.environ["RELAY_PROGRESS_FILE"]), Path(os.environ["GO_FILE"])
url = "http://" + url_host(os.environ["RELAY_ADVERTISE_HOST"]) + ":4100"

def rollout(v):
    return event_line(ROLLOUT_EVENT, url=url, secret="{SECRET}", version=v, pool=[
        {{"worker_id": "rw1", "version": v, "groups_in_flight": 2, "tokens_per_s": 123.4, "groups_done": v,
          "last_seen_s": 0.5}}])

with progress.open("a") as out:
    out.write(progress_line(0, {{}}))
start = time.monotonic()
with progress.open("a") as out:
    out.write("".join(rollout(v) for v in range({BURST})))
for v in range({BURST}, {BURST + SPREAD}):
    time.sleep(0.1)
    with progress.open("a") as out:
        out.write(rollout(v))
Path(os.environ["SPREAD_FILE"]).write_text(str(time.monotonic() - start))
step = 0
while not go.exists():
    step += 1
    with progress.open("a") as out:
        out.write(progress_line(step, {{}}))
    time.sleep(0.1)
"""


def fake_run(run_id: str, store, go, spread) -> dict:
    return {"run_id": run_id, "kind": "command", "max_steps": 1000, "store": str(store),
            "lease": {"ttl_s": 10, "margin_s": 3, "grace_s": 2},
            "trainer": {"command": [sys.executable, "-c", TRAINER],
                        "env": {"GO_FILE": str(go), "SPREAD_FILE": str(spread)}}}


def newest(client: RelayClient, run_id: str) -> RolloutEndpoint | None:
    """The run's rollout endpoint once it serves the trainer's last version, else None."""
    try:
        endpoint = client.rollout_endpoint(run_id)
    except NotFound:
        return None
    return endpoint if endpoint.version == LAST else None


def announcements(commander) -> int:
    """The rollout announcements the commander accepted (its Prometheus request counter)."""
    text = httpx.get(f"{commander.url}/metrics", headers={"Authorization": f"Bearer {commander.token}"}).text
    found = re.search(r'relay_request_seconds_count\{method="PUT",route="/api/v1/runs/\{run_id\}/rollout",'
                      r'status="200"\} (\S+)', text)
    return int(float(found.group(1))) if found else 0


def test_the_worker_forwards_the_rollout_manager_coalesced_and_status_shows_the_pool(cluster, tmp_path):
    go, spread = tmp_path / "go", tmp_path / "spread"
    cluster.client.submit(fake_run("pool", cluster.store, go, spread))
    created = json.loads(relay("token", "create", "--name", "rollout-1", "--scope", "rollout", "--json",
                               commander=cluster.commander).stdout)
    assert (created["name"], created["scope"]) == ("rollout-1", "rollout") and created["token"].startswith("relay_r_")
    rollout_token = created["token"]
    cluster.worker("w1")
    with RelayClient(cluster.commander.url, rollout_token) as rollout:
        endpoint = wait_until(lambda: newest(rollout, "pool"), 60,
                              f"the newest rollout announcement (workers: {cluster.logs()})")
        # the worker routes to the commander over loopback, so that is the address it passed down
        assert (endpoint.epoch, endpoint.url, endpoint.secret) == (1, "http://127.0.0.1:4100", SECRET)
        assert endpoint.pool == [RolloutWorkerView(worker_id="rw1", version=LAST, groups_in_flight=2,
                                                   tokens_per_s=123.4, groups_done=LAST, last_seen_s=0.5)]
        assert rollout.rollout_runs() == [RolloutRun(run_id="pool", epoch=1, labels={}, rollout_workers=1)]
        # Coalesced: the first at once, then at most one a second (interval_s), the newest only; so
        # at most 3 + the seconds the trainer took to write its events, whatever the machine's load
        # (one request per event line would be ~30; one per poll of the progress file about as many).
        spread_s = float(wait_until(lambda: spread.exists() and spread.read_text(), 30, "the trainer's spread"))
        assert 1 <= announcements(cluster.commander) <= 3 + spread_s
        status = relay("status", "pool", commander=cluster.commander).stdout
        assert f"rollout pool: manager http://127.0.0.1:4100 (epoch 1), weight version {LAST}" in status
        row = next(line for line in status.splitlines() if "rw1" in line)
        assert re.search(rf"rw1\s*│\s*{LAST}\s*│\s*2\s*│\s*123\.4\s*│\s*{LAST}\s*│\s*\d+s ago", row), status
        go.touch()
        cluster.wait_status("pool", ("succeeded",))
        with pytest.raises(NotFound, match="run pool ended succeeded"):
            rollout.rollout_endpoint("pool")
    assert "rollout" not in relay("status", "pool", commander=cluster.commander).stdout


def test_advertise_host_is_what_the_trainer_advertises(cluster, tmp_path):
    go = tmp_path / "go"
    cluster.client.submit(fake_run("adv", cluster.store, go, tmp_path / "spread"))
    cluster.worker("w-nat", None, "--advertise-host", "2001:db8::7")
    endpoint = wait_until(lambda: newest(cluster.client, "adv"), 60, f"the announcement ({cluster.logs()})")
    assert endpoint.url == "http://[2001:db8::7]:4100"  # the admin token may read it too
    go.touch()
    cluster.wait_status("adv", ("succeeded",))


def test_token_create_knows_the_rollout_scope_and_refuses_others():
    result = relay("token", "create", "--scope", "root", "--commander", "http://127.0.0.1:9", check=False)
    assert result.returncode == 1
    assert "--scope: must be one of admin, submit, worker, rollout, viewer, not 'root'" in result.stderr


@pytest.mark.parametrize("host", ["http://gpu-1", "gpu-1:8080", "a b", "-x"])
def test_a_bad_advertise_host_is_refused_naming_the_option(host, tmp_path):
    result = relay("worker", "--commander", "http://127.0.0.1:9", "--advertise-host", host, "--workdir",
                   str(tmp_path / "w"), check=False)
    assert result.returncode == 1 and "--advertise-host" in result.stderr, result.stderr
