"""A result body is signed by its URL only (batch, chunk, attempt), not by its content: whoever
holds the URL could send any numbers. Numbers that cannot be true of the chunk never reach the
tenant's counters or the throughput figures that size every tenant's chunks."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.scheduler import policy, record
from control_plane.scheduler.context import TickContext
from control_plane.scheduler.tick import drain
from control_plane.store import ChunkItem
from control_plane.store import batches as batch_store
from control_plane.store import chunks as chunk_store
from tests.support.api import create_batch, upload_id
from tests.support.lines import jsonl

REQUESTS = 20
DISPATCHED_AT = 1_700_000_000
NOW = DISPATCHED_AT + 100


def _dispatched(client: TestClient, aws: Aws, key: str) -> ChunkItem:
    file_id = upload_id(client, key, jsonl(REQUESTS))
    batch_id = create_batch(client, key, file_id).json()["id"]
    (chunk,) = chunk_store.list_chunks(aws.table, batch_id=batch_id)
    return chunk_store.claim(
        aws.table, chunk, lease_until=NOW + 900, check_at=NOW + 900, now=DISPATCHED_AT
    )


def _output(chunk: ChunkItem, **changes: Any) -> dict[str, Any]:
    """A worker's summary of the whole chunk done in 4 s, with `changes` (dotted paths)."""
    output: dict[str, Any] = {
        "batch_id": chunk["batch_id"],
        "chunk_id": chunk["chunk_id"],
        "attempt": int(chunk["attempts"]),
        "endpoint": "/v1/chat/completions",
        "counts": {"total": REQUESTS, "completed": REQUESTS, "failed": 0},
        "usage": {"prompt_tokens": 60, "completion_tokens": 40, "cached_tokens": 0},
        "failures": [],
        "timings": {"engine_s": 4.0, "engine_busy_s": 4.0, "total_s": 4.5},
        "worker": {
            "worker_id": "w1",
            "hostname": "h",
            "pid": 1,
            "model": "tiny",
            "vllm_version": "x",
            "hotbatch_version": "y",
        },
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = output
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return output


FORGED = {
    "negative completed": {"counts__completed": -5000, "counts__total": -5000},
    "more than the chunk": {"counts__completed": 10**12, "counts__total": 10**12},
    "counts not adding up": {"counts__failed": 3},
    "failures not counted": {
        "failures": [{"custom_id": f"x{i}", "status_code": 500, "message": "m"} for i in range(3)]
    },
    "a trillion tokens": {"usage__completion_tokens": 10**12},
    "cached above prompt": {"usage__cached_tokens": 61},
    "engine time past the clock": {"timings__engine_s": 1e12, "timings__engine_busy_s": 1e12},
    "negative engine time": {"timings__engine_busy_s": -1.0},
}


@pytest.mark.parametrize("forged", FORGED.values(), ids=FORGED.keys())
def test_a_forged_summary_of_bs_chunk_reaches_no_counter_nor_the_shared_throughput(
    client: TestClient, aws: Aws, key_a: str, key_b: str, forged: dict[str, Any]
) -> None:
    ctx = TickContext(aws=aws, runpod=RunPodClient("http://unused", "e", "k"), now=NOW)
    a_chunk, b_chunk = _dispatched(client, aws, key_a), _dispatched(client, aws, key_b)
    job = {"status": "COMPLETED", "executionTime": 4500, "output": _output(b_chunk, **forged)}
    recorded = record.record_job(ctx, b_chunk, job)
    record.announce(ctx, b_chunk, recorded)
    assert recorded.outcome == "retry"  # the chunk runs again; nothing of the body counted
    b_batch = batch_store.get_batch(aws.table, b_chunk["batch_id"])
    assert b_batch is not None
    assert int(b_batch.get("n_completed", 0)) == 0
    assert int(b_batch.get("tok_output", 0)) == 0 and float(b_batch.get("engine_s", 0)) == 0

    # A's honest result lands in the same round, and alone sets the endpoint's throughput.
    honest = {"status": "COMPLETED", "executionTime": 4500, "output": _output(a_chunk)}
    done = record.record_job(ctx, a_chunk, honest)
    record.announce(ctx, a_chunk, done)
    drain(ctx)
    assert done.outcome == "done"
    a_batch = batch_store.get_batch(aws.table, a_chunk["batch_id"])
    assert a_batch is not None and int(a_batch.get("n_completed", 0)) == REQUESTS
    state = policy.load(aws.table, ctx.profile, str(a_chunk["runpod_endpoint_id"]))
    assert state.requests_per_s == pytest.approx(REQUESTS / 4.0)
