"""A hotbatch deployment as the CLI talks to it: the official `openai` SDK for everything
OpenAI defines, its generic `get`/`post` for hotbatch's extras (estimate, dead letters, retry,
health), and presigned part URLs for uploads above what one API request may carry.

The SDK is imported when a client is made, so `hotbatch keys` works without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch, FileObject

# Lambda stops requests at 6 MB and a multipart body reaches it base64-encoded (a third
# larger): files above this go through /v1/uploads and S3 part URLs instead.
SINGLE_REQUEST_BYTES = 4 * 1024 * 1024
PIECE_BYTES = 1024 * 1024

Progress = Callable[[int], None]  # called with the bytes just sent or received


class MissingDeployment(Exception):
    """HOTBATCH_API_URL or HOTBATCH_API_KEY is not set."""


@dataclass(frozen=True)
class Deployment:
    base_url: str  # ends in /v1, as the openai SDK expects
    api_key: str
    # The SDK's HTTP client (an httpx client); tests hand in the app's in-process TestClient.
    http_client: Any = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Deployment:
        env = os.environ if environ is None else environ
        url, key = env.get("HOTBATCH_API_URL", ""), env.get("HOTBATCH_API_KEY", "")
        given = {"HOTBATCH_API_URL": url, "HOTBATCH_API_KEY": key}
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise MissingDeployment(
                f"set {' and '.join(missing)} to the deployment's API (its base URL ends in /v1; "
                "`hotbatch local up` prints both)"
            )
        return cls(base_url=url.rstrip("/"), api_key=key)

    def client(self) -> OpenAI:
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.api_key, http_client=self.http_client)

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
) -> FileObject:
    """`POST /v1/files` for a file that fits one request; above that, `/v1/uploads` and a PUT
    of each presigned part straight to S3, then complete. Either way a `file-…`."""
    size = path.stat().st_size
    if size <= single_request_bytes:
        with path.open("rb") as handle:
            file = client.files.create(file=(path.name, handle), purpose="batch")
        progress(size)
        return file
    upload = client.uploads.create(
        bytes=size, filename=path.name, mime_type="application/jsonl", purpose="batch"
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
            reply.raise_for_status()
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
    written = 0
    with client.files.with_streaming_response.content(file_id) as reply, target.open("wb") as out:
        for piece in reply.iter_bytes(PIECE_BYTES):
            out.write(piece)
            written += len(piece)
            progress(len(piece))
    return written


def _json(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RuntimeError(f"unexpected answer: {str(value)[:200]}")
    return value
