"""What a bounce or complaint does to a contact (``settings.delivery``):

- a hard bounce: the contact's e-mail status becomes *bounced* and the address is
  suppressed at once;
- a soft bounce: the same after ``soft_bounce_limit`` soft bounces within
  ``soft_bounce_days`` (the bounce being recorded counts as one);
- a complaint: *complained*, unsubscribed and suppressed.

Synchronous 5xx replies of the delivery engine and bounce messages of the inbound
receiver both come here, after :func:`mailer.bounces.classify.classify_smtp` or the
parser classified them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlmodel import Session, col

from mailer.audience.models import ChannelStatus, Contact
from mailer.audience.service import set_channel_status
from mailer.core.clock import utcnow
from mailer.core.config import DeliverySettings
from mailer.events.models import Event, EventKind

__all__ = ["apply_bounce", "apply_complaint"]


def apply_bounce(
    session: Session,
    contact_id: int | None,
    *,
    hard: bool,
    policy: DeliverySettings,
    source: str,
    now: datetime | None = None,
) -> bool:
    """Apply the policy to one bounce (its event already appended); True if suppressed."""
    if contact_id is None:
        return False
    contact = session.get(Contact, contact_id)
    if contact is None or contact.email_status != ChannelStatus.ACTIVE:
        return False
    if not hard:
        since = (now or utcnow()) - timedelta(days=policy.soft_bounce_days)
        soft = session.execute(
            select(func.count())
            .select_from(Event)
            .where(
                col(Event.contact_id) == contact_id,
                col(Event.kind) == EventKind.BOUNCED,
                col(Event.occurred_at) >= since,
            )
        ).scalar_one()
        if int(soft) < policy.soft_bounce_limit:
            return False
    return set_channel_status(session, contact, "email", ChannelStatus.BOUNCED, source=source)


def apply_complaint(session: Session, contact_id: int | None, *, source: str) -> bool:
    """A complaint: complained (which unsubscribes and suppresses); True if it changed."""
    if contact_id is None:
        return False
    contact = session.get(Contact, contact_id)
    movable = (ChannelStatus.ACTIVE, ChannelStatus.UNSUBSCRIBED, ChannelStatus.BOUNCED)
    if contact is None or contact.email_status not in movable:
        return False
    return set_channel_status(session, contact, "email", ChannelStatus.COMPLAINED, source=source)
