"""Central logs end to end: real workers ship their trainers' output to a real commander, and
``relay logs`` reads it from another folder (as from another machine), across a ``kill -9``
hand-off; a stalled commander does not slow training; no token ever shows in a log."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys

from tests.integration.test_cli import relay
from tests.support.commander import wait_until
from tests.support.relay import counter_run

NOISY_TRAINER = (  # a shell string: 600 steps, each printing ~20 kB of noise and one line
    'i=0; while [ $i -lt 600 ]; do i=$((i+1)); yes "noise of step $i" 2>/dev/null | head -c 20000; echo; '
    'echo "{\\"step\\": $i, \\"metrics\\": {}}" >> "$RELAY_PROGRESS_FILE"; echo "step $i done"; sleep 0.02; done'
)


def steps_in(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^step (\d+) state ", text, re.M)]


STEPS = 300


def test_logs_are_read_through_the_commander_across_a_kill_9_hand_off(cluster, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # not a worker's folder: the logs come from the commander
    elsewhere.mkdir()
    # long enough (12 s) that the victim is still training when it is killed, however slowly its logs arrive
    cluster.client.submit(counter_run("chatty", cluster.store, max_steps=STEPS, every=10, step_s=0.04))
    env = {**os.environ, "RELAY_COMMANDER": cluster.commander.url, "RELAY_TOKEN": cluster.commander.token}
    follower = subprocess.Popen([sys.executable, "-m", "relaytrain.cli", "logs", "chatty", "-f"], cwd=elsewhere,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    late = None
    try:
        victim = cluster.worker("victim")
        cluster.wait_step("chatty", 30)
        wait_until(lambda: 25 in steps_in(relay("logs", "chatty", commander=cluster.commander, cwd=elsewhere).stdout),
                   30, "the victim's output to reach the commander")
        assert cluster.run("chatty").status == "running", "the run ended before the kill: make it longer"
        victim.signal(signal.SIGKILL)
        wait_until(lambda: cluster.run("chatty").attempts[0].ended_at is not None, 60, "the victim's lease to lapse")
        # between two attempts: the victim's has ended, the run is not over, no heir yet
        late = subprocess.Popen([sys.executable, "-m", "relaytrain.cli", "logs", "chatty", "-f"], cwd=elsewhere,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert select.select([late.stdout], [], [], 60)[0], "the late follower printed nothing"
        late_first = late.stdout.readline()  # it follows the victim's attempt: now the heir may come
        cluster.worker("heir")
        run = cluster.wait_status("chatty", ("succeeded",), timeout_s=120)
        out, err = follower.communicate(timeout=60)  # -f ends by itself when the run ends
        late_out, late_err = late.communicate(timeout=60)
        late_out = late_first + late_out
    finally:
        for process in (follower, late):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert follower.returncode == 0, err
    assert late.returncode == 0, late_err
    # started between the attempts, it waited for the heir's rather than ending with the victim's
    assert "── attempt 2 on heir ──" in late_err and steps_in(late_out)[-1] == STEPS
    assert [a.worker_id for a in run.attempts] == ["victim", "heir"]
    resumed_at = run.attempts[1].step_start

    first = relay("logs", "chatty", "--attempt", "1", commander=cluster.commander, cwd=elsewhere).stdout
    assert steps_in(first)[:25] == list(range(1, 26)) and STEPS not in steps_in(first)
    second = relay("logs", "chatty", commander=cluster.commander, cwd=elsewhere).stdout
    assert f"resumed at step {resumed_at}" in second  # the trainer's stderr, with its stdout
    assert steps_in(second) == list(range(resumed_at + 1, STEPS + 1))
    only_stdout = relay("logs", "chatty", "--stream", "stdout", commander=cluster.commander, cwd=elsewhere).stdout
    assert "resumed at step" not in only_stdout and steps_in(only_stdout) == steps_in(second)

    assert "── attempt 2 on heir ──" in err  # the follower moved on to the heir's attempt
    followed = steps_in(out)
    assert followed[:25] == list(range(1, 26))
    assert followed[-(STEPS - resumed_at):] == list(range(resumed_at + 1, STEPS + 1))

    missing = relay("logs", "chatty", "--attempt", "7", commander=cluster.commander, check=False, cwd=elsewhere)
    assert missing.returncode == 1 and "no attempt 7 (attempts: 1, 2)" in missing.stderr
    bad = relay("logs", "chatty", "--stream", "both", commander=cluster.commander, check=False, cwd=elsewhere)
    assert bad.returncode == 1 and "--stream" in bad.stderr


def test_a_stalled_commander_does_not_slow_training_and_the_worker_drops_oldest(cluster):
    config = {
        "run_id": "noisy", "kind": "command", "max_steps": 600, "store": str(cluster.store),
        "lease": {"ttl_s": 60, "margin_s": 15, "grace_s": 5},  # the stall stays far from the self-fence
        "logs": {"max_bytes": 256 << 10},
        "trainer": {"command": NOISY_TRAINER},
    }
    cluster.client.submit(config)
    w = cluster.worker("w")
    progress = w.workdir / "runs" / "noisy" / "progress" / "attempt_1.jsonl"
    steps = lambda: progress.read_text().count("\n") if progress.exists() else 0  # noqa: E731
    wait_until(lambda: steps() >= 20, 60, "the trainer's first steps")
    cluster.commander.proc.send_signal(signal.SIGSTOP)
    try:
        stalled_at = steps()
        # The commander answers nothing now; the trainer keeps printing ~20 kB a step, and training goes on
        # while the worker's sends time out and its queue keeps only the newest output.
        wait_until(lambda: "log of noisy not delivered" in w.log(), 60, "a send to time out")
        wait_until(lambda: steps() >= stalled_at + 60, 60, "training to go on while the commander is stopped")
    finally:
        cluster.commander.proc.send_signal(signal.SIGCONT)
    cluster.wait_status("noisy", ("succeeded",), timeout_s=120)

    page = cluster.client.logs("noisy")
    shipped = "".join(i.text for i in page.items)
    assert shipped.endswith("step 600 done\n") and page.attempt == 1
    kept = sum(len(i.text.encode()) for i in page.items)
    assert kept <= 256 << 10 and page.dropped > 600 * 20_000 - (256 << 10)
    assert page.next == page.items[-1].seq + len(page.items[-1].text.encode()) == page.dropped + kept
    delivered = re.search(r"log of noisy delivered again \((\d+) bytes dropped meanwhile\)", w.log())
    assert delivered and int(delivered.group(1)) > 0, w.log()[-3000:]  # the worker's own queue dropped its oldest


def test_no_token_in_the_worker_log_nor_in_the_shipped_output(cluster, monkeypatch):
    env_token = cluster.client.create_token("in-the-environment").token
    monkeypatch.setenv("RELAY_TOKEN", env_token)  # the worker's environment has one; its trainer must not
    trainer = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)), flush=True); "
               "open(os.environ['RELAY_PROGRESS_FILE'], 'a').write('{\"step\": 1, \"metrics\": {}}\\n')"]
    cluster.client.submit({"run_id": "envy", "kind": "command", "max_steps": 1, "store": str(cluster.store),
                           "trainer": {"command": trainer}})
    w = cluster.worker("w", None, "--log-level", "debug")
    cluster.wait_status("envy", ("succeeded",))
    printed = json.loads(cluster.client.logs("envy").items[0].text)
    assert printed["RELAY_RUN_ID"] == "envy" and "RELAY_TOKEN" not in printed
    assert env_token not in json.dumps(printed)
    log = w.log()
    assert "DEBUG" in log and "released envy epoch 1 as succeeded" in log
    assert w.token not in log and env_token not in log
