"""What one tick works with: AWS, the RunPod client, the profile, the clock, the webhook, and
the batches that something failed on during this tick (`isolate.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from control_plane import webhooks
from control_plane.aws import Aws
from control_plane.runpod import RunPodClient
from control_plane.scheduler.policy import PROFILES, Profile
from control_plane.settings import Settings

# SigV4 presigned URLs live at most 7 days.
MAX_PRESIGN_S = 7 * 24 * 3600


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
    # endpoint id -> a client for it, beside `runpod` (the default endpoint's)
    _clients: dict[str, RunPodClient] = field(default_factory=dict, repr=False)

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

    def presign(self, method: str, key: str) -> str:
        operation = {"GET": "get_object", "PUT": "put_object"}[method]
        expires = min(MAX_PRESIGN_S, self.lease_s() + 600)
        url = self.aws.s3.generate_presigned_url(
            operation,
            Params={"Bucket": self.settings.bucket_name, "Key": key},
            ExpiresIn=expires,
        )
        return str(url)

    def webhook_url(self, batch_id: str, chunk_id: str, attempt: int) -> str | None:
        if not self.webhooks:
            return None
        return webhooks.url(
            self.settings.public_url,
            self.webhook_secret,
            batch_id=batch_id,
            chunk_id=chunk_id,
            attempt=attempt,
        )
