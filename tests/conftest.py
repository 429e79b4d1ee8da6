"""Shared fixtures: the tiny model, the real vLLM engine, the presigned-URL blob store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.blob_server import BlobServer
from infra.tiny_model import KV_CACHE_BYTES

# An explicit KV cache for every worker the tests start (they inherit it): without one, vLLM's CPU
# build sizes it from GPU_MEMORY_UTILIZATION of the node's memory and refuses to start unless that
# much is free, which depends on the machine's page cache, not on the model.
os.environ.setdefault("KV_CACHE_MEMORY_BYTES", KV_CACHE_BYTES)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

TINY_MODEL_NAME = "tiny"
TINY_MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from infra.tiny_model import generate

    return generate(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def engine_runtime(tiny_model: Path) -> Iterator[object]:
    """One real vLLM engine (CPU build) for the whole session, behind the worker runtime."""
    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings

    settings = WorkerSettings(
        model_name=str(tiny_model),
        openai_served_model_name_override=TINY_MODEL_NAME,
        max_model_len=TINY_MAX_MODEL_LEN,
        max_num_seqs=256,
        kv_cache_memory_bytes=KV_CACHE_BYTES,
    )
    runtime = start_runtime(settings)
    yield runtime
    runtime.stop()


@pytest.fixture()
def blobs() -> Iterator[BlobServer]:
    server = BlobServer().start()
    yield server
    server.stop()
