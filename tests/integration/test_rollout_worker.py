"""The rollout worker loop against a real rollout manager (in this process, over HTTP on loopback),
with the tiny model: it waits for weights, generates exactly what the trainer's sampler would,
pulls newer versions, follows the run to a new manager (new URL and secret), and on stop
unregisters. The commander is the boundary here: a directory that says where the manager is."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from relaytrain.rollout.engine import TorchEngine  # noqa: E402
from relaytrain.rollout.manager import RolloutManager  # noqa: E402
from relaytrain.rollout.protocol import ManagerInfo, ModelSpec, SamplingSettings  # noqa: E402
from relaytrain.rollout.queue import GroupBook  # noqa: E402
from relaytrain.rollout.worker import RolloutWorker, RolloutWorkerSettings  # noqa: E402
from relaytrain.train.model_io import unique_tensors  # noqa: E402
from relaytrain.train.sampling import sample_completions  # noqa: E402
from tests.support.commander import wait_until  # noqa: E402

GROUPS = 6


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    from relaytrain.train.tiny import load_model_and_tokenizer

    return load_model_and_tokenizer("tiny", seed=0)


def weights_bytes(model: Any) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in unique_tensors(model).items()})


def prompt(tok: Any, group: int) -> list[int]:
    return tok(f"{group}+{group}=")["input_ids"]


def make_manager(tiny: tuple[Any, Any], run_epoch: int = 1) -> RolloutManager:
    model, tok = tiny
    sampling = SamplingSettings(num_generations=2, max_new_tokens=5, temperature=1.0, top_p=1.0, seed=4,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, vocab_size=len(tok))
    info = ManagerInfo(run_id="r1", epoch=run_epoch, max_staleness=1, lease_s=60, heartbeat_s=2, sampling=sampling,
                       model=ModelSpec(config=model.config.to_dict()), groups_total=GROUPS)

    def score(group_id: int, token_ids: list[list[int]]) -> tuple[list[float | None], dict[str, Any]]:
        return [0.0] * len(token_ids), {}

    manager = RolloutManager(GroupBook(GROUPS, max_staleness=1, lease_s=60), info=info,
                             prompt_ids=lambda g: prompt(tok, g), score=score)
    manager.weights.chunk_bytes = 256 << 10
    manager.start(host="127.0.0.1", port=0, advertise="127.0.0.1")
    return manager


class Endpoint:
    def __init__(self, manager: RolloutManager) -> None:
        self.url, self.secret = manager.url, manager.secret


class Directory:
    """What the commander would answer: one run, its manager now."""

    def __init__(self, manager: RolloutManager | None) -> None:
        self.manager = manager
        self.registrations: list[str | None] = []

    def runs(self) -> list[Any]:
        return []

    def endpoint(self, run_id: str) -> Any | None:
        return Endpoint(self.manager) if self.manager is not None and run_id == "r1" else None

    def register(self, worker_id: str, labels: dict[str, str], run_id: str | None) -> None:
        self.registrations.append(run_id)


@pytest.fixture
def started(tiny) -> Iterator[tuple[RolloutManager, Directory, RolloutWorker, threading.Thread]]:
    manager = make_manager(tiny)
    directory = Directory(manager)
    settings = RolloutWorkerSettings(worker_id="rw-1", run_id="r1", max_groups=2, poll_s=0.05, backoff_max_s=0.2,
                                     register_every_s=0.5)
    worker = RolloutWorker(settings, directory, engine_factory=lambda: TorchEngine(threads=1, device="cpu"))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    thread.start()
    yield manager, directory, worker, thread
    worker.stop()
    thread.join(timeout=60)
    for each in {manager, directory.manager} - {None}:
        each.stop()


def expected(tiny: tuple[Any, Any], manager: RolloutManager, group: int, version: int) -> list[list[int]]:
    model, tok = tiny
    s = manager.info.sampling
    batch = sample_completions(model, [prompt(tok, group)], prompt_keys=[group], num_generations=s.num_generations,
                               seed=s.seed, step=version, eos_token_id=s.eos_token_id, pad_token_id=s.pad_token_id,
                               max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
    return [batch.completion_ids[r, : int(batch.completion_mask[r].sum())].tolist() for r in range(s.num_generations)]


def test_the_worker_generates_what_the_trainer_would_then_stops_cleanly(tiny, started):
    manager, directory, worker, thread = started
    wait_until(lambda: "rw-1" in manager.workers, timeout_s=60, what="the worker registers with the manager")
    assert manager.book.counts()["leased"] == 0  # no weights yet: nothing leased
    manager.publish_weights(0, weights_bytes(tiny[0]))
    wait_until(lambda: manager.book.counts()["ready"] == GROUPS, timeout_s=120, what="every group generated")
    ready, stale = manager.book.take_ready(GROUPS, version=0)
    assert not stale and [g.group_id for g in ready] == list(range(GROUPS))
    for group in ready:
        assert group.source == "rw-1" and group.version == 0
        assert group.token_ids == expected(tiny, manager, group.group_id, 0)
    assert "r1" in directory.registrations
    worker.stop()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert "rw-1" not in manager.workers  # it said goodbye (DELETE workers/rw-1)
    assert worker.stats["groups_posted"] == GROUPS and worker.stats["pulls"] == 1


def test_newer_weights_are_pulled_and_a_moved_run_is_followed(tiny, started):
    manager, directory, worker, thread = started
    manager.publish_weights(0, weights_bytes(tiny[0]))
    wait_until(lambda: manager.book.counts()["ready"] == GROUPS, timeout_s=120, what="every group generated")
    changed = {k: v + 0.01 for k, v in unique_tensors(tiny[0]).items()}
    from safetensors.torch import save

    manager.publish_weights(1, save({k: v.contiguous() for k, v in changed.items()}))
    wait_until(lambda: worker.stats["pulls"] == 2, timeout_s=60, what="the worker pulls v1")
    assert manager.workers["rw-1"].version in (0, 1)

    # the run is handed to another machine: a new manager, URL and secret; the old one is gone
    second = make_manager(tiny, run_epoch=2)
    second.publish_weights(3, weights_bytes(tiny[0]))
    directory.manager = second
    manager.stop()
    wait_until(lambda: second.book.counts()["ready"] == GROUPS, timeout_s=120, what="the worker serves the new manager")
    ready, _ = second.book.take_ready(GROUPS, version=3)
    assert {g.version for g in ready} == {3}
    assert ready[0].token_ids == expected(tiny, second, 0, 3)
    assert worker.stats["sessions"] == 2


class ViewKeepingEngine(TorchEngine):
    """The built-in engine, doing what the ``Engine`` contract allows: keep views of the tensors it is
    handed while it holds their version. Notes which buffer each version came in, and whether the
    tensors of the version it held were changed under it before it was handed the next one."""

    def __init__(self) -> None:
        super().__init__(threads=1, device="cpu")
        self.buffer_of: dict[int, int] = {}
        self.changed_under_it: list[int] = []
        self._held: tuple[int, Any, dict[str, Any]] | None = None

    def set_weights(self, version: int, tensors: Any) -> None:
        if self._held is not None:
            held_version, views, copies = self._held
            if any(not torch.equal(views[k], copies[k]) for k in copies):
                self.changed_under_it.append(held_version)
        super().set_weights(version, tensors)
        self._held = (version, tensors, {k: v.clone() for k, v in tensors.items()})
        self.buffer_of[version] = min(t.data_ptr() for t in tensors.values())


def test_two_pull_buffers_alternate_and_the_held_version_is_never_overwritten(tiny):
    manager = make_manager(tiny)
    engine = ViewKeepingEngine()
    settings = RolloutWorkerSettings(worker_id="rw-1", run_id="r1", max_groups=2, poll_s=0.05, backoff_max_s=0.2,
                                     register_every_s=0.5)
    worker = RolloutWorker(settings, Directory(manager), engine_factory=lambda: engine)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        from safetensors.torch import save

        base = unique_tensors(tiny[0])
        for version in range(4):  # same size each time: the pulls reuse buffers
            manager.publish_weights(version, save({k: (v + 0.01 * version).contiguous() for k, v in base.items()}))
            wait_until(lambda v=version: engine.version == v, timeout_s=60, what=f"the worker swaps to v{version}")
        assert engine.changed_under_it == []
        buffers = engine.buffer_of
        assert buffers[0] != buffers[1] and buffers[2] == buffers[0] and buffers[3] == buffers[1]
    finally:
        worker.stop()
        thread.join(timeout=60)
        manager.stop()
