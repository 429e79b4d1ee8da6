"""What the benchmarks that run the whole local stack share: the worker's environment for the
tiny model, waiting for a batch to end, issue 13's shared-prefix workload and a short-prompt one,
vLLM's own batch runner and its offline `LLM.chat` on the same file with the worker's engine
flags, and the check that every request was answered exactly once.

    python bench/stack_runs.py llm-chat INPUT OUTPUT   (the `LLM.chat` child; see `llm_chat`)
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.wait import wait_for

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types import Batch

    from infra.runpod_local import LocalEndpoint
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


def wait_until_done(client: OpenAI, batch: Batch, *, every: float = 0.2) -> Batch:
    """The batch once it has ended, however long that takes (read every `every` seconds)."""

    def ended() -> Batch | None:
        current = client.batches.retrieve(batch.id)
        return current if current.status in TERMINAL else None

    if batch.status in TERMINAL:
        return batch
    return wait_for(ended, f"batch {batch.id} to end", timeout=math.inf, every=every)


def wait_for_idle_workers(backend: EndpointBackend, *, busy_too: bool = False) -> None:
    """Until a worker has loaded its engine (`busy_too`: or is already running a job)."""

    def ready() -> bool:
        workers = backend.health()["workers"]
        return int(workers["idle"]) + (int(workers["running"]) if busy_too else 0) >= 1

    wait_for(ready, "a worker to load its engine", timeout=math.inf, every=0.5)


def wait_for_every_engine(endpoint: LocalEndpoint) -> None:
    """Until every endpoint of the stack (`local run`'s embedding one too) has as many idle
    workers as it keeps warm: a worker still loading would share the cores with the run."""

    def ready() -> bool:
        return all(
            int(endpoint.backends[endpoint_id].health()["workers"]["idle"])
            >= max(pool.config.min_workers, 1 if endpoint_id == endpoint.config.endpoint_id else 0)
            for endpoint_id, pool in endpoint.pools.items()
        )

    wait_for(ready, "every worker to load its engine", timeout=math.inf, every=0.5)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) used so far by the process `pid` and by its live children
    (a worker's engine core is one): (its own, its children's)."""
    import psutil

    def used(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return float(times.user + times.system)

    process = psutil.Process(pid)
    return used(process), sum(used(child) for child in process.children(recursive=True))


def worker_pids(endpoint: LocalEndpoint) -> dict[str, int]:
    """Each running worker's process id (its engine core is a child of it), by worker id."""
    return {
        worker_id: process.popen.pid
        for pool in endpoint.pools.values()
        for worker_id, process in pool.processes.items()
    }


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


def write_short_requests(path: Path, *, requests: int, max_tokens: int, model: str) -> None:
    """Chat requests with one short user turn each (no shared prefix, no two alike), exactly
    `max_tokens` generated (`ignore_eos`, greedy)."""
    with path.open("w") as out:
        for i in range(requests):
            body = {
                "model": model,
                "messages": [
                    {"role": "user", "content": f"request {i}: evaluate candidate {i * 7 % 13}"}
                ],
                "max_tokens": max_tokens,
                "ignore_eos": True,
                "temperature": 0.0,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            out.write(json.dumps({**line, "body": body}) + "\n")


def answer_texts(output: bytes) -> dict[str, str]:
    """custom_id -> the answer's text, from a batch output file (chat completions)."""
    texts: dict[str, str] = {}
    for raw in output.splitlines():
        line = json.loads(raw)
        texts[line["custom_id"]] = line["response"]["body"]["choices"][0]["message"]["content"]
    return texts


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


def engine_argv(env: dict[str, str]) -> list[str]:
    """The engine flags a worker with this environment ends up with: its `vllm serve` flags,
    plus the chunked-prefill switch `handler.engine.parse_serve_args` adds on vLLM's CPU build
    when the environment sets none (a `run_batch` without it would run another scheduler)."""
    argv = serve_argv(env)
    if not any(flag.endswith("enable-chunked-prefill") for flag in argv):
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            argv.append("--no-enable-chunked-prefill")
    return argv


def run_batch(input_path: Path, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
    """vLLM's own batch runner on the file with the worker's engine flags and environment
    (model, max-model-len, KV cache, chunked prefill), the whole command timed, and from its
    engine being ready ("Reading batch from") to its output file written (its shutdown after
    that is left out), with the CPU its processes used in that span (sampled every 0.2 s); its
    output checked by the caller."""
    output = workdir / "run_batch_output.jsonl"
    command = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch"]
    command += [*engine_argv(env), "-i", str(input_path), "-o", str(output)]
    child_env = {**os.environ, **env, "VLLM_LOGGING_LEVEL": "INFO"}
    log = workdir / "run_batch.log"
    reading = None
    output.unlink(missing_ok=True)
    started = time.perf_counter()
    with log.open("w") as sink:
        child = subprocess.Popen(
            command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        samples = _CpuSamples(child.pid)
        assert child.stdout is not None
        for line in child.stdout:  # timestamps as lines arrive: when the engine was ready
            sink.write(line)
            if reading is None and "Reading batch from" in line:
                reading = time.time()
        child.wait()
        samples.stop()
    ended = time.perf_counter()
    if child.returncode != 0 or reading is None:
        raise RuntimeError(f"run_batch failed ({child.returncode}); see {log}")
    written = output.stat()
    return {
        "seconds": ended - started,
        "after_engine_start_s": written.st_mtime - reading,
        "output_bytes": float(written.st_size),
        "cpu_s": samples.between(reading, written.st_mtime),
    }


class _CpuSamples:
    """CPU seconds of a process and its children, sampled on a thread until `stop`."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.samples: list[tuple[float, tuple[float, float]]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pid, every), daemon=True)
        self._thread.start()

    def _run(self, pid: int, every: float) -> None:
        import psutil

        while not self._done.wait(every):
            try:
                self.samples.append((time.time(), cpu_seconds(pid)))
            except psutil.Error:
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def between(self, start: float, end: float) -> dict[str, float]:
        """(own, children) CPU seconds from the last sample before `start` to the last one
        before `end`."""
        before = [cpu for at, cpu in self.samples if at <= start] or [(0.0, 0.0)]
        until = [cpu for at, cpu in self.samples if at <= end] or [(0.0, 0.0)]
        return {
            "frontend": round(until[-1][0] - before[-1][0], 2),
            "engine_core": round(until[-1][1] - before[-1][1], 2),
        }


def llm_chat(input_path: Path, workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """vLLM's offline `LLM.chat` on the file's conversations, in a child process with the
    worker's environment: the engine built from exactly the worker's `vllm serve` flags
    (`handler.engine.parse_serve_args`, so the CPU build's chunked-prefill switch too) and each
    request's sampling parameters made as the serving layer makes them. Only the `llm.chat`
    call is timed. Its answers go to `workdir/llm_chat_answers.json` (custom_id -> text)."""
    answers = workdir / "llm_chat_answers.json"
    command = [sys.executable, str(Path(__file__).resolve()), "llm-chat", str(input_path)]
    child_env = {**os.environ, **env, "VLLM_NO_USAGE_STATS": "1"}
    log = workdir / "llm_chat.log"
    with log.open("w") as sink:
        child = subprocess.run(
            [*command, str(answers)], env=child_env, stdout=subprocess.PIPE, stderr=sink, text=True
        )
    if child.returncode != 0:
        raise RuntimeError(f"LLM.chat failed ({child.returncode}); see {log}")
    result: dict[str, float] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def _llm_chat_child(input_path: Path, answers: Path) -> None:
    # The baseline is vLLM itself, so this benchmark (not product code) imports it directly.
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.usage.usage_lib import UsageContext

    from handler.engine import parse_serve_args
    from handler.settings import WorkerSettings

    args = parse_serve_args(WorkerSettings())
    engine_args = EngineArgs.from_cli_args(args)
    # The scheduler's sizes default by usage context (the LLM class gets larger ones on CPU):
    # pin them to what the worker's engine (and run_batch's) resolves.
    resolved = copy.deepcopy(engine_args).create_engine_config(UsageContext.OPENAI_BATCH_RUNNER)
    engine_args.max_num_seqs = resolved.scheduler_config.max_num_seqs
    engine_args.max_num_batched_tokens = resolved.scheduler_config.max_num_batched_tokens
    loading = time.perf_counter()
    llm = LLM.from_engine_args(engine_args)
    loaded = time.perf_counter()
    defaults = llm.model_config.get_diff_sampling_param()
    ids, conversations, params = [], [], []
    for raw in input_path.read_text().splitlines():
        line = json.loads(raw)
        request = ChatCompletionRequest.model_validate(line["body"])
        ids.append(line["custom_id"])
        conversations.append(line["body"]["messages"])
        params.append(
            request.to_sampling_params(
                request.max_completion_tokens or request.max_tokens or args.max_model_len,
                defaults,
            )
        )
    cpu_before = cpu_seconds(os.getpid())
    started = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False, chat_template=args.chat_template)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(os.getpid())
    assert len(outputs) == len(ids)
    texts = {custom_id: out.outputs[0].text for custom_id, out in zip(ids, outputs, strict=True)}
    answers.write_text(json.dumps(texts))
    result = {
        "seconds": elapsed,
        "load_s": loaded - loading,
        "requests": len(outputs),
        "completion_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "max_num_seqs": engine_args.max_num_seqs,
        "max_num_batched_tokens": engine_args.max_num_batched_tokens,
        "cpu_s": {
            "frontend": round(cpu_after[0] - cpu_before[0], 2),
            "engine_core": round(cpu_after[1] - cpu_before[1], 2),
        },
    }
    sys.stdout.write(json.dumps(result) + "\n")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.node()}"
    )


if __name__ == "__main__":
    if sys.argv[1:2] != ["llm-chat"] or len(sys.argv) != 4:
        raise SystemExit(__doc__)
    _llm_chat_child(Path(sys.argv[2]), Path(sys.argv[3]))
