"""The real vLLM engine (CPU build, tiny generated model) behind the worker runtime."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion

from control_plane.scheduler.dispatch import cache_salt
from handler import engine as adapter
from handler import health
from handler.contract import ChunkSummary
from handler.runtime import Runtime
from handler.settings import WorkerSettings
from infra.blob_server import BlobServer
from tests.support.chunks import read_lines, stage_chunk
from tests.support.lines import COMPLETIONS, request_line
from tests.support.tiny import TINY_MAX_MODEL_LEN

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def test_adapter_surface_matches_the_installed_vllm() -> None:
    assert adapter.check_vllm_surface().startswith("0.32.")


def test_adapter_surface_check_fails_loudly_when_vllm_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    moved = (
        *adapter.VLLM_SURFACE,
        ("vllm.entrypoints.launchers.run_batch", "no_such_function", ()),
        ("vllm.entrypoints.launchers.cli_args", "make_arg_parser", ("renamed_param",)),
    )
    monkeypatch.setattr(adapter, "VLLM_SURFACE", moved)
    with pytest.raises(RuntimeError) as caught:
        adapter.check_vllm_surface()
    assert "no_such_function" in str(caught.value)
    assert "renamed_param" in str(caught.value)


def test_settings_parse_with_vllms_own_serve_parser(tiny_model: Path) -> None:
    settings = WorkerSettings(
        model_name=str(tiny_model), max_model_len=256, enforce_eager=True, max_num_seqs=8
    )
    args = adapter.parse_serve_args(settings)
    assert args.model == str(tiny_model) and args.max_model_len == 256
    assert args.enable_prefix_caching is True and args.enforce_eager is True
    assert args.enable_prompt_tokens_details is True and args.max_num_seqs == 8
    assert args.enable_chunked_prefill is False  # the CPU build's default here (see below)
    explicit = settings.model_copy(update={"enable_chunked_prefill": True})
    assert adapter.parse_serve_args(explicit).enable_chunked_prefill is True


def test_kv_cache_size_reaches_vllms_parser_in_bytes(tiny_model: Path) -> None:
    # The explicit size is what lets the CPU build skip its GPU_MEMORY_UTILIZATION check.
    settings = WorkerSettings(
        model_name=str(tiny_model), kv_cache_memory_bytes="256M", gpu_memory_utilization=0.99
    )
    args = adapter.parse_serve_args(settings)
    assert args.kv_cache_memory_bytes == 256 * 1024**2
    assert args.gpu_memory_utilization == 0.99


async def test_chat_chunk_end_to_end_parses_as_openai_objects(
    engine_runtime: Runtime, blobs: BlobServer, tokenizer: Any
) -> None:
    prompts = [f"question {i}: evaluate candidate {i}" for i in range(12)]
    lines = [
        request_line(f"chat-{i}", text, max_tokens=6, logprobs=True, top_logprobs=2)
        for i, text in enumerate(prompts)
    ]
    job = stage_chunk(blobs, lines)
    summary = await engine_runtime.process(job)
    assert summary.counts.model_dump() == {"total": 12, "completed": 12, "failed": 0}

    outputs = read_lines(blobs, job, "output")
    assert [line.custom_id for line in outputs] == [f"chat-{i}" for i in range(12)]
    assert read_lines(blobs, job, "errors") == []
    prompt_sum = completion_sum = 0
    for line, text in zip(outputs, prompts, strict=True):
        assert line.response is not None and line.response.status_code == 200
        assert line.id.startswith("batch_req_") and line.error is None
        completion = ChatCompletion.model_validate(line.response.body)
        assert completion.object == "chat.completion" and completion.model == "tiny"
        usage = completion.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens is not None
        expected_prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        assert usage.prompt_tokens == len(expected_prompt)
        logprobs = completion.choices[0].logprobs
        assert logprobs is not None and logprobs.content is not None
        assert usage.completion_tokens == len(logprobs.content) <= 6
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        prompt_sum += usage.prompt_tokens
        completion_sum += usage.completion_tokens
    assert summary.usage.prompt_tokens == prompt_sum
    assert summary.usage.completion_tokens == completion_sum
    assert summary.timings.engine_s > 0 and summary.timings.output_tokens_per_s > 0
    assert summary.worker.vllm_version.startswith("0.32.")


async def test_completion_chunk_end_to_end_parses_as_openai_objects(
    engine_runtime: Runtime, blobs: BlobServer, tokenizer: Any
) -> None:
    prompts = [f"the batch item {i} is" for i in range(6)]
    lines = [
        request_line(f"c-{i}", p, max_tokens=5, url=COMPLETIONS) for i, p in enumerate(prompts)
    ]
    job = stage_chunk(blobs, lines, endpoint=COMPLETIONS)
    summary = await engine_runtime.process(job)
    assert summary.counts.completed == 6
    for line, prompt in zip(read_lines(blobs, job, "output"), prompts, strict=True):
        assert line.response is not None
        completion = Completion.model_validate(line.response.body)
        assert completion.object == "text_completion"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == len(tokenizer(prompt).input_ids)
        assert 0 < completion.usage.completion_tokens <= 5


async def test_mixed_chunk_bad_requests_get_error_lines_good_ones_succeed(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    lines = [
        request_line("good-1", "hello", max_tokens=4),
        request_line("unknown-model", "hello", model="gpt-nope", max_tokens=4),
        request_line("wrong-url", "hello", url=COMPLETIONS),
        request_line("streaming", "hello", stream=True),
        request_line("too-long", "json " * (TINY_MAX_MODEL_LEN + 50), max_tokens=4),
        request_line("bad-param", "hello", temperature="hot"),
        request_line("good-2", "world", max_tokens=4),
    ]
    job = stage_chunk(blobs, lines)
    summary = await engine_runtime.process(job)
    assert summary.counts.model_dump() == {"total": 7, "completed": 2, "failed": 5}
    assert {line.custom_id for line in read_lines(blobs, job, "output")} == {"good-1", "good-2"}

    errors = {line.custom_id: line for line in read_lines(blobs, job, "errors")}
    failures = {failure.custom_id: failure for failure in summary.failures}
    assert (
        set(errors)
        == set(failures)
        == {
            "unknown-model",
            "wrong-url",
            "streaming",
            "too-long",
            "bad-param",
        }
    )
    expected = {
        "unknown-model": (404, "NotFoundError", "model"),
        "wrong-url": (400, "BadRequestError", "url"),
        "streaming": (400, "BadRequestError", "stream"),
        "too-long": (400, "BadRequestError", "input_tokens"),
        "bad-param": (400, "BadRequestError", "temperature"),
    }
    for custom_id, (status, kind, param) in expected.items():
        response = errors[custom_id].response
        assert response is not None and response.body is not None
        error = response.body["error"]
        assert (response.status_code, error["type"], error["param"]) == (status, kind, param)
        assert error["message"] and failures[custom_id].status_code == status
    too_long = errors["too-long"].response
    assert too_long is not None and too_long.body is not None
    assert "maximum context length" in too_long.body["error"]["message"]


async def test_thousand_requests_run_in_one_engine_pass(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    lines = [request_line(f"r{i:04d}", f"item {i}", max_tokens=4) for i in range(1000)]
    job = stage_chunk(blobs, lines)
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            totals = health.metric_totals()
            queued = totals.get("vllm:num_requests_running", 0) + totals.get(
                "vllm:num_requests_waiting", 0
            )
            peak = max(peak, int(queued))
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    try:
        summary: ChunkSummary = await engine_runtime.process(job)
    finally:
        sampler.cancel()
    assert summary.counts.completed == 1000
    ids = [line.custom_id for line in read_lines(blobs, job, "output")]
    assert len(ids) == len(set(ids)) == 1000
    # Sequential submission would never hold more than one request in the engine.
    # (Requests reach the scheduler as fast as the serving layer renders them, so the peak is
    # below 1,000 but far above the 1 a sequential loop would give.)
    assert peak >= 100, f"engine never held more than {peak} requests at once"


async def test_structured_output_seed_n_and_penalties_behave_as_in_vllm_serve(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["yes", "no"]}},
        "required": ["verdict"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "verdict", "schema": schema, "strict": True},
    }
    sampled: dict[str, Any] = {"temperature": 1.0, "seed": 1234, "max_tokens": 12}
    lines = [
        # A random-weight model pads JSON with any whitespace the grammar allows, so give it
        # room; seeds keep the outcome the same from run to run.
        *(
            request_line(
                f"json-{i}", "judge", response_format=response_format, max_tokens=200, seed=i
            )
            for i in range(4)
        ),
        request_line("seed-a", "tell", **sampled),
        request_line("seed-b", "tell", **sampled),
        request_line("n-2", "two", n=2, max_tokens=4, frequency_penalty=0.5, presence_penalty=0.5),
    ]
    job = stage_chunk(blobs, lines)
    summary = await engine_runtime.process(job)
    assert summary.counts.failed == 0, summary.failures
    bodies = {line.custom_id: line.response.body for line in read_lines(blobs, job, "output")}  # type: ignore[union-attr]
    finished = 0
    for i in range(4):
        choice = bodies[f"json-{i}"]["choices"][0]  # type: ignore[index]
        if choice["finish_reason"] == "stop":  # a complete document must match the schema
            verdict = json.loads(choice["message"]["content"])
            assert verdict["verdict"] in {"yes", "no"} and set(verdict) == {"verdict"}
            finished += 1
    assert finished >= 1
    content = [bodies[key]["choices"][0]["message"]["content"] for key in ("seed-a", "seed-b")]  # type: ignore[index]
    assert content[0] == content[1]
    assert len(bodies["n-2"]["choices"]) == 2  # type: ignore[index]


async def test_prefix_cache_hits_show_as_cached_tokens(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    shared = "system rules: " + "evaluate the candidate and answer in json. " * 12
    first = stage_chunk(blobs, [request_line("warm", shared, max_tokens=2)], chunk_id="warm")
    await engine_runtime.process(first)
    second = stage_chunk(
        blobs, [request_line(f"hit-{i}", shared, max_tokens=2) for i in range(3)], chunk_id="hits"
    )
    summary = await engine_runtime.process(second)
    assert summary.usage.cached_tokens >= 3 * 16
    report = engine_runtime.health()
    assert report.engine.prefix_cache_hits and report.engine.prefix_cache_hits > 0
    assert report.engine.prefix_cache_hit_rate is not None


async def test_one_tenants_cached_prefix_never_shows_in_anothers_cached_tokens(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    # The prefix-cache oracle: B sends A's system prompt and reads `cached_tokens` to learn
    # whether A sent it. Each chunk runs under its tenant's salt (a salt B picks included).
    shared = "tenant a's private rules: " + "grade the essay and answer in json. " * 12
    salt_a, salt_b = cache_salt("secret", "tenant-a"), cache_salt("secret", "tenant-b")
    warm = stage_chunk(blobs, [request_line("a-0", shared, max_tokens=2)], chunk_id="salt-a0")
    await engine_runtime.process(warm.model_copy(update={"cache_salt": salt_a}))
    probes = [
        request_line("b-0", shared, max_tokens=2),
        request_line("b-1", shared, max_tokens=2, cache_salt=salt_a),  # B guesses A's salt
    ]
    probe = stage_chunk(blobs, probes, chunk_id="salt-b")
    b_view = await engine_runtime.process(probe.model_copy(update={"cache_salt": salt_b}))
    assert b_view.counts.completed == 2
    assert b_view.usage.cached_tokens == 0  # nothing of A's cache shows to B
    again = stage_chunk(blobs, [request_line("a-1", shared, max_tokens=2)], chunk_id="salt-a1")
    a_view = await engine_runtime.process(again.model_copy(update={"cache_salt": salt_a}))
    assert a_view.usage.cached_tokens >= 16  # A's own prefix still hits its cache


def test_media_urls_are_refused_unless_a_domain_is_allowed(tiny_model: Path) -> None:
    from vllm.multimodal.media.connector import MediaConnector

    def connector(settings: WorkerSettings) -> Any:
        args = adapter.parse_serve_args(settings)
        return MediaConnector(allowed_media_domains=args.allowed_media_domains)

    closed = connector(WorkerSettings(model_name=str(tiny_model)))
    for url in ("http://169.254.169.254/latest/meta-data", "https://example.com/cat.png"):
        with pytest.raises(ValueError, match="allowed domains"):
            closed.load_from_url(url, media_io=None)
    opened = connector(WorkerSettings(model_name=str(tiny_model), media_url_domains="img.example"))
    with pytest.raises(ValueError, match="allowed domains"):
        opened.load_from_url("http://169.254.169.254/", media_io=None)
    assert opened.allowed_media_domains == ["img.example"]


async def test_health_reports_the_real_engine(engine_runtime: Runtime) -> None:
    report = engine_runtime.health()
    assert report.status == "ok"
    assert report.engine.model == "tiny" and report.engine.max_model_len == TINY_MAX_MODEL_LEN
    assert report.engine.vllm_version and report.engine.vllm_version.startswith("0.32.")
    assert report.engine.running == 0 and report.engine.waiting == 0
    assert report.engine.cold_start_s is not None and report.engine.cold_start_s > 0
    assert report.engine.kv_cache_usage_percent is not None
    assert report.system.process_rss_mb > 0 and report.system.threads > 1


async def test_seeded_requests_split_across_prefill_steps_do_not_kill_the_engine(
    engine_runtime: Runtime, blobs: BlobServer
) -> None:
    # vLLM 0.32's CPU build rewinds a per-request generator after a partial (chunked) prefill,
    # which CPU generators refuse ("CPU Generator does not use offset"): the engine died. Many
    # seeded requests with long prompts force prefills past one scheduler step.
    prompt = "evaluate the candidate and answer in json " * 20
    lines = [request_line(f"s{i}", f"{i} {prompt}", seed=i, max_tokens=4) for i in range(48)]
    summary = await engine_runtime.process(stage_chunk(blobs, lines, chunk_id="seeded"))
    assert summary.counts.completed == 48
    assert engine_runtime.health().status == "ok"
