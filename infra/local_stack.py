"""`hotbatch local up`: the local stack in the foreground until Ctrl-C or SIGTERM.

moto's server with the table and bucket from template.yaml, the control plane under uvicorn,
and the local RunPod endpoint with N real workers (`python -m handler` on vLLM's CPU build, the
tiny generated model unless `--model`). Once everything answers and every worker's engine has
loaded, it prints shell lines to `eval`, then `ready`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from control_plane.api import create_app
from control_plane.aws import Aws
from control_plane.settings import Settings
from control_plane.store import apikeys
from infra.local_control_plane import LOCAL_CREDENTIALS, LocalApi, LocalAws
from infra.runpod_local import EndpointConfig, LocalEndpoint, PoolConfig

log = logging.getLogger("handler.local")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8000, help="control plane (API) port")
    parser.add_argument(
        "--api-key", default=None, help="fixed API key for scripts (default: a new random one)"
    )
    parser.add_argument("--tenant", default="local", help="tenant of the API key")
    parser.add_argument("--aws-port", type=int, default=5000, help="moto server port")
    parser.add_argument("--runpod-port", type=int, default=8100, help="local RunPod endpoint port")
    parser.add_argument("--runpod-api-key", default="local-runpod-key")
    parser.add_argument("--workers", type=int, default=1, help="workers kept warm (min workers)")
    parser.add_argument("--max-workers", type=int, default=None, help="default: --workers")
    parser.add_argument("--idle-timeout", type=float, default=5.0, help="seconds (RunPod: 5)")
    parser.add_argument("--cold-start-delay", type=float, default=0.0, help="extra seconds")
    parser.add_argument("--model", default=None, help="model path (default: the tiny model)")
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--workdir", type=Path, default=Path(".hotbatch"))
    parser.add_argument("--ready-timeout", type=float, default=900.0)


def up(args: argparse.Namespace) -> int:
    env = _worker_env(args)
    pool = PoolConfig(
        min_workers=args.workers,
        max_workers=max(args.workers, args.max_workers or args.workers, 1),
        idle_timeout_s=args.idle_timeout,
        cold_start_delay_s=args.cold_start_delay,
        env=env,
        log_dir=(args.workdir / "logs").resolve(),
        work_dir=(args.workdir / "workers").resolve(),
    )
    endpoint = LocalEndpoint(
        config=EndpointConfig(api_key=args.runpod_api_key), pool_config=pool, port=args.runpod_port
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    local_aws = LocalAws(port=args.aws_port).start()
    api: LocalApi | None = None
    try:
        settings, api_key = _control_plane_settings(args, local_aws)
        api = LocalApi(create_app(settings), port=args.port).start()
        endpoint.start()
        if not _wait_ready(endpoint, args.workers, args.ready_timeout, stop):
            return 1
        _print_exports(_exports(endpoint, local_aws, api, api_key))
        stop.wait()
    finally:
        log.info("stopping the local stack")
        endpoint.stop()
        if api is not None:
            api.stop()
        local_aws.stop()
    return 0


def _control_plane_settings(args: argparse.Namespace, local_aws: LocalAws) -> tuple[Settings, str]:
    settings = Settings(
        table_name=local_aws.table_name,
        bucket_name=local_aws.bucket_name,
        aws_endpoint_url=local_aws.url,
        split_mode="inline",
    )
    key = apikeys.create_key(Aws(settings).table, tenant_id=args.tenant, key=args.api_key)
    return settings, key


def _worker_env(args: argparse.Namespace) -> dict[str, str]:
    """Worker variables: the model from the flags; defaults only where the shell sets none."""
    model, served = args.model, args.served_model_name
    defaults = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}
    if model is None:
        from infra.tiny_model import generate

        model = str(generate((args.workdir / "tiny-model").resolve()))
        served = served or "tiny"
        defaults.update({"MAX_MODEL_LEN": "512", "VLLM_CPU_KVCACHE_SPACE": "1"})
    env = {key: value for key, value in defaults.items() if key not in os.environ}
    env["MODEL_NAME"] = model
    if served:
        env["OPENAI_SERVED_MODEL_NAME_OVERRIDE"] = served
    return env


def _wait_ready(
    endpoint: LocalEndpoint, workers: int, timeout: float, stop: threading.Event
) -> bool:
    backend = endpoint.backend
    assert backend is not None
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if backend.health()["workers"]["idle"] >= workers:
            return True
        if time.monotonic() > deadline:
            log.error("workers did not load their engines in time", extra={"timeout_s": timeout})
            return False
        time.sleep(0.5)
    return False


def _exports(
    endpoint: LocalEndpoint, local_aws: LocalAws, api: LocalApi, api_key: str
) -> dict[str, str]:
    return {
        "HOTBATCH_API_URL": f"{api.url}/v1",
        "HOTBATCH_API_KEY": api_key,
        # The openai SDK reads these two, so `OpenAI()` talks to the local stack as it is.
        "OPENAI_BASE_URL": f"{api.url}/v1",
        "OPENAI_API_KEY": api_key,
        "RUNPOD_ENDPOINT_BASE_URL": endpoint.client_base_url,
        "RUNPOD_ENDPOINT_ID": endpoint.config.endpoint_id,
        "RUNPOD_API_KEY": endpoint.api_key,
        "AWS_ENDPOINT_URL": local_aws.url,
        "HOTBATCH_AWS_ENDPOINT_URL": local_aws.url,
        "HOTBATCH_TABLE_NAME": local_aws.table_name,
        "HOTBATCH_BUCKET_NAME": local_aws.bucket_name,
        **LOCAL_CREDENTIALS,
    }


def _print_exports(exports: dict[str, str]) -> None:
    for key, value in exports.items():
        sys.stdout.write(f"export {key}={shlex.quote(value)}\n")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
