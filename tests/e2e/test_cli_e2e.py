"""The CLI as an operator runs it, against `hotbatch local up` on real parts (a `python -m
handler` worker on vLLM's CPU build with the tiny model): `batches estimate FILE`, then
`batches submit --file-id` of the file the estimate uploaded (no second upload) with `--wait`
exits 0, `batches download` writes the results, the batch carries its engine time and cost,
and the estimate is compared with what the batch really took."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.tiny_model import KV_CACHE_BYTES
from tests.support.stack import local_up
from tests.support.tiny import TINY_MAX_MODEL_LEN, TINY_MODEL_NAME

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tests" / "data" / "tiny-batch.jsonl"
PRICE = 2.0
# How far the estimate may be from the actual, as a ratio either way: token counts follow from
# the file, times from a shared CPU whose speed varies from minute to minute (docs/operations.md,
# "Cost, ETA and estimates", has the figures of runs).
TOKENS_WITHIN = 1.25
TIME_WITHIN = 2.5

pytestmark = [pytest.mark.engine, pytest.mark.e2e]


@pytest.fixture(scope="module")
def exports(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A stack of its own, not the one the e2e tests share (tests/e2e/conftest.py): estimates
    rest on the throughput measured on the whole stack, and only a stack that has run nothing
    but this test's warm-up makes the estimate's basis known.

    It loads only the engine the test uses: the tiny model by path on the one endpoint, as
    `local up` serves it by default (same weights, context and KV cache), without the embedding
    endpoint, whose engine would load beside it on the same core."""
    flags = ["--workers", "1", "--chunk-size", "50", "--gpu-price-per-hour", str(PRICE)]
    flags += ["--model", str(tiny_model), "--served-model-name", TINY_MODEL_NAME]
    env = {"MAX_MODEL_LEN": str(TINY_MAX_MODEL_LEN), "KV_CACHE_MEMORY_BYTES": KV_CACHE_BYTES}
    with local_up(tmp_path_factory.mktemp("cli-e2e"), *flags, env=env) as found:
        yield found


def hotbatch(exports: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOTBATCH_API_URL": exports["HOTBATCH_API_URL"],
        "HOTBATCH_API_KEY": exports["HOTBATCH_API_KEY"],
    }
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def warm_up_file(path: Path) -> Path:
    """The example's requests under other ids, their user messages changed so the batch
    measured afterwards gets no prefix-cache hits from them: four earlier chunks. The worker's
    first is kept apart, and so is the second when the worker took both at once (it shared the
    fresh engine's costs): two or three to measure."""
    lines = []
    for raw in EXAMPLE.read_text().splitlines():
        request = json.loads(raw)
        request["custom_id"] = "warm-" + request["custom_id"]
        request["body"]["messages"][-1]["content"] = (
            "Earlier: " + request["body"]["messages"][-1]["content"]
        )
        lines.append(json.dumps(request))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_estimate_submit_wait_download_on_the_real_engine(
    exports: dict[str, str], tmp_path: Path
) -> None:
    warm = hotbatch(
        exports,
        "batches",
        "submit",
        str(warm_up_file(tmp_path / "warm.jsonl")),
        "--wait",
        cwd=tmp_path,
    )
    assert warm.returncode == 0, warm.stderr[-3000:]

    shown = hotbatch(exports, "batches", "estimate", str(EXAMPLE), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    estimate: dict[str, Any] = json.loads(shown.stdout)
    assert estimate["basis"]["chunks"] in (2, 3) and estimate["input_tokens_method"] == (
        "measured_per_byte"
    )

    submitted = hotbatch(
        exports,
        "batches",
        "submit",
        "--file-id",
        estimate["input_file_id"],
        "--wait",
        "--interval",
        "1",
        cwd=tmp_path,
    )
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "uploaded" not in submitted.stderr  # the estimate's copy, not a second upload
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed" and batch["input_file_id"] == estimate["input_file_id"]
    assert batch["endpoint"] == "/v1/chat/completions"  # from the uploaded file's first line
    figures = batch["hotbatch"]
    assert figures["engine_seconds"] > 0
    assert figures["cost_usd"] == pytest.approx(figures["engine_seconds"] * PRICE / 3600, rel=1e-3)

    out = tmp_path / "results"
    fetched = hotbatch(exports, "batches", "download", batch["id"], "--out", str(out), cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    written = [
        json.loads(line)["custom_id"]
        for name in ("output.jsonl", "errors.jsonl")
        for line in (out / name).read_text().splitlines()
    ]
    sent = [json.loads(line)["custom_id"] for line in EXAMPLE.read_text().splitlines()]
    assert sorted(written) == sorted(sent)

    actual = {
        "requests": batch["request_counts"]["total"],
        "input_tokens": batch["usage"]["input_tokens"],
        "output_tokens": batch["usage"]["output_tokens"],
        "engine_seconds": figures["engine_seconds"],
        "duration_seconds": batch["completed_at"] - batch["created_at"],
        "cost_usd": figures["cost_usd"],
    }
    print("\nestimate vs actual (hotbatch local up, vLLM CPU, tiny model):")  # noqa: T201
    for name, value in actual.items():
        print(f"  {name:17} estimate {estimate[name]!s:>10}  actual {value!s:>10}")  # noqa: T201
    assert estimate["requests"] == actual["requests"]
    for name, within in (
        ("input_tokens", TOKENS_WITHIN),
        ("output_tokens", TOKENS_WITHIN),
        ("engine_seconds", TIME_WITHIN),
        ("duration_seconds", TIME_WITHIN),
        ("cost_usd", TIME_WITHIN),
    ):
        # A batch's timestamps are whole seconds (as OpenAI's), so a duration of a few seconds
        # is only known to within one second either way.
        slack = 1 if name == "duration_seconds" else 0
        low, high = (actual[name] - slack) / within, (actual[name] + slack) * within
        assert low <= estimate[name] <= high, (name, estimate[name], actual[name])
    # max_tokens is an upper bound on what was generated.
    assert estimate["output_tokens"] >= actual["output_tokens"]
