"""The runtime's hand-over between the runpod SDK's loop and the engine loop: a cancelled
chunk keeps its job until it has let go on the engine loop (the SDK frees the slot when the
handler returns, and a worker of MAX_CONCURRENCY 2 must never hold three chunks)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from handler.runtime import Runtime


@pytest.fixture()
def engine_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


async def _cancel_while_unwinding(
    engine_loop: asyncio.AbstractEventLoop, *, unwind_s: float, stops: int
) -> list[float]:
    """Submit a chunk that takes `unwind_s` to let go, stop it `stops` times (50 ms apart) and
    await the cancelled submit; the times at which the chunk had unwound."""
    started = threading.Event()
    unwound: list[float] = []

    async def chunk() -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            # Aborting a chunk's requests takes a moment on a busy engine.
            time.sleep(unwind_s)
            unwound.append(time.monotonic())
        return "never"

    runtime = SimpleNamespace(loop=engine_loop)
    task = asyncio.ensure_future(Runtime.submit(runtime, chunk()))  # type: ignore[arg-type]
    await asyncio.get_running_loop().run_in_executor(None, started.wait, 5)
    task.cancel()
    for _ in range(stops - 1):
        await asyncio.sleep(0.05)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return unwound


async def test_a_cancelled_submit_returns_only_once_the_engine_side_has_unwound(
    engine_loop: asyncio.AbstractEventLoop,
) -> None:
    unwound = await _cancel_while_unwinding(engine_loop, unwind_s=0.3, stops=1)
    assert unwound and unwound[0] <= time.monotonic()


async def test_a_submit_returns_the_engine_sides_result(
    engine_loop: asyncio.AbstractEventLoop,
) -> None:
    async def chunk() -> str:
        await asyncio.sleep(0.01)
        return "summary"

    runtime = SimpleNamespace(loop=engine_loop)
    assert await Runtime.submit(runtime, chunk()) == "summary"  # type: ignore[arg-type]


async def test_a_stop_sent_again_does_not_cut_the_unwinding_short(
    engine_loop: asyncio.AbstractEventLoop,
) -> None:
    """RunPod (and the local endpoint, every second) repeats a stop until the job is gone: each
    repeat cancels the handler's task again while the chunk is still letting go."""
    unwound = await _cancel_while_unwinding(engine_loop, unwind_s=0.5, stops=4)
    assert unwound and unwound[0] <= time.monotonic()
