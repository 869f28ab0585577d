"""Reward functions: the built-ins' edge cases, loading user functions, weighting and None."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from relaytrain.config import RewardSpec
from relaytrain.errors import ConfigError
from relaytrain.train.rewards import (
    correctness,
    extract_answer,
    keyword_match,
    load_reward,
    load_rewards,
    score_completions,
    strict_format,
)


def test_correctness_trims_whitespace_and_compares_exactly() -> None:
    completions = ["46", " 46\n", "46 ", "047", "4 6", "", "46\n47"]
    scores = correctness([""] * 7, completions, answer=["46"] * 7)
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_correctness_normalises_unicode_on_both_sides() -> None:
    decomposed, composed = "cafe\u0301", "caf\u00e9"  # é as e + combining acute, and as one code point
    assert correctness(["q"], [decomposed], answer=[composed]) == [1.0]
    assert correctness(["q"], [composed + " "], answer=[decomposed]) == [1.0]
    assert correctness(["q"], ["日本"], answer=["日本"]) == [1.0]
    assert correctness(["q"], ["日本語"], answer=["日本"]) == [0.0]


def test_correctness_reads_the_answer_tag_for_r1_and_needs_it() -> None:
    completions = [
        "<think>7+5 is 12</think><answer>12</answer>",
        "<think>\nhm\n</think>\n<answer>\n 12 \n</answer>\n",
        "12",  # no tags: no answer under r1
        "<think>x</think><answer>12",  # unclosed tag
        "<answer>13</answer><answer>12</answer>",  # the first answer counts, as evaluation reads it
        "",
    ]
    scores = correctness([""] * 6, completions, answer=["12"] * 6, template=["r1"] * 6)
    assert scores == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert extract_answer("<answer>12</answer>", "deepseek") == "12"
    assert extract_answer("12", "r1") is None
    # the generic template takes the whole completion, tags and all
    assert correctness([""], ["<answer>12</answer>"], answer=["12"], template="generic") == [0.0]


def test_correctness_without_an_answer_has_no_opinion_and_without_the_column_fails() -> None:
    assert correctness(["q", "q"], ["1", "2"], answer=[None, "2"]) == [None, 1.0]
    with pytest.raises(ConfigError, match="'answer' column"):
        correctness(["q"], ["1"])
    with pytest.raises(ConfigError, match="one value per completion"):
        correctness(["q", "q"], ["1", "2"], answer=["1"])


def test_keyword_match_is_the_case_insensitive_fraction_of_keywords_found() -> None:
    completions = ["Paris is in FRANCE", "Paris, of course", "London", "", "straße"]
    keywords = [["paris", "France"], ["Paris", "France"], ["Paris"], ["x"], "STRASSE"]
    assert keyword_match([""] * 5, completions, keywords=keywords) == [1.0, 0.5, 0.0, 0.0, 1.0]
    assert keyword_match([""] * 3, ["a", "b", "c"], keywords=[[], None, ["  "]]) == [None, None, None]
    with pytest.raises(ConfigError, match="'keywords' column"):
        keyword_match(["q"], ["a"])


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("Q", "<think>a+b</think><answer>3</answer>", 1.0),  # the r1 template's own target
        ("Q", "<think>\nreason\n</think>\n<answer>\n3\n</answer>\n", 1.0),  # DeepSeek-R1 layout
        ("Q", "<think></think><answer></answer>", 1.0),
        ("Q", "<think>a</think><answer>3</answer> extra", 0.0),
        ("Q", "so <think>a</think><answer>3</answer>", 0.0),
        ("Q", "<think>a</think>\n\n<answer>3</answer>", 0.0),  # one newline at most between tags
        ("Q", "<answer>3</answer>", 0.0),
        ("Q", "<think>a</think>", 0.0),
        ("Q", "<think>a<think>b</think><answer>3</answer>", 0.0),  # nested tag
        ("Q", "<think>a</think><answer>3</answer><answer>4</answer>", 0.0),
        ("Q", "", 0.0),
        ("Assistant: <think>", "a</think><answer>3</answer>", 1.0),  # prompt opened the think tag
        ("Assistant: <think>\n", "a\n</think>\n<answer>\n3\n</answer>", 1.0),
        ("Q", "<think>ünïcödé 思考</think><answer>3</answer>", 1.0),
    ],
)
def test_strict_format(prompt: str, completion: str, expected: float) -> None:
    assert strict_format([prompt], [completion]) == [expected]


# ---------------------------------------------------------------- loading


@pytest.fixture
def reward_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real module on sys.path with a sync, an async and a broken reward function."""
    source = """
        import asyncio

        def length(prompts, completions, **kwargs):
            return [float(len(c)) for c in completions]

        async def shouted(prompts, completions, **kwargs):
            await asyncio.sleep(0)
            return [1.0 if c.isupper() else None for c in completions]

        def half_none(prompts, completions, **kwargs):
            return [None if i % 2 else 0.5 for i in range(len(completions))]

        def wrong_length(prompts, completions, **kwargs):
            return [1.0]

        def not_a_number(prompts, completions, **kwargs):
            return ["yes" for _ in completions]

        def with_nan(prompts, completions, **kwargs):
            return [float("nan") for _ in completions]

        NOT_CALLABLE = 3
    """
    name = f"user_rewards_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    (tmp_path / "broken_rewards_mod.py").write_text("import a_module_that_does_not_exist_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_builtins_load_by_name_with_their_weights() -> None:
    rewards = load_rewards([RewardSpec(name="correctness", weight=2.0), RewardSpec(name="strict_format")])
    assert [(r.name, r.weight, r.function) for r in rewards] == [
        ("correctness", 2.0, correctness),
        ("strict_format", 1.0, strict_format),
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_xyz:reward", "'no_such_module_xyz:reward' cannot be imported"),
        (
            "broken_rewards_mod:reward",
            "'broken_rewards_mod:reward' cannot be imported.*a_module_that_does_not",
        ),
        ("{mod}:missing", "'{mod}:missing' cannot be imported: {mod} has no 'missing'"),
        ("{mod}:NOT_CALLABLE", "'{mod}:NOT_CALLABLE' is not callable"),
        ("correctnes", "'correctnes' is unknown"),
        ("missing_file_xyz.py:f", "'missing_file_xyz.py:f' cannot be imported: no file"),
    ],
)
def test_a_reward_that_cannot_be_imported_is_a_config_error_naming_it(
    reward_module: str, name: str, message: str
) -> None:
    name, message = name.format(mod=reward_module), message.format(mod=reward_module)
    with pytest.raises(ConfigError, match=message):
        load_rewards([RewardSpec(name="correctness"), RewardSpec(name=name)])


def test_a_reward_named_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="correctness named more than once"):
        load_rewards([RewardSpec(name="correctness"), RewardSpec(name="correctness", weight=2)])


def test_module_function_and_file_path_rewards_load(reward_module: str, tmp_path: Path) -> None:
    reward = load_reward(RewardSpec(name=f"{reward_module}:length"))
    assert reward.function(["p"], ["abc"]) == [3.0] and not reward.is_async
    from_file = load_reward(RewardSpec(name=f"{tmp_path / reward_module}.py:shouted"))
    assert from_file.is_async


def test_scores_are_weighted_and_none_only_when_every_function_abstains(reward_module: str) -> None:
    rewards = load_rewards(
        [
            RewardSpec(name="correctness", weight=2.0),
            RewardSpec(name=f"{reward_module}:shouted", weight=0.5),  # async
            RewardSpec(name=f"{reward_module}:half_none", weight=-1.0),
        ]
    )
    completions = ["AB", "ab", "AB", "x"]
    scores = score_completions(rewards, ["p"] * 4, completions, answer=["AB", "AB", None, None])
    assert scores.per_function == {
        "correctness": [1.0, 0.0, None, None],
        f"{reward_module}:shouted": [1.0, None, 1.0, None],
        f"{reward_module}:half_none": [0.5, None, 0.5, None],
    }
    # 2*1 + 0.5*1 - 0.5;  2*0;  0.5*1 - 0.5;  nobody scored the last one
    assert scores.total == [2.0, 0.0, 0.0, None]


def test_nan_counts_as_none_and_bad_return_values_are_config_errors(reward_module: str) -> None:
    nan = load_rewards([RewardSpec(name=f"{reward_module}:with_nan")])
    assert score_completions(nan, ["p"], ["c"]).total == [None]
    for bad, message in (("wrong_length", "list of 2 floats"), ("not_a_number", "returned 'yes'")):
        rewards = load_rewards([RewardSpec(name=f"{reward_module}:{bad}")])
        with pytest.raises(ConfigError, match=message):
            score_completions(rewards, ["p", "p"], ["a", "b"])


def test_empty_batch_scores_to_empty_lists(reward_module: str) -> None:
    rewards = load_rewards([RewardSpec(name="correctness"), RewardSpec(name=f"{reward_module}:shouted")])
    scores = score_completions(rewards, [], [], answer=[])
    assert scores.total == [] and all(v == [] for v in scores.per_function.values())
