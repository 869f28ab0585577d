"""Built-in datasets, file loaders, templates and the resumable data cursor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relaytrain.config import DataConfig
from relaytrain.errors import ConfigError
from relaytrain.train.data import (
    TEST_SIZE,
    DataCursor,
    Example,
    builtin_dataset,
    load_examples,
    normalize_record,
    read_records,
)
from relaytrain.train.templates import extract_answer, render


@pytest.mark.parametrize("name", ["arithmetic", "reverse"])
def test_builtin_is_deterministic_by_seed_with_disjoint_splits(name: str) -> None:
    train, test = builtin_dataset(name, "train", seed=7), builtin_dataset(name, "test", seed=7)
    assert train == builtin_dataset(name, "train", seed=7)
    assert train != builtin_dataset(name, "train", seed=8)
    assert len(test) == TEST_SIZE and len(train) > 4 * TEST_SIZE
    assert not {e.prompt for e in train} & {e.prompt for e in test}
    assert len({e.prompt for e in train}) == len(train)


def test_arithmetic_examples_are_correct() -> None:
    for example in builtin_dataset("arithmetic", "test", seed=0)[:50]:
        a, b = example.prompt.removesuffix("=").split("+")
        assert example.completion == example.answer == str(int(a) + int(b))
        assert 0 <= int(a) <= 99 and 0 <= int(b) <= 99
    rev = builtin_dataset("reverse", "train", size=3)
    assert len(rev) == 3 and all(e.prompt == f"rev {e.answer[::-1]}=" for e in rev)


def test_unknown_builtin_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="data.builtin"):
        load_examples(DataConfig(builtin="sorting"))


def test_record_shapes() -> None:
    assert normalize_record({"prompt": "p", "completion": "c"}) == Example("p", "c", "c")
    chat = normalize_record(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    )
    assert chat.prompt == "2+2?" and chat.completion == "4" and chat.messages is not None
    assert len(chat.messages) == 2
    gsm = normalize_record({"question": "q", "answer": "3 apples and 4 #### 7"})
    assert gsm.answer == "7" and gsm.reasoning == "3 apples and 4"
    with pytest.raises(ConfigError, match="record 3"):
        normalize_record({"text": "x"}, "record 3")


def test_jsonl_file_and_missing_formats(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}?", "completion": str(i)}) for i in range(5)) + "\n")
    examples = load_examples(DataConfig(path=str(path)))
    assert [e.answer for e in examples] == ["0", "1", "2", "3", "4"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": 1\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        read_records(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(ConfigError, match="pyarrow"):
            read_records(tmp_path / "x.parquet")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="datasets"):
            read_records(tmp_path)


def test_templates() -> None:
    example = Example("12+7=", "19", "19", "12+7=19")
    assert render(example, "generic").prompt == "12+7="
    r1 = render(example, "deepseek")
    assert "<think>" in r1.prompt and r1.prompt.endswith("Assistant: ") and "12+7=" in r1.prompt
    assert r1.completion == "<think>12+7=19</think><answer>19</answer>"
    assert extract_answer(" <think>hm</think><answer> 19 </answer>", "r1") == "19"
    assert extract_answer("no tags", "r1") == ""
    with pytest.raises(ConfigError, match="chat"):
        render(example, "chat")
    with pytest.raises(ConfigError, match="data.template"):
        render(example, "alpaca")


def test_chat_template_uses_the_tokenizer() -> None:
    pytest.importorskip("transformers")
    from relaytrain.train.tiny import build_char_tokenizer

    sample = render(Example("hi", "yo", "yo"), "chat", build_char_tokenizer())
    assert sample.prompt == "user: hi\nassistant: " and not sample.add_special_tokens


def test_cursor_covers_each_epoch_once_with_a_fresh_order() -> None:
    cursor = DataCursor(10, seed=3)
    first, second = cursor.next_indices(10), cursor.next_indices(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second
    assert (cursor.epoch, cursor.position, cursor.examples_seen) == (2, 0, 20)
    assert DataCursor(10, seed=3).next_indices(10) == first


def test_cursor_resumes_exactly_across_an_epoch_boundary() -> None:
    straight = DataCursor(7, seed=1)
    expected = [straight.next_indices(3) for _ in range(10)]
    original = DataCursor(7, seed=1)
    got = [original.next_indices(3) for _ in range(2)]
    state = json.loads(json.dumps(original.state_dict()))  # as saved in trainer_state.json
    assert state == {"num_examples": 7, "seed": 1, "epoch": 0, "position": 6}
    resumed = DataCursor(7, seed=1)
    resumed.load_state_dict(state)
    got += [resumed.next_indices(3) for _ in range(8)]  # the first batch straddles epochs 0 and 1
    assert got == expected


def test_cursor_refuses_a_different_dataset() -> None:
    with pytest.raises(ConfigError, match="dataset changed"):
        DataCursor(8, seed=1).load_state_dict(DataCursor(7, seed=1).state_dict())


def test_a_json_array_file_loads_like_json_lines(tmp_path: Path) -> None:
    records = [{"prompt": "1+1=", "completion": "2"}]
    (tmp_path / "one.json").write_text(json.dumps(records))
    (tmp_path / "lines.json").write_text(json.dumps(records[0]) + "\n")
    (tmp_path / "pretty.json").write_text("\n  " + json.dumps(records * 3, indent=2))
    assert read_records(tmp_path / "one.json") == records
    assert read_records(tmp_path / "lines.json") == records
    assert read_records(tmp_path / "pretty.json") == records * 3
    (tmp_path / "broken.json").write_text('[{"prompt": 1,\n')
    with pytest.raises(ConfigError, match="broken.json:2: not valid JSON"):
        read_records(tmp_path / "broken.json")
    (tmp_path / "scalars.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="record 0: a record must be an object, got int"):
        load_examples(DataConfig(path=str(tmp_path / "scalars.json")))


@pytest.mark.parametrize("column", ["answer", "solution", "ground_truth"])
def test_trl_grpo_records_keep_their_extra_columns(column: str) -> None:
    example = normalize_record({"prompt": "12+7=", column: "19", "difficulty": 2, "source": "synthetic"})
    assert (example.prompt, example.answer, example.completion) == ("12+7=", "19", "19")
    expected = {"difficulty": 2, "source": "synthetic"} | ({} if column == "answer" else {column: "19"})
    assert dict(example.extra) == expected


def test_a_trl_conversational_prompt_becomes_messages() -> None:
    example = normalize_record({"prompt": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "2+2?"}], "solution": "so #### 4"})
    assert example.prompt == "2+2?" and example.answer == "4" and example.reasoning == "so"
    assert example.messages == ({"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"})
    with pytest.raises(ConfigError, match="'prompt' must be a list of"):
        normalize_record({"prompt": [{"content": "no role"}], "answer": "1"}, "record 0")


def test_index_at_is_the_data_order_across_epochs_whatever_the_cursors_position() -> None:
    from relaytrain.train.data import DataCursor

    walking, asked = DataCursor(7, seed=3), DataCursor(7, seed=3)
    asked.next_indices(5)  # its own position does not matter
    order = walking.next_indices(7 * 6)
    assert [asked.index_at(p) for p in reversed(range(7 * 6))] == list(reversed(order))
    assert sorted(order[7:14]) == list(range(7)) and order[:7] != order[7:14]  # each epoch: a fresh shuffle
    with pytest.raises(ValueError, match="position"):
        asked.index_at(-1)
