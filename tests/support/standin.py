"""The one stand-in engine, for fast tests of the code around vLLM (never a substitute for it:
the engine tier runs vLLM itself).

It answers each request after `delay_s` with an OpenAI-shaped body and fixed usage, counting
how many requests it holds at once. A request's text can ask for trouble, so that one request
of a batch misbehaves beside good ones:

- `standin-sleep=<seconds>`: that request takes that much longer (a slow chunk to kill, cancel
  or expire mid-run);
- `crash_on`: the engine raises on it (an engine error, a 500 line);
- `fail_on`: it answers 500, a transient upstream error, while `fail_while` names a file that
  exists (always, without `fail_while`), so a test can make it succeed on a redrive;
- `exit_on`: the worker process dies on the spot (exit code 137), as an OOM-killed worker would.

Worker processes build it from their environment (`from_env`): STANDIN_DELAY_S, STANDIN_EXIT_ON
and STANDIN_FAIL_WHILE (requests saying FLAKY fail while that file exists).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from handler.engine import Reply
from handler.settings import WorkerSettings

if TYPE_CHECKING:
    from handler.runtime import EngineFactory

SLEEP = re.compile(r"standin-sleep=([0-9.]+)")


@dataclass
class StandinEngine:
    served_model_name: str = "tiny"
    max_model_len: int = 512
    vllm_version: str = "stand-in"
    load_seconds: float = 0.0
    delay_s: float = 0.01
    crash_on: str | None = None
    fail_on: str | None = None
    fail_while: str | None = None
    exit_on: str | None = None
    in_flight: int = 0
    peak_in_flight: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StandinEngine:
        return cls(
            delay_s=float(env.get("STANDIN_DELAY_S", "0.01")),
            exit_on=env.get("STANDIN_EXIT_ON") or None,
            fail_on="FLAKY" if "STANDIN_FAIL_WHILE" in env else None,
            fail_while=env.get("STANDIN_FAIL_WHILE"),
        )

    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
        text = str(body)
        if self.exit_on and self.exit_on in text:
            os._exit(137)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            sleep = SLEEP.search(text)
            await asyncio.sleep(self.delay_s + (float(sleep.group(1)) if sleep else 0.0))
            self.seen.append(body)
            return self._answer(text, body)
        finally:
            self.in_flight -= 1

    def _answer(self, text: str, body: dict[str, Any]) -> Reply:
        if self.crash_on is not None and self.crash_on in text:
            raise RuntimeError("stand-in crash")
        if self._failing(text):
            error = {"message": "upstream hiccup", "type": "InternalServerError", "code": 500}
            return Reply(500, {"error": {**error, "param": None}})
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

    def _failing(self, text: str) -> bool:
        if self.fail_on is None or self.fail_on not in text:
            return False
        return self.fail_while is None or os.path.exists(self.fail_while)


def engine_factory(engine: StandinEngine) -> EngineFactory:
    """`start_runtime`'s `engine_factory`, handing out `engine`."""

    @contextlib.asynccontextmanager
    async def factory(_settings: WorkerSettings) -> AsyncIterator[StandinEngine]:
        yield engine

    return factory
