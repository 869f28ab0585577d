"""Training data: built-in synthetic datasets, file loaders, and a resumable data cursor.

Built-in datasets (deterministic by seed, train and test splits disjoint by construction):

- ``arithmetic``: 2-digit addition, prompt ``"12+7="``, completion ``"19"`` (all 10,000
  pairs ``a+b`` with ``0 ≤ a, b ≤ 99``; 500 held out for test).
- ``reverse``: reverse a short lowercase string, prompt ``"rev abc="``, completion ``"cba"``.

Files (``DataConfig.path``): JSON Lines (``.jsonl``, or ``.json``), a JSON array of records
(``.json``), Parquet (needs ``pyarrow``) or a folder saved by ``datasets`` (needs
``datasets``), holding records of one of these shapes: ``prompt`` / ``completion``;
``messages`` (chat; the last assistant message is the completion); ``question`` /
``answer`` (a GSM8K-style ``#### 42`` tail becomes the short answer); and TRL's GRPO shape,
``prompt`` (text or chat messages) with an answer column (``answer``, ``solution`` or
``ground_truth``). Every other column is kept (``Example.extra``) and handed to reward
functions as a keyword argument, as TRL does.

Public API:

- ``Example``: one normalised record; ``normalize_record(record, where)``; ``extra_columns(examples)``.
- ``BUILTIN_DATASETS``, ``builtin_dataset(name, split, seed, size=None)``.
- ``read_records(path, split)``: the raw records of a file or ``datasets`` folder.
- ``load_examples(data: DataConfig, split)``: built-in or file, as ``Example``s.
- ``DataCursor(num_examples, seed)``: shuffled order per (seed, data epoch), a resumable
  position, ``next_indices(k)``, ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import json
import random
import string
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from relaytrain.config import DataConfig
from relaytrain.errors import ConfigError

Split = Literal["train", "test"]
BUILTIN_DATASETS: tuple[str, ...] = ("arithmetic", "reverse")
TEST_SIZE = 500
"""Held-out examples in each built-in dataset's test split."""
REVERSE_SIZE = 5000
"""Distinct strings in the built-in ``reverse`` dataset (train + test)."""


@dataclass(frozen=True)
class Example:
    """One training or evaluation record, whatever its file shape.

    ``prompt`` is the question as plain text, ``completion`` the full target text,
    ``answer`` the short ground truth (what exact match and rewards compare with),
    ``reasoning`` an optional worked solution (used as the r1 ``<think>`` part),
    ``messages`` the chat messages of the prompt (no final assistant turn), when the
    record was chat-shaped, ``extra`` the record's other columns (for reward functions).
    """

    prompt: str
    completion: str
    answer: str
    reasoning: str = ""
    messages: tuple[dict[str, str], ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def extra_columns(examples: list[Example]) -> dict[str, list[Any]]:
    """The records' extra columns (``Example.extra``), one list each, one value per record (the
    GRPO trainer hands them to the reward functions, one per completion)."""
    extras = [e.extra for e in examples]
    names = sorted({k for extra in extras for k in extra} - {"answer", "reasoning", "template"})
    return {name: [extra.get(name) for extra in extras] for name in names}


ANSWER_COLUMNS = ("answer", "solution", "ground_truth")
"""The columns a prompt-only (GRPO, TRL-style) record may hold its ground truth in, in order."""
_SHAPE_COLUMNS = frozenset({"prompt", "completion", "messages", "question", "answer", "reasoning"})


def _messages(value: Any, where: str, field_name: str) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in value):
        raise ConfigError(f"{where}: {field_name!r} must be a list of {{role, content}} messages")
    return tuple({"role": str(m["role"]), "content": str(m["content"])} for m in value)


def _short_answer(full: str) -> str:
    """A GSM8K-style ``… #### 42`` answer's tail; any other answer stripped."""
    return full.rsplit("####", 1)[1].strip() if "####" in full else full.strip()


def normalize_record(record: dict[str, Any], where: str = "record") -> Example:
    """Turn a raw record (prompt/completion, messages, question/answer, or a prompt with an
    answer column) into an ``Example``; columns beyond its shape go to ``Example.extra``.

    Raises ``ConfigError`` naming ``where`` when the record has none of the known shapes.
    """
    if not isinstance(record, dict):
        raise ConfigError(f"{where}: a record must be an object, got {type(record).__name__}")
    reasoning = str(record.get("reasoning") or "")
    extra = {k: v for k, v in record.items() if k not in _SHAPE_COLUMNS}
    if "prompt" in record and "completion" in record:
        completion = str(record["completion"])
        answer = str(record.get("answer", completion))
        return Example(str(record["prompt"]), completion, answer, reasoning, extra=extra)
    if "messages" in record:
        messages = _messages(record["messages"], where, "messages")
        if len(messages) < 2 or messages[-1]["role"] != "assistant":
            raise ConfigError(
                f"{where}: 'messages' must be a list of {{role, content}} ending with an assistant message"
            )
        completion = messages[-1]["content"]
        prompt = "\n".join(m["content"] for m in messages[:-1] if m["role"] != "system")
        return Example(prompt, completion, str(record.get("answer", completion)), reasoning, messages[:-1], extra)
    if "question" in record and "answer" in record:
        full = str(record["answer"])
        if "####" in full and not reasoning:
            reasoning = full.rsplit("####", 1)[0].strip()
        return Example(str(record["question"]), full, _short_answer(full), reasoning, extra=extra)
    column = next((c for c in ANSWER_COLUMNS if c in record), None)
    if "prompt" in record and column is not None:
        full, prompt = str(record[column]), record["prompt"]
        if "####" in full and not reasoning:
            reasoning = full.rsplit("####", 1)[0].strip()
        if isinstance(prompt, list):  # TRL's conversational prompt
            messages = _messages(prompt, where, "prompt")
            text = "\n".join(m["content"] for m in messages if m["role"] != "system")
            return Example(text, full, _short_answer(full), reasoning, messages, extra)
        return Example(str(prompt), full, _short_answer(full), reasoning, extra=extra)
    raise ConfigError(f"{where}: expected fields prompt/completion, messages, question/answer, or prompt with "
                      f"one of {'/'.join(ANSWER_COLUMNS)}; got {sorted(record)}")


def builtin_dataset(name: str, split: Split = "train", seed: int = 0, size: int | None = None) -> list[Example]:
    """A built-in synthetic dataset's split, the same for the same seed.

    ``size`` keeps only the first ``size`` examples of the split (handy for tests).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split: must be 'train' or 'test', got {split!r}")
    if name == "arithmetic":
        pairs = [(a, b) for a in range(100) for b in range(100)]
        random.Random(f"arithmetic:{seed}").shuffle(pairs)
        chosen = pairs[:TEST_SIZE] if split == "test" else pairs[TEST_SIZE:]
        examples = [Example(f"{a}+{b}=", str(a + b), str(a + b), f"{a}+{b}={a + b}") for a, b in chosen]
    elif name == "reverse":
        words = _distinct_words(random.Random(f"reverse:{seed}"), REVERSE_SIZE)
        chosen = words[:TEST_SIZE] if split == "test" else words[TEST_SIZE:]
        examples = [Example(f"rev {w}=", w[::-1], w[::-1]) for w in chosen]
    else:
        raise ConfigError(f"data.builtin: unknown dataset {name!r} (one of: {', '.join(BUILTIN_DATASETS)})")
    return examples if size is None else examples[:size]


def _distinct_words(rng: random.Random, count: int) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < count:
        length = rng.randint(3, 8)
        seen.setdefault("".join(rng.choice(string.ascii_lowercase) for _ in range(length)), None)
    return list(seen)


def read_records(path: str | Path, split: Split = "train") -> list[dict[str, Any]]:
    """The raw records of a JSONL file, a Parquet file or a ``datasets`` folder.

    ``split`` picks the split of a saved ``DatasetDict``; a single file is one split and is
    returned whole whatever ``split`` says.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"data.path: no such file or folder: {path}")
    if path.is_dir():
        return _read_datasets_folder(path, split)
    suffix = path.suffix.lower()
    if suffix == ".json" and _starts_with_array(path):
        return _read_json_array(path)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ConfigError("data.path: reading Parquet needs pyarrow (pip install pyarrow)") from exc
        return pq.read_table(path).to_pylist()
    raise ConfigError(f"data.path: unsupported file type {suffix or '(none)'} (use .jsonl, .parquet or a folder)")


def _starts_with_array(path: Path) -> bool:
    """True if the file's first non-blank character is ``[`` (a JSON array, not JSON Lines)."""
    with path.open(encoding="utf-8") as handle:
        while chunk := handle.read(4096):
            if stripped := chunk.lstrip():
                return stripped.startswith("[")
    return False


def _read_json_array(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data.path: {path}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    return records


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"data.path: {path}:{number}: not valid JSON: {exc.msg}") from exc
    return records


def _read_datasets_folder(path: Path, split: Split) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            f"data.path: {path} is a folder; reading a saved dataset needs `datasets` (pip install datasets)"
        ) from exc
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.path: {path} is not a dataset saved with save_to_disk: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ConfigError(f"data.path: {path} has no split {split!r} (has: {', '.join(loaded)})")
        loaded = loaded[split]
    return [dict(row) for row in loaded]


def load_examples(data: DataConfig, split: Split = "train", size: int | None = None) -> list[Example]:
    """The examples a run trains (``split="train"``) or evaluates on (``"test"``)."""
    if data.builtin is not None:
        return builtin_dataset(data.builtin, split, data.seed, size)
    assert data.path is not None  # DataConfig guarantees one source
    records = read_records(data.path, split)
    if not records:
        raise ConfigError(f"data.path: {data.path} holds no records")
    examples = [normalize_record(r, f"data.path: {data.path}: record {i}") for i, r in enumerate(records)]
    return examples if size is None else examples[:size]


class DataCursor:
    """Which examples come next: a fresh shuffle per data epoch, and a resumable position.

    The order of data epoch ``e`` is a permutation drawn from ``(seed, e)`` alone, so a
    cursor restored from ``state_dict()`` continues with exactly the indices the original
    would have produced, across data-epoch boundaries too.
    """

    def __init__(self, num_examples: int, seed: int = 0) -> None:
        if num_examples < 1:
            raise ConfigError("data: the dataset is empty")
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order: list[int] | None = None
        self._orders: dict[int, list[int]] = {}
        """Permutations ``index_at`` read, a few epochs at most."""
        self._orders_lock = threading.Lock()

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_examples))
        random.Random(f"cursor:{self.seed}:{epoch}").shuffle(order)
        return order

    def next_indices(self, count: int) -> list[int]:
        """The next ``count`` example indices, wrapping into the next data epoch as needed."""
        indices: list[int] = []
        while len(indices) < count:
            if self._order is None:
                self._order = self._permutation(self.epoch)
            take = min(count - len(indices), self.num_examples - self.position)
            indices.extend(self._order[self.position : self.position + take])
            self.position += take
            if self.position == self.num_examples:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return indices

    def index_at(self, position: int) -> int:
        """The example at ``position`` of the data order (what ``next_indices`` hands out there),
        whatever the cursor's own position: the rollout pool's group ``g`` is this example."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        epoch, offset = divmod(position, self.num_examples)
        with self._orders_lock:  # the rollout manager's threads ask too
            order = self._orders.get(epoch)
            if order is None:
                order = self._permutation(epoch)
                while len(self._orders) >= 4:
                    self._orders.pop(next(iter(self._orders)))
                self._orders[epoch] = order
        return order[offset]

    @property
    def examples_seen(self) -> int:
        """Examples handed out since the start of training."""
        return self.epoch * self.num_examples + self.position

    def state_dict(self) -> dict[str, int]:
        """A JSON-safe snapshot: ``num_examples``, ``seed``, ``epoch``, ``position``."""
        return {
            "num_examples": self.num_examples,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a snapshot; refuse one taken over a different dataset or seed."""
        if int(state["num_examples"]) != self.num_examples or int(state["seed"]) != self.seed:
            raise ConfigError(
                f"data: the checkpoint's cursor was for {state['num_examples']} examples with seed "
                f"{state['seed']}; this run has {self.num_examples} with seed {self.seed} (dataset changed)"
            )
        position = int(state["position"])
        if not 0 <= position < self.num_examples:
            raise ConfigError(f"data: cursor position {position} out of range")
        self.epoch, self.position, self._order = int(state["epoch"]), position, None
