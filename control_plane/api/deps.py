"""Typed dependencies shared by the routes: the AWS handle and the caller's tenant."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, Request

from control_plane.aws import Aws
from control_plane.errors import Unauthorized
from control_plane.kick import Kick
from control_plane.store import apikeys

KEY_CACHE_S = 60.0


def get_aws(request: Request) -> Aws:
    aws: Aws = request.app.state.aws
    return aws


AwsDep = Annotated[Aws, Depends(get_aws)]


def get_kick(request: Request) -> Kick:
    kick: Kick = request.app.state.kick
    return kick


KickDep = Annotated[Kick, Depends(get_kick)]


def get_tenant(
    request: Request, aws: AwsDep, authorization: Annotated[str | None, Header()] = None
) -> str:
    """The tenant of the bearer key. Lookups are cached for a minute per warm process, so a
    revoked key stops working within that time."""
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )
    cache: dict[str, tuple[str | None, float]] = request.app.state.key_cache
    digest = apikeys.digest(key.strip())
    cached = cache.get(digest)
    if cached is None or cached[1] < time.monotonic():
        cached = (apikeys.tenant_for(aws.table, key.strip()), time.monotonic() + KEY_CACHE_S)
        cache[digest] = cached
    if cached[0] is None:
        raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")
    return cached[0]


TenantDep = Annotated[str, Depends(get_tenant)]
