"""HTTP faces of the local RunPod endpoint (aiohttp): the client API and the worker API.

Client API (what `runpod.Endpoint` and the control plane call), bearer API key:
    POST /v2/{id}/run, /runsync, /cancel/{job}, /purge-queue; GET /status/{job}, /health
Worker API (what the runpod SDK worker polls; URLs handed to it through RUNPOD_WEBHOOK_*),
checked by a `token` query parameter:
    GET /v2/{id}/job-take/{worker}, /job-take-batch/{worker}, /job-stop/{worker}, /ping/{worker}
    POST /v2/{id}/job-done/{worker}/{job}
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from infra.runpod_local.exceptions import (
    EndpointNotFound,
    LocalEndpointError,
    PayloadTooLarge,
    Unauthorized,
)
from infra.runpod_local.models import EndpointBackend

log = logging.getLogger("handler.runpod_local")

RUN_LIMIT = 10 * 1024 * 1024  # RunPod's /run payload limit
RUNSYNC_LIMIT = 20 * 1024 * 1024


@dataclass
class EndpointConfig:
    endpoint_id: str = "local"
    api_key: str = "local-runpod-key"
    worker_token: str = "local-worker-token"
    take_poll_s: float = 10.0  # job-take long-poll; an instant 204 makes the SDK spin
    stop_poll_s: float = 10.0
    runsync_wait_s: float = 90.0
    webhook_retries: int = 2  # RunPod retries a failed webhook twice, 10 s apart
    webhook_retry_delay_s: float = 10.0
    housekeeping_s: float = 0.2
    # Client requests per second before 429 (RunPod rate-limits its API); 0 means no limit.
    rate_limit_per_s: float = 0.0


@dataclass
class Faults:
    """Make the client API misbehave for a while, as a real endpoint sometimes does: answer
    `status` (e.g. 502), or answer after `delay_s`, until `until` (monotonic seconds)."""

    status: int | None = None
    delay_s: float = 0.0
    until: float = 0.0

    def active(self) -> bool:
        return time.monotonic() < self.until


FAULTS = web.AppKey("faults", Faults)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    backend: EndpointBackend,
    config: EndpointConfig,
    on_tick: Callable[[], Awaitable[None]] | None = None,
    *,
    base: str = "/v2/{endpoint_id}",
) -> web.Application:
    """The endpoint's app. `base=""` makes it a sub-application mounted at `/v2/{its id}` beside
    other endpoints on one server (`LocalEndpoint(also=…)`)."""
    faults = Faults()
    limiter = _RateLimiter(config.rate_limit_per_s)
    app = web.Application(
        middlewares=[_errors, _client_faults(faults, limiter)],
        client_max_size=RUNSYNC_LIMIT + 1024,
    )
    app[FAULTS] = faults
    client = _Client(backend, config)
    worker = _WorkerFace(backend, config)
    app.add_routes(
        [
            web.post(f"{base}/run", client.run),
            web.post(f"{base}/runsync", client.runsync),
            web.get(f"{base}/status/{{job_id}}", client.status),
            web.post(f"{base}/status/{{job_id}}", client.status),
            web.post(f"{base}/cancel/{{job_id}}", client.cancel),
            web.get(f"{base}/health", client.health),
            web.post(f"{base}/purge-queue", client.purge_queue),
            web.get(f"{base}/job-take/{{worker_id}}", worker.take),
            web.get(f"{base}/job-take-batch/{{worker_id}}", worker.take_batch),
            web.get(f"{base}/job-stop/{{worker_id}}", worker.stop),
            web.post(f"{base}/job-done/{{worker_id}}/{{job_id}}", worker.done),
            web.post(f"{base}/job-stream/{{worker_id}}/{{job_id}}", worker.stream),
            web.get(f"{base}/ping/{{worker_id}}", worker.ping),
        ]
    )
    app.cleanup_ctx.append(_background(backend, config, on_tick))
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LocalEndpointError as exc:
        return web.json_response({"error": exc.message}, status=exc.status)


_WORKER_PATHS = ("/job-take", "/job-stop", "/job-done", "/job-stream", "/ping")


def _client_faults(faults: Faults, limiter: _RateLimiter) -> Callable[..., Any]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if any(part in request.path for part in _WORKER_PATHS):
            return await handler(request)
        if not limiter.allow():
            return web.json_response({"error": "Too Many Requests"}, status=429)
        if faults.active():
            if faults.delay_s:
                # Received in full first, as RunPod has it before answering late: a client that
                # gives up waiting may still have queued its job.
                await request.read()
                await asyncio.sleep(faults.delay_s)
            if faults.status is not None:
                return web.json_response({"error": "injected fault"}, status=faults.status)
        return await handler(request)

    return middleware


class _RateLimiter:
    """A token bucket of one second's worth of requests."""

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.tokens = per_second
        self.updated = time.monotonic()

    def allow(self) -> bool:
        if self.per_second <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.per_second, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _check_endpoint(request: web.Request, config: EndpointConfig) -> None:
    # Mounted at its own prefix, the app has no {endpoint_id} in its routes: the prefix matched.
    endpoint_id = request.match_info.get("endpoint_id", config.endpoint_id)
    if endpoint_id != config.endpoint_id:
        raise EndpointNotFound(endpoint_id)


class _Client:
    def __init__(self, backend: EndpointBackend, config: EndpointConfig) -> None:
        self.backend, self.config = backend, config

    def _auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        if not hmac.compare_digest(header, f"Bearer {self.config.api_key}"):
            raise Unauthorized()
        _check_endpoint(request, self.config)

    async def _payload(self, request: web.Request, limit: int) -> dict[str, Any]:
        body = await request.read()
        if len(body) > limit:
            raise PayloadTooLarge(limit)
        try:
            payload = json.loads(body or b"{}")
        except ValueError as exc:
            raise LocalEndpointError(f"invalid JSON body: {exc}") from exc
        if not isinstance(payload, dict) or "input" not in payload:
            raise LocalEndpointError("body must be an object with an 'input' field")
        return payload

    async def run(self, request: web.Request) -> web.Response:
        self._auth(request)
        job = await self.backend.submit(await self._payload(request, RUN_LIMIT))
        return web.json_response({"id": job.id, "status": job.status})

    async def runsync(self, request: web.Request) -> web.Response:
        self._auth(request)
        job = await self.backend.submit(await self._payload(request, RUNSYNC_LIMIT))
        wait = float(request.query.get("wait", self.config.runsync_wait_s * 1000)) / 1000
        job = await self.backend.wait_final(job.id, wait)
        return web.json_response(job.to_dict())

    async def status(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response(self.backend.get(request.match_info["job_id"]).to_dict())

    async def cancel(self, request: web.Request) -> web.Response:
        self._auth(request)
        job = await self.backend.cancel(request.match_info["job_id"])
        return web.json_response({"id": job.id, "status": job.status})

    async def health(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response(self.backend.health())

    async def purge_queue(self, request: web.Request) -> web.Response:
        self._auth(request)
        removed = await self.backend.purge_queue()
        return web.json_response({"removed": removed, "status": "completed"})


class _WorkerFace:
    def __init__(self, backend: EndpointBackend, config: EndpointConfig) -> None:
        self.backend, self.config = backend, config

    def _auth(self, request: web.Request) -> str:
        token = request.query.get("token", "")
        if not hmac.compare_digest(token, self.config.worker_token):
            raise Unauthorized()
        _check_endpoint(request, self.config)
        return request.match_info["worker_id"]

    async def take(self, request: web.Request) -> web.Response:
        """The legacy single job-take: one job object, or 204."""
        jobs = await self.backend.take(self._auth(request), 1, self.config.take_poll_s)
        if not jobs:
            return web.Response(status=204)
        return web.json_response(jobs[0].work_item())

    async def take_batch(self, request: web.Request) -> web.Response:
        """job-take-batch (SDK concurrency > 1): a list of up to `batch_size` jobs, or 204."""
        size = int(request.query.get("batch_size", "1"))
        jobs = await self.backend.take(self._auth(request), size, self.config.take_poll_s)
        if not jobs:
            return web.Response(status=204)
        return web.json_response([job.work_item() for job in jobs])

    async def stop(self, request: web.Request) -> web.Response:
        worker_id = self._auth(request)
        signals = await self.backend.stop_signals(worker_id, self.config.stop_poll_s)
        if not signals:
            return web.Response(status=204)
        return web.json_response({"jobsToStop": signals})

    async def done(self, request: web.Request) -> web.Response:
        worker_id = self._auth(request)
        # The SDK posts the JSON text with a form content type.
        try:
            result = json.loads(await request.text())
        except ValueError as exc:
            raise LocalEndpointError(f"job-done body is not JSON: {exc}") from exc
        await self.backend.done(worker_id, request.match_info["job_id"], result)
        return web.json_response({"ok": True})

    async def stream(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response({"ok": True})  # hotbatch's handler never streams

    async def ping(self, request: web.Request) -> web.Response:
        self.backend.ping(self._auth(request), request.query.getall("job_id", []))
        return web.json_response({"ok": True})


def _background(
    backend: EndpointBackend,
    config: EndpointConfig,
    on_tick: Callable[[], Awaitable[None]] | None,
) -> Callable[[web.Application], Any]:
    async def context(_app: web.Application) -> Any:
        tasks = [
            asyncio.create_task(_housekeeping(backend, config, on_tick)),
            asyncio.create_task(_deliver_webhooks(backend, config)),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return context


async def _housekeeping(
    backend: EndpointBackend,
    config: EndpointConfig,
    on_tick: Callable[[], Awaitable[None]] | None,
) -> None:
    while True:
        await asyncio.sleep(config.housekeeping_s)
        try:
            await backend.enforce()
            if on_tick is not None:
                await on_tick()
        except Exception:
            # One bad tick must not stop timeouts and scaling for the rest of the run.
            log.exception("local endpoint housekeeping failed")


async def _deliver_webhooks(backend: EndpointBackend, config: EndpointConfig) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while True:
            job = await backend.webhooks.get()
            asyncio.create_task(_deliver(session, job.webhook or "", job.to_dict(), config))


async def _deliver(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], config: EndpointConfig
) -> None:
    for attempt in range(1 + config.webhook_retries):
        try:
            async with session.post(url, json=body) as response:
                if response.status == 200:
                    return
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = str(exc)
        log.warning(
            "webhook delivery failed",
            extra={"job_id": body["id"], "attempt": attempt + 1, "error": problem},
        )
        await asyncio.sleep(config.webhook_retry_delay_s)
