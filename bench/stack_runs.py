"""What the benchmarks that run the whole local stack share: the worker's environment for the
tiny model and waiting for a batch to end."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

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
    while batch.status not in TERMINAL:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    return batch
