"""boto3 clients for the control plane, made once per process (Lambda reuses them warm)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from control_plane.clients.queues import BATCHES, DISPATCH, Queues, queue_name
from control_plane.settings import Settings
from control_plane.store import Table
from control_plane.store.batches import Limits


@dataclass
class Aws:
    settings: Settings

    def _client(self, service: str, **config: Any) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.settings.aws_endpoint_url,
            config=Config(retries={"mode": "standard", "max_attempts": 5}, **config),
        )

    @cached_property
    def s3(self) -> Any:
        # SigV4 (boto3 signs us-east-1 presigned URLs with SigV2 otherwise) and no optional
        # checksums: presigned PUTs from workers and browsers must not need a CRC header.
        return self._client(
            "s3",
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    @cached_property
    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    @cached_property
    def lambda_(self) -> Any:
        return self._client("lambda")

    @cached_property
    def sqs(self) -> Any:
        return self._client("sqs")

    @cached_property
    def queues(self) -> Queues:
        """The event queues: their URLs from the settings (AWS), or looked up by the names
        the local stack and the tests give them."""
        settings = self.settings
        urls = {DISPATCH: settings.dispatch_queue_url, BATCHES: settings.batch_queue_url}
        for which, url in urls.items():
            if not url:
                name = queue_name(settings.table_name, which)
                urls[which] = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        return Queues(sqs=self.sqs, dispatch_url=urls[DISPATCH], batch_url=urls[BATCHES])

    @cached_property
    def table(self) -> Table:
        return Table(self.dynamodb, self.settings.table_name)

    @property
    def limits(self) -> Limits:
        """The tenant admission limits, as the store checks them."""
        return Limits(
            max_active_batches=self.settings.max_active_batches,
            max_queued_requests=self.settings.max_queued_requests,
        )
