"""The control plane's domain errors. Each carries what the client needs to fix the request;
`api/errors.py` turns them into OpenAI error bodies in one place."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status_code = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


class InvalidRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status_code = 401
    type = "authentication_error"


class NotFound(ApiError):
    status_code = 404

    def __init__(self, kind: str, object_id: str, *, param: str | None = None):
        super().__init__(f"No {kind} found with id '{object_id}'.", code="not_found", param=param)


class Conflict(ApiError):
    """The object is not in a state that allows the operation (cancel a finished batch...)."""

    status_code = 409


class TooLarge(ApiError):
    """The request body is larger than this route takes (413)."""

    status_code = 413


class LimitExceeded(ApiError):
    """An admission limit. 400 when the request itself is too big, 429 when the tenant has too
    much in flight (it can retry later)."""

    type = "rate_limit_exceeded"

    def __init__(self, limit: str, value: int, message: str, *, status_code: int = 429):
        super().__init__(f"{message} (limit {limit}={value}).", code=limit)
        self.status_code = status_code
        self.limit, self.value = limit, value
        if status_code == 400:
            self.type = "invalid_request_error"


class RateLimited(ApiError):
    """A tenant's requests per minute are spent (429, OpenAI's `type: requests`). Carries the
    headers its answer needs: OpenAI's `x-ratelimit-*` and `retry-after`."""

    status_code = 429
    type = "requests"

    def __init__(self, message: str, *, headers: dict[str, str]):
        super().__init__(message, code="rate_limit_exceeded")
        self.headers = headers


class Unavailable(ApiError):
    status_code = 503
    type = "service_unavailable"


class Unreadable(ApiError):
    """A stored item that cannot be read (corrupt, or in a shape this version does not know):
    the one object answers this clear error, and listings skip it, instead of every request of
    its tenant failing."""

    status_code = 500
    type = "server_error"

    def __init__(self, kind: str, object_id: str):
        super().__init__(
            f"The stored {kind} '{object_id}' could not be read; the server's log names it for "
            "the operator.",
            code="unreadable_object",
        )
        self.kind, self.object_id = kind, object_id


class StateConflict(Exception):
    """A conditional write lost: the item was not in the expected state. Carries the item as the
    winner left it (None when it does not exist), so callers need no second read; its shape is
    the one the caller wrote (a batch item for a batch transition...)."""

    def __init__(self, item: dict[str, Any] | None):
        super().__init__("conditional write lost")
        self.item: Any = item
