"""What one tick works with: AWS, the RunPod client, the profile, the clock, the webhook, and
the batches that something failed on during this tick (`isolate.py`). The API's webhook path
records results with the same context, holding `NoRunPod` instead of a client."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

from control_plane import webhooks
from control_plane.clients.aws import Aws
from control_plane.clients.runpod import RunPodClient
from control_plane.scheduler.policy import PROFILES, Profile
from control_plane.settings import Settings
from control_plane.store import BatchItem
from control_plane.webhooks import PATH as RESULT_PATH

# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600


def threads(count: int) -> Callable[[Callable[[Any], Any], list[Any]], list[Any]]:
    """Map on `count` threads, in order (one thread: in this thread)."""

    def run(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if count <= 1 or len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(count, len(items))) as pool:
            return list(pool.map(work, items))

    return run


class RunPodNotAvailable(RuntimeError):
    """Something on the webhook path tried to call RunPod (a bug: that path only records)."""


@dataclass
class NoRunPod(RunPodClient):
    """The RunPod client of a context that must never call RunPod: the API's webhook path,
    which records results and names their endpoint (`endpoint_id`) but holds no API key. The
    internet-facing API function is not granted the key's secret (template.yaml), so a call
    here fails at once instead of sending RunPod an empty key."""

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> NoReturn:
        raise RunPodNotAvailable(f"{method} {path}: this context has no RunPod client")

    def workers_max(self) -> NoReturn:
        raise RunPodNotAvailable("workers_max: this context has no RunPod client")


@dataclass
class TickContext:
    aws: Aws
    runpod: RunPodClient
    now: int
    webhook_secret: str = ""
    profile: Profile = field(default_factory=lambda: PROFILES["medium"])
    # batch id -> what failed on it during this tick (isolate.step fills it, isolate.close
    # counts it on the batch item)
    failures: dict[str, str] = field(default_factory=dict)
    # the batches a batch handler went through this run (isolate.close resets their count)
    seen: list[BatchItem] = field(default_factory=list)
    # endpoint id -> a client for it, beside `runpod` (the default endpoint's)
    _clients: dict[str, RunPodClient] = field(default_factory=dict, repr=False)
    # How a dispatcher run maps its sends (threads), and how it waits (the fleet simulation
    # puts both on its virtual clock).
    parallel_map: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None
    pause: Callable[[float], None] = time.sleep

    def parallel(self, work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """`work` over `items` on the dispatcher's threads (`dispatch_threads`), in order."""
        run = self.parallel_map or threads(self.settings.dispatch_threads)
        return run(work, items)

    def runpod_for(self, endpoint_id: str | None) -> RunPodClient:
        """The client of `endpoint_id` (`HOTBATCH_MODELS` routes models to several endpoints);
        None or the default endpoint: `runpod` itself."""
        if not endpoint_id or endpoint_id == self.runpod.endpoint_id:
            return self.runpod
        if endpoint_id not in self._clients:
            self._clients[endpoint_id] = replace(self.runpod, endpoint_id=endpoint_id)
        return self._clients[endpoint_id]

    @property
    def settings(self) -> Settings:
        return self.aws.settings

    @property
    def webhooks(self) -> bool:
        return bool(self.settings.public_url and self.webhook_secret)

    def lease_s(self) -> int:
        return self.profile.queue_grace_s + self.profile.execution_timeout_s

    def check_after_s(self, *, webhook: bool | None = None) -> int:
        """When a dispatched chunk is asked about (next): when its job carries a webhook
        (`webhook`, by default whether this context sends them) RunPod tells us, and the check
        is a safety net; without one every sweep asks. The chunk's own flag decides, not the
        context's: a job sent without a webhook (before a deployment turned them on) must not
        wait a safety-net interval for a result nothing will post."""
        posted = self.webhooks if webhook is None else webhook
        return self.settings.result_check_s if posted else 0

    def presign(self, method: str, key: str) -> str:
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        expires = min(MAX_PRESIGN_S, self.lease_s() + 600)
        url = self.aws.s3.generate_presigned_url(
            operation,
            Params={"Bucket": self.settings.bucket_name, "Key": key},
            ExpiresIn=expires,
        )
        return str(url)

    def webhook_url(
        self, batch_id: str, chunk_id: str, attempt: int, *, path: str = RESULT_PATH
    ) -> str | None:
        """The signed URL RunPod posts the chunk's result to (or, with `PROGRESS_PATH`, where
        its worker posts progress); none without webhooks."""
        if not self.webhooks:
            return None
        return webhooks.url(
            self.settings.public_url,
            self.webhook_secret,
            batch_id=batch_id,
            chunk_id=chunk_id,
            attempt=attempt,
            path=path,
        )
