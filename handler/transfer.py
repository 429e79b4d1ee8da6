"""Chunk input downloads and output uploads through presigned URLs (no AWS keys on workers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp

from handler.contract import ChunkProgress

log = logging.getLogger(__name__)
T = TypeVar("T")

# S3 answers 500/503 ("SlowDown") transiently; anything else (403 expired signature, 404) will
# not get better by retrying.
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class TransferError(Exception):
    """A presigned URL could not be read or written; the job fails with this message."""

    def __init__(self, what: str, url: str, detail: str) -> None:
        self.what = what
        self.url = url
        super().__init__(f"{what} failed for {redact(url)}: {detail}")


def redact(url: str) -> str:
    """The URL without its query string, which carries the signature."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def download(
    session: aiohttp.ClientSession, url: str, *, retries: int, what: str = "input download"
) -> bytes:
    async def attempt() -> bytes:
        async with session.get(url) as response:
            if response.status != 200:
                raise _StatusError(response.status, (await response.text())[:300])
            return await response.read()

    return await _with_retries(attempt, url=url, retries=retries, what=what)


async def upload(
    session: aiohttp.ClientSession, url: str, body: bytes, *, retries: int, what: str
) -> None:
    async def attempt() -> None:
        headers = {"Content-Type": "application/jsonl"}
        async with session.put(url, data=body, headers=headers) as response:
            if response.status not in (200, 201, 204):
                raise _StatusError(response.status, (await response.text())[:300])

    await _with_retries(attempt, url=url, retries=retries, what=what)


class _StatusError(Exception):
    def __init__(self, status: int, text: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {text}")


async def _with_retries(
    attempt: Callable[[], Awaitable[T]], *, url: str, retries: int, what: str
) -> T:
    last: Exception | None = None
    for number in range(1, retries + 1):
        try:
            return await attempt()
        except _StatusError as exc:
            last = exc
            if exc.status not in _RETRYABLE_STATUS:
                break
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = exc
        if number < retries:
            delay = 0.5 * 2 ** (number - 1)
            log.warning(
                "transfer retry",
                extra={"what": what, "url": redact(url), "attempt": number, "error": str(last)},
            )
            await asyncio.sleep(delay)
    raise TransferError(what, url, str(last)) from last


# A progress post is a nicety: one short try, never a retry that would hold a slot.
PROGRESS_POST_TIMEOUT_S = 5.0
_posts: set[asyncio.Task[None]] = set()


def posting_progress(
    then: Callable[[ChunkProgress], None] | None, url: str, session: aiohttp.ClientSession
) -> Callable[[ChunkProgress], None]:
    """A progress callback that also posts each report to the control plane's signed URL
    (`ProcessChunkInput.progress_url`) without waiting for it, then calls `then` (the runpod
    SDK's `progress_update`, which RunPod shows as the running job's output)."""

    def report(progress: ChunkProgress) -> None:
        task = asyncio.get_running_loop().create_task(_post(session, url, progress))
        _posts.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(_posts.discard)
        if then is not None:
            then(progress)

    return report


async def _post(session: aiohttp.ClientSession, url: str, progress: ChunkProgress) -> None:
    try:
        timeout = aiohttp.ClientTimeout(total=PROGRESS_POST_TIMEOUT_S)
        async with session.post(url, json=progress.model_dump(), timeout=timeout) as response:
            if response.status >= 400:
                log.warning(
                    "progress post refused", extra={"url": redact(url), "status": response.status}
                )
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("progress post failed", extra={"url": redact(url), "error": repr(exc)})
