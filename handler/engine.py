"""The only module that touches vLLM: one in-process engine behind vLLM's OpenAI serving layer.

It mirrors what `vllm/entrypoints/launchers/run_batch.py` does in vLLM 0.32: build the async
engine client from `vllm serve` arguments, let `init_app_state` create the OpenAI serving
objects, then call them per request with no HTTP: `create_chat_completion`,
`create_completion` and `create_responses` on a generate runner, the embedding serving object
on a pooling runner (`RUNNER=pooling`). Request parsing, validation, error statuses and
response bodies are therefore vLLM's own; an endpoint the runner does not serve gets vLLM's own
501, as `vllm serve` answers it.

`check_vllm_surface()` names everything used here; a test calls it so that an upgrade that
moves any of it fails loudly instead of at the first chunk.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import os
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from handler.contract import error_body
from handler.settings import WorkerSettings

log = logging.getLogger(__name__)

SUPPORTED_VLLM = "0.32."
# RunPod marks a worker unhealthy when its start-up passes this (runpod 1.x docs).
_RUNPOD_INIT_TIMEOUT_S = float(os.environ.get("RUNPOD_INIT_TIMEOUT", "420"))

# (module, attribute, parameters the attribute must accept) for every vLLM name used below.
VLLM_SURFACE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("vllm.entrypoints.launchers.cli_args", "make_arg_parser", ("parser",)),
    ("vllm.entrypoints.launchers.cli_args", "validate_parsed_serve_args", ("args",)),
    ("vllm.utils.argparse_utils", "FlexibleArgumentParser", ()),
    (
        "vllm.entrypoints.launchers.api_server.entry",
        "build_async_engine_client",
        ("args", "usage_context"),
    ),
    (
        "vllm.entrypoints.launchers.api_server.app_state",
        "init_app_state",
        ("engine_client", "state", "args", "supported_tasks"),
    ),
    ("vllm.entrypoints.openai.chat_completion.protocol", "ChatCompletionRequest", ()),
    ("vllm.entrypoints.openai.completion.protocol", "CompletionRequest", ()),
    ("vllm.entrypoints.openai.responses.protocol", "ResponsesRequest", ()),
    ("vllm.entrypoints.pooling.embed.protocol", "EmbeddingRequest", ()),
    ("vllm.entrypoints.serve.engine.protocol", "ErrorResponse", ()),
    ("vllm.entrypoints.serve", "create_error_response", ("message",)),
    ("vllm.usage.usage_lib", "UsageContext", ()),
    ("vllm.version", "__version__", ()),
    ("vllm.platforms", "current_platform", ()),
    ("starlette.datastructures", "State", ()),
    (
        "vllm.entrypoints.openai.chat_completion.serving",
        "OpenAIServingChat.create_chat_completion",
        ("request", "raw_request"),
    ),
    (
        "vllm.entrypoints.openai.completion.serving",
        "OpenAIServingCompletion.create_completion",
        ("request", "raw_request"),
    ),
    (
        "vllm.entrypoints.openai.responses.serving",
        "OpenAIServingResponses.create_responses",
        ("request", "raw_request"),
    ),
    (
        "vllm.entrypoints.pooling.embed.serving",
        "ServingEmbedding.__call__",
        ("request", "raw_request"),
    ),
)

# endpoint -> (the `init_app_state` attribute serving it, its method; "" for a callable
# object, the request model's module and name). vLLM sets an attribute to None (or leaves it
# out) when the runner does not serve that endpoint.
SERVING: dict[str, tuple[str, str, str, str]] = {
    "/v1/chat/completions": (
        "openai_serving_chat",
        "create_chat_completion",
        "vllm.entrypoints.openai.chat_completion.protocol",
        "ChatCompletionRequest",
    ),
    "/v1/completions": (
        "openai_serving_completion",
        "create_completion",
        "vllm.entrypoints.openai.completion.protocol",
        "CompletionRequest",
    ),
    "/v1/responses": (
        "openai_serving_responses",
        "create_responses",
        "vllm.entrypoints.openai.responses.protocol",
        "ResponsesRequest",
    ),
    "/v1/embeddings": (
        "serving_embedding",
        "",
        "vllm.entrypoints.pooling.embed.protocol",
        "EmbeddingRequest",
    ),
}


class EngineDead(Exception):
    """The engine process died; the worker must be replaced, not the request retried here."""


@dataclass(frozen=True)
class Reply:
    """One request's outcome: the HTTP status and JSON body `vllm serve` would have sent."""

    status_code: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Route:
    """How one endpoint reaches vLLM: its request model and the serving call."""

    request_type: Any  # a pydantic TypeAdapter: some request types are unions
    call: Callable[[Any, None], Awaitable[Any]]
    # Every top-level field (and alias) the request model reads; vLLM's models accept any
    # other key and drop it with a debug line, which would run the request without it.
    fields: frozenset[str] = frozenset()


# OpenAI request fields that change nothing in the answer (bookkeeping, caching and routing
# hints for OpenAI's own service): accepted although vLLM's request models do not read them.
NO_EFFECT_FIELDS = frozenset(
    {"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)


def unhonoured_field(body: dict[str, Any], fields: frozenset[str]) -> str | None:
    """The first top-level key of `body` the engine would drop, if any (`fields` empty: the
    route's model could not be read, nothing is refused)."""
    if not fields:
        return None
    extra = sorted(set(body) - fields - NO_EFFECT_FIELDS)
    return extra[0] if extra else None


def _field_names(request_type: Any) -> frozenset[str]:
    """The top-level names a request model reads; for a union of them (under `Annotated` or
    not), the names any member reads."""
    if isinstance(request_type, type) and hasattr(request_type, "model_fields"):
        names: set[str] = set()
        for name, info in request_type.model_fields.items():
            names.add(name)
            if info.alias:
                names.add(info.alias)
        return frozenset(names)
    return frozenset().union(*(_field_names(part) for part in typing.get_args(request_type)))


@dataclass
class Engine:
    """A loaded engine and the serving objects built on it."""

    served_model_name: str
    max_model_len: int
    vllm_version: str
    load_seconds: float
    _client: Any = field(repr=False)
    _routes: dict[str, Route] = field(repr=False)
    _error_response: Any = field(repr=False)
    _create_error_response: Any = field(repr=False)

    @property
    def dead(self) -> bool:
        return bool(self._client.errored)

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The batch endpoints this engine's runner serves."""
        return tuple(self._routes)

    async def run(self, endpoint: str, body: dict[str, Any]) -> Reply:
        """Run one OpenAI request body through the serving layer for `endpoint`."""
        route = self._routes.get(endpoint)
        try:
            if route is None:
                raise NotImplementedError(
                    f"The model {self.served_model_name!r} does not serve {endpoint} on this "
                    f"worker (it serves {', '.join(self._routes) or 'nothing'})."
                )
            extra = unhonoured_field(body, route.fields)
            if extra is not None:
                return Reply(
                    400,
                    error_body(
                        f"Unrecognized request argument supplied: {extra}. This engine (vLLM "
                        f"{self.vllm_version}) has no such option for {endpoint}, so the "
                        "request is refused rather than run without it.",
                        status=400,
                        param=extra,
                    ),
                )
            request = route.request_type.validate_python(body)
            response = _plain(await route.call(request, None))
        except Exception as exc:  # every failure becomes vLLM's error body
            if self.dead:
                raise EngineDead(str(exc)) from exc
            response = self._create_error_response(exc)
            if getattr(response.error, "param", None) is None:
                response.error.param = _validation_param(exc)
        if isinstance(response, Reply):
            return response
        if isinstance(response, self._error_response):
            return Reply(response.error.code, response.model_dump())
        if not hasattr(response, "model_dump"):
            # An async generator: only streaming requests produce one, and those are refused
            # before they get here; close it rather than leak the engine request.
            await response.aclose()
            return Reply(
                400,
                error_body(
                    "Streaming is not supported in batch requests.", status=400, param="stream"
                ),
            )
        return Reply(200, response.model_dump())


def _plain(response: Any) -> Any:
    """A starlette response (what the pooling serving objects return) as the Reply it holds;
    anything else as it is."""
    # A pydantic answer first: looking up a missing `body` on one goes through pydantic's slow
    # `__getattr__` (an exception built per request, on the engine's event loop).
    if hasattr(response, "model_dump"):
        return response
    body = getattr(response, "body", None)
    if not isinstance(body, bytes | memoryview):
        return response
    try:
        return Reply(int(response.status_code), json.loads(bytes(body)))
    except ValueError:
        # Only `encoding_format: bytes` answers raw bytes: OpenAI's API has no such format.
        message = "encoding_format must be 'float' or 'base64' in batch requests."
        return Reply(400, error_body(message, status=400, param="encoding_format"))


def _routes(state: Any) -> dict[str, Route]:
    """The endpoints `init_app_state` built serving objects for, on this runner."""
    routes: dict[str, Route] = {}
    for endpoint, (attribute, method, module, request_name) in SERVING.items():
        serving = getattr(state, attribute, None)
        if serving is None:
            continue
        call = getattr(serving, method) if method else serving
        request_type = getattr(importlib.import_module(module), request_name)
        routes[endpoint] = Route(
            request_type=TypeAdapter(request_type), call=call, fields=_field_names(request_type)
        )
    return routes


def _validation_param(exc: Exception) -> str | None:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return None
    with contextlib.suppress(Exception):
        first = errors()[0]
        return ".".join(
            str(part)
            for part in first.get("loc", ())
            # a union's member names (EmbeddingCompletionRequest…) are no field of the body
            if not str(part).startswith(("function-", "union[")) and not str(part)[:1].isupper()
        )
    return None


def check_vllm_surface() -> str:
    """Import every vLLM name the adapter uses and check its parameters; return the version.

    Raises RuntimeError naming what moved, so a vLLM upgrade breaks a test, not a worker.
    """
    problems: list[str] = []
    for module_name, attribute, params in VLLM_SURFACE:
        try:
            target: Any = importlib.import_module(module_name)
            for part in attribute.split("."):
                target = getattr(target, part)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{module_name}.{attribute}: {exc}")
            continue
        if params:
            accepted = inspect.signature(target).parameters
            missing = [name for name in params if name not in accepted]
            if missing:
                problems.append(f"{module_name}.{attribute} lost parameters {missing}")
    version = str(importlib.import_module("vllm.version").__version__)
    if not version.startswith(SUPPORTED_VLLM):
        problems.append(f"vLLM {version} installed; the adapter is written for {SUPPORTED_VLLM}x")
    if problems:
        raise RuntimeError("vLLM adapter surface changed: " + "; ".join(problems))
    return version


def parse_serve_args(settings: WorkerSettings) -> Any:
    """Parse `settings.serve_argv()` with vLLM's own `vllm serve` parser."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser(prog="hotbatch-worker"))
    args = parser.parse_args(settings.serve_argv())
    validate_parsed_serve_args(args)
    if settings.enable_chunked_prefill is None and _is_cpu_build():
        # vLLM 0.32's CPU build rewinds a seeded request's generator after a partial prefill,
        # which CPU generators refuse ("CPU Generator does not use offset"), and the whole
        # engine dies. Without chunked prefill no prefill is partial. The GPU build is unaffected.
        args.enable_chunked_prefill = False
        log.info("chunked prefill off on the CPU build (seeded requests would kill the engine)")
    return args


def _is_cpu_build() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


@contextlib.asynccontextmanager
async def open_engine(settings: WorkerSettings) -> AsyncIterator[Engine]:
    """Start the engine (the cold start) and yield it; shut it down on exit."""
    from starlette.datastructures import State
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.serve import create_error_response
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse
    from vllm.usage.usage_lib import UsageContext

    # vLLM reports usage statistics over the network by default; a self-hosted worker must not
    # phone home (and tests have no network). An explicit setting still wins.
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    # A media URL on an allowed domain must not redirect the fetch elsewhere (inside the
    # worker's network). An explicit setting still wins.
    os.environ.setdefault("VLLM_MEDIA_URL_ALLOW_REDIRECTS", "0")
    version = check_vllm_surface()
    args = parse_serve_args(settings)
    started = time.perf_counter()
    log.info("engine starting", extra={"argv": settings.serve_argv(), "vllm_version": version})
    async with build_async_engine_client(
        args, usage_context=UsageContext.OPENAI_BATCH_RUNNER
    ) as client:
        state = State()
        await init_app_state(client, state, args, await client.get_supported_tasks())
        engine = Engine(
            served_model_name=settings.served_model_name,
            max_model_len=int(client.model_config.max_model_len),
            vllm_version=version,
            load_seconds=time.perf_counter() - started,
            _client=client,
            _routes=_routes(state),
            _error_response=ErrorResponse,
            _create_error_response=create_error_response,
        )
        if engine.load_seconds > 0.8 * _RUNPOD_INIT_TIMEOUT_S:
            log.warning(
                "cold start close to RunPod's init timeout; raise RUNPOD_INIT_TIMEOUT or bake "
                "the model into the image",
                extra={"cold_start_s": round(engine.load_seconds, 1)},
            )
        log.info(
            "engine ready",
            extra={
                "model": engine.served_model_name,
                "max_model_len": engine.max_model_len,
                "endpoints": list(engine.endpoints),
                "cold_start_s": round(engine.load_seconds, 2),
            },
        )
        yield engine
