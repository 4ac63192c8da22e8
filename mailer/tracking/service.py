"""Unsubscribe tokens and their effect."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session

from mailer.audience.models import CHANNEL_STATUS, ChannelStatus, Contact
from mailer.audience.service import set_channel_status
from mailer.audience.suppression import SuppressionReason, suppress
from mailer.core.errors import NotFound
from mailer.core.tokens import sign, unsign
from mailer.events.service import append as append_event
from mailer.messages.models import Message

UNSUBSCRIBE = "unsubscribe"


def unsubscribe_token(secret: str, message_id: int) -> str:
    return sign(secret, UNSUBSCRIBE, str(message_id))


def unsubscribe_url(base_url: str, secret: str, message_id: int) -> str:
    return f"{base_url.rstrip('/')}/u/{unsubscribe_token(secret, message_id)}"


@dataclass(frozen=True, slots=True)
class UnsubscribeTarget:
    message_id: int
    email: str
    already: bool


def _message_and_contact(session: Session, secret: str, token: str) -> tuple[Message, Contact]:
    """What a token points at; raises BadToken for a forged one, NotFound for a stale one."""
    message = session.get(Message, int(unsign(secret, UNSUBSCRIBE, token)))
    contact = None
    if message is not None and message.contact_id is not None:
        contact = session.get(Contact, message.contact_id)
    if message is None or contact is None:
        raise NotFound("this unsubscribe link is no longer valid")
    return message, contact


def _target(message: Message, contact: Contact) -> UnsubscribeTarget:
    assert message.id is not None
    return UnsubscribeTarget(
        message.id, contact.email, contact.email_status == ChannelStatus.UNSUBSCRIBED
    )


def resolve_unsubscribe(session: Session, secret: str, token: str) -> UnsubscribeTarget:
    """Who a token unsubscribes."""
    return _target(*_message_and_contact(session, secret, token))


def unsubscribe(session: Session, secret: str, token: str, *, source: str) -> UnsubscribeTarget:
    """Unsubscribe the contact a message went to, at once (idempotent)."""
    message, contact = _message_and_contact(session, secret, token)
    target = _target(message, contact)
    if not target.already:
        # The status when the machine allows it (an invalid address stays invalid), and the
        # suppression list in every case: nothing reaches this address again.
        if CHANNEL_STATUS.allowed(ChannelStatus(contact.email_status), ChannelStatus.UNSUBSCRIBED):
            set_channel_status(
                session, contact, "email", ChannelStatus.UNSUBSCRIBED, source=f"link:{source}"
            )
        else:
            suppress(
                session,
                contact.account_id,
                "email",
                [contact.email],
                SuppressionReason.UNSUBSCRIBED,
                f"link:{source}",
            )
        append_event(
            session,
            message.account_id,
            "unsubscribed",
            campaign_id=message.campaign_id,
            message_id=message.id,
            contact_id=contact.id,
            source=source,
        )
    return target
