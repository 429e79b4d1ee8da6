"""GPU figures from work: a chunk's summary carries the NVML readings its worker took while it
ran; recording it keeps them for the next health sample, which takes each in once; `/v1/health`
rates the GPUs from them even when nothing waits at that sample (the chunk was the work).

The tick runs in process against moto with the stand-in RunPod client of test_isolation, whose
chunk summaries here carry the readings a GPU worker would send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.api import create_app
from control_plane.clients.aws import Aws
from control_plane.health.report import build_report
from control_plane.health.sample import HealthSample
from control_plane.store import health as health_store
from handler.contract import ChunkGpu, ProcessChunkInput
from tests.control_plane.scheduler.test_isolation import StandInRunPod, Ticker, new_batch

SETTINGS = {"chunk_max_requests": 2, "keep_hot_schedule": "never"}
pytestmark = pytest.mark.parametrize("settings", [SETTINGS], indirect=True)
H100 = [
    ChunkGpu(
        index=0,
        name="H100",
        samples=4,
        utilization_percent=91.5,
        memory_used_mb=70_000,
        memory_total_mb=81_559,
    ),
]


class GpuRunPod(StandInRunPod):
    def _process(self, job: ProcessChunkInput) -> dict[str, Any]:
        result = super()._process(job)
        if result["status"] == "COMPLETED":
            result["output"]["gpus"] = [gpu.model_dump() for gpu in H100]
        return result


@pytest.fixture()
def client(aws: Aws) -> Iterator[TestClient]:
    with TestClient(create_app(aws=aws)) as test_client:
        yield test_client


@pytest.fixture()
def tick(aws: Aws) -> Ticker:
    return Ticker(GpuRunPod(base_url="http://standin", endpoint_id="e", api_key="x", aws=aws))


def samples(aws: Aws) -> list[HealthSample]:
    items = health_store.samples_since(aws.table, since=0, limit=1000)
    return sorted((HealthSample.model_validate(item) for item in items), key=lambda s: s.at)


def test_chunk_readings_reach_one_sample_each_and_rate_the_gpu(
    aws: Aws,
    client: TestClient,
    key_a: str,
    tick: Ticker,
) -> None:
    new_batch(client, key_a, 4, "g")  # two chunks
    for _ in range(4):
        tick(aws)
    taken = [r for s in samples(aws) for r in s.readings if r.status == "chunk"]
    assert len(taken) == 2  # one per chunk, each in one sample only
    assert {r.worker_id for r in taken} == {"standin"}
    (gpu,) = taken[0].gpus
    assert (gpu.name, gpu.utilization_percent, gpu.memory_used_mb) == ("H100", 91.5, 70_000)
    assert gpu.memory_percent == pytest.approx(85.83, abs=0.01)

    # The last sample is taken when nothing waits any more; the chunk readings still count.
    report = build_report(samples(aws), breaker="closed", now=tick.now)
    assert report.components.gpu.status == "healthy"
    assert report.components.gpu.metrics["mean_utilization_percent"] == 91.5
    assert report.components.gpu.metrics["readings_while_waiting"] == 2
