"""`hotbatch run-chunk FILE` and `hotbatch tiny-model DIR`: the worker's code on this machine,
without a stack: one chunk through vLLM, or the tiny random-weight model the tests use."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from infra.batch_file import DEFAULT_ENDPOINT, first_url
from infra.output_cli import Exit, Form, JsonOpt, emit, emit_ids, fail, form

DEFAULT_WORKDIR = Path(".hotbatch")


def run_chunk(
    input: Annotated[Path, typer.Argument(help="OpenAI batch input JSONL")],
    model: Annotated[
        str | None, typer.Option(help="model path (default: generate the tiny test model)")
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="the `model` requests must name")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="default: the first line's url")] = None,
    out: Annotated[Path, typer.Option()] = DEFAULT_WORKDIR / "out",
    max_model_len: Annotated[int | None, typer.Option()] = None,
    kv_cache_memory_bytes: Annotated[
        str | None,
        typer.Option(
            help="KV-cache size, e.g. 256M (default: KV_CACHE_MEMORY_BYTES; 256M for the tiny "
            "model)"
        ),
    ] = None,
    as_json: JsonOpt = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the output and error files' paths")
    ] = False,
) -> None:
    """Process a batch JSONL file as one chunk through the worker on vLLM.

    Prints the summary as JSON (-q: the output and error files' paths)."""
    from handler import logs
    from handler.contract import ProcessChunkInput
    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings
    from infra.blob_server import BlobServer

    shape = form(as_json, quiet)
    logs.configure()
    # stdout carries the command's result; vLLM's own logs go with ours to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if not input.is_file():
        fail(f"input file not found: {input}", Exit.USAGE)
    body = input.read_bytes()
    endpoint = endpoint or first_url(body.splitlines()) or DEFAULT_ENDPOINT
    served, max_len = served_model_name, max_model_len
    kv_cache = kv_cache_memory_bytes or os.environ.get("KV_CACHE_MEMORY_BYTES") or None
    if model is None:
        from infra.tiny_model import KV_CACHE_BYTES, generate

        model = str(generate(DEFAULT_WORKDIR / "tiny-model"))
        served, max_len = served or "tiny", max_len or 512
        kv_cache = kv_cache or KV_CACHE_BYTES

    store = BlobServer().start()
    runtime = start_runtime(
        WorkerSettings(
            model_name=model,
            openai_served_model_name_override=served,
            max_model_len=max_len,
            kv_cache_memory_bytes=kv_cache,
        )
    )
    try:
        store.put("chunk/input.jsonl", body)
        job = ProcessChunkInput(
            action="process_chunk",
            batch_id="batch_local",
            chunk_id="00000",
            endpoint=endpoint,
            input_url=store.presign("GET", "chunk/input.jsonl"),
            output_url=store.presign("PUT", "chunk/output.jsonl"),
            error_url=store.presign("PUT", "chunk/errors.jsonl"),
        )
        summary = asyncio.run(runtime.process(job))
    finally:
        runtime.stop()
        store.stop()
    out.mkdir(parents=True, exist_ok=True)
    for name in ("output.jsonl", "errors.jsonl"):
        (out / name).write_bytes(store.get(f"chunk/{name}") or b"")
    result = {
        "output_file": str(out / "output.jsonl"),
        "error_file": str(out / "errors.jsonl"),
        **summary.model_dump(mode="json"),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    if shape is Form.IDS:
        emit_ids([result["output_file"], result["error_file"]])
    else:
        emit(result)


def tiny_model(
    directory: Path,
    as_json: JsonOpt = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the model's path")
    ] = False,
) -> None:
    """Write the tiny random-weight test model; print where, as JSON."""
    from infra.tiny_model import generate

    shape = form(as_json, quiet)
    path = str(generate(directory))
    if shape is Form.IDS:
        emit_ids([path])
    else:
        emit({"model": path})
