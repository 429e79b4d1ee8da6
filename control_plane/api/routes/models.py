"""`/v1/models`: the models this deployment serves (`HOTBATCH_MODELS`), as OpenAI lists them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from control_plane.api.deps import AwsDep, TenantDep
from control_plane.api.openapi import errors
from control_plane.models import Model, ModelList
from control_plane.services import routing

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(aws: AwsDep, tenant: TenantDep) -> ModelList:
    return ModelList(data=routing.list_models(aws.settings))


@router.get("/models/{model}", responses=errors(404))
def retrieve_model(
    aws: AwsDep, tenant: TenantDep, model: Annotated[str, Path(min_length=1, max_length=256)]
) -> Model:
    return routing.get_model(aws.settings, model)
