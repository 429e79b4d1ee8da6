"""The `hotbatch` command.

hotbatch run-chunk FILE.jsonl   run one chunk through the real worker code and vLLM locally
hotbatch tiny-model DIR         write the tiny random-weight test model
hotbatch local up               the local stack (moto, control plane, RunPod endpoint + workers)
hotbatch local run FILE.jsonl   the local stack, one batch through it end to end, then stop
hotbatch keys create --tenant T create an API key (printed once) in HOTBATCH_TABLE_NAME
hotbatch keys revoke KEY        revoke one
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from infra.batch_file import DEFAULT_ENDPOINT, first_url

log = logging.getLogger("handler.cli")

DEFAULT_WORKDIR = Path(".hotbatch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotbatch", description="hotbatch local tools")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run-chunk",
        help="process an OpenAI batch JSONL file as one chunk through the worker on vLLM",
    )
    run.add_argument("input", type=Path, help="OpenAI batch input JSONL")
    run.add_argument("--model", help="model path (default: generate the tiny test model)")
    run.add_argument("--served-model-name", default=None, help="the `model` requests must name")
    run.add_argument("--endpoint", default=None, help="default: the first line's url")
    run.add_argument("--out", type=Path, default=DEFAULT_WORKDIR / "out")
    run.add_argument("--max-model-len", type=int, default=None)
    run.add_argument(
        "--kv-cache-memory-bytes",
        default=None,
        help="KV-cache size, e.g. 256M (default: KV_CACHE_MEMORY_BYTES; 256M for the tiny model)",
    )

    tiny = commands.add_parser("tiny-model", help="write the tiny random-weight test model")
    tiny.add_argument("directory", type=Path)

    local = commands.add_parser("local", help="the local stack")
    local_commands = local.add_subparsers(dest="local_command", required=True)
    from infra import local_stack

    local_stack.add_arguments(local_commands.add_parser("up", help="start it in the foreground"))
    local_stack.add_run_arguments(
        local_commands.add_parser(
            "run", help="start it, run one batch file through the openai SDK, save the results"
        )
    )

    keys = commands.add_parser(
        "keys", help="API keys in the table named by HOTBATCH_TABLE_NAME (AWS credentials)"
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it (shown once)")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", default="", help="a label to recognise the key by")
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key")

    args = parser.parse_args(argv)
    if args.command == "keys":
        return manage_keys(args)
    if args.command == "tiny-model":
        from infra.tiny_model import generate

        _emit({"model": str(generate(args.directory))})
        return 0
    if args.command == "local":
        from handler import logs

        logs.configure()
        if args.local_command == "run":
            return local_stack.run(args)
        return local_stack.up(args)
    return run_chunk(args)


def run_chunk(args: argparse.Namespace) -> int:
    from handler import logs
    from handler.contract import ProcessChunkInput
    from handler.runtime import start_runtime
    from handler.settings import WorkerSettings
    from infra.blob_server import BlobServer

    logs.configure()
    # stdout carries the command's result; vLLM's own logs go with ours to stderr.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    if not args.input.is_file():
        log.error("input file not found", extra={"path": str(args.input)})
        return 2
    body = args.input.read_bytes()
    endpoint = args.endpoint or first_url(body.splitlines()) or DEFAULT_ENDPOINT
    model, served, max_len = args.model, args.served_model_name, args.max_model_len
    kv_cache = args.kv_cache_memory_bytes or os.environ.get("KV_CACHE_MEMORY_BYTES") or None
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
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("output.jsonl", "errors.jsonl"):
        (args.out / name).write_bytes(store.get(f"chunk/{name}") or b"")
    result = {
        "output_file": str(args.out / "output.jsonl"),
        "error_file": str(args.out / "errors.jsonl"),
        **summary.model_dump(mode="json"),
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    _emit(result)
    return 0


def manage_keys(args: argparse.Namespace) -> int:
    from control_plane.aws import Aws
    from control_plane.settings import Settings
    from control_plane.store import apikeys

    aws = Aws(Settings())
    if args.keys_command == "revoke":
        revoked = apikeys.revoke_key(aws.table, args.key)
        _emit({"revoked": revoked})
        return 0 if revoked else 1
    key = apikeys.create_key(aws.table, tenant_id=args.tenant, name=args.name)
    _emit({"tenant": args.tenant, "api_key": key, "table": aws.settings.table_name})
    return 0


def _emit(payload: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
