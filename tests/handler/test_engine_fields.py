"""Which body fields the engine refuses rather than drop: vLLM's request models accept any key
and ignore the ones they do not read. Request models of the same shape as vLLM's stand in here
(a plain model, and a union under `Annotated` as the embeddings request is); the real ones run
in tests/e2e/test_real_model.py."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from handler.engine import NO_EFFECT_FIELDS, _field_names, unhonoured_field


class Chat(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[dict[str, str]]
    max_completion_tokens: int | None = None
    salt: str | None = Field(default=None, alias="cache_salt")


class Text(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str


class Pairs(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    pairs: list[str]


Either = Annotated[Text | Pairs, BeforeValidator(lambda value: value)]


def test_a_field_the_model_does_not_read_is_named_and_aliases_count_as_read() -> None:
    fields = _field_names(Chat)
    body = {"model": "m", "messages": [], "cache_salt": "s", "max_completion_tokens": 4}
    assert unhonoured_field(body, fields) is None
    assert unhonoured_field({**body, "max_completion_token": 4}, fields) == "max_completion_token"
    assert unhonoured_field({**body, "modalities": ["audio"], "audio": {}}, fields) == "audio"


def test_fields_that_change_no_answer_are_accepted() -> None:
    body: dict[str, object] = {"model": "m", "messages": [], **dict.fromkeys(NO_EFFECT_FIELDS)}
    assert unhonoured_field(body, _field_names(Chat)) is None


def test_a_union_reads_what_any_member_reads() -> None:
    fields = _field_names(Either)
    assert {"model", "input", "pairs"} <= fields
    assert unhonoured_field({"model": "m", "input": "x", "dimensions": 3}, fields) == "dimensions"


def test_an_unreadable_request_type_refuses_nothing() -> None:
    assert _field_names(dict) == frozenset()
    assert unhonoured_field({"anything": 1}, frozenset()) is None
