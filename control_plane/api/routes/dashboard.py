"""`GET /dashboard`: the operators' page and its files, under a strict Content-Security-Policy;
`GET /v1/batches/{batch_id}/progress`: the one figure the page needs that the API has not, a
batch's progress over time (kept out of the OpenAPI document: the page's, it may change).

The page itself needs no key: it holds none of the service's data, and the key never reaches
the server with it (a URL fragment is not sent; the page moves it to sessionStorage). Every
figure comes from the `/v1` API, called by the page with the key in the Authorization header.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane import dashboard
from control_plane.api.deps import AwsDep, TenantDep
from control_plane.api.routes.batches import BatchId
from control_plane.dashboard.progress import BatchProgress, batch_progress
from control_plane.errors import NotFound

router = APIRouter(tags=["dashboard"], include_in_schema=False)

# Only the page's own files and API calls to this origin: no inline script or style, no other
# host, no framing, no form that could post the key anywhere.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # The page and its script change together with a deploy; a cached old script against a
    # new API is worse than reloading a few tens of kB.
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}


def _serve(name: str) -> Response:
    found = dashboard.asset(name)
    if found is None:
        raise NotFound("dashboard file", name)
    content, media_type = found
    return Response(content, media_type=media_type, headers=HEADERS)


@router.get("/dashboard")
def page() -> Response:
    return _serve("index.html")


@router.get("/dashboard/{name}")
def asset(name: str) -> Response:
    return _serve(name)


@router.get("/v1/batches/{batch_id}/progress")
def progress(aws: AwsDep, tenant: TenantDep, batch_id: BatchId) -> BatchProgress:
    return batch_progress(aws.table, tenant_id=tenant, batch_id=batch_id)
