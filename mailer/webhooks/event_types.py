"""The public event types of webhooks and how events of the events table map to them.

The event kinds are internal (``events.models.EventKind``); the types are the contract with
receivers, so they are named once here and never renamed.  Message events take the prefix
of the message's channel (``email.`` or ``sms.``); a kind with no public type for that
channel is not sent.  Not sent at all: ``scanned`` (a machine followed the hidden link: it
only serves to mark the opens and clicks around it as ``"machine": true``).
"""

from __future__ import annotations

from enum import StrEnum

from mailer.events.models import EventKind


class EventType(StrEnum):
    EMAIL_SENT = "email.sent"  # accepted by the relay (the nearest to "delivered" for e-mail)
    EMAIL_DEFERRED = "email.deferred"
    EMAIL_FAILED = "email.failed"
    EMAIL_BOUNCED = "email.bounced"
    EMAIL_DELAYED = "email.delayed"  # a delay notice (DSN "delayed"), not a bounce
    EMAIL_OPENED = "email.opened"
    EMAIL_CLICKED = "email.clicked"
    EMAIL_UNSUBSCRIBED = "email.unsubscribed"
    EMAIL_RESUBSCRIBED = "email.resubscribed"
    EMAIL_COMPLAINED = "email.complained"
    SMS_SUBMITTED = "sms.submitted"
    SMS_DELIVERED = "sms.delivered"
    SMS_UNDELIVERED = "sms.undelivered"
    SMS_FAILED = "sms.failed"
    SMS_INBOUND = "sms.inbound"
    SMS_UNSUBSCRIBED = "sms.unsubscribed"
    CAMPAIGN_STATE_CHANGED = "campaign.state_changed"


TEST_EVENT_TYPE = "webhook.test"

EVENT_TYPE_LABELS_ES: dict[str, str] = {
    EventType.EMAIL_SENT: "Correo aceptado por el servidor de envío",
    EventType.EMAIL_DEFERRED: "Correo diferido (se reintentará)",
    EventType.EMAIL_FAILED: "Correo fallido",
    EventType.EMAIL_BOUNCED: "Correo rebotado",
    EventType.EMAIL_DELAYED: "Aviso de demora del correo",
    EventType.EMAIL_OPENED: "Correo abierto",
    EventType.EMAIL_CLICKED: "Clic en un enlace",
    EventType.EMAIL_UNSUBSCRIBED: "Baja de correo",
    EventType.EMAIL_RESUBSCRIBED: "Nueva alta de correo",
    EventType.EMAIL_COMPLAINED: "Queja (marcado como spam)",
    EventType.SMS_SUBMITTED: "SMS aceptado por la pasarela",
    EventType.SMS_DELIVERED: "SMS entregado",
    EventType.SMS_UNDELIVERED: "SMS no entregado",
    EventType.SMS_FAILED: "SMS fallido",
    EventType.SMS_INBOUND: "SMS recibido (respuesta)",
    EventType.SMS_UNSUBSCRIBED: "Baja de SMS",
    EventType.CAMPAIGN_STATE_CHANGED: "Cambio de estado de una campaña",
    TEST_EVENT_TYPE: "Evento de prueba",
}

# Kinds whose type depends on the message's channel: "{channel}.{suffix}".
_BY_CHANNEL: dict[str, str] = {
    EventKind.SENT: "sent",
    EventKind.DEFERRED: "deferred",
    EventKind.FAILED: "failed",
    EventKind.BOUNCED: "bounced",
    EventKind.DELAYED: "delayed",
    EventKind.OPENED: "opened",
    EventKind.CLICKED: "clicked",
    EventKind.UNSUBSCRIBED: "unsubscribed",
    EventKind.RESUBSCRIBED: "resubscribed",
    EventKind.COMPLAINED: "complained",
}
_FIXED: dict[str, EventType] = {
    EventKind.SMS_SUBMITTED: EventType.SMS_SUBMITTED,
    EventKind.SMS_DELIVERED: EventType.SMS_DELIVERED,
    EventKind.SMS_UNDELIVERED: EventType.SMS_UNDELIVERED,
    EventKind.SMS_INBOUND: EventType.SMS_INBOUND,
    EventKind.CAMPAIGN_STATE: EventType.CAMPAIGN_STATE_CHANGED,
}
_VALUES = frozenset(t.value for t in EventType)


def event_type_for(kind: str, channel: str | None) -> EventType | None:
    """The public type of an event of *kind* about a message of *channel*, or None."""
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return fixed
    suffix = _BY_CHANNEL.get(kind)
    if suffix is None:
        return None
    name = f"{'sms' if channel == 'sms' else 'email'}.{suffix}"
    return EventType(name) if name in _VALUES else None


def kinds_for(types: set[str]) -> set[str]:
    """The event kinds that can produce any of *types* (the dispatcher's filter)."""
    kinds = {kind for kind, event_type in _FIXED.items() if event_type in types}
    for kind, suffix in _BY_CHANNEL.items():
        if f"email.{suffix}" in types or f"sms.{suffix}" in types:
            kinds.add(kind)
    return kinds
