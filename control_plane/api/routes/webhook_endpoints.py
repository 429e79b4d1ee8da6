"""`/v1/webhook_endpoints` and `/v1/webhook_event_types`: a tenant's event webhooks, as the
`openai` SDK's `client.webhooks.*` calls them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from control_plane.api.deps import AwsDep, TenantDep
from control_plane.api.openapi import errors
from control_plane.models import CursorPage
from control_plane.notify import endpoints as endpoint_service
from control_plane.notify.models import (
    CreateWebhookEndpointBody,
    DeletedWebhookEndpoint,
    RotateSecretBody,
    UpdateWebhookEndpointBody,
    WebhookEndpoint,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
    WebhookTestBody,
)

router = APIRouter(tags=["webhooks"])

EndpointId = Annotated[str, Path(max_length=64)]


@router.post("/webhook_endpoints")
def create_webhook_endpoint(
    aws: AwsDep, tenant: TenantDep, body: CreateWebhookEndpointBody
) -> WebhookEndpointWithSecret:
    return endpoint_service.create_endpoint(aws, tenant_id=tenant, body=body)


@router.get("/webhook_endpoints")
def list_webhook_endpoints(
    aws: AwsDep,
    tenant: TenantDep,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> CursorPage[WebhookEndpoint]:
    return endpoint_service.list_endpoints(aws, tenant_id=tenant, limit=limit, after=after)


@router.get("/webhook_endpoints/{webhook_endpoint_id}", responses=errors(404))
def retrieve_webhook_endpoint(
    aws: AwsDep, tenant: TenantDep, webhook_endpoint_id: EndpointId
) -> WebhookEndpoint:
    return endpoint_service.get_endpoint(aws, tenant_id=tenant, endpoint_id=webhook_endpoint_id)


@router.post("/webhook_endpoints/{webhook_endpoint_id}", responses=errors(404))
def update_webhook_endpoint(
    aws: AwsDep, tenant: TenantDep, webhook_endpoint_id: EndpointId, body: UpdateWebhookEndpointBody
) -> WebhookEndpoint:
    return endpoint_service.update_endpoint(
        aws, tenant_id=tenant, endpoint_id=webhook_endpoint_id, body=body
    )


@router.delete("/webhook_endpoints/{webhook_endpoint_id}", responses=errors(404))
def delete_webhook_endpoint(
    aws: AwsDep, tenant: TenantDep, webhook_endpoint_id: EndpointId
) -> DeletedWebhookEndpoint:
    endpoint_service.delete_endpoint(aws, tenant_id=tenant, endpoint_id=webhook_endpoint_id)
    return DeletedWebhookEndpoint(id=webhook_endpoint_id)


@router.post("/webhook_endpoints/{webhook_endpoint_id}/rotate_secret", responses=errors(404))
def rotate_webhook_secret(
    aws: AwsDep,
    tenant: TenantDep,
    webhook_endpoint_id: EndpointId,
    body: RotateSecretBody | None = None,
) -> WebhookEndpointWithSecret:
    return endpoint_service.rotate_secret(
        aws,
        tenant_id=tenant,
        endpoint_id=webhook_endpoint_id,
        keep_old_for_24_hours=bool(body and body.keep_old_secret_active_for_24_hours),
    )


@router.post("/webhook_endpoints/{webhook_endpoint_id}/test", responses=errors(404))
def test_webhook_endpoint(
    aws: AwsDep, tenant: TenantDep, webhook_endpoint_id: EndpointId, body: WebhookTestBody
) -> WebhookEndpointTestResult:
    return endpoint_service.send_test_event(
        aws, tenant_id=tenant, endpoint_id=webhook_endpoint_id, event_type=body.event_type
    )


@router.get("/webhook_event_types")
def list_webhook_event_types(tenant: TenantDep) -> WebhookEventTypeList:
    return endpoint_service.event_types()
