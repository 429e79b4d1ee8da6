"""The streaming split: every validation code with its line number, chunk boundaries,
idempotency, and the S3 path under moto."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from control_plane.layout import chunk_input_key as chunk_key
from control_plane.models import ChunkRef
from control_plane.split.stream import (
    SplitLimits,
    SplitResult,
    read_lines,
    split_lines,
    split_s3_object,
)
from tests.support.lines import CHAT, COMPLETIONS, request_line
from tests.support.moto_state import KEEP_BOTO3_SESSION


def line(custom_id: Any = "r", **fields: Any) -> bytes:
    return request_line(custom_id, **fields).encode()


def run(lines: list[bytes], **limits: int) -> tuple[SplitResult, dict[str, bytes]]:
    written: dict[str, bytes] = {}

    def write(chunk: ChunkRef, content: bytes) -> None:
        written[chunk.key] = content

    result = split_lines(
        lines, batch_id="batch_1", endpoint=CHAT, limits=SplitLimits(**limits), write_chunk=write
    )
    return result, written


def test_good_file_is_cut_by_request_count_with_lines_unchanged() -> None:
    lines = [line(f"r{i}") for i in range(25)]
    result, written = run(lines, chunk_max_requests=10)
    assert result.ok and result.total_requests == 25
    assert [(c.index, c.requests, c.first_line) for c in result.chunks] == [
        (0, 10, 1),
        (1, 10, 11),
        (2, 5, 21),
    ]
    assert list(written) == [chunk_key("batch_1", i) for i in range(3)]
    assert b"".join(written.values()) == b"\n".join(lines) + b"\n"


def test_chunks_are_also_bounded_by_bytes() -> None:
    lines = [line(f"r{i}", pad="x" * 350) for i in range(10)]
    result, written = run(lines, chunk_max_bytes=1100)
    assert all(len(content) <= 1100 for content in written.values())
    assert sum(c.requests for c in result.chunks) == 10 and len(result.chunks) == 5


@pytest.mark.parametrize(
    ("bad", "code", "param"),
    [
        (b"{not json", "invalid_json_line", None),
        (b"[1, 2]", "invalid_json_line", None),
        (b'{"custom_id": "\xff\xfe"}', "invalid_json_line", None),
        (line(None), "missing_custom_id", "custom_id"),
        (line(7), "missing_custom_id", "custom_id"),
        (line("x", method="GET"), "invalid_method", "method"),
        (line("x", url=COMPLETIONS), "mismatched_url", "url"),
        (line("x", body=[1]), "invalid_body", "body"),
        (line("r0"), "duplicate_custom_id", "custom_id"),
    ],
)
def test_each_bad_line_fails_the_batch_with_its_code_and_line_number(
    bad: bytes, code: str, param: str | None
) -> None:
    lines = [line("r0"), b"", line("r1"), bad, line("r2")]
    result, written = run(lines)
    assert not result.ok and written == {} and result.chunks == []
    assert [(e.code, e.line, e.param) for e in result.errors] == [(code, 4, param)]
    assert "4" in result.errors[0].message


def test_empty_and_blank_files_are_rejected() -> None:
    for lines in ([], [b"", b"  ", b"\r"]):
        result, _ = run(lines)
        assert [e.code for e in result.errors] == ["empty_file"]


def test_too_many_tasks_stops_reading() -> None:
    def endless() -> Iterator[bytes]:
        number = 0
        while True:
            number += 1
            yield line(f"r{number}")

    result, _ = run(list(_take(endless(), 100)), max_requests=50)
    assert [(e.code, e.line) for e in result.errors] == [("too_many_tasks", 51)]
    assert "50" in result.errors[0].message


def _take(lines: Iterator[bytes], count: int) -> Iterator[bytes]:
    for _ in range(count):
        yield next(lines)


def test_many_errors_are_counted_and_the_first_hundred_reported() -> None:
    result, _ = run([b"bad"] * 250)
    assert result.error_count == 250 and len(result.errors) == 100


def test_read_lines_splits_on_newline_only_and_across_pieces() -> None:
    pieces = [b'{"a": "x\\ry"}\r\n{"b"', b': 1}\n\n{"c": 2}']
    assert list(read_lines(pieces)) == [b'{"a": "x\\ry"}', b'{"b": 1}', b"", b'{"c": 2}']


@pytest.fixture()
def s3() -> Iterator[Any]:
    with mock_aws(config=KEEP_BOTO3_SESSION):
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="hotbatch-test")
        yield client


def test_s3_split_writes_chunk_objects_and_is_idempotent(s3: Any) -> None:
    lines = [line(f"r{i}") for i in range(2500)]
    s3.put_object(Bucket="hotbatch-test", Key="files/file-1", Body=b"\r\n".join(lines) + b"\r\n")
    limits = SplitLimits(chunk_max_requests=1000)
    kwargs: dict[str, Any] = {
        "bucket": "hotbatch-test",
        "key": "files/file-1",
        "batch_id": "batch_9",
        "endpoint": CHAT,
    }

    first = split_s3_object(s3, limits=limits, **kwargs)
    keys = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket="hotbatch-test", Prefix="batches/")["Contents"]
    )
    bodies = {key: s3.get_object(Bucket="hotbatch-test", Key=key)["Body"].read() for key in keys}
    second = split_s3_object(s3, limits=limits, **kwargs)

    assert first == second and first.ok and [c.requests for c in first.chunks] == [1000, 1000, 500]
    again = sorted(
        o["Key"] for o in s3.list_objects_v2(Bucket="hotbatch-test", Prefix="batches/")["Contents"]
    )
    assert keys == again == [chunk_key("batch_9", i) for i in range(3)]
    assert all(
        s3.get_object(Bucket="hotbatch-test", Key=k)["Body"].read() == bodies[k] for k in keys
    )
    assert b"".join(bodies[k] for k in keys) == b"\n".join(lines) + b"\n"  # CRLF normalised
