"""Per-tenant request rate limits with OpenAI's headers (security review, finding 6).

Each authenticated `/v1` request adds one to its tenant's counter for the current minute, one
DynamoDB `ADD` shared by every warm Lambda (`store/ratelimits.py`); the count it returns
decides. A request whose key does not resolve is never counted: random keys write nothing.
Windows are fixed minutes: a tenant can send up to twice its limit across a window's edge,
which is enough for what the limit is for (one tenant's flood must not take the account's
Lambda concurrency from the others) at one write a request, where a sliding window would read
the previous minute too. The expensive routes also count in a smaller budget of their own.

Answers carry OpenAI's `x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and
`x-ratelimit-reset-requests` (`1m0s`, `12.5s`, `300ms`); a refusal is a 429 with `retry-after`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from control_plane.errors import RateLimited
from control_plane.settings import Settings
from control_plane.store import ratelimits
from control_plane.store.table import Table

WINDOW_S = 60
REQUESTS = "requests"
EXPENSIVE = "expensive"
# A webhook test holds the API for up to 30 s, an estimate reads up to 64 MiB of the file.
EXPENSIVE_ROUTES = frozenset(
    {
        ("POST", "/v1/batches/estimate"),
        ("POST", "/v1/webhook_endpoints/{webhook_endpoint_id}/test"),
    }
)
# Where the headers of a counted request wait for an error answer (`api/errors.py`).
STATE_HEADERS = "rate_limit_headers"

# The time windows are cut from; tests move it instead of sleeping.
clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class Window:
    limit: int
    used: int  # this request included
    reset_s: float  # until the next window

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)

    @property
    def exceeded(self) -> bool:
        return self.used > self.limit


def admit(
    table: Table, settings: Settings, *, tenant_id: str, method: str, route: str
) -> dict[str, str]:
    """Count one request of `tenant_id` to `route` (its path template); return the headers
    its answer carries, or raise `RateLimited` (429) when a budget is spent."""
    budgets = [(REQUESTS, settings.rate_limit_requests_per_minute)]
    if (method, route) in EXPENSIVE_ROUTES:
        budgets.append((EXPENSIVE, settings.rate_limit_expensive_per_minute))
    now = clock()
    start = int(now // WINDOW_S) * WINDOW_S
    headers: dict[str, str] = {}
    for scope, limit in budgets:
        if limit <= 0:
            continue
        used = ratelimits.add_request(
            table, tenant_id=tenant_id, scope=scope, start=start, window_s=WINDOW_S
        )
        window = Window(limit=limit, used=used, reset_s=start + WINDOW_S - now)
        if scope == REQUESTS:
            headers = window_headers(window)
        if window.exceeded:
            raise RateLimited(
                refusal(window, what=REQUESTS if scope == REQUESTS else f"{method} {route}"),
                headers={**headers, **retry_headers(window)},
            )
    return headers


def window_headers(window: Window) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(window.limit),
        "x-ratelimit-remaining-requests": str(window.remaining),
        "x-ratelimit-reset-requests": duration(window.reset_s),
    }


def retry_headers(window: Window) -> dict[str, str]:
    # `retry-after-ms` is what OpenAI's SDKs read first; plain clients read `retry-after`.
    return {
        "retry-after": str(max(1, math.ceil(window.reset_s))),
        "retry-after-ms": str(max(1, math.ceil(window.reset_s * 1000))),
    }


def refusal(window: Window, *, what: str) -> str:
    """OpenAI's wording: `Rate limit reached for requests per min (RPM): Limit 3, Used 3,
    Requested 1. Please try again in 20s.`"""
    used = min(window.used - 1, window.limit)
    return (
        f"Rate limit reached for {what} per min (RPM): Limit {window.limit}, Used {used}, "
        f"Requested 1. Please try again in {duration(window.reset_s)}."
    )


def duration(seconds: float) -> str:
    """OpenAI's (Go's) duration format: `300ms`, `12s`, `12.5s`, `1m0s`."""
    millis = max(0, math.ceil(seconds * 1000))
    if millis < 1000:
        return f"{millis}ms" if millis else "0s"
    minutes, millis = divmod(millis, 60_000)
    secs = f"{millis / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def route_of(request: Request) -> str:
    """The path template the request was routed to (`/v1/batches/{batch_id}`)."""
    route = request.scope.get("route")
    return str(getattr(route, "path_format", None) or request.url.path)


def headers_of(request: Request) -> dict[str, str]:
    """The headers `admit` gave this request, for an answer built from an error."""
    headers: dict[str, str] = getattr(request.state, STATE_HEADERS, None) or {}
    return headers


def headers_middleware(app: ASGIApp) -> ASGIApp:
    """Put the request's rate-limit headers on whatever answer leaves the app: routes that
    build their own `Response` (file content, its redirect) drop the headers a dependency set,
    and error answers are built apart (`api/errors.py`). Plain ASGI: a streamed body passes
    through untouched."""

    async def with_headers(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra: dict[str, str] = scope.get("state", {}).get(STATE_HEADERS) or {}
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.setdefault(name, value)
            await send(message)

        await app(scope, receive, sending)

    return with_headers
