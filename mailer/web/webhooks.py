"""Portal pages of webhooks, for administrators: the endpoints (create, with the secret
shown once; edit, enable and disable, rotate the secret, delete), their deliveries with
every attempt, test events and replays.  The pages call ``mailer.webhooks.service``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, Response

from mailer.accounts.roles import Permission
from mailer.accounts.service import Principal, audit
from mailer.core.errors import MailerError
from mailer.core.queue import enqueue
from mailer.web.auth import CsrfChecked, Id, Page, SessionDep, page
from mailer.web.pages import client_ip, flash, redirect, render, tr
from mailer.webhooks import service
from mailer.webhooks import tasks as webhook_tasks
from mailer.webhooks.event_types import EVENT_TYPE_LABELS_ES, EventType
from mailer.webhooks.models import (
    DELIVERY_STATE_LABELS_ES,
    DISABLED_REASON_LABELS_ES,
    WebhookSubscription,
    payload_of,
)

router = APIRouter(include_in_schema=False)

Admin = Annotated[Principal, Depends(page(Permission.ADMIN))]
FormTypes = Annotated[list[str] | None, Form()]
PAGE_SIZE = 25
NO_STORE = {"Cache-Control": "no-store"}
EVENT_TYPES = [(t.value, EVENT_TYPE_LABELS_ES[t]) for t in EventType]
STATE_FILTERS = ("pending", "succeeded", "failed")


def _context() -> dict[str, Any]:
    return {
        "nav": "webhooks",
        "event_types": EVENT_TYPES,
        "type_labels": EVENT_TYPE_LABELS_ES,
        "delivery_labels": DELIVERY_STATE_LABELS_ES,
        "reason_labels": DISABLED_REASON_LABELS_ES,
    }


def _post_due() -> None:
    enqueue(webhook_tasks.retry_due_webhooks)


@router.get("/webhooks")
def webhooks_page(request: Request, session: SessionDep, principal: Admin) -> HTMLResponse:
    return _list_page(request, session, principal)


def _list_page(
    request: Request,
    session: SessionDep,
    principal: Principal,
    *,
    error: str = "",
    form: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    subscriptions = service.list_subscriptions(session, principal.account_id)
    return render(
        request,
        "webhooks/list.html",
        status_code=status_code,
        subscriptions=subscriptions,
        counts={s.id: service.state_counts(session, s.id or 0) for s in subscriptions},
        error=error,
        form=form or {"event_types": []},
        **_context(),
    )


@router.post("/webhooks", dependencies=[CsrfChecked])
def webhooks_create(
    request: Request,
    session: SessionDep,
    principal: Admin,
    url: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    event_types: FormTypes = None,
) -> Response:
    try:
        subscription, secret = service.create_subscription(
            session,
            principal.account_id,
            url,
            event_types or [],
            description=description,
            created_by=principal.actor,
            settings=request.app.state.settings,
        )
    except MailerError as exc:
        session.rollback()
        form = {"url": url, "description": description, "event_types": event_types or []}
        return _list_page(request, session, principal, error=tr(exc), form=form, status_code=422)
    audit(
        session,
        principal,
        "webhook.create",
        f"webhook:{subscription.id}",
        ip=client_ip(request),
        url=subscription.url,
    )
    return _secret_page(request, subscription, secret, created=True)


def _secret_page(
    request: Request, subscription: WebhookSubscription, secret: str, *, created: bool
) -> HTMLResponse:
    response = render(
        request,
        "webhooks/secret.html",
        subscription=subscription,
        secret=secret,
        created=created,
        **_context(),
    )
    response.headers.update(NO_STORE)  # the secret must not stay in a cache
    return response


@router.get("/webhooks/{webhook_id}")
def webhook_detail(
    request: Request,
    webhook_id: Id,
    session: SessionDep,
    principal: Admin,
    state: Annotated[str, Query(max_length=16)] = "",
    page: Page = 1,
) -> HTMLResponse:
    subscription = service.get_subscription(session, principal.account_id, webhook_id)
    state = state if state in STATE_FILTERS else ""
    deliveries = service.list_deliveries(
        session,
        principal.account_id,
        webhook_id,
        state=state or None,
        offset=(page - 1) * PAGE_SIZE,
        limit=PAGE_SIZE,
    )
    return render(
        request,
        "webhooks/detail.html",
        subscription=subscription,
        counts=service.state_counts(session, webhook_id),
        deliveries=deliveries,
        attempts=service.list_attempts(session, [d.id for d in deliveries if d.id is not None]),
        payloads={d.id: payload_of(d) for d in deliveries},
        state=state,
        states=STATE_FILTERS,
        page=page,
        page_size=PAGE_SIZE,
        **_context(),
    )


@router.post("/webhooks/{webhook_id}", dependencies=[CsrfChecked])
def webhook_update(
    request: Request,
    webhook_id: Id,
    session: SessionDep,
    principal: Admin,
    url: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    event_types: FormTypes = None,
) -> Response:
    try:
        service.update_subscription(
            session,
            principal.account_id,
            webhook_id,
            url=url,
            description=description,
            event_types=event_types or [],
            settings=request.app.state.settings,
        )
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/webhooks/{webhook_id}")
    audit(session, principal, "webhook.update", f"webhook:{webhook_id}", ip=client_ip(request))
    flash(request, "Cambios guardados.")
    return redirect(f"/webhooks/{webhook_id}")


@router.post("/webhooks/{webhook_id}/rotate", dependencies=[CsrfChecked])
def webhook_rotate(
    request: Request, webhook_id: Id, session: SessionDep, principal: Admin
) -> Response:
    subscription, secret = service.rotate_secret(
        session, principal.account_id, webhook_id, settings=request.app.state.settings
    )
    audit(
        session, principal, "webhook.rotate_secret", f"webhook:{webhook_id}", ip=client_ip(request)
    )
    return _secret_page(request, subscription, secret, created=False)


ACTIONS = {
    "test": "Evento de prueba en cola: su resultado aparecerá en las entregas.",
    "enable": "Webhook activado: se le enviarán los eventos desde ahora.",
    "disable": "Webhook desactivado: sus entregas pendientes quedaron como fallidas.",
    "replay-failed": "Se reenviarán {count} entregas fallidas.",
    "delete": "Webhook eliminado con sus entregas.",
}


@router.post("/webhooks/{webhook_id}/{action}", dependencies=[CsrfChecked])
def webhook_action(
    request: Request, webhook_id: Id, action: str, session: SessionDep, principal: Admin
) -> Response:
    if action not in ACTIONS:
        flash(request, f"Acción desconocida: {action}", "error")
        return redirect(f"/webhooks/{webhook_id}")
    count = 0
    try:
        if action == "test":
            service.send_test_event(session, principal.account_id, webhook_id)
        elif action == "enable":
            service.enable_subscription(session, principal.account_id, webhook_id)
        elif action == "disable":
            service.disable_subscription(
                session, principal.account_id, webhook_id, principal=principal
            )
        elif action == "replay-failed":
            count = service.replay_failed(session, principal.account_id, webhook_id)
        else:
            service.delete_subscription(session, principal.account_id, webhook_id)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/webhooks/{webhook_id}")
    if action != "disable":  # disabling writes its own audit entry, webhook.disabled
        audit(
            session,
            principal,
            f"webhook.{action.replace('-', '_')}",
            f"webhook:{webhook_id}",
            ip=client_ip(request),
        )
    session.commit()
    if action in ("test", "replay-failed"):
        _post_due()
    flash(request, ACTIONS[action].format(count=count))
    return redirect("/webhooks" if action == "delete" else f"/webhooks/{webhook_id}")


@router.post("/webhooks/{webhook_id}/deliveries/{delivery_id}/replay", dependencies=[CsrfChecked])
def webhook_replay(
    request: Request, webhook_id: Id, delivery_id: Id, session: SessionDep, principal: Admin
) -> Response:
    try:
        service.replay_delivery(session, principal.account_id, webhook_id, delivery_id)
    except MailerError as exc:
        session.rollback()
        flash(request, tr(exc), "error")
        return redirect(f"/webhooks/{webhook_id}")
    audit(
        session,
        principal,
        "webhook.replay",
        f"webhook:{webhook_id}",
        ip=client_ip(request),
        delivery=delivery_id,
    )
    session.commit()
    _post_due()
    flash(request, "Entrega en cola para reenviarse con el mismo identificador.")
    return redirect(f"/webhooks/{webhook_id}")
