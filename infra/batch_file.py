"""What the local commands read of a batch input file before sending it anywhere."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

DEFAULT_ENDPOINT = "/v1/chat/completions"


def first_url(lines: Iterable[bytes]) -> str | None:
    """The `url` of the first request line, to default a batch's endpoint to."""
    for line in lines:
        if line.strip():
            try:
                url = json.loads(line).get("url")
            except (ValueError, AttributeError):
                return None
            return url if isinstance(url, str) else None
    return None


def endpoint_of(path: Path) -> str:
    """The endpoint a file's first request names, or chat completions."""
    with path.open("rb") as handle:
        return first_url(handle) or DEFAULT_ENDPOINT
