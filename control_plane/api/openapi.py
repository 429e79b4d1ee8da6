"""The OpenAPI document says what the server really does: every status a route answers, with
OpenAI's error body; bearer auth as a security scheme; what each request may hold.

Routes declare the statuses that depend on them (`errors(404, 409)`); `install` adds the ones
every route shares — 400 wherever a parameter or body is validated, 401, 429, 500 — and drops
FastAPI's 422, which this API never answers (`api/errors.py` turns validation errors into 400).
A fuzzer (schemathesis, `tests/control_plane/test_fuzz.py`) holds the document to its word.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from control_plane.models import ErrorBody
from control_plane.settings import Settings

DESCRIPTIONS = {
    400: "The request is malformed or breaks a limit (`param` names the field).",
    401: "No API key, or one that is unknown or revoked.",
    404: "No such object for this API key (another tenant's objects are as absent).",
    409: "The object is not in a state that allows this (a finished batch, a used upload).",
    413: "The body is larger than the limit for this route (`param` names the limit).",
    429: (
        "A tenant limit is reached: its requests per minute (`rate_limit_exceeded`, with "
        "`retry-after`), or `max_active_batches` / `max_queued_requests`; retry later."
    ),
    500: "The server failed; an object that cannot be read answers `unreadable_object`.",
    503: "The GPU endpoint is unhealthy (its circuit is open): no new batches for now.",
}
SCHEME = "bearer"

# OpenAPI links: where an object a response returns can be used next. Clients may follow them;
# the fuzzer's stateful phase does, so it creates batches from files it uploaded.
FILE_ID = "$response.body#/id"
LINKS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("POST /v1/files", "RetrieveFile", "GET /v1/files/{file_id}", {"file_id": FILE_ID}),
    ("POST /v1/files", "FileContent", "GET /v1/files/{file_id}/content", {"file_id": FILE_ID}),
    ("POST /v1/files", "DeleteFile", "DELETE /v1/files/{file_id}", {"file_id": FILE_ID}),
    ("POST /v1/files", "CreateBatch", "POST /v1/batches", {"body.input_file_id": FILE_ID}),
    (
        "POST /v1/uploads/{upload_id}/complete",
        "CreateBatch",
        "POST /v1/batches",
        {"body.input_file_id": "$response.body#/file/id"},
    ),
    *(
        ("POST /v1/uploads", name, target, {"upload_id": "$response.body#/id"})
        for name, target in (
            ("CompleteUpload", "POST /v1/uploads/{upload_id}/complete"),
            ("CancelUpload", "POST /v1/uploads/{upload_id}/cancel"),
        )
    ),
    *(
        ("POST /v1/batches", name, target, {"batch_id": "$response.body#/id"})
        for name, target in (
            ("RetrieveBatch", "GET /v1/batches/{batch_id}"),
            ("CancelBatch", "POST /v1/batches/{batch_id}/cancel"),
            ("DeadLetters", "GET /v1/batches/{batch_id}/dead_letters"),
            ("RetryBatch", "POST /v1/batches/{batch_id}/retry"),
        )
    ),
]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these statuses, each with OpenAI's error body."""
    return {
        status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses
    }


def install(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build(app: FastAPI, settings: Settings) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    if "ErrorBody" not in schemas:
        body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas["ErrorBody"] = body
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    components["securitySchemes"] = {
        SCHEME: {"type": "http", "scheme": "bearer", "description": "An hb-… API key."}
    }
    for operation in _operations(document):
        _declare_shared(operation, error_ref)
    _add_links(document)
    # What a deployment accepts, not a constant: the file size limit is a setting.
    upload = schemas.get("CreateUploadBody", {}).get("properties", {}).get("bytes")
    if upload is not None:
        upload["maximum"] = settings.max_file_bytes
    return document


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        operation
        for path, methods in document.get("paths", {}).items()
        if path.startswith("/v1/")
        for operation in methods.values()
    ]


def _add_links(document: dict[str, Any]) -> None:
    def operation(label: str) -> dict[str, Any]:
        method, path = label.split(" ", 1)
        found: dict[str, Any] = document["paths"][path][method.lower()]
        return found

    for source, name, target, values in LINKS:
        link: dict[str, Any] = {"operationId": operation(target)["operationId"]}
        body = {k.removeprefix("body."): v for k, v in values.items() if k.startswith("body.")}
        parameters = {k: v for k, v in values.items() if not k.startswith("body.")}
        if parameters:
            link["parameters"] = parameters
        if body:
            link["requestBody"] = body
        ok = operation(source)["responses"]["200"]
        ok.setdefault("links", {})[name] = link


def _declare_shared(operation: dict[str, Any], error_ref: dict[str, str]) -> None:
    """Bearer auth instead of an `authorization` header parameter; 400 where FastAPI said 422
    (a validated parameter or body), and 401 and 500 everywhere."""
    parameters = [
        p
        for p in operation.get("parameters", [])
        if not (p.get("in") == "header" and p.get("name", "").lower() == "authorization")
    ]
    if parameters:
        operation["parameters"] = parameters
    else:
        operation.pop("parameters", None)
    operation["security"] = [{SCHEME: []}]
    responses = operation.setdefault("responses", {})
    validated = responses.pop("422", None) is not None and (
        parameters or "requestBody" in operation
    )
    # Every authenticated route counts against its tenant's rate limit.
    shared = ([400] if validated else []) + [401, 429, 500]
    for status in shared:
        responses.setdefault(
            str(status),
            {
                "description": DESCRIPTIONS[status],
                "content": {"application/json": {"schema": error_ref}},
            },
        )
    operation["responses"] = dict(sorted(responses.items()))
