"""RunPod's serverless client API, as the tick uses it: run, status, cancel, health.

urllib3 (already in the Lambda through botocore) rather than the runpod SDK, whose import pulls
in far more than the tick needs on a cold start. Every call has a short timeout: a stalled
endpoint must cost one tick a few seconds, not the whole Lambda timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import urllib3

TIMEOUT = urllib3.Timeout(connect=3.0, read=10.0)


class EndpointError(Exception):
    """The endpoint failed (5xx, 429, timeout, connection refused): counts for the breaker."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class JobGone(Exception):
    """404 for a job: its TTL passed or it never existed."""


@dataclass
class RunPodClient:
    base_url: str
    endpoint_id: str
    api_key: str
    rest_url: str = ""  # RunPod's REST API (endpoint configuration), beside the job API
    _http: urllib3.PoolManager = field(
        default_factory=lambda: urllib3.PoolManager(
            num_pools=2, maxsize=16, timeout=TIMEOUT, retries=False
        ),
        repr=False,
    )

    def run(
        self,
        job_input: dict[str, Any],
        *,
        webhook: str | None = None,
        execution_timeout_s: float | None = None,
        ttl_s: float | None = None,
        low_priority: bool = False,
    ) -> str:
        """Queue a job; return its id."""
        body: dict[str, Any] = {"input": job_input}
        if webhook:
            body["webhook"] = webhook
        policy: dict[str, Any] = {}
        if execution_timeout_s:
            policy["executionTimeout"] = int(execution_timeout_s * 1000)
        if ttl_s:
            policy["ttl"] = int(ttl_s * 1000)
        if low_priority:
            policy["lowPriority"] = True
        if policy:
            body["policy"] = policy
        reply = self._call("POST", "run", body)
        return str(reply["id"])

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"status/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"cancel/{job_id}")

    def health(self) -> dict[str, Any]:
        return self._call("GET", "health")

    def workers_max(self) -> int | None:
        """The endpoint's configured workersMax (RunPod's REST API), None when unreadable."""
        if not self.rest_url:
            return None
        url = f"{self.rest_url.rstrip('/')}/endpoints/{self.endpoint_id}"
        try:
            reply = self._http.request(
                "GET", url, headers={"Authorization": f"Bearer {self.api_key}"}
            )
            value = json.loads(reply.data).get("workersMax") if reply.status == 200 else None
        except (urllib3.exceptions.HTTPError, ValueError, AttributeError):
            return None
        return int(value) if isinstance(value, int) and value >= 0 else None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url.rstrip('/')}/{self.endpoint_id}/{path}"
        try:
            reply = self._http.request(
                method,
                url,
                body=json.dumps(body).encode() if body is not None else None,
                headers={
                    "Authorization": f"Bearer {self.api_key}",
                    "Content-Type": "application/json",
                },
            )
        except urllib3.exceptions.HTTPError as exc:
            raise EndpointError(f"{method} {path}: {exc}") from exc
        if reply.status == 404 and path.startswith(("status/", "cancel/")):
            raise JobGone(path)
        if reply.status >= 400:
            text = reply.data[:300].decode(errors="replace")
            raise EndpointError(f"{method} {path}: HTTP {reply.status} {text}", status=reply.status)
        try:
            parsed: dict[str, Any] = json.loads(reply.data)
        except ValueError as exc:
            raise EndpointError(f"{method} {path}: not JSON", status=reply.status) from exc
        return parsed
