"""request_counts move while a chunk runs: the worker reports its answered requests through the
runpod SDK's progress_update (the real SDK worker loop around the stand-in engine), the local
endpoint shows them as the running job's output, the tick reads them with RunPod's /status
every `progress_poll_s` and the batch view adds them to the finished chunks' counts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from control_plane.store import chunks as chunk_store
from infra.stack import LocalStack, StackConfig
from infra.wait import wait_for
from tests.support.lines import CHAT, request_line
from tests.support.stack import sdk, standin_pool

pytestmark = [pytest.mark.stack]
REQUESTS = 24


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("progress")
    failing = workdir / "fail"  # while it exists, requests saying FLAKY fail
    failing.touch()
    pool = standin_pool(
        workdir,
        workers=1,
        env={"PROGRESS_INTERVAL_S": "0.5", "STANDIN_FAIL_WHILE": str(failing)},
        idle_timeout_s=600,
    )
    settings = {"chunk_max_requests": REQUESTS, "progress_poll_s": 1}
    started = LocalStack(StackConfig(pool=pool, tick_interval_s=0.5, settings=settings)).start()
    try:
        assert started.endpoint is not None and started.endpoint.backend is not None
        backend = started.endpoint.backend
        wait_for(lambda: backend.health()["workers"]["idle"] >= 1, "a warm worker", timeout=120)
        yield started
    finally:
        started.stop()


def test_request_counts_move_while_the_only_chunk_runs(stack: LocalStack) -> None:
    # One chunk whose requests end one after another over ~7 s, the last few failing.
    lines = [
        request_line(f"p{i}", f"standin-sleep={0.3 * i}" + (" FLAKY" if i >= 20 else ""))
        for i in range(REQUESTS)
    ]
    client = sdk(stack)
    file = client.files.create(
        file=("p.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
    )
    batch = client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = client.batches.retrieve(batch.id)
        counts = current.request_counts
        assert counts is not None
        seen.append((current.status, counts.completed, counts.failed))
        if current.status in ("completed", "failed"):
            break
        time.sleep(0.2)
    assert seen[-1] == ("completed", 20, 4), seen
    assert stack.aws is not None
    (chunk,) = chunk_store.list_chunks(stack.aws.table, batch_id=batch.id)
    assert chunk["state"] == "done"
    # Counts seen while the chunk ran, strictly between none and all.
    midway = sorted({(c, f) for s, c, f in seen if s == "in_progress" and 0 < c + f < REQUESTS})
    assert len(midway) >= 2, seen
    done = [c + f for s, c, f in seen]
    assert done == sorted(done), seen  # never backwards
