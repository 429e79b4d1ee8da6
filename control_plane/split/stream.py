"""Streaming split: validate every line of a batch input file and cut it into chunk objects.

Memory stays flat whatever the file size: the input is read in 1 MiB pieces, lines wait in
per-prefix-group buffers bounded by `group_buffer_bytes` (`groups.py` cuts the chunks so that
requests sharing a prompt prefix travel together), and duplicate detection keeps a 96-bit hash
per `custom_id` (about 70 bytes each in a set: ~70 MB for 1,000,000 ids) instead of the ids
themselves. Lines are written to the chunks byte for byte as they came, so the split adds no
re-serialisation. orjson parses them: several times faster than `json`; it rejects NaN and
Infinity, which are not JSON either.

Idempotent by construction: chunk keys and contents depend only on the input file and the
limits, so a retried split writes the same objects again. Chunks no longer follow the file's
order (OpenAI promises none; outputs are matched by `custom_id`), but every line lands in
exactly one chunk, byte for byte.
"""

from __future__ import annotations

import collections
import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_validator

from control_plane.layout import chunk_input_key
from control_plane.models import ChunkRef
from control_plane.split.groups import GroupPacker, PackedChunk, prefix_group

READ_SIZE = 1024 * 1024
UPLOAD_THREADS = 4
UPLOADS_IN_FLIGHT = 8
MAX_REPORTED_ERRORS = 100
# Every id lands whole in results, dead letters and chunk items (one DynamoDB item holds
# 400 KB): a cap keeps each of them small, and no caller needs ids longer than this.
MAX_CUSTOM_ID_CHARS = 512
MAX_MODEL_CHARS = 256
# A value an error message quotes is cut to this: 100 such errors stay far below the 400 KB of
# the batch item that carries them, whatever the line held.
QUOTE_CHARS = 80
MESSAGE_CHARS = 1_000

# (code, message) when a line's model cannot serve the batch's endpoint (`routing.check_line`).
ModelCheck = Callable[[object], tuple[str, str] | None]


class SplitLimits(BaseModel):
    max_requests: int = Field(default=50_000, ge=1, description="requests per batch")
    chunk_max_requests: int = Field(default=1_000, ge=1)
    chunk_max_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    group_by_prefix: bool = Field(default=True, description="cut chunks by prompt-prefix group")
    group_buffer_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="lines held in group buffers, at most"
    )
    max_open_groups: int = Field(default=4096, ge=1, description="group buffers, at most")


class SplitError(BaseModel):
    """One entry of a batch's `errors.data`, as OpenAI reports validation failures."""

    code: str
    line: int | None
    message: str
    param: str | None = None

    @field_validator("message")
    @classmethod
    def _bounded(cls, message: str) -> str:
        return message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 1] + "…"


def quoted(value: object) -> str:
    """`value` as an error message quotes it: its repr, cut to `QUOTE_CHARS`."""
    text = repr(value)
    return text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…"


class SplitResult(BaseModel):
    total_requests: int
    chunks: list[ChunkRef]
    errors: list[SplitError]
    error_count: int
    model: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_count == 0


def read_lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Lines split on `\\n` only (a trailing `\\r` is dropped), so line numbers match what an
    editor shows; botocore's `iter_lines` also splits on a lone `\\r`."""
    pending = b""
    for piece in pieces:
        pending += piece
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r")
    if pending:
        yield pending.removesuffix(b"\r")


def split_lines(
    lines: Iterable[bytes],
    *,
    batch_id: str,
    endpoint: str,
    limits: SplitLimits,
    write_chunk: Callable[[ChunkRef, bytes], None],
    check_model: ModelCheck | None = None,
) -> SplitResult:
    """Validate `lines`; hand each full chunk to `write_chunk` (none once an error is seen)."""
    state = _State(batch_id, endpoint, limits, write_chunk, check_model)
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        state.add(number, raw)
        if state.too_many:
            break
    return state.finish()


def split_s3_object(
    s3: Any,
    *,
    bucket: str,
    key: str,
    batch_id: str,
    endpoint: str,
    limits: SplitLimits,
    check_model: ModelCheck | None = None,
) -> SplitResult:
    """Stream `s3://bucket/key` and write chunk objects beside it under `batches/{batch_id}/`.

    Chunk uploads run on a few threads while validation goes on (boto3 clients are thread-safe),
    at most `UPLOADS_IN_FLIGHT` at a time so memory stays bounded.
    """
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    pending: collections.deque[Future[Any]] = collections.deque()
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS, thread_name_prefix="split-put") as pool:

        def write(chunk: ChunkRef, content: bytes) -> None:
            while len(pending) >= UPLOADS_IN_FLIGHT:
                pending.popleft().result()
            pending.append(
                pool.submit(
                    s3.put_object,
                    Bucket=bucket,
                    Key=chunk.key,
                    Body=content,
                    ContentType="application/jsonl",
                )
            )

        try:
            result = split_lines(
                read_lines(body.iter_chunks(READ_SIZE)),
                batch_id=batch_id,
                endpoint=endpoint,
                limits=limits,
                write_chunk=write,
                check_model=check_model,
            )
            for upload in pending:
                upload.result()  # an upload that failed fails the split (and its retry redoes it)
            return result
        finally:
            body.close()


class _State:
    def __init__(
        self,
        batch_id: str,
        endpoint: str,
        limits: SplitLimits,
        write_chunk: Callable[[ChunkRef, bytes], None],
        check_model: ModelCheck | None,
    ) -> None:
        self.batch_id, self.endpoint, self.limits = batch_id, endpoint, limits
        self.write_chunk = write_chunk
        self.check_model = check_model
        self.seen: set[int] = set()
        self.requests = 0
        self.errors: list[SplitError] = []
        self.error_count = 0
        self.chunks: list[ChunkRef] = []
        # The first chunk each group led: one entry per chunk at most.
        self.group_first: dict[str, int] = {}
        self.packer = GroupPacker(
            max_requests=limits.chunk_max_requests,
            max_bytes=limits.chunk_max_bytes,
            buffer_bytes=limits.group_buffer_bytes,
            max_groups=limits.max_open_groups,
            emit=self._write,
        )
        self.too_many = False
        self.model: str | None = None

    def add(self, number: int, raw: bytes) -> None:
        request = self._validate(number, raw)
        if isinstance(request, SplitError):
            self._error(request)
            return
        self.requests += 1
        if self.requests > self.limits.max_requests:
            self.too_many = True
            self._error(
                SplitError(
                    code="too_many_tasks",
                    line=number,
                    message=(
                        f"The batch has more than {self.limits.max_requests} requests, "
                        "the limit for one batch."
                    ),
                )
            )
            return
        if self.error_count:
            return  # the batch fails: validate the rest, but write nothing more
        group = prefix_group(request["body"]) if self.limits.group_by_prefix else ""
        self.packer.add(group, number, raw)

    def finish(self) -> SplitResult:
        if self.requests == 0 and not self.error_count:
            self._error(
                SplitError(code="empty_file", line=None, message="The file has no requests.")
            )
        if not self.error_count:
            self.packer.finish()
        return SplitResult(
            total_requests=min(self.requests, self.limits.max_requests),
            chunks=self.chunks if not self.error_count else [],
            errors=self.errors,
            error_count=self.error_count,
            model=self.model,
        )

    def _write(self, packed: PackedChunk) -> None:
        content = b"\n".join(packed.lines) + b"\n"
        index = len(self.chunks)
        chunk = ChunkRef(
            index=index,
            key=chunk_input_key(self.batch_id, index),
            requests=len(packed.lines),
            bytes=len(content),
            first_line=packed.first_line,
            group=packed.groups[0],
            groups=len(packed.groups),
            group_order=self.group_first.setdefault(packed.groups[0], index),
        )
        self.write_chunk(chunk, content)
        self.chunks.append(chunk)

    def _error(self, error: SplitError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    def _validate(self, number: int, raw: bytes) -> SplitError | dict[str, Any]:
        """The request on the line, or what is wrong with it."""
        if len(raw) + 1 > self.limits.chunk_max_bytes:
            return SplitError(
                code="line_too_large",
                line=number,
                message=f"Line {number} is larger than {self.limits.chunk_max_bytes} bytes.",
            )
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            reason = "is not UTF-8" if "UTF-8" in str(exc) else f"is not valid JSON: {exc}"
            return SplitError(
                code="invalid_json_line", line=number, message=f"Line {number} {reason}."
            )
        if not isinstance(request, dict):
            return SplitError(
                code="invalid_json_line",
                line=number,
                message=f"Line {number} is not a JSON object.",
            )
        error = self._check_fields(number, request)
        return request if error is None else error

    def _check_fields(self, number: int, request: dict[str, Any]) -> SplitError | None:
        custom_id = request.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return SplitError(
                code="missing_custom_id",
                line=number,
                message=f"Line {number} needs a non-empty string custom_id.",
                param="custom_id",
            )
        if len(custom_id) > MAX_CUSTOM_ID_CHARS:
            return SplitError(
                code="invalid_custom_id",
                line=number,
                message=(
                    f"Line {number}: custom_id is {len(custom_id)} characters long; at most "
                    f"{MAX_CUSTOM_ID_CHARS} are allowed."
                ),
                param="custom_id",
            )
        if request.get("method") != "POST":
            return SplitError(
                code="invalid_method",
                line=number,
                message=f"Line {number}: method must be POST.",
                param="method",
            )
        if request.get("url") != self.endpoint:
            return SplitError(
                code="mismatched_url",
                line=number,
                message=(
                    f"Line {number}: url {quoted(request.get('url'))} does not match the "
                    f"batch endpoint {self.endpoint!r}."
                ),
                param="url",
            )
        if not isinstance(request.get("body"), dict):
            return SplitError(
                code="invalid_body",
                line=number,
                message=f"Line {number}: body must be a JSON object.",
                param="body",
            )
        digest = int.from_bytes(hashlib.blake2b(custom_id.encode(), digest_size=12).digest())
        if digest in self.seen:
            return SplitError(
                code="duplicate_custom_id",
                line=number,
                message=f"Line {number}: custom_id {quoted(custom_id)} appears on an earlier line.",
                param="custom_id",
            )
        self.seen.add(digest)
        return self._check_model(number, request["body"].get("model"))

    def _check_model(self, number: int, model: object) -> SplitError | None:
        """One model per batch file, as OpenAI requires (its chunks go to one endpoint), and
        one this deployment serves for the batch's endpoint."""
        if isinstance(model, str) and len(model) > MAX_MODEL_CHARS:
            return SplitError(
                code="invalid_model",
                line=number,
                message=f"Line {number}: the model name is over {MAX_MODEL_CHARS} characters long.",
                param="body.model",
            )
        if self.check_model is not None:
            refused = self.check_model(model)
            if refused is not None:
                code, message = refused
                return SplitError(
                    code=code, line=number, message=f"Line {number}: {message}", param="body.model"
                )
        if not isinstance(model, str):
            return None  # no map: the worker's default model answers (or refuses) it
        if self.model is None:
            self.model = model
        elif model != self.model:
            return SplitError(
                code="mismatched_model",
                line=number,
                message=(
                    f"Line {number}: model {model!r} differs from {self.model!r} on an earlier "
                    "line; a batch file holds requests for one model."
                ),
                param="body.model",
            )
        return None
