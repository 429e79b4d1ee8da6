"""`POST /v1/batches/estimate`: requests, tokens, duration and cost of an uploaded file before it
is submitted, from the throughput measured on the endpoint's recent chunks.

The file is read once, up to SAMPLE_BYTES (an API request must answer within API Gateway's 30
seconds); a larger file is estimated from that prefix, scaled by bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from control_plane.clients.aws import Aws
from control_plane.errors import InvalidRequest, NotFound
from control_plane.ids import now_s
from control_plane.metering.rates import Rates, predict, recent_rates
from control_plane.models import BatchEstimate, EstimateBody
from control_plane.split.stream import read_lines
from control_plane.store import files as file_store

SAMPLE_BYTES = 64 * 1024 * 1024
READ_SIZE = 1024 * 1024
# Without measured figures: the usual English rule of thumb for BPE tokenizers, plus what a
# chat template adds around each message.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
# Output per request when the request sets no limit and nothing was measured yet.
DEFAULT_OUTPUT_TOKENS = 256


@dataclass
class FileScan:
    """What one pass over the request lines finds."""

    requests: int = 0
    size: int = 0  # bytes read
    invalid: int = 0
    text_chars: int = 0
    messages: int = 0
    capped: int = 0  # requests that set max_tokens / max_completion_tokens
    capped_output: int = 0
    uncapped_choices: int = 0  # choices (n) of the requests without a limit

    def add(self, raw: bytes) -> None:
        self.requests += 1
        self.size += len(raw) + 1
        try:
            request = orjson.loads(raw)
            body = request["body"]
            choices = int(body.get("n") or 1)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            self.invalid += 1
            return
        chars, messages = _prompt_size(body)
        self.text_chars += chars
        self.messages += messages
        cap = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(cap, int) and cap > 0:
            self.capped += 1
            self.capped_output += cap * choices
        else:
            self.uncapped_choices += choices


def _prompt_size(body: dict[str, Any]) -> tuple[int, int]:
    """Characters of prompt text and the number of chat messages."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(
                    len(part["text"])
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
        return chars, len(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt), 0
    if isinstance(prompt, list):
        # A list of strings, or token ids (each one token: CHARS_PER_TOKEN characters' worth).
        return sum(len(p) if isinstance(p, str) else CHARS_PER_TOKEN for p in prompt), 0
    return 0, 0


def scan(lines: Iterable[bytes]) -> FileScan:
    result = FileScan()
    for raw in lines:
        if raw.strip():
            result.add(raw)
    return result


def estimate_file(aws: Aws, *, tenant_id: str, body: EstimateBody) -> BatchEstimate:
    try:
        file = file_store.get_file_item(aws.table, file_id=body.input_file_id, tenant_id=tenant_id)
    except NotFound as exc:
        raise NotFound("file", body.input_file_id, param="input_file_id") from exc
    if file["purpose"] != "batch":
        raise InvalidRequest(
            f"File {body.input_file_id} has purpose {file['purpose']!r}, not 'batch'.",
            code="invalid_input_file",
            param="input_file_id",
        )
    size = int(file["bytes"])
    sampled = size > SAMPLE_BYTES
    found = _scan_object(aws, file["s3_key"], sampled=sampled)
    scale = size / found.size if sampled and found.size else 1.0
    rates = recent_rates(aws.table, now=now_s())
    return build_estimate(
        body,
        found,
        size=size,
        scale=scale,
        sampled=sampled,
        rates=rates,
        price_per_hour=aws.settings.gpu_price_per_hour,
        chunk_requests=aws.settings.chunk_max_requests,
        chunk_bytes=aws.settings.chunk_max_bytes,
        concurrency=aws.settings.worker_concurrency,
    )


def _scan_object(aws: Aws, key: str, *, sampled: bool) -> FileScan:
    request: dict[str, Any] = {"Bucket": aws.settings.bucket_name, "Key": key}
    if sampled:
        request["Range"] = f"bytes=0-{SAMPLE_BYTES - 1}"
    stream = aws.s3.get_object(**request)["Body"]
    with stream:
        lines = read_lines(stream.iter_chunks(READ_SIZE))
        return scan(_all_but_last(lines) if sampled else lines)


def _all_but_last(lines: Iterable[bytes]) -> Iterator[bytes]:
    """A prefix of a file ends inside a line: leave that partial line out."""
    previous: bytes | None = None
    for line in lines:
        if previous is not None:
            yield previous
        previous = line


def build_estimate(
    body: EstimateBody,
    found: FileScan,
    *,
    size: int,
    scale: float,
    sampled: bool,
    rates: Rates | None,
    price_per_hour: float,
    chunk_requests: int,
    chunk_bytes: int,
    concurrency: int = 1,
) -> BatchEstimate:
    notes: list[str] = []
    requests = round(found.requests * scale)
    per_byte = rates.input_tokens_per_byte if rates else None
    if per_byte is not None:
        input_tokens = found.size * per_byte * scale
    else:
        input_tokens = (
            found.text_chars / CHARS_PER_TOKEN + found.messages * TOKENS_PER_MESSAGE
        ) * scale
        notes.append(
            "input tokens from characters (no measured tokens per byte yet): "
            f"{CHARS_PER_TOKEN} characters a token, {TOKENS_PER_MESSAGE} more per message"
        )
    per_request = rates.output_tokens_per_request if rates else None
    if found.uncapped_choices and per_request is None:
        notes.append(
            f"requests without max_tokens counted at {DEFAULT_OUTPUT_TOKENS} output tokens "
            "(nothing measured yet)"
        )
    uncapped_each = per_request if per_request is not None else DEFAULT_OUTPUT_TOKENS
    output_tokens = (found.capped_output + found.uncapped_choices * uncapped_each) * scale
    if found.capped:
        notes.append("output at max_tokens: an upper bound where generation stops earlier")
    chunks = max(1, math.ceil(requests / chunk_requests), math.ceil(size / chunk_bytes))
    prediction = (
        predict(rates, tokens=input_tokens + output_tokens, chunks=chunks, concurrency=concurrency)
        if rates
        else None
    )
    if prediction is None:
        notes.append("no measured throughput yet: duration and cost appear once chunks have run")
    elif rates is not None and rates.cold:
        notes.append("measured only on workers' first chunks (one-time engine costs): likely high")
    engine = prediction.engine_s if prediction else None
    if sampled:
        notes.append(f"estimated from the first {found.size} bytes, scaled to {size}")
    if found.invalid:
        notes.append(f"{found.invalid} line(s) are not valid requests: the split would fail them")
    return BatchEstimate(
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        requests=requests,
        bytes=size,
        sampled=sampled,
        sampled_bytes=found.size,
        invalid_lines=round(found.invalid * scale),
        input_tokens=round(input_tokens),
        input_tokens_method="measured_per_byte" if per_byte is not None else "characters",
        output_tokens=round(output_tokens),
        requests_with_max_tokens=round(found.capped * scale),
        chunks=chunks,
        engine_seconds=round(engine, 3) if engine is not None else None,
        duration_seconds=round(prediction.duration_s, 1) if prediction else None,
        cost_usd=(
            round(round(engine, 3) * price_per_hour / 3600, 9)
            if engine is not None and price_per_hour > 0
            else None
        ),
        basis=rates.basis() if rates else None,
        notes=notes,
    )
