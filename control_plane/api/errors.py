"""Every error leaves the API as OpenAI's error body: `{"error": {message, type, param, code}}`.

Messages may quote what the client sent, so every string is made encodable first (an unpaired
surrogate from a JSON escape would otherwise make the error itself a 500). A 405 names in
`Allow` every method the path has, across all its routes. An error of a request counted against
its tenant's rate limit carries the limit's headers too, as a success does.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from control_plane.api import ratelimit
from control_plane.errors import ApiError
from control_plane.models import error_body as _error_body

log = logging.getLogger("control_plane.api")

HTTP_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_exceeded"}


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.message, type=exc.type, param=exc.param, code=exc.code),
        status_code=exc.status_code,
        headers=_headers(request, getattr(exc, "headers", None)),
    )


def _headers(request: Request, extra: dict[str, str] | None = None) -> dict[str, str] | None:
    """The rate-limit headers of the request, if it was counted, and the error's own."""
    headers = {**ratelimit.headers_of(request), **(extra or {})}
    return headers or None


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    param = _param(first.get("loc", ()))
    message = str(first.get("msg", "Invalid request."))
    if first.get("type") == "missing" and param is None:
        message = "The request body is missing or is not a JSON object."
    elif first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}"
    return JSONResponse(
        error_body(message, type="invalid_request_error", param=param, code="invalid_value"),
        status_code=400,
        headers=_headers(request),
    )


def _param(location: Any) -> str | None:
    """`metadata`, `output_expires_after.seconds`, `custom_ids.3`: the field the error is in
    (a dict key's own error names the dict, not the key)."""
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header")]
    if "[key]" in parts:
        parts = parts[: max(0, parts.index("[key]") - 1)]
    return ".".join(parts) or None


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = str(exc.detail)
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return JSONResponse(
        error_body(message, type=HTTP_TYPES.get(exc.status_code, "invalid_request_error")),
        status_code=exc.status_code,
        headers=_headers(request, headers),
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route with the path template the request was routed to:
    Starlette's own 405 names only the first route's (GET /v1/files/{id} and DELETE
    /v1/files/{id} are two routes). Other templates that also match the path do not count:
    `/v1/batches/estimate` is not a `/v1/batches/{batch_id}`, whatever GET would do."""
    methods: set[str] = set()
    template = None
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)  # PARTIAL: the path, another method
        if match == Match.NONE:
            continue
        path = getattr(route, "path_format", None)
        template = path if template is None else template
        if path == template:
            methods.update(getattr(route, "methods", None) or ())
    order = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    return sorted(methods, key=lambda m: order.index(m) if m in order else len(order))


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return _error_body(
        _encodable(message),
        type=type,
        param=None if param is None else _encodable(param),
        code=code,
    )


def _encodable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse(
        error_body("The server had an error processing your request.", type="server_error"),
        status_code=500,
        headers=_headers(request),
    )
