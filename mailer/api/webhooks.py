"""The ``/api/v1/webhooks`` routes: endpoints that receive signed events, their deliveries
and attempts, tests and replays.  All of them need the admin role."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from mailer.accounts.roles import Permission
from mailer.accounts.service import Principal, audit
from mailer.api.deps import Id, Limit, Offset, SessionDep, allowed
from mailer.core.queue import enqueue
from mailer.webhooks import service
from mailer.webhooks import tasks as webhook_tasks
from mailer.webhooks.event_types import EventType
from mailer.webhooks.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookSubscription,
    payload_of,
)

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

Admin = Annotated[Principal, Depends(allowed(Permission.ADMIN))]
DeliveryStateName = Literal["pending", "succeeded", "failed"]


class WebhookIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://erp.entidad.gob.pe/hooks/mailer",
                    "description": "ERP de compras",
                    "event_types": ["email.bounced", "sms.delivered"],
                }
            ]
        }
    )
    url: str = Field(min_length=1, max_length=2000, description="http:// or https:// address.")
    description: str = Field("", max_length=200)
    event_types: list[EventType] = Field(min_length=1, max_length=len(EventType))


class WebhookPatch(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"active": True, "event_types": ["email.bounced"]}]}
    )
    url: str | None = Field(None, min_length=1, max_length=2000)
    description: str | None = Field(None, max_length=200)
    event_types: list[EventType] | None = Field(None, min_length=1, max_length=len(EventType))
    active: bool | None = Field(
        None, description="false disables the endpoint; true enables it again."
    )


class WebhookOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 2,
                    "url": "https://erp.entidad.gob.pe/hooks/mailer",
                    "description": "ERP de compras",
                    "event_types": ["email.bounced", "sms.delivered"],
                    "active": True,
                    "disabled_reason": "",
                    "disabled_at": None,
                    "failure_streak": 0,
                    "failing_since": None,
                    "last_success_at": "2026-11-20T15:04:10Z",
                    "created_at": "2026-11-01T12:00:00Z",
                }
            ]
        }
    )
    id: int
    url: str
    description: str
    event_types: list[str]
    active: bool
    disabled_reason: str = Field(description="gone, failing or manual; empty while active.")
    disabled_at: datetime | None
    failure_streak: int = Field(description="Consecutive failed attempts.")
    failing_since: datetime | None
    last_success_at: datetime | None
    created_at: datetime


class WebhookSecretOut(WebhookOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 2,
                    "url": "https://erp.entidad.gob.pe/hooks/mailer",
                    "description": "ERP de compras",
                    "event_types": ["email.bounced", "sms.delivered"],
                    "active": True,
                    "disabled_reason": "",
                    "disabled_at": None,
                    "failure_streak": 0,
                    "failing_since": None,
                    "last_success_at": None,
                    "created_at": "2026-11-01T12:00:00Z",
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                }
            ]
        }
    )
    secret: str = Field(
        description="whsec_...: shown only now. Verify each request's webhook-signature "
        "with it (Standard Webhooks)."
    )


class AttemptOut(BaseModel):
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    succeeded: bool
    response_excerpt: str
    error: str


class DeliveryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 77,
                    "webhook_id": "msg_2p5Yr4B9Xf0aZ1",
                    "event_type": "email.bounced",
                    "event_id": 1234,
                    "state": "succeeded",
                    "attempts": 1,
                    "next_attempt_at": None,
                    "last_status": 200,
                    "last_error": "",
                    "replays": 0,
                    "created_at": "2026-11-20T15:04:08Z",
                    "completed_at": "2026-11-20T15:04:09Z",
                    "payload": {
                        "type": "email.bounced",
                        "timestamp": "2026-11-20T15:04:08Z",
                        "data": {"message_id": 5012, "to": "ana@empresa.pe", "bounce": "hard"},
                    },
                    "attempt_log": [
                        {
                            "attempted_at": "2026-11-20T15:04:09Z",
                            "status_code": 200,
                            "duration_ms": 84,
                            "succeeded": True,
                            "response_excerpt": "ok",
                            "error": "",
                        }
                    ],
                }
            ]
        }
    )
    id: int
    webhook_id: str = Field(description="The webhook-id header: deduplicate by it.")
    event_type: str
    event_id: int | None
    state: str
    attempts: int = Field(description="Attempts in the current series (a replay restarts it).")
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str
    replays: int
    created_at: datetime
    completed_at: datetime | None
    payload: dict[str, Any]
    attempt_log: list[AttemptOut]


class ReplayOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"replayed": 3}]})
    replayed: int


def _out(subscription: WebhookSubscription) -> WebhookOut:
    return WebhookOut.model_validate(subscription, from_attributes=True)


def _secret_out(subscription: WebhookSubscription, secret: str) -> WebhookSecretOut:
    return WebhookSecretOut(**_out(subscription).model_dump(), secret=secret)


def _delivery_out(delivery: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
    return DeliveryOut(
        id=delivery.id or 0,
        webhook_id=delivery.webhook_id,
        event_type=delivery.event_type,
        event_id=delivery.event_id,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        replays=delivery.replays,
        created_at=delivery.created_at,
        completed_at=delivery.completed_at,
        payload=payload_of(delivery),
        attempt_log=[AttemptOut.model_validate(a, from_attributes=True) for a in attempts],
    )


def _post_due() -> None:
    """Post what was just made due now rather than at the next periodic run."""
    enqueue(webhook_tasks.retry_due_webhooks)


@router.get("/webhooks", response_model=list[WebhookOut], summary="List the webhook endpoints")
def get_webhooks(session: SessionDep, principal: Admin) -> list[WebhookOut]:
    """The account's endpoints, with their health (failure streak, disabled reason)."""
    return [_out(s) for s in service.list_subscriptions(session, principal.account_id)]


@router.post(
    "/webhooks",
    response_model=WebhookSecretOut,
    status_code=status.HTTP_201_CREATED,
    summary="Add a webhook endpoint",
)
def post_webhook(
    body: WebhookIn, request: Request, session: SessionDep, principal: Admin
) -> WebhookSecretOut:
    """Add an endpoint; the answer carries its signing secret, shown this once."""
    subscription, secret = service.create_subscription(
        session,
        principal.account_id,
        body.url,
        [t.value for t in body.event_types],
        description=body.description,
        created_by=principal.actor,
        settings=request.app.state.settings,
    )
    audit(session, principal, "webhook.create", f"webhook:{subscription.id}", url=subscription.url)
    session.commit()
    return _secret_out(subscription, secret)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut, summary="One webhook endpoint")
def get_webhook(webhook_id: Id, session: SessionDep, principal: Admin) -> WebhookOut:
    """One endpoint and its health; the secret is never shown again."""
    return _out(service.get_subscription(session, principal.account_id, webhook_id))


@router.patch(
    "/webhooks/{webhook_id}",
    response_model=WebhookOut,
    summary="Change, disable or enable an endpoint",
)
def patch_webhook(
    webhook_id: Id, body: WebhookPatch, request: Request, session: SessionDep, principal: Admin
) -> WebhookOut:
    """Change the URL, description or event types; ``active`` disables or enables it."""
    subscription = service.update_subscription(
        session,
        principal.account_id,
        webhook_id,
        url=body.url,
        description=body.description,
        event_types=None if body.event_types is None else [t.value for t in body.event_types],
        active=body.active,
        principal=principal,
        settings=request.app.state.settings,
    )
    audit(
        session,
        principal,
        "webhook.update",
        f"webhook:{webhook_id}",
        **body.model_dump(exclude_none=True, mode="json"),
    )
    session.commit()
    return _out(subscription)


@router.delete(
    "/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete an endpoint"
)
def delete_webhook(webhook_id: Id, session: SessionDep, principal: Admin) -> None:
    """Delete the endpoint with its deliveries and attempts."""
    service.delete_subscription(session, principal.account_id, webhook_id)
    audit(session, principal, "webhook.delete", f"webhook:{webhook_id}")
    session.commit()


@router.post(
    "/webhooks/{webhook_id}/rotate-secret",
    response_model=WebhookSecretOut,
    summary="Rotate an endpoint's signing secret",
)
def rotate_webhook_secret(
    webhook_id: Id, request: Request, session: SessionDep, principal: Admin
) -> WebhookSecretOut:
    """A new secret, shown this once; for 24 hours requests are signed with both."""
    subscription, secret = service.rotate_secret(
        session, principal.account_id, webhook_id, settings=request.app.state.settings
    )
    audit(session, principal, "webhook.rotate_secret", f"webhook:{webhook_id}")
    session.commit()
    return _secret_out(subscription, secret)


@router.post(
    "/webhooks/{webhook_id}/test",
    response_model=DeliveryOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a test event",
)
def test_webhook(webhook_id: Id, session: SessionDep, principal: Admin) -> DeliveryOut:
    """Queue a ``webhook.test`` event to the endpoint; follow it in its deliveries."""
    delivery = service.send_test_event(session, principal.account_id, webhook_id)
    session.commit()
    _post_due()
    return _delivery_out(delivery, [])


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=list[DeliveryOut],
    summary="An endpoint's deliveries",
)
def get_webhook_deliveries(
    webhook_id: Id,
    session: SessionDep,
    principal: Admin,
    state: Annotated[DeliveryStateName | None, Query()] = None,
    offset: Offset = 0,
    limit: Limit = 50,
) -> list[DeliveryOut]:
    """The endpoint's deliveries, newest first, each with its attempts."""
    deliveries = service.list_deliveries(
        session, principal.account_id, webhook_id, state=state, offset=offset, limit=limit
    )
    attempts = service.list_attempts(session, [d.id for d in deliveries if d.id is not None])
    return [_delivery_out(d, attempts.get(d.id or 0, [])) for d in deliveries]


@router.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/replay",
    response_model=DeliveryOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Replay one delivery",
)
def replay_webhook_delivery(
    webhook_id: Id, delivery_id: Id, session: SessionDep, principal: Admin
) -> DeliveryOut:
    """Send a finished delivery again (same webhook-id, a new series of attempts)."""
    delivery = service.replay_delivery(session, principal.account_id, webhook_id, delivery_id)
    audit(session, principal, "webhook.replay", f"webhook:{webhook_id}", delivery=delivery_id)
    session.commit()
    _post_due()
    attempts = service.list_attempts(session, [delivery_id])
    return _delivery_out(delivery, attempts.get(delivery_id, []))


@router.post(
    "/webhooks/{webhook_id}/replay-failed",
    response_model=ReplayOut,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Replay the failed deliveries",
)
def replay_failed_webhook_deliveries(
    webhook_id: Id, session: SessionDep, principal: Admin
) -> ReplayOut:
    """Send every failed delivery of the endpoint again."""
    count = service.replay_failed(session, principal.account_id, webhook_id)
    audit(session, principal, "webhook.replay_failed", f"webhook:{webhook_id}", count=count)
    session.commit()
    if count:
        _post_due()
    return ReplayOut(replayed=count)
