"""The chunk contract as the control plane will send it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from handler.contract import JOB_INPUT, HealthInput, ProcessChunkInput

JOB = {
    "action": "process_chunk",
    "batch_id": "batch_abc",
    "chunk_id": "00007",
    "attempt": 1,
    "endpoint": "/v1/chat/completions",
    "input_url": "https://bucket.s3/in?X-Amz-Signature=1",
    "output_url": "https://bucket.s3/out?X-Amz-Signature=2",
    "error_url": "https://bucket.s3/err?X-Amz-Signature=3",
}


def test_process_chunk_job_parses_by_action() -> None:
    parsed = JOB_INPUT.validate_python(JOB)
    assert isinstance(parsed, ProcessChunkInput) and parsed.chunk_id == "00007"


def test_health_job_parses_by_action() -> None:
    assert isinstance(JOB_INPUT.validate_python({"action": "health"}), HealthInput)


@pytest.mark.parametrize(
    "change",
    [
        {"endpoint": "/v1/moderations"},
        {"attempt": 0},
        {"input_url": ""},
        {"unexpected": 1},
    ],
)
def test_invalid_process_chunk_inputs_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        JOB_INPUT.validate_python({**JOB, **change})


def test_missing_url_is_rejected() -> None:
    job = dict(JOB)
    del job["error_url"]
    with pytest.raises(ValidationError, match="error_url"):
        JOB_INPUT.validate_python(job)
