"""Batch input lines, as every tier of the tests writes them."""

from __future__ import annotations

import json
from typing import Any, Final

from tests.support.tiny import TINY_EMBED_MODEL_NAME, TINY_MODEL_NAME

CHAT: Final = "/v1/chat/completions"
COMPLETIONS: Final = "/v1/completions"
EMBEDDINGS: Final = "/v1/embeddings"
RESPONSES: Final = "/v1/responses"
MODEL: Final = TINY_MODEL_NAME
EMBED_MODEL: Final = TINY_EMBED_MODEL_NAME
# The body field that carries the text, per endpoint (chat's is `messages`).
_TEXT_FIELD: Final = {COMPLETIONS: "prompt", EMBEDDINGS: "input", RESPONSES: "input"}
_UNSET: Final[Any] = object()


def request_line(
    custom_id: Any,
    content: str | None = None,
    *,
    url: str = CHAT,
    model: str = MODEL,
    method: str = "POST",
    body: Any = _UNSET,
    **params: Any,
) -> str:
    """One JSONL request line (no newline). Its body is a chat request saying `content`
    (default `hi {custom_id}`, so a custom_id can carry the stand-in engine's directives), or
    for COMPLETIONS, EMBEDDINGS and RESPONSES a request with `content` as its `prompt` /
    `input` (pass `model=EMBED_MODEL` for embeddings); `params` join
    the body (`max_tokens`, `seed`, `stream`…). `body` replaces the body whole and `custom_id`
    may be any JSON value, for lines the split must refuse."""
    text = f"hi {custom_id}" if content is None else content
    if body is _UNSET:
        field = _TEXT_FIELD.get(url)
        prompt = {field: text} if field else {"messages": [_user(text)]}
        body = {"model": model, **prompt, **params}
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def jsonl(count: int, *, prefix: str = "r") -> bytes:
    """A batch file of `count` chat requests, custom_ids `{prefix}0`, `{prefix}1`…"""
    return ("\n".join(request_line(f"{prefix}{i}") for i in range(count)) + "\n").encode()
