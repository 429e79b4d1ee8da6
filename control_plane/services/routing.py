"""Which models this deployment serves and where each batch goes (`HOTBATCH_MODELS`).

Every model maps to one RunPod endpoint and a kind: `generate` endpoints run chat, completion
and Responses requests, `embed` endpoints (workers under vLLM's pooling runner) run
embeddings. The split asks `check_line` about every request line, so a batch naming a model
nobody serves, or an endpoint its model's kind cannot answer, fails validation with line
numbers instead of failing at the worker; the tick asks `endpoint_for` where to send a batch's
chunks. With no map configured, the single endpoint `HOTBATCH_RUNPOD_ENDPOINT_ID` serves
whatever its workers load, exactly as before models could be routed.
"""

from __future__ import annotations

from typing import Literal

from control_plane.errors import ApiError
from control_plane.models import Model
from control_plane.settings import ModelRoute, Settings

Kind = Literal["generate", "embed"]

# The batch endpoints each kind of worker answers.
ENDPOINTS_BY_KIND: dict[Kind, frozenset[str]] = {
    "generate": frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"}),
    "embed": frozenset({"/v1/embeddings"}),
}


class ModelNotFound(ApiError):
    """OpenAI's answer for a model id it does not serve (`GET /v1/models/{id}`)."""

    status_code = 404

    def __init__(self, model: str):
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            code="model_not_found",
            param="model",
        )


class UnroutableModel(Exception):
    """A batch's model is no longer in `HOTBATCH_MODELS` (the map changed after its split)."""


def list_models(settings: Settings) -> list[Model]:
    """The served models as OpenAI's Model objects, in the order the map names them."""
    return [_model(name, route) for name, route in settings.models.items()]


def get_model(settings: Settings, model: str) -> Model:
    route = settings.models.get(model)
    if route is None:
        raise ModelNotFound(model)
    return _model(model, route)


def check_line(settings: Settings, *, model: object, endpoint: str) -> tuple[str, str] | None:
    """(code, message) when a request line's model cannot serve `endpoint`; None when it can.
    Without a map every model is let through: the one endpoint's worker answers for it."""
    if not settings.models:
        return None
    if not isinstance(model, str) or not model:
        return "missing_model", "body.model must name one of the served models (GET /v1/models)."
    route = settings.models.get(model)
    if route is None:
        served = ", ".join(sorted(settings.models))
        return "model_not_found", f"model {model!r} is not served here (served: {served})."
    if endpoint not in ENDPOINTS_BY_KIND[route.kind]:
        allowed = ", ".join(sorted(ENDPOINTS_BY_KIND[route.kind]))
        return (
            "unsupported_model_endpoint",
            f"model {model!r} is an {route.kind} model: it serves {allowed}, not {endpoint}.",
        )
    return None


def endpoint_for(settings: Settings, model: str | None) -> str:
    """The RunPod endpoint id that runs `model`'s chunks."""
    if not settings.models:
        return settings.runpod_endpoint_id
    route = settings.models.get(model or "")
    if route is None:
        raise UnroutableModel(
            f"model {model!r} is not in HOTBATCH_MODELS any more; restore it to run this batch"
        )
    return route.endpoint_id or settings.runpod_endpoint_id


def endpoint_ids(settings: Settings) -> list[str]:
    """Every RunPod endpoint this deployment dispatches to (the default one first)."""
    ids = [settings.runpod_endpoint_id]
    for route in settings.models.values():
        if route.endpoint_id and route.endpoint_id not in ids:
            ids.append(route.endpoint_id)
    return ids


def _model(name: str, route: ModelRoute) -> Model:
    return Model(id=name, created=route.created, owned_by=route.owned_by)
