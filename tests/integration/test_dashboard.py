"""The dashboard in a real headless browser (Debian's chromium, Selenium), on a live commander
with a run that was handed off by a ``kill -9``: the runs page lists it, its timeline shows both
attempts, the loss chart has points, a viewer token cannot cancel a run, no secret reaches the
page, and the page keeps its data under a banner while the commander restarts.

Screenshots go to the test's tmp folder; ``RELAY_DOCS_SCREENSHOTS=1`` also rewrites docs/img/."""

from __future__ import annotations

import signal

import pytest

from relaytrain.config import REDACTED
from tests.support.browser import chromium, screenshot, wait_for
from tests.support.commander import Commander, wait_until
from tests.support.relay import counter_run

pytestmark = pytest.mark.slow

SECRET = "hf_never_on_the_page_4242"


# The page redraws every few seconds: read and act through the page's own script, at one moment,
# never through element handles a redraw would make stale.


def texts(driver, selector: str) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector)


def text(driver, selector: str) -> str:
    found = texts(driver, selector)
    return found[0] if found else ""


def attrs(driver, selector: str, name: str) -> list[str | None]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))", selector, name)


def count(driver, selector: str) -> int:
    return driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)


def click(driver, selector: str) -> None:
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def choose(driver, selector: str, value: str) -> None:
    driver.execute_script("const e = document.querySelector(arguments[0]); e.value = arguments[1];"
                          "e.dispatchEvent(new Event('change'))", selector, value)


def test_the_dashboard_shows_a_handed_off_run_to_a_viewer(cluster, tmp_path):
    shots = tmp_path / "screenshots"
    client = cluster.client
    client.submit(counter_run("handed", cluster.store, max_steps=80, every=10,
                              env={"HF_TOKEN": {"value": SECRET, "secret": False}, "RELAY_NOTE": "kept"}))
    # No worker offers a GPU: this one stays queued, for the cancel button.
    client.submit({**counter_run("waiting", cluster.store), "resources": {"gpus": 1}})
    cluster.worker("a")
    cluster.worker("b")
    wait_until(lambda: (c := cluster.run("handed").latest_checkpoint) and c.step >= 30, 60, "step 30 durable")
    cluster.holder("handed").signal(signal.SIGKILL)
    run = cluster.wait_status("handed", ("succeeded", "failed"))
    assert run.status == "succeeded" and len(run.attempts) == 2, cluster.logs()
    viewer_token = client.create_token("screen", "viewer").token
    client.request("PUT", "/api/v1/hosts/gpu1", json={"address": "10.0.0.5", "user": "ubuntu",
                                                      "key_path": "/keys/id_ed25519"})

    with chromium() as driver:
        driver.get(cluster.commander.url + "/")
        # A commander with tokens: the page asks for one, once, and keeps it in this tab.
        wait_for(driver, lambda d: d.find_element("id", "token-form").is_displayed(), "the token form")
        driver.find_element("id", "token-input").send_keys(viewer_token)
        driver.find_element("css selector", "#token-form button").click()

        rows = wait_for(driver, lambda d: len(rows := texts(d, "#runs tbody tr")) == 2 and rows,
                        "the runs page to list both runs")
        listed = {row.split()[0]: row for row in rows}
        assert set(listed) == {"handed", "waiting"}
        assert "succeeded" in listed["handed"] and "80 / 80" in listed["handed"] and "queued" in listed["waiting"]
        assert "loss 0.01" in listed["handed"]  # the latest loss, 1/80
        assert driver.execute_script("return sessionStorage.getItem('relaytrain.token')") == viewer_token
        screenshot(driver, shots, "dashboard-runs", docs=True)
        choose(driver, "#status-filter", "queued")
        wait_for(driver, lambda d: [r.split()[0] for r in texts(d, "#runs tbody tr")] == ["waiting"],
                 "the status filter to leave the queued run only")
        assert "status=queued" in driver.current_url

        driver.get(cluster.commander.url + "/#/runs/handed")
        outcomes = wait_for(driver, lambda d: len(o := attrs(d, "#timeline .attempt", "data-outcome")) == 2 and o,
                            "the timeline to show 2 attempts")
        assert outcomes == ["lost", "succeeded"]
        assert set(attrs(driver, "#timeline .lane", "data-worker")) == {"a", "b"}
        assert count(driver, "#timeline .handoff-marker") == 1
        points = wait_for(driver, lambda d: attrs(d, '.chart[data-metric="loss"]', "data-points")[0], "the loss chart")
        steps = [p.step for p in client.metrics("handed", "loss").items]
        assert len(steps) >= 2 and steps == sorted(set(steps))  # each step once: a hand-off's retrained ones hidden
        assert int(points) == len(steps)
        assert count(driver, '.chart[data-metric="loss"] canvas'), "uPlot drew no canvas"
        assert count(driver, "#checkpoints tbody tr") >= 3 and "sha256" in text(driver, "#checkpoints").lower()
        assert "ETTR" in text(driver, "#ledger")
        assert "expired" in text(driver, "#events") and "resumed" in text(driver, "#events")
        page = driver.page_source
        assert SECRET not in page and viewer_token not in page
        assert '"RELAY_NOTE": "kept"' in text(driver, "#config")
        assert f'"HF_TOKEN": "{REDACTED}"' in text(driver, "#config")
        # Central logs, per attempt: the newest attempt's by default, the first one's when picked.
        wait_for(driver, lambda d: "step 80 state" in text(d, "#log-text"), "the last attempt's log")
        assert "resumed at step" in text(driver, "#log-text")
        screenshot(driver, shots, "dashboard-run", docs=True)
        choose(driver, "#log-attempt", "1")
        wait_for(driver, lambda d: "step 1 state" in text(d, "#log-text"), "the first attempt's log")
        assert "resumed at step" not in text(driver, "#log-text")

        # A viewer cannot cancel: the API answers 403, the page says so, the run is untouched.
        driver.get(cluster.commander.url + "/#/runs/waiting")
        wait_for(driver, lambda d: count(d, "#cancel"), "the cancel button")
        click(driver, "#cancel")
        said = wait_for(driver, lambda d: text(d, "#action-message"), "the page to answer the cancel")
        assert "cannot cancel" in said and "viewer" in said
        assert client.run("waiting").status == "queued" and not client.run("waiting").cancel_requested

        driver.get(cluster.commander.url + "/#/workers")
        workers = wait_for(driver, lambda d: count(d, "#workers tbody tr") == 2 and text(d, "#workers"),
                           "the workers page")
        assert "alive" in workers and "a" in workers and "b" in workers
        assert "gpu1" in text(driver, "#hosts") and "ubuntu@10.0.0.5:22" in text(driver, "#hosts")
        assert "not polled yet" in text(driver, "#hosts")

        # The commander restarts: the page keeps the last data under a banner, then recovers.
        driver.get(cluster.commander.url + "/#/runs/handed")
        wait_for(driver, lambda d: count(d, "#timeline .attempt") == 2, "the run page again")
        cluster.commander.stop()
        banner = wait_for(driver, lambda d: d.find_element("id", "banner").is_displayed()
                          and d.find_element("id", "banner").text, "the unreachable banner")
        assert "unreachable" in banner
        assert count(driver, "#timeline .attempt") == 2 and count(driver, '.chart[data-metric="loss"] canvas')
        screenshot(driver, shots, "dashboard-unreachable")
        cluster.commander.start()
        wait_for(driver, lambda d: not d.find_element("id", "banner").is_displayed(), "the banner to go", 30)
    assert sorted(p.name for p in shots.iterdir()) == [
        "dashboard-run.png", "dashboard-runs.png", "dashboard-unreachable.png"]


def test_on_a_loopback_commander_without_tokens_the_page_just_works(tmp_path):
    commander = Commander(db=str(tmp_path / "relay.db"), token=None, workdir=tmp_path).start()
    try:
        with commander.client() as client:
            client.submit(counter_run("open", tmp_path / "artifacts"))
        with chromium() as driver:
            driver.get(commander.url + "/")
            wait_for(driver, lambda d: "open" in text(d, "#runs"), "the runs page to list the run")
            assert not driver.find_element("id", "token-form").is_displayed()
        assert f"dashboard at {commander.url}/" in commander.log_tail()  # relay serve says where it is
    finally:
        commander.stop()
