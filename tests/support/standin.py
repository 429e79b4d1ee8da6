"""A stand-in engine for fast tests of the code around vLLM (never a substitute for it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from handler.engine import Reply


@dataclass
class EchoEngine:
    """Answers each request after a short sleep, counting how many it holds at once."""

    served_model_name: str = "tiny"
    max_model_len: int = 512
    vllm_version: str = "stand-in"
    load_seconds: float = 0.0
    delay_s: float = 0.01
    crash_on: str | None = None
    in_flight: int = 0
    peak_in_flight: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            self.seen.append(body)
            if self.crash_on is not None and self.crash_on in str(body):
                raise RuntimeError("stand-in crash")
            if body.get("model") != self.served_model_name:
                error = {"message": "no such model", "type": "NotFoundError", "code": 404}
                return Reply(404, {"error": {**error, "param": "model"}})
            usage = {
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "total_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 1},
            }
            return Reply(200, {"object": "chat.completion", "usage": usage})
        finally:
            self.in_flight -= 1
