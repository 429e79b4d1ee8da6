"""What the benchmarks that run the whole local stack share: the worker's environment for the
tiny model, waiting for a batch to end, issue 13's shared-prefix workload, vLLM's own batch
runner on the same file, and the check that every request was answered exactly once."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from infra.wait import wait_for

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

    from infra.runpod_local.models import EndpointBackend

TERMINAL = ("completed", "failed", "expired", "cancelled")


def worker_env(model: str) -> dict[str, str]:
    return {
        "MODEL_NAME": model,
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "tiny",
        "MAX_MODEL_LEN": "512",
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",
    }


def wait_until_done(client: OpenAI, batch: Batch) -> Batch:
    """The batch once it has ended, however long that takes."""

    def ended() -> Batch | None:
        current = client.batches.retrieve(batch.id)
        return current if current.status in TERMINAL else None

    if batch.status in TERMINAL:
        return batch
    return wait_for(ended, f"batch {batch.id} to end", timeout=math.inf, every=0.2)


def wait_for_idle_workers(backend: EndpointBackend, *, busy_too: bool = False) -> None:
    """Until a worker has loaded its engine (`busy_too`: or is already running a job)."""

    def ready() -> bool:
        workers = backend.health()["workers"]
        return int(workers["idle"]) + (int(workers["running"]) if busy_too else 0) >= 1

    wait_for(ready, "a worker to load its engine", timeout=math.inf, every=0.5)


# --- the issue-13 workload and what measures it -------------------------------------------

WORDS = (
    "the a batch request model token worker chunk engine answer question json score candidate "
    "evaluate summary output input yes no true false one two three four five six seven eight "
    "nine ten hello world system user assistant role content name value key list item data"
).split()


def system_prompt(index: int, words: int) -> str:
    pick = random.Random(index)
    return f"grader {index}: " + " ".join(pick.choice(WORDS) for _ in range(words))


def write_shared_prefix_requests(
    path: Path, *, requests: int, prompts: int, words: int, max_tokens: int
) -> None:
    """Chat requests, each with one of `prompts` long system prompts (seeded pick) and a short
    user turn of its own; exactly `max_tokens` generated (`ignore_eos`, greedy)."""
    order = random.Random(1234)
    texts = [system_prompt(i, words) for i in range(prompts)]
    with path.open("w") as out:
        for i in range(requests):
            body = {
                "model": "tiny",
                "messages": [
                    {"role": "system", "content": texts[order.randrange(prompts)]},
                    {"role": "user", "content": f"request {i}: evaluate candidate {i * 7 % 13}"},
                ],
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")


def answered_once(output: bytes, errors: bytes, requests: int) -> int:
    """Check every request r0…r{n-1} has exactly one successful output line and none failed;
    return the completion tokens."""
    ids: list[str] = []
    tokens = 0
    for raw in output.splitlines():
        line = json.loads(raw)
        assert line["response"]["status_code"] == 200, raw[:300]
        ids.append(line["custom_id"])
        tokens += int(line["response"]["body"]["usage"]["completion_tokens"])
    assert not errors.strip(), errors[:500]
    assert len(ids) == len(set(ids)) == requests, (len(ids), len(set(ids)), requests)
    assert set(ids) == {f"r{i}" for i in range(requests)}
    return tokens


def serve_argv(env: dict[str, str]) -> list[str]:
    """The `vllm serve` flags a worker with this environment runs its engine with."""
    from handler.settings import WorkerSettings

    saved = dict(os.environ)
    try:
        os.environ.update(env)
        return WorkerSettings().serve_argv()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_batch(input_path: Path, workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """vLLM's own batch runner on the file with the worker's engine flags and environment
    (model, max-model-len, KV cache), the whole command timed; its output checked."""
    output = workdir / "run_batch_output.jsonl"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch"]
    command += [*serve_argv(env), "-i", str(input_path), "-o", str(output)]
    child_env = {**os.environ, **env, "VLLM_LOGGING_LEVEL": "INFO"}
    log = workdir / "run_batch.log"
    reading = None
    started = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen(
            command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert child.stdout is not None
        for line in child.stdout:  # timestamps as lines arrive: when the engine was ready
            sink.write(line)
            if reading is None and "Reading batch from" in line:
                reading = time.perf_counter()
        child.wait()
    ended = time.perf_counter()
    if child.returncode != 0 or reading is None:
        raise RuntimeError(f"run_batch failed ({child.returncode}); see {log}")
    return {
        "seconds": ended - started,
        "after_engine_start_s": ended - reading,
        "output_bytes": float(output.stat().st_size),
    }


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.node()}"
    )
