"""The rollout manager over real HTTP: its secret, weights by version in verified chunks, leases,
late, stale and malformed results refused with the status and a message that names the problem,
and workers that go silent dropped with their groups re-queued."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from relaytrain.rollout import manager as manager_module
from relaytrain.rollout.manager import RolloutManager
from relaytrain.rollout.manager_client import ManagerClient, NoWeightsYet
from relaytrain.rollout.protocol import PREFIX, ManagerInfo, ModelSpec, SamplingSettings
from relaytrain.rollout.queue import GroupBook, GroupRefused

EOS, VOCAB, MAX_NEW = 2, 10, 3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def manager(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[RolloutManager]:
    monkeypatch.setattr(manager_module, "REAP_INTERVAL_S", 3600.0)  # the test reaps by hand, on its clock
    sampling = SamplingSettings(num_generations=2, max_new_tokens=MAX_NEW, temperature=1.0, top_p=1.0, seed=0,
                                eos_token_id=EOS, pad_token_id=0, vocab_size=VOCAB)
    info = ManagerInfo(run_id="r", epoch=3, max_staleness=1, lease_s=30, heartbeat_s=2, sampling=sampling,
                       model=ModelSpec(config={"model_type": "llama"}), groups_total=6)
    book = GroupBook(6, max_staleness=1, lease_s=30)

    def score(group_id: int, token_ids: list[list[int]]) -> tuple[list[float | None], dict[str, Any]]:
        totals = [float(len(t)) for t in token_ids]
        return totals, {"length": totals}

    manager = RolloutManager(book, info=info, prompt_ids=lambda g: [1, 3 + g], score=score, clock=clock)
    manager.weights.chunk_bytes = 64
    manager.start(host="127.0.0.1", port=0, advertise="127.0.0.1")
    yield manager
    manager.stop()


@pytest.fixture
def http(manager: RolloutManager) -> Iterator[httpx.Client]:
    assert manager.url is not None
    with httpx.Client(base_url=manager.url + PREFIX, headers={"Authorization": f"Bearer {manager.secret}"}) as c:
        yield c


def completion(tokens: list[int], finished: bool = True) -> dict[str, Any]:
    return {"token_ids": tokens, "logps": [-0.5] * len(tokens), "finished": finished}


def result(attempt: int, version: int = 0, completions: list[dict] | None = None, worker: str = "w1") -> dict:
    return {"worker_id": worker, "attempt": attempt, "version": version,
            "completions": completions or [completion([5, EOS]), completion([4, 4, 4], finished=False)]}


def register(http: httpx.Client, worker: str = "w1") -> None:
    assert http.post("/workers", json={"worker_id": worker, "threads": 1}).status_code == 200


def test_without_the_secret_nothing_is_answered(manager: RolloutManager) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong-secret-wrong-secret"}):
        response = httpx.get(f"{manager.url}{PREFIX}/info", headers=headers)
        assert response.status_code == 401 and "secret" in response.json()["detail"]


def test_weights_are_served_by_version_in_chunks_that_hash_to_the_manifest(
        manager: RolloutManager, http: httpx.Client) -> None:
    before = http.get("/weights")
    assert before.status_code == 409 and "no weights published yet" in before.json()["detail"]
    data = bytes(range(256)) * 3 + b"tail"
    manager.publish_weights(0, data)
    manifest = http.get("/weights").json()
    assert manifest["version"] == 0 and manifest["total_bytes"] == len(data) and len(manifest["chunks"]) == 13
    pulled = b""
    for index, meta in enumerate(manifest["chunks"]):
        response = http.get(f"/weights/0/chunks/{index}")
        assert response.headers["X-Sha256"] == meta["sha256"] == hashlib.sha256(response.content).hexdigest()
        pulled += response.content
    assert pulled == data and hashlib.sha256(pulled).hexdigest() == manifest["sha256"]
    manager.publish_weights(1, b"one")
    manager.publish_weights(2, b"two")  # two versions are held: 0 is gone
    gone = http.get("/weights/0/chunks/0")
    assert gone.status_code == 410 and "no longer held" in gone.json()["detail"]
    assert http.get("/weights/1/chunks/0").content == b"one"
    assert http.get("/info").json()["version"] == 2


def test_a_result_is_accepted_once_for_the_current_attempt_only(manager: RolloutManager, http: httpx.Client,
                                                                clock: Clock) -> None:
    register(http)
    assert http.post("/groups/lease", json={"worker_id": "w1", "version": 0}).status_code == 409  # no weights yet
    manager.publish_weights(0, b"w")
    lease = http.post("/groups/lease", json={"worker_id": "w1", "version": 0, "max_groups": 2}).json()
    assert [(g["group_id"], g["attempt"], g["prompt_ids"]) for g in lease["groups"]] == [(0, 1, [1, 3]), (1, 1, [1, 4])]

    clock.now += 31  # group 0's and 1's leases run out; w1 is alive but slow
    assert http.post("/workers/w1/heartbeat", json={"version": 0}).status_code == 200
    manager.reap()
    register(http, "w2")
    again = http.post("/groups/lease", json={"worker_id": "w2", "version": 0}).json()["groups"]
    assert [(g["group_id"], g["attempt"]) for g in again] == [(0, 2)]
    late = http.post("/groups/0/result", json=result(attempt=1))
    assert late.status_code == 409 and "late result refused" in late.json()["detail"]
    assert http.post("/groups/0/result", json=result(attempt=2, worker="w2")).json() == {"group_id": 0,
                                                                                         "accepted": True}
    twice = http.post("/groups/0/result", json=result(attempt=2, worker="w2"))
    assert twice.status_code == 409 and "already accepted" in twice.json()["detail"]
    [group], _ = manager.book.take_ready(4, version=0)
    assert group.rewards == [2.0, 3.0] and group.source == "w2" and group.logps[1] == [-0.5] * 3


@pytest.mark.parametrize(
    ("completions", "status", "names"),
    [
        ([completion([5, EOS])], 422, "num_generations=2"),
        ([completion([5, EOS]), completion([4, 4, 4, 4], finished=False)], 422, "max_new_tokens=3"),
        ([completion([5, EOS]), completion([4, 12, 4], finished=False)], 422, "completions[1].token_ids: 12"),
        ([completion([5, EOS]), {"token_ids": [4, EOS], "logps": [-1.0], "finished": True}], 422,
         "completions[1].logps"),
        ([completion([5, EOS]), {"token_ids": [4, EOS], "logps": [-1.0, 0.5], "finished": True}], 422, "logps"),
        ([completion([5, 6]), completion([4, 4, 4], finished=False)], 422, "completions[0]: finished"),
        ([completion([5, EOS]), completion([4, EOS, 4], finished=False)], 422, "completions[1]: not finished"),
        ([completion([5, EOS]), {"token_ids": "abc", "logps": [], "finished": True}], 422, "token_ids"),
    ],
)
def test_malformed_results_are_refused_naming_the_problem_and_change_nothing(
        manager: RolloutManager, http: httpx.Client, completions: list[dict], status: int, names: str) -> None:
    register(http)
    manager.publish_weights(0, b"w")
    http.post("/groups/lease", json={"worker_id": "w1", "version": 0})
    before = manager.book.counts()
    response = http.post("/groups/0/result", json=result(attempt=1, completions=completions))
    assert response.status_code == status
    assert names in str(response.json()["detail"])
    assert manager.book.counts() == before == {"pending": 5, "leased": 1, "ready": 0, "trained": 0}


def test_wrong_group_and_stale_or_unpublished_versions_are_refused(manager: RolloutManager,
                                                                  http: httpx.Client) -> None:
    register(http)
    manager.publish_weights(0, b"w")
    http.post("/groups/lease", json={"worker_id": "w1", "version": 0})
    assert http.post("/groups/99/result", json=result(attempt=1)).status_code == 404
    assert http.post("/groups/1/result", json=result(attempt=1)).status_code == 409  # not leased to anyone
    unpublished = http.post("/groups/0/result", json=result(attempt=1, version=5))
    assert unpublished.status_code == 409 and "never published" in unpublished.json()["detail"]
    manager.publish_weights(1, b"w")
    manager.publish_weights(2, b"w")
    stale = http.post("/groups/0/result", json=result(attempt=1, version=0))
    assert stale.status_code == 409 and "max_staleness=1" in stale.json()["detail"]
    refused = http.post("/groups/lease", json={"worker_id": "w1", "version": 0})
    assert refused.status_code == 409 and "pull newer weights" in refused.json()["detail"]
    unknown = http.post("/groups/lease", json={"worker_id": "stranger", "version": 2})
    assert unknown.status_code == 404 and "register again" in unknown.json()["detail"]


def test_a_result_is_judged_stale_against_the_version_the_trainer_trains_next(manager: RolloutManager,
                                                                              http: httpx.Client) -> None:
    """The trainer may be steps ahead of the latest version it published (publishing runs behind): a
    result stale for the step it will be trained at is refused now, not accepted and dropped later."""
    training = {"version": 0}
    manager.training_version = lambda: training["version"]
    register(http)
    manager.publish_weights(0, b"w")
    http.post("/groups/lease", json={"worker_id": "w1", "version": 0, "max_groups": 2})
    assert http.post("/groups/0/result", json=result(attempt=1)).json()["accepted"]
    training["version"] = 2  # published: still 0
    stale = http.post("/groups/1/result", json=result(attempt=1))
    assert stale.status_code == 409 and "behind 2" in stale.json()["detail"]
    assert manager.book.counts() == {"pending": 5, "leased": 0, "ready": 1, "trained": 0}


def test_a_silent_worker_is_dropped_and_its_groups_requeued_one_that_leaves_gives_them_back(
        manager: RolloutManager, http: httpx.Client, clock: Clock) -> None:
    register(http, "w1")
    register(http, "w2")
    manager.publish_weights(0, b"w")
    http.post("/groups/lease", json={"worker_id": "w1", "version": 0, "max_groups": 2})
    http.post("/groups/lease", json={"worker_id": "w2", "version": 0, "max_groups": 1})
    assert {w["worker_id"]: w["groups_in_flight"] for w in manager.pool_view()} == {"w1": 2, "w2": 1}
    clock.now += manager_module.HEARTBEAT_S * 2
    assert http.post("/workers/w2/heartbeat", json={"version": 0, "tokens_per_s": 12.5}).status_code == 200
    clock.now += manager_module.HEARTBEAT_S * 2  # w1 silent for 4 beats, w2 for 2
    manager.reap()
    assert [w["worker_id"] for w in manager.pool_view()] == ["w2"]
    assert manager.book.counts() == {"pending": 5, "leased": 1, "ready": 0, "trained": 0}
    assert http.delete("/workers/w2").json() == {"worker_id": "w2", "requeued": [2]}
    assert manager.book.counts()["pending"] == 6 and manager.book.counters.requeued == 3


def test_a_pull_before_the_first_publish_waits_for_it(manager: RolloutManager, monkeypatch: pytest.MonkeyPatch) -> None:
    refused = threading.Event()
    manifest = manager.weights.manifest

    def watched(version: int | None = None) -> Any:  # the real WeightStore.manifest, observed
        try:
            return manifest(version)
        except GroupRefused:
            refused.set()
            raise

    monkeypatch.setattr(manager.weights, "manifest", watched)
    assert manager.url is not None
    with ManagerClient(manager.url, manager.secret) as client:
        with pytest.raises(NoWeightsYet, match="no weights published yet"):
            client.pull_weights(wait_s=0)
        refused.clear()
        with ThreadPoolExecutor(1) as pool:
            pull = pool.submit(client.pull_weights, wait_s=60)
            assert refused.wait(30)  # the pull was told 409 and waits
            manager.publish_weights(0, b"first weights")
            pulled = pull.result(timeout=60)
    assert (pulled.version, bytes(pulled.data)) == (0, b"first weights")


def test_chunks_are_sent_in_slices_and_arrive_whole(manager: RolloutManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "SEND_SLICE_BYTES", 10)  # several slices per 64-byte chunk, the last short
    data = bytes(range(256)) * 2 + b"odd tail"
    manager.publish_weights(5, data)
    assert manager.url is not None
    with ManagerClient(manager.url, manager.secret) as client:
        pulled = client.pull_weights(streams=3)
    assert (pulled.version, bytes(pulled.data)) == (5, data)


def test_a_batch_of_results_is_taken_item_by_item_each_saying_why_not(manager: RolloutManager,
                                                                     http: httpx.Client) -> None:
    register(http)
    manager.publish_weights(0, b"w")
    http.post("/groups/lease", json={"worker_id": "w1", "version": 0, "max_groups": 2})
    malformed = result(attempt=1, completions=[completion([5, EOS])])
    body = {"results": [[0, result(attempt=1)], [1, malformed], [4, result(attempt=1)]]}
    items = http.post("/groups/results", json=body).json()["items"]
    assert [(i["group_id"], i["accepted"], i["status"]) for i in items] == [(0, True, 200), (1, False, 422),
                                                                          (4, False, 409)]
    assert "num_generations=2" in items[1]["detail"] and "not leased" in items[2]["detail"]
    assert manager.book.counts() == {"pending": 4, "leased": 1, "ready": 1, "trained": 0}
    assert http.post("/groups/results", json={"results": []}).status_code == 422


def test_an_episode_run_leases_tasks_and_takes_only_whole_episodes(clock: Clock) -> None:
    """A run that plays episodes: each lease carries the group's reset arguments; a result needs one action
    mask entry per token and no log-probability on the environment's tokens; the environment's rewards
    reach the trainer's score."""
    sampling = SamplingSettings(num_generations=2, max_new_tokens=MAX_NEW, temperature=1.0, top_p=1.0, seed=0,
                                eos_token_id=EOS, pad_token_id=0, vocab_size=VOCAB)
    info = ManagerInfo(run_id="r", epoch=3, max_staleness=1, lease_s=30, heartbeat_s=2, sampling=sampling,
                       model=ModelSpec(config={"model_type": "llama"}), groups_total=2,
                       env={"module": "calc:make_env"}, tokenizer_files={"tokenizer.json": "{}"})
    scored: list[Any] = []

    def score(group_id: int, token_ids: list[list[int]], env_rewards: list[float | None]) -> tuple[list, dict]:
        scored.append((group_id, env_rewards))
        return [r if r is None else 2 * r for r in env_rewards], {"env": env_rewards}

    manager = RolloutManager(GroupBook(2, max_staleness=1, lease_s=30), info=info, prompt_ids=lambda g: [1],
                             score=score, clock=clock, task=lambda g: {"seed": 10 + g})
    manager.start(host="127.0.0.1", port=0, advertise="127.0.0.1")
    try:
        with httpx.Client(base_url=manager.url + PREFIX, headers={"Authorization": f"Bearer {manager.secret}"}) as http:
            register(http)
            manager.publish_weights(0, b"w")
            leased = http.post("/groups/lease", json={"worker_id": "w1", "version": 0, "max_groups": 1}).json()
            (group,) = leased["groups"]
            assert group["task"] == {"seed": 10 + group["group_id"]}

            def episode(mask: list[int] | None, logps: list[float], reward: float | None) -> dict[str, Any]:
                return {"token_ids": [5, 6, 7, EOS], "logps": logps, "finished": True, "action_mask": mask,
                        "env_reward": reward}

            good = episode([0, 1, 1, 1], [0.0, -0.5, -0.5, -0.1], 1.0)
            for bad, detail in [
                (episode(None, [0.0, -0.5, -0.5, -0.1], 1.0), "action_mask: required for an episode"),
                (episode([0, 1, 1], [0.0, -0.5, -0.5, -0.1], 1.0), "action_mask: required for an episode"),
                (episode([0, 1, 1, 1], [-0.3, -0.5, -0.5, -0.1], 1.0), "the environment's tokens carry no"),
            ]:
                answer = http.post(f"/groups/{group['group_id']}/result",
                                   json={"worker_id": "w1", "attempt": group["attempt"], "version": 0,
                                         "completions": [good, bad]})
                assert answer.status_code == 422 and detail in answer.json()["detail"]
            assert not scored  # nothing refused was scored
            answer = http.post(f"/groups/{group['group_id']}/result",
                               json={"worker_id": "w1", "attempt": group["attempt"], "version": 0,
                                     "completions": [good, episode([0, 1, 1, 1], [0.0, -1.0, -1.0, -1.0], None)]})
            assert answer.status_code == 200 and answer.json()["accepted"]
        (ready,), _ = manager.book.take_ready(1, version=0)
        assert scored == [(group["group_id"], [1.0, None])]
        assert ready.rewards == [2.0, None] and ready.action_mask == [[0, 1, 1, 1], [0, 1, 1, 1]]
    finally:
        manager.stop()
