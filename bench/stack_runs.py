"""What the benchmarks that run the whole local stack share: the worker's environment for the
tiny model and waiting for a batch to end."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from infra.wait import wait_for

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

    from infra.runpod_local.models import EndpointBackend

TERMINAL = ("completed", "failed", "expired", "cancelled")


def worker_env(model: str) -> dict[str, str]:
    return {
        "MODEL_NAME": model,
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "MAX_MODEL_LEN": "512",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }


def wait_until_done(client: OpenAI, batch: Batch) -> Batch:
    """The batch once it has ended, however long that takes."""

    def ended() -> Batch | None:
        current = client.batches.retrieve(batch.id)
        return current if current.status in TERMINAL else None

    if batch.status in TERMINAL:
        return batch
    return wait_for(ended, f"batch {batch.id} to end", timeout=math.inf, every=0.2)


def wait_for_idle_workers(backend: EndpointBackend, *, busy_too: bool = False) -> None:
    """Until a worker has loaded its engine (`busy_too`: or is already running a job)."""

    def ready() -> bool:
        workers = backend.health()["workers"]
        return int(workers["idle"]) + (int(workers["running"]) if busy_too else 0) >= 1

    wait_for(ready, "a worker to load its engine", timeout=math.inf, every=0.5)
