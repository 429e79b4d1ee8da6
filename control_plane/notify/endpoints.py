"""A tenant's event webhook endpoints: create (the secret shown once), list, retrieve, update,
delete, rotate the secret, send a test event; and the event types there are."""

from __future__ import annotations

from typing import Any

from control_plane.clients.aws import Aws
from control_plane.errors import InvalidRequest
from control_plane.ids import new_id, now_s
from control_plane.models import CursorPage
from control_plane.notify import send, signing, urls
from control_plane.notify.models import (
    BATCH_EVENT_TYPES,
    CreateWebhookEndpointBody,
    Event,
    EventData,
    UpdateWebhookEndpointBody,
    WebhookEndpoint,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypeList,
)
from control_plane.store import Item
from control_plane.store import webhook_endpoints as endpoint_store

OLD_SECRET_GRACE_S = 24 * 3600


def event_types() -> WebhookEventTypeList:
    return WebhookEventTypeList(data=list(BATCH_EVENT_TYPES))


def create_endpoint(
    aws: Aws, *, tenant_id: str, body: CreateWebhookEndpointBody
) -> WebhookEndpointWithSecret:
    url = _checked_url(aws, body.url)
    now = now_s()
    secret = signing.new_secret()
    item: Item = {
        "id": new_id("webhook_endpoint"),
        "name": body.name,
        "url": url,
        "event_types": body.event_types,
        "created_at": now,
        "updated_at": now,
        "secret": secret,
    }
    endpoint_store.create_endpoint(
        aws.table, tenant_id=tenant_id, item=item, max_per_tenant=endpoint_store.MAX_PER_TENANT
    )
    return WebhookEndpointWithSecret(**endpoint_from_item(item).model_dump(), signing_secret=secret)


def list_endpoints(
    aws: Aws, *, tenant_id: str, limit: int, after: str | None
) -> CursorPage[WebhookEndpoint]:
    items, has_more = endpoint_store.list_endpoints(
        aws.table, tenant_id=tenant_id, limit=limit, after=after
    )
    data = [endpoint_from_item(item) for item in items]
    return CursorPage[WebhookEndpoint](
        data=data,
        first_id=data[0].id if data else "",
        last_id=data[-1].id if data else "",
        has_more=has_more,
    )


def get_endpoint(aws: Aws, *, tenant_id: str, endpoint_id: str) -> WebhookEndpoint:
    item = endpoint_store.get_endpoint_item(aws.table, endpoint_id=endpoint_id, tenant_id=tenant_id)
    return endpoint_from_item(item)


def update_endpoint(
    aws: Aws, *, tenant_id: str, endpoint_id: str, body: UpdateWebhookEndpointBody
) -> WebhookEndpoint:
    item = endpoint_store.get_endpoint_item(aws.table, endpoint_id=endpoint_id, tenant_id=tenant_id)
    changes: dict[str, Any] = {}
    if body.url is not None and body.url != item["url"]:
        changes["url"] = _checked_url(aws, body.url)
    if body.name is not None and body.name != item["name"]:
        changes["name"] = body.name
    if body.event_types is not None and body.event_types != item["event_types"]:
        changes["event_types"] = body.event_types
    if not changes:
        return endpoint_from_item(item)  # an unchanged update does not advance updated_at
    changes["updated_at"] = now_s()
    return endpoint_from_item(endpoint_store.update_endpoint(aws.table, endpoint_id, changes))


def delete_endpoint(aws: Aws, *, tenant_id: str, endpoint_id: str) -> None:
    endpoint_store.get_endpoint_item(aws.table, endpoint_id=endpoint_id, tenant_id=tenant_id)
    endpoint_store.delete_endpoint(aws.table, endpoint_id=endpoint_id, tenant_id=tenant_id)


def rotate_secret(
    aws: Aws, *, tenant_id: str, endpoint_id: str, keep_old_for_24_hours: bool
) -> WebhookEndpointWithSecret:
    """A new secret at once; the old one signs beside it for a day when asked (a receiver
    accepts either signature), else it is dropped now."""
    item = endpoint_store.get_endpoint_item(aws.table, endpoint_id=endpoint_id, tenant_id=tenant_id)
    now = now_s()
    secret = signing.new_secret()
    changes: dict[str, Any] = {"secret": secret, "updated_at": now}
    remove: tuple[str, ...] = ()
    if keep_old_for_24_hours:
        changes["previous_secret"] = item["secret"]
        changes["previous_secret_until"] = now + OLD_SECRET_GRACE_S
    else:
        remove = ("previous_secret", "previous_secret_until")
    updated = endpoint_store.update_endpoint(aws.table, endpoint_id, changes, remove=remove)
    return WebhookEndpointWithSecret(
        **endpoint_from_item(updated).model_dump(), signing_secret=secret
    )


def send_test_event(
    aws: Aws, *, tenant_id: str, endpoint_id: str, event_type: str
) -> WebhookEndpointTestResult:
    """Send a sample event now (a placeholder batch id), signed like a real delivery, and
    answer the endpoint's status. Not retried and not recorded: it is a probe, bounded by the
    deliveries' deadline, and an endpoint that cannot be reached is a 400 whose reason names
    no address (`send` logs the detail)."""
    item = endpoint_store.get_endpoint_item(aws.table, endpoint_id=endpoint_id, tenant_id=tenant_id)
    now = now_s()
    event = Event(
        id=new_id("event"), created_at=now, type=event_type, data=EventData(id="batch_test")
    )
    payload = event.model_dump_json()
    attempt = send.post(
        item["url"],
        payload,
        signing.headers(
            message_id=event.id,
            payload=payload,
            signing_secrets=signing.secrets_of(item, now),
            at=now,
        ),
        timeout_s=aws.settings.event_delivery_timeout_s,
        allow_private=aws.settings.event_webhook_private_urls,
        ids={"event_id": event.id, "webhook_endpoint_id": endpoint_id, "tenant_id": tenant_id},
    )
    if attempt.status_code is None:
        raise InvalidRequest(
            f"The test event could not be delivered to {item['url']}: {attempt.error}.",
            code="webhook_endpoint_unreachable",
            param="webhook_endpoint_id",
        )
    return WebhookEndpointTestResult(
        event_type=event_type, status_code=attempt.status_code, webhook_endpoint_id=endpoint_id
    )


def endpoint_from_item(item: Item) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=item["id"],
        created_at=item["created_at"],
        updated_at=item.get("updated_at"),
        event_types=list(item["event_types"]),
        name=item["name"],
        url=item["url"],
        signing_secret_hint=signing.hint(item["secret"]),
    )


def _checked_url(aws: Aws, url: str) -> str:
    try:
        return urls.check_url(url, allow_private=aws.settings.event_webhook_private_urls)
    except urls.UnsafeUrl as exc:
        raise InvalidRequest(
            f"Invalid value for 'url': {exc}.", code="invalid_url", param="url"
        ) from exc
