"""Object ids that sort by creation time, so a tenant's listing is a plain index range.

`batch_` / `file-` / `upload_` + 12 hex digits of Unix milliseconds + 12 random hex digits: the
same length as OpenAI's ids, lexicographic order is creation order.
"""

from __future__ import annotations

import secrets
import time

PREFIXES = {
    "batch": "batch_",
    "file": "file-",
    "upload": "upload_",
    "part": "part_",
    "webhook_endpoint": "whe_",
    "event": "evt_",
}


def new_id(kind: str, *, now_ms: int | None = None) -> str:
    millis = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return f"{PREFIXES[kind]}{millis:012x}{secrets.token_hex(6)}"


def now_s() -> int:
    return int(time.time())
