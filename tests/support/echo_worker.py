"""`python -m tests.support.echo_worker`: the real runpod SDK worker loop around a trivial
handler, so the local endpoint's semantics can be tested in seconds (the real handler runs
against it in the scheduler's tests and the engine tier).

The stand-in engine runs each job's input first, so its text can ask for a slow job
(`standin-sleep=<seconds>`) or a failed one (`standin-fail`: the job fails with the engine's
error message); the output echoes the input with the worker's id, and `"refresh": true` asks
the endpoint to retire the worker after the job.
"""

from __future__ import annotations

import os
from typing import Any

import runpod

from tests.support.standin import StandinEngine

ENGINE = StandinEngine(delay_s=0.0, fail_on="standin-fail")


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    payload = job["input"]
    reply = await ENGINE.run("echo", {"model": ENGINE.served_model_name, "input": payload})
    if reply.status_code != 200:
        return {"error": str(reply.body["error"]["message"])}
    result: dict[str, Any] = {"echo": payload, "worker": os.environ.get("RUNPOD_POD_ID")}
    if payload.get("refresh"):
        result["refresh_worker"] = True
    return result


if __name__ == "__main__":
    concurrency = int(os.environ.get("ECHO_CONCURRENCY", "1"))
    runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda _: concurrency})
