"""A real instruct model through the whole local stack: SmolLM2-135M-Instruct (`--model
smollm2`, made from its package) on one `python -m handler` worker on vLLM's CPU build, batches
through the official openai SDK. README's main job, then OpenAI's request options end to end:
structured outputs, tools, logprobs, `n`, seeds, `stop`, `max_completion_tokens`,
`/v1/completions` and `/v1/responses`, and a per-line error for an option the engine cannot
honour. One stack for the module (its engine load is the cost)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from openai import OpenAI
from typer.testing import CliRunner

from infra import cli, cpu_share, local_stack
from infra.local_cli import run_stack
from infra.stack import LocalStack
from infra.wait import wait_for
from tests.support.lines import COMPLETIONS, RESPONSES, request_line
from tests.support.stack import file_lines, sdk

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "batch.jsonl"
MODEL = "smollm2"
COUNTRIES = (
    "France Italy Spain Portugal Japan China India Canada Brazil Egypt Kenya Russia Greece "
    "Sweden Norway Ireland Chile Thailand Hungary Austria"
).split()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("real-model")
    started, _ = run_stack(EXAMPLE, "--model", MODEL, "--workdir", str(workdir / "stack"))
    started.start()
    try:
        assert started.endpoint is not None and started.endpoint.backend is not None
        backend = started.endpoint.backend
        wait_for(
            lambda: backend.health()["workers"]["idle"] >= 1,
            "the SmolLM2 worker to load its engine",
            timeout=900,
            every=0.5,
        )
        yield started
    finally:
        started.stop()


def chat(custom_id: str, question: str, **body: Any) -> str:
    body = {"temperature": 0.0, "max_completion_tokens": 32, **body}
    return request_line(custom_id, question, model=MODEL, **body)


def run_batch(
    client: OpenAI, lines: list[str], *, endpoint: str = "/v1/chat/completions"
) -> dict[str, dict[str, Any]]:
    """Submit `lines`, wait for the batch to end, return every output and error line by id."""
    file = client.files.create(
        file=("lines.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )

    def ended() -> Any:
        found = client.batches.retrieve(batch.id)
        return found if found.status in ("completed", "failed", "expired", "cancelled") else None

    done = wait_for(ended, f"batch {batch.id} to end", timeout=600, every=0.5)
    assert done.status == "completed", done
    found = file_lines(client, done.output_file_id) + file_lines(client, done.error_file_id)
    return {line["custom_id"]: line for line in found}


def body_of(line: dict[str, Any]) -> dict[str, Any]:
    assert line["response"]["status_code"] == 200, line
    body: dict[str, Any] = line["response"]["body"]
    return body


def test_readmes_main_job_answers_a_factual_question(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hotbatch local run --model smollm2 examples/batch.jsonl` on this module's stack."""
    run = local_stack.run
    monkeypatch.setattr(local_stack, "run", lambda options: run(options, stack=stack))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli.app,
        ["local", "run", "--model", MODEL, str(EXAMPLE), "--workdir", str(tmp_path / "w")]
        + ["--out", str(out), "--timeout", "600"],
    )
    assert result.exit_code == 0, result.output
    lines = {
        line["custom_id"]: line
        for line in map(json.loads, (out / "output.jsonl").read_text().splitlines())
    }
    assert len(lines) == len(EXAMPLE.read_text().splitlines()) == 200
    answer = body_of(lines["capital-france"])["choices"][0]["message"]["content"]
    assert "Paris" in answer, answer


def test_the_stack_keeps_off_the_cores_its_engine_is_bound_to(stack: LocalStack) -> None:
    """`local up|run` confine the control plane to the core vLLM leaves to frontends; the
    worker (and so its engine) keeps every CPU."""
    everything = stack.config.pool.cpus
    if everything is None:  # a single CPU: nothing to keep off
        assert len(os.sched_getaffinity(0)) == 1
        return
    assert os.sched_getaffinity(0) == cpu_share.reserved(everything)
    assert stack.endpoint is not None
    workers = [
        p.popen.pid for pool in stack.endpoint.pools.values() for p in pool.processes.values()
    ]
    assert workers
    for pid in workers:
        assert os.sched_getaffinity(pid) == everything


def test_structured_outputs_parse_and_validate_on_every_line(stack: LocalStack) -> None:
    schema = {
        "type": "object",
        "properties": {
            "country": {"type": "string", "enum": COUNTRIES},
            "in_europe": {"type": "boolean"},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 2000},
        },
        "required": ["country", "in_europe", "population_millions"],
        "additionalProperties": False,
    }
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "country", "schema": schema, "strict": True},
    }
    lines = [
        chat(
            f"s{i}",
            f"Describe {COUNTRIES[i % len(COUNTRIES)]} as JSON (case {i}).",
            response_format=response_format,
            max_completion_tokens=64,
        )
        for i in range(200)
    ]
    results = run_batch(sdk(stack), lines)
    assert len(results) == 200
    for custom_id, line in results.items():
        content = body_of(line)["choices"][0]["message"]["content"]
        jsonschema.validate(json.loads(content), schema)  # raises, naming the line's fault
        assert custom_id.startswith("s")


def test_tools_come_back_as_tool_calls(stack: LocalStack) -> None:
    """examples/tools.jsonl (`tool_choice: "required"`, a strict function: vLLM constrains the
    call's envelope, and `strict` pins its arguments to the schema), plus a named choice."""
    examples = (REPO / "examples" / "tools.jsonl").read_text().splitlines()
    weather = json.loads(examples[0])["body"]["tools"][0]
    named = {"type": "function", "function": {"name": "get_weather"}}
    lines = examples + [
        chat(
            f"named-{city}",
            f"Weather in {city}?",
            tools=[weather],
            tool_choice=named,
            max_completion_tokens=64,
        )
        for city in ("Rome", "Lima")
    ]
    results = run_batch(sdk(stack), lines)
    assert len(results) == len(examples) + 2
    for custom_id, line in results.items():
        message = body_of(line)["choices"][0]["message"]
        calls = message.get("tool_calls")
        assert calls and calls[0]["type"] == "function", (custom_id, message)
        assert calls[0]["function"]["name"] == "get_weather"
        arguments = json.loads(calls[0]["function"]["arguments"])
        jsonschema.validate(arguments, weather["function"]["parameters"])


def test_seeds_reproduce_across_batches_and_logprobs_n_stop_and_length_hold(
    stack: LocalStack,
) -> None:
    client = sdk(stack)
    sampled = {"temperature": 1.0, "max_completion_tokens": 24}
    lines = [
        chat(f"seed-{i}", "Write a short poem about the moon.", seed=7 + (i % 2), **sampled)
        for i in range(4)
    ] + [
        chat("greedy", "Name a color."),
        chat("logprobs", "Name a fruit.", logprobs=True, top_logprobs=3),
        chat("n", "Name an animal.", n=2, temperature=1.0, seed=3),
        chat("stop", "What is the capital of France?", stop=["."]),
        chat("length", "Tell me a long story.", max_completion_tokens=5),
    ]
    first, second = run_batch(client, lines), run_batch(client, lines)

    def text(results: dict[str, dict[str, Any]], custom_id: str) -> str:
        return str(body_of(results[custom_id])["choices"][0]["message"]["content"])

    for custom_id in ("seed-0", "seed-1", "greedy"):
        assert text(first, custom_id) == text(second, custom_id), custom_id
    # seed-0 and seed-2 share a seed and a prompt; seed-1's other seed samples another poem.
    assert text(first, "seed-0") == text(first, "seed-2") != text(first, "seed-1")

    logprobs = body_of(first["logprobs"])["choices"][0]["logprobs"]["content"]
    assert logprobs and all(len(token["top_logprobs"]) == 3 for token in logprobs)
    assert len(body_of(first["n"])["choices"]) == 2
    stopped = body_of(first["stop"])["choices"][0]
    assert stopped["finish_reason"] == "stop" and "Paris" in stopped["message"]["content"]
    assert "." not in stopped["message"]["content"]
    cut = body_of(first["length"])
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 5


def test_completions_and_responses_batches(stack: LocalStack) -> None:
    client = sdk(stack)
    line = request_line(
        "c", "The capital of France is", url=COMPLETIONS, model=MODEL, max_tokens=8, temperature=0
    )
    completions = run_batch(client, [line], endpoint=COMPLETIONS)
    assert "Paris" in body_of(completions["c"])["choices"][0]["text"]

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Madrid"]}},
        "required": ["city"],
        "additionalProperties": False,
    }
    line = request_line(
        "r",
        "Which city is the capital of France?",
        url=RESPONSES,
        model=MODEL,
        instructions="You answer geography questions as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema}},
        temperature=0,
        max_output_tokens=32,
    )
    responses = run_batch(client, [line], endpoint=RESPONSES)
    output = body_of(responses["r"])["output"]
    text = "".join(
        part["text"]
        for item in output
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    jsonschema.validate(json.loads(text), schema)


def test_an_option_the_engine_cannot_honour_fails_its_own_line_only(stack: LocalStack) -> None:
    lines = [
        chat("fine", "Name a color."),
        chat("audio", "Name a color.", modalities=["text", "audio"]),
        chat("typo", "Name a color.", max_completion_token=4),
        chat("kept", "Name a color.", store=False, metadata={"team": "a"}),
    ]
    results = run_batch(sdk(stack), lines)
    assert body_of(results["fine"])["choices"][0]["message"]["content"]
    assert body_of(results["kept"])["choices"][0]["message"]["content"]
    for custom_id, param in (("audio", "modalities"), ("typo", "max_completion_token")):
        response = results[custom_id]["response"]
        assert response["status_code"] == 400, results[custom_id]
        error = response["body"]["error"]
        assert error["param"] == param and "Unrecognized request argument" in error["message"]
