"""The retention rule, ``steps_to_keep``, and its one validation, ``check_retention``."""

from __future__ import annotations

import pytest

from relaytrain.checkpoint import check_retention, steps_to_keep

CASES = [
    # steps, keep_last, keep_every, protect, kept
    pytest.param([], 3, None, (), [], id="nothing-stored"),
    pytest.param([10, 20, 30], 0, None, (), [], id="keep_last-0-keeps-nothing"),
    pytest.param([10, 20, 30], 1, None, (), [30], id="keep_last-1"),
    pytest.param([10, 20, 30, 40, 50], 3, None, (), [30, 40, 50], id="keep_last-N"),
    pytest.param([10, 20, 30], 5, None, (), [10, 20, 30], id="keep_last-more-than-stored"),
    pytest.param(list(range(1, 11)), 2, 4, (), [4, 8, 9, 10], id="keep_every"),
    pytest.param(list(range(1, 11)), 0, 5, (), [5, 10], id="keep_every-alone"),
    pytest.param([10, 20, 30, 40], 1, None, {20}, [20, 40], id="protect-newest-durable"),
    pytest.param([10, 20, 30, 40], 1, None, {10, 30}, [10, 30, 40], id="protect-durable-and-best"),
    pytest.param([10, 20], 1, None, {99}, [20], id="protect-absent-step-not-added"),
    pytest.param([50, 10, 40, 20, 30], 2, None, (), [40, 50], id="unsorted"),
    pytest.param([30, 10, 30, 20, 10, 30], 2, None, (), [20, 30], id="duplicates"),
    pytest.param([30, 10, 30, 20], 0, 10, [20, 20], [10, 20, 30], id="duplicates-everywhere"),
]


@pytest.mark.parametrize(("steps", "keep_last", "keep_every", "protect", "kept"), CASES)
def test_steps_to_keep(steps, keep_last, keep_every, protect, kept) -> None:
    assert steps_to_keep(steps, keep_last, keep_every, protect) == kept


def test_steps_to_keep_takes_any_iterable() -> None:
    assert steps_to_keep(iter([3, 1, 2]), 1, protect=iter([1])) == [1, 3]


BAD = [
    pytest.param(-1, None, "keep_last must be an integer >= 0, got -1", id="keep_last-negative"),
    pytest.param(2.0, None, "keep_last must be an integer >= 0, got 2.0", id="keep_last-float"),
    pytest.param(True, None, "keep_last must be an integer >= 0, got True", id="keep_last-bool"),
    pytest.param("3", None, "keep_last must be an integer >= 0, got '3'", id="keep_last-str"),
    pytest.param(3, 0, "keep_every must be an integer >= 1 or None, got 0", id="keep_every-0"),
    pytest.param(3, -5, "keep_every must be an integer >= 1 or None, got -5", id="keep_every-negative"),
    pytest.param(3, 2.5, "keep_every must be an integer >= 1 or None, got 2.5", id="keep_every-float"),
]


@pytest.mark.parametrize(("keep_last", "keep_every", "message"), BAD)
def test_bad_values_are_named(keep_last, keep_every, message) -> None:
    with pytest.raises(ValueError) as caught:
        steps_to_keep([1, 2, 3], keep_last, keep_every)
    assert str(caught.value) == message
    with pytest.raises(ValueError) as caught:
        check_retention(keep_last, keep_every)
    assert str(caught.value) == message


def test_zero_is_refused_where_the_newest_is_kept_anyway() -> None:
    check_retention(0, None)
    with pytest.raises(ValueError, match=r"keep_last must be an integer >= 1, got 0"):
        check_retention(0, None, allow_zero=False)
    check_retention(1, 7, allow_zero=False)
