"""The one validation-error formatter: ``field.path: message (got value)`` per problem."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError, field_validator

from relaytrain.config import format_validation_error, validation_error_lines


class Cat(BaseModel):
    type: Literal["cat"]
    lives: int = Field(9, ge=1)


class Dog(BaseModel):
    type: Literal["dog"]
    name: str

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value


class Home(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="type")]
    rooms: list[int] = []


UNIONS = {("pet",): ("type", ("cat", "dog"))}


def _error(data: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Home.model_validate(data)
    return caught.value


CASES = [
    pytest.param({"pet": {"type": "cat", "lives": 0}},
                 ["pet.lives: Input should be greater than or equal to 1 (got 0)"], id="tag-dropped-from-path"),
    pytest.param({"pet": {"type": "dog", "name": ""}}, ["pet.name: must not be empty (got '')"],
                 id="value-error-prefix-dropped"),
    pytest.param({"pet": {"name": "rex"}}, ["pet.type: Field required (one of: cat, dog)"], id="missing-tag"),
    pytest.param({"pet": {"type": "dog"}}, ["pet.name: Field required"], id="missing-field-no-got"),
    pytest.param({"pet": {"type": "cat"}, "rooms": [1, "x" * 80]},
                 [f"rooms.1: Input should be a valid integer, unable to parse string as an integer "
                  f"(got {repr('x' * 80)[:60]}…)"], id="long-input-cut"),
    pytest.param({"pet": {"type": "cat"}, "rooms": {"a": 1}}, ["rooms: Input should be a valid list"],
                 id="container-input-not-shown"),
]


@pytest.mark.parametrize(("data", "lines"), CASES)
def test_lines(data, lines) -> None:
    assert validation_error_lines(_error(data), unions=UNIONS) == lines


def test_unknown_tag_is_reported_on_the_tag_field() -> None:
    [line] = validation_error_lines(_error({"pet": {"type": "cow"}}), unions=UNIONS)
    assert line.startswith("pet.type: Input tag 'cow' found using 'type' does not match")


def test_without_unions_the_path_is_pydantics() -> None:
    assert validation_error_lines(_error({"pet": {"type": "cat", "lives": 0}})) == [
        "pet.cat.lives: Input should be greater than or equal to 1 (got 0)"]


class _RequestError:
    """What FastAPI's RequestValidationError gives: errors() with ``body``/``query`` in the path."""

    def __init__(self, errors: list[dict]) -> None:
        self._errors = errors

    def errors(self) -> list[dict]:
        return self._errors


def test_hidden_parts_and_the_top_name() -> None:
    exc = _RequestError([
        {"type": "less_than_equal", "loc": ("query", "limit"), "msg": "Input should be less than or equal to 500",
         "input": "501"},
        {"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "input": {}},
        {"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary",
         "input": []},
    ])
    assert format_validation_error(exc, hidden=("body", "query"), top="body") == "\n".join([
        "limit: Input should be less than or equal to 500 (got '501')",
        "1: JSON decode error",
        "body: Input should be a valid dictionary",
    ])
    assert validation_error_lines(_RequestError([{"type": "missing", "loc": (), "msg": "Field required"}])) == [
        "(top level): Field required"]
