"""The input file of `batches submit` and `batches estimate`: a local JSONL file uploaded with a
progress bar on stderr (in presigned parts above one request's limit), or a `file-…` already
uploaded, whose first line then names the endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from infra import client as api
from infra import views
from infra.batch_file import DEFAULT_ENDPOINT, endpoint_of
from infra.output_cli import Exit, err, fail, say

if TYPE_CHECKING:
    from openai import OpenAI


@dataclass(frozen=True)
class Input:
    """The uploaded file a batch or an estimate reads, and the endpoint its lines name."""

    file_id: str
    endpoint: str
    uploaded_from: Path | None = None  # None: an id given, nothing uploaded


def batch_input(
    target: api.Deployment,
    sdk: OpenAI,
    given: str,
    *,
    endpoint: str | None,
    single_request_bytes: int,
    expires_after_s: int | None = None,
) -> Input:
    """Upload a local file (in parts above one request's limit), or take a `file-…` id, whose
    first line then names the endpoint unless `--endpoint` does."""
    path = Path(given)
    if path.is_file():
        file_id = _upload(target, sdk, path, single_request_bytes, expires_after_s)
        return Input(file_id, endpoint or endpoint_of(path), uploaded_from=path)
    if not given.startswith("file-"):
        fail(f"input file not found: {given} (give a JSONL file or a file-… id)", Exit.USAGE)
    return uploaded_input(sdk, given, endpoint=endpoint)


def uploaded_input(sdk: OpenAI, file_id: str, *, endpoint: str | None) -> Input:
    """An uploaded file as it is: nothing is sent but a read of its first line, for the
    endpoint `--endpoint` does not name."""
    return Input(file_id, endpoint or api.endpoint_of_file(sdk, file_id) or DEFAULT_ENDPOINT)


def _upload(
    target: api.Deployment,
    sdk: OpenAI,
    path: Path,
    single_request_bytes: int,
    expires_after_s: int | None,
) -> str:
    size = path.stat().st_size
    console = err()
    bar, task = views.transfer_bar(console, f"uploading {path.name}", size)
    with bar:
        uploaded = api.upload(
            target,
            sdk,
            path,
            progress=lambda sent: bar.advance(task, sent),
            single_request_bytes=single_request_bytes,
            expires_after_s=expires_after_s,
        )
    how = "in presigned parts" if size > single_request_bytes else "in one request"
    say(f"uploaded {path.name} as {uploaded.id} ({size:,} bytes, {how})")
    return uploaded.id
