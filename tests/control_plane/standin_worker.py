"""The real runpod SDK worker loop and the real handler around the stand-in engine, so the
scheduler's fast tests run whole chunks in seconds (the engine tier runs vLLM itself).

STANDIN_DELAY_S: seconds per request. STANDIN_EXIT_ON: a worker that meets a request body
containing this text dies on the spot (exit code 137), as an OOM-killed worker would.
STANDIN_FAIL_WHILE: a path; while it exists, requests whose body contains "FLAKY" fail with a
500 (a transient upstream error), so a test can make them succeed on redrive.
A request whose body contains `standin-sleep=<seconds>` takes that much longer: a slow chunk
to kill, cancel or expire mid-run beside fast ones in the same batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from handler import logs
from handler.engine import Reply
from handler.main import install, serve
from handler.runtime import start_runtime
from handler.settings import WorkerSettings
from tests.handler.standin import EchoEngine

SLEEP = re.compile(r"standin-sleep=([0-9.]+)")


class ExitingEngine(EchoEngine):
    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
        marker = os.environ.get("STANDIN_EXIT_ON")
        if marker and marker in str(body):
            os._exit(137)
        flaky_while = os.environ.get("STANDIN_FAIL_WHILE")
        if flaky_while and "FLAKY" in str(body) and os.path.exists(flaky_while):
            error = {"message": "upstream hiccup", "type": "InternalServerError", "code": 500}
            return Reply(500, {"error": {**error, "param": None}})
        if sleep := SLEEP.search(str(body)):
            await asyncio.sleep(float(sleep.group(1)))
        return await super().run(endpoint, body)


@contextlib.asynccontextmanager
async def engine(settings: WorkerSettings) -> AsyncIterator[ExitingEngine]:
    yield ExitingEngine(delay_s=float(os.environ.get("STANDIN_DELAY_S", "0.01")))


def main() -> None:
    logs.configure()
    settings = WorkerSettings()
    runtime = start_runtime(settings, engine_factory=engine)
    install(runtime)
    try:
        serve(settings)
    finally:
        runtime.stop()


if __name__ == "__main__":
    main()
