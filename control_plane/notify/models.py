"""OpenAI's webhook objects, field for field as the `openai` SDK parses them
(`openai.types.webhooks`), and the request bodies of `/v1/webhook_endpoints`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
    field_validator,
)

# The event types hotbatch emits; `/v1/webhook_event_types` lists them and an endpoint may
# subscribe to these only.
BATCH_EVENT_TYPES = ("batch.completed", "batch.failed", "batch.expired", "batch.cancelled")
EventType = Literal["batch.completed", "batch.failed", "batch.expired", "batch.cancelled"]
# Checked by `_check_event_types` (its message lists the types); the document names them too.
EventTypeName = Annotated[str, WithJsonSchema({"type": "string", "enum": list(BATCH_EVENT_TYPES)})]
# A URL events may go to unless the deployment allows private ones (the local stack): https, a
# DNS name whose last label starts with a letter (so no address literal), port 443 if any,
# printable ASCII after it. `notify/urls.py` holds URLs to it and also refuses `*.localhost` and
# names that resolve inside the network (checked again before every send), which no pattern says.
PUBLIC_URL_PATTERN = (
    r"^https://([A-Za-z0-9][A-Za-z0-9-]{0,62}\.)+[A-Za-z][A-Za-z0-9-]{0,62}"
    r"(:443)?([/?#][!-~]*)?$"
)
WebhookUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 2048,
            "pattern": PUBLIC_URL_PATTERN,
            "description": "An https URL on a public DNS name, port 443.",
        }
    ),
]


class EventData(BaseModel):
    id: str


class Event(BaseModel):
    """The body of one delivery: `{"id": "evt_…", "object": "event", "created_at", "type",
    "data": {"id": batch_id}}` (the SDK's `BatchCompletedWebhookEvent` and siblings)."""

    id: str
    object: Literal["event"] = "event"
    created_at: int
    type: str
    data: EventData


class WebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int | None = None
    event_types: list[str]
    name: str
    url: str
    signing_secret_hint: str | None = None


class WebhookEndpointWithSecret(WebhookEndpoint):
    """Answered by create and rotate_secret only: the one time the secret is shown."""

    signing_secret: str


class DeletedWebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookEndpointTestResult(BaseModel):
    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    event_type: str
    status_code: int
    # OpenAI's: always true on a returned result (a test that could not be sent is an error).
    success: Literal[True] = True
    webhook_endpoint_id: str


class WebhookEventTypeList(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


def _check_event_types(value: list[str]) -> list[str]:
    unknown = [name for name in value if name not in BATCH_EVENT_TYPES]
    if unknown:
        raise ValueError(
            f"unsupported event type {unknown[0]!r}; this service emits "
            f"{', '.join(BATCH_EVENT_TYPES)}"
        )
    return list(dict.fromkeys(value))  # duplicates collapse, order kept


class CreateWebhookEndpointBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_types: list[EventTypeName] = Field(min_length=1)
    name: str = Field(min_length=1, max_length=256)
    url: WebhookUrl

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return _check_event_types(value)


class UpdateWebhookEndpointBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_types: list[EventTypeName] | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1, max_length=256)
    url: WebhookUrl | None = None

    @field_validator("event_types")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_event_types(value)


class RotateSecretBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    # Strict: "yes", "false" or 0 are 400s, not a guess at what the caller meant.
    keep_old_secret_active_for_24_hours: StrictBool = False


class WebhookTestBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    event_type: EventTypeName

    @field_validator("event_type")
    @classmethod
    def _known(cls, value: str) -> str:
        _check_event_types([value])
        return value
