"""Typed dependencies shared by the routes: the AWS handle and the caller's tenant (counted
against its rate limit)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, Request, Response

from control_plane.api import ratelimit
from control_plane.clients.aws import Aws
from control_plane.clients.kick import Kick
from control_plane.errors import Unauthorized
from control_plane.store import apikeys

# Beyond this many cached keys, expired entries are dropped (random keys must not grow it).
KEY_CACHE_MAX = 10_000


def get_aws(request: Request) -> Aws:
    aws: Aws = request.app.state.aws
    return aws


AwsDep = Annotated[Aws, Depends(get_aws)]


def get_kick(request: Request) -> Kick:
    kick: Kick = request.app.state.kick
    return kick


KickDep = Annotated[Kick, Depends(get_kick)]


def get_tenant(
    request: Request,
    response: Response,
    aws: AwsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> str:
    """The tenant of the bearer key, once its request is counted against the tenant's rate
    limit (a 429 past it); the answer carries the limit's headers."""
    tenant = _key_tenant(request, aws, authorization)
    headers = ratelimit.admit(
        aws.table,
        aws.settings,
        tenant_id=tenant,
        method=request.method,
        route=ratelimit.route_of(request),
    )
    # The response FastAPI builds from the route's return value takes these; an error answer
    # (`api/errors.py`) finds them on the request.
    response.headers.update(headers)
    setattr(request.state, ratelimit.STATE_HEADERS, headers)
    return tenant


def _key_tenant(request: Request, aws: Aws, authorization: str | None) -> str:
    """The tenant of the bearer key. Lookups are cached for `key_cache_s` (5 s by default) per
    warm process, so a revoked key stops working within that time."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )
    cache: dict[str, tuple[str | None, float]] = request.app.state.key_cache
    digest = apikeys.digest(key.strip())
    now = time.monotonic()
    cached = cache.get(digest)
    if cached is None or cached[1] <= now:
        cached = (apikeys.tenant_for(aws.table, key.strip()), now + aws.settings.key_cache_s)
        if len(cache) >= KEY_CACHE_MAX:
            for stale in [d for d, (_, expires) in cache.items() if expires <= now]:
                del cache[stale]
        cache[digest] = cached
    if cached[0] is None:
        raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
    return cached[0]


TenantDep = Annotated[str, Depends(get_tenant)]
