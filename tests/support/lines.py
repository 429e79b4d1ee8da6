"""Batch input lines for the control-plane tests."""

from __future__ import annotations

import json
from typing import Any, Final

CHAT: Final = "/v1/chat/completions"


def request_line(custom_id: str, *, url: str = CHAT, **extra: Any) -> str:
    line = {
        "custom_id": custom_id,
        "method": "POST",
        "url": url,
        "body": {"model": "tiny", "messages": [{"role": "user", "content": f"hi {custom_id}"}]},
    }
    line.update(extra)
    return json.dumps(line)


def jsonl(count: int, *, prefix: str = "r") -> bytes:
    return ("\n".join(request_line(f"{prefix}{i}") for i in range(count)) + "\n").encode()
