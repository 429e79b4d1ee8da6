"""A real runpod SDK worker with a trivial handler, so the local endpoint's semantics can be
tested in seconds; the real handler runs against it in the engine tier."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import runpod


async def handler(job: dict[str, Any]) -> dict[str, Any]:
    payload = job["input"]
    await asyncio.sleep(float(payload.get("sleep", 0)))
    if "fail" in payload:
        return {"error": str(payload["fail"])}
    result: dict[str, Any] = {"echo": payload, "worker": os.environ.get("RUNPOD_POD_ID")}
    if payload.get("refresh"):
        result["refresh_worker"] = True
    return result


if __name__ == "__main__":
    concurrency = int(os.environ.get("ECHO_CONCURRENCY", "1"))
    runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda _: concurrency})
