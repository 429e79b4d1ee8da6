"""A hotbatch deployment as the CLI talks to it: the official `openai` SDK for everything
OpenAI defines, its generic `get`/`post` for hotbatch's extras (estimate, dead letters, retry,
health), and presigned part URLs for uploads above what one API request may carry.

The SDK is imported when a client is made, so `hotbatch keys` works without it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from infra.batch_file import first_url

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch, FileObject

# Lambda stops requests at 6 MB and a multipart body reaches it base64-encoded (a third
# larger): files above this go through /v1/uploads and S3 part URLs instead.
SINGLE_REQUEST_BYTES = 4 * 1024 * 1024
PIECE_BYTES = 1024 * 1024

Progress = Callable[[int], None]  # called with the bytes just sent or received


# A file `batches estimate FILE` uploads only to estimate it expires (OpenAI's `expires_after`)
# instead of staying forever: a day leaves time to `submit --file-id` it without a second upload.
ESTIMATE_COPY_EXPIRES_S = 24 * 3600
# What `endpoint_of_file` reads of an uploaded file to find its first request's `url`.
HEAD_BYTES = 64 * 1024


class DeploymentConfigError(Exception):
    """The deployment's URL or key is missing or cannot be an API base URL: one line that names
    the value and what to set."""


class UnexpectedAnswer(Exception):
    """The URL answered, but not as a hotbatch deployment would."""


class TransferFailed(Exception):
    """A presigned storage URL refused a part of an upload."""


def check_api_url(url: str) -> str:
    """`url` without a trailing slash, if it can be a deployment's API base URL (http(s), a
    host, a path ending in /v1, as the openai SDK expects); else DeploymentConfigError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DeploymentConfigError(
            f"{url} is not an http(s) URL: give the deployment's API base URL, e.g. "
            "https://ID.execute-api.REGION.amazonaws.com/v1 (--api-url or HOTBATCH_API_URL)"
        )
    base = url.rstrip("/")
    if not parts.path.rstrip("/").endswith("/v1"):
        raise DeploymentConfigError(
            f"{url} does not end in /v1: the API's base URL does (try {base}/v1); "
            "set it with --api-url or HOTBATCH_API_URL"
        )
    return base


@dataclass(frozen=True)
class Deployment:
    base_url: str  # ends in /v1, as the openai SDK expects
    api_key: str
    # The SDK's HTTP client (an httpx client); tests hand in the app's in-process TestClient.
    http_client: Any = None
    # The SDK's retries of a failed connection or a 429/5xx (with backoff); tests use 0.
    max_retries: int = 2

    @classmethod
    def resolve(
        cls,
        *,
        url: str | None = None,
        key: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Deployment:
        """The deployment `--api-url`/`--api-key` name, else HOTBATCH_API_URL/_KEY."""
        env = os.environ if environ is None else environ
        url = url or env.get("HOTBATCH_API_URL", "")
        key = key or env.get("HOTBATCH_API_KEY", "")
        given = {"--api-url or HOTBATCH_API_URL": url, "--api-key or HOTBATCH_API_KEY": key}
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise DeploymentConfigError(
                f"set {' and '.join(missing)} to the deployment's API (its base URL ends in /v1; "
                "`hotbatch local up` prints both)"
            )
        return cls(base_url=check_api_url(url), api_key=key)

    def overridden(self, *, url: str | None, key: str | None) -> Deployment:
        """This deployment with the URL or key the command line gives instead."""
        return dataclasses.replace(
            self,
            base_url=check_api_url(url) if url else self.base_url,
            api_key=key or self.api_key,
        )

    def client(self) -> OpenAI:
        from openai import OpenAI

        return OpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            http_client=self.http_client,
            max_retries=self.max_retries,
        )

    def transfer_client(self) -> Any:
        """An HTTP client for presigned S3 URLs (never the API's, which tests replace)."""
        from openai import DefaultHttpxClient

        return DefaultHttpxClient(timeout=300.0)


def upload(
    deployment: Deployment,
    client: OpenAI,
    path: Path,
    *,
    progress: Progress,
    single_request_bytes: int = SINGLE_REQUEST_BYTES,
    expires_after_s: int | None = None,
) -> FileObject:
    """`POST /v1/files` for a file that fits one request; above that, `/v1/uploads` and a PUT
    of each presigned part straight to S3, then complete. Either way a `file-…`, which the
    deployment deletes `expires_after_s` seconds after it is created (None: never)."""
    from openai import omit

    expiry: Any = {"anchor": "created_at", "seconds": expires_after_s} if expires_after_s else omit
    size = path.stat().st_size
    if size <= single_request_bytes:
        with path.open("rb") as handle:
            file = client.files.create(
                file=(path.name, handle), purpose="batch", expires_after=expiry
            )
        progress(size)
        return file
    upload = client.uploads.create(
        bytes=size,
        filename=path.name,
        mime_type="application/jsonl",
        purpose="batch",
        expires_after=expiry,
    )
    parts: list[dict[str, Any]] = getattr(upload, "part_urls", None) or []
    if not parts:
        raise RuntimeError("the deployment answered an upload without part_urls")
    with deployment.transfer_client() as http, path.open("rb") as handle:
        for part in parts:
            length = int(part["bytes"])
            reply = http.put(
                part["url"],
                content=_pieces(handle, length, progress),
                headers={"Content-Length": str(length)},  # S3 refuses chunked part uploads
            )
            if reply.status_code >= 400:
                raise TransferFailed(
                    f"storage refused part {part.get('part_number', '?')} of upload "
                    f"{upload.id}: HTTP {reply.status_code}"
                )
    done = client.uploads.complete(upload.id, part_ids=[])
    if done.file is None:
        raise RuntimeError(f"upload {upload.id} completed without a file")
    return done.file


def _pieces(handle: IO[bytes], length: int, progress: Progress) -> Iterator[bytes]:
    left = length
    while left > 0:
        piece = handle.read(min(PIECE_BYTES, left))
        if not piece:
            raise RuntimeError("the file shrank while it was being uploaded")
        left -= len(piece)
        progress(len(piece))
        yield piece


def create_batch(
    client: OpenAI,
    *,
    file_id: str,
    endpoint: str,
    priority: str,
    metadata: dict[str, str] | None,
) -> Batch:
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,  # type: ignore[arg-type]  # the SDK lists OpenAI's endpoints only
        completion_window="24h",
        metadata=metadata,
        extra_body={"priority": priority},
    )


# `batches list --status` filters on this side (the API has no status filter): it pages through
# the newest batches until it has found enough, or looked at this many.
SCAN_BATCHES = 10_000
PAGE = 100  # the most batches one `GET /v1/batches` returns


@dataclass(frozen=True)
class Listed:
    batches: list[Batch]
    scanned: int  # batches looked at
    more: bool  # older ones were left unread
    last_id: str | None  # where to go on from (`--after`)


def list_batches(
    client: OpenAI,
    *,
    limit: int,
    after: str | None = None,
    keep: Callable[[Batch], bool] | None = None,
    scan: int = SCAN_BATCHES,
) -> Listed:
    """The newest `limit` batches (after `after`) that `keep` keeps, page after page, looking
    at `scan` batches at most."""
    found: list[Batch] = []
    scanned, cursor = 0, after
    while True:
        size = PAGE if keep else min(PAGE, limit - len(found))
        batches = client.batches
        page = batches.list(limit=size, after=cursor) if cursor else batches.list(limit=size)
        for index, batch in enumerate(page.data):
            scanned, cursor = scanned + 1, batch.id
            if keep is None or keep(batch):
                found.append(batch)
                if len(found) == limit:
                    more = index < len(page.data) - 1 or bool(page.has_more)
                    return Listed(found, scanned, more=more, last_id=cursor)
        if not page.has_more or not page.data or scanned >= scan:
            more = bool(page.has_more and page.data)
            return Listed(found, scanned, more=more, last_id=cursor)


def estimate(client: OpenAI, *, file_id: str, endpoint: str) -> dict[str, Any]:
    body = {"input_file_id": file_id, "endpoint": endpoint}
    return _json(client.post("/batches/estimate", body=body, cast_to=object))


def dead_letters(client: OpenAI, batch_id: str) -> list[dict[str, Any]]:
    """Every dead letter of the batch, page after page."""
    letters: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"after": after} if after else {})}
        page = _json(
            client.get(
                f"/batches/{batch_id}/dead_letters", cast_to=object, options={"params": params}
            )
        )
        letters.extend(page["data"])
        if not page.get("has_more") or not page["data"]:
            return letters
        after = page["last_id"]


def retry(client: OpenAI, batch_id: str, custom_ids: list[str] | None) -> Batch:
    from openai.types import Batch

    body = {"custom_ids": custom_ids} if custom_ids else {}
    return client.post(f"/batches/{batch_id}/retry", body=body, cast_to=Batch)


def health(client: OpenAI) -> dict[str, Any]:
    return _json(client.get("/health", cast_to=object))


def download(client: OpenAI, file_id: str, target: Path, *, progress: Progress) -> int:
    """Stream a file's content to `target` (the SDK follows the redirect of a large one)."""
    with target.open("wb") as out:
        return download_to(client, file_id, out, progress=progress)


def download_to(client: OpenAI, file_id: str, out: IO[bytes], *, progress: Progress) -> int:
    """Stream a file's content into `out` (a file, or stdout's bytes); the bytes written."""
    written = 0
    with client.files.with_streaming_response.content(file_id) as reply:
        for piece in reply.iter_bytes(PIECE_BYTES):
            out.write(piece)
            written += len(piece)
            progress(len(piece))
    return written


def endpoint_of_file(client: OpenAI, file_id: str) -> str | None:
    """The `url` of an uploaded file's first request, from its first bytes only (the rest is
    never fetched), so that a batch from a `file-…` id gets the endpoint its lines name."""
    head = b""
    with client.files.with_streaming_response.content(file_id) as reply:
        for piece in reply.iter_bytes(HEAD_BYTES):
            head += piece
            if b"\n" in head or len(head) >= HEAD_BYTES:
                break
    return first_url(head.splitlines()[:1])


def connection_reason(exc: BaseException) -> str:
    """What the HTTP library said about a failed connection, without `[Errno N]`."""
    cause = exc.__cause__ or exc
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(cause)).strip()
    return (text[:1].lower() + text[1:]) if text else type(cause).__name__


def _json(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnexpectedAnswer(f"expected a JSON object, got: {str(value)[:200]}")
    return value
