"""Batch input lines, as every tier of the tests writes them."""

from __future__ import annotations

import json
from typing import Any, Final

from tests.support.tiny import TINY_MODEL_NAME

CHAT: Final = "/v1/chat/completions"
COMPLETIONS: Final = "/v1/completions"
MODEL: Final = TINY_MODEL_NAME
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
    a completion request with `content` as its prompt when `url` is COMPLETIONS; `params` join
    the body (`max_tokens`, `seed`, `stream`…). `body` replaces the body whole and `custom_id`
    may be any JSON value, for lines the split must refuse."""
    text = f"hi {custom_id}" if content is None else content
    if body is _UNSET:
        prompt = {"prompt": text} if url == COMPLETIONS else {"messages": [_user(text)]}
        body = {"model": model, **prompt, **params}
    return json.dumps({"custom_id": custom_id, "method": method, "url": url, "body": body})


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def jsonl(count: int, *, prefix: str = "r") -> bytes:
    """A batch file of `count` chat requests, custom_ids `{prefix}0`, `{prefix}1`…"""
    return ("\n".join(request_line(f"{prefix}{i}") for i in range(count)) + "\n").encode()
