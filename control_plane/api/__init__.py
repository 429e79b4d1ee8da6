"""The HTTP API: OpenAI's Files, Uploads, Batches, Models and webhook endpoints and `/v1/health`
(`create_app`)."""

from __future__ import annotations

from fastapi import FastAPI

from control_plane.api import errors, openapi, ratelimit
from control_plane.api.routes import (
    batches,
    dashboard,
    files,
    health,
    internal,
    models,
    uploads,
    webhook_endpoints,
)
from control_plane.clients.aws import Aws
from control_plane.clients.kick import Kick, no_kick
from control_plane.settings import Settings


def create_app(
    settings: Settings | None = None, *, aws: Aws | None = None, kick: Kick | None = None
) -> FastAPI:
    """The app for Lambda (through Mangum) and uvicorn alike; tests pass their own settings.
    `kick` says an event was queued (the local stack wakes its queue consumers; in AWS the
    event-source mappings need no waking)."""
    aws = aws or Aws(settings or Settings())
    app = FastAPI(
        title="hotbatch",
        summary="OpenAI-compatible Batch API",
        docs_url=None,
        redoc_url=None,
    )
    app.state.aws = aws
    app.state.kick = kick or no_kick
    app.state.key_cache = {}
    errors.install(app)
    app.add_middleware(ratelimit.headers_middleware)
    openapi.install(app, aws.settings)
    for module in (files, uploads, batches, models, health, webhook_endpoints):
        app.include_router(module.router, prefix="/v1")
    app.include_router(internal.router)
    app.include_router(dashboard.router)
    return app
