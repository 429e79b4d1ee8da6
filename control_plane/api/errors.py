"""Every error leaves the API as OpenAI's error body: `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from control_plane.errors import ApiError
from control_plane.models import error_body

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
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    param = ".".join(location) or None
    message = str(first.get("msg", "Invalid request."))
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
    elif param:
        message = f"Invalid value for '{param}': {message}"
    return JSONResponse(
        error_body(message, type="invalid_request_error", param=param, code="invalid_value"),
        status_code=400,
    )


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    elif exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}."
    return JSONResponse(
        error_body(message, type=HTTP_TYPES.get(exc.status_code, "invalid_request_error")),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"path": request.url.path})
    return JSONResponse(
        error_body("The server had an error processing your request.", type="server_error"),
        status_code=500,
    )
