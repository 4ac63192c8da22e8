"""What the links of a message do when they come back: unsubscribe (all mail or one list),
preferences and resubscription, and the web version of the message.

Tokens are HMAC-signed (``mailer.core.tokens``); the message id inside is the only key, so
a token acts on the one message it was minted for.  Opens and clicks are not here: see
:mod:`mailer.tracking.urls` (the URLs) and :mod:`mailer.tracking.ingest` (the events).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, column, delete, select, table
from sqlmodel import Session, col

from mailer.audience.models import (
    CHANNEL_STATUS,
    ChannelStatus,
    Contact,
    ListMember,
    MailingList,
)
from mailer.audience.service import record_consent, set_channel_status
from mailer.audience.suppression import SuppressionReason, is_suppressed, suppress
from mailer.content.service import CompiledTemplate, compile_template
from mailer.core.errors import NotFound
from mailer.core.tokens import sign, unsign
from mailer.events.models import EventKind
from mailer.events.service import append as append_event
from mailer.messages.models import Message
from mailer.storage.types import JsonDict
from mailer.tracking.urls import link_rewriter, read_web_token, web_version_url

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


@dataclass(frozen=True, slots=True)
class ListChoice:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class Preferences:
    """What the unsubscribe page shows: who, whether they still receive mail, their lists."""

    target: UnsubscribeTarget
    status: str
    lists: list[ListChoice]
    can_resubscribe: bool


def _message_and_contact(session: Session, secret: str, token: str) -> tuple[Message, Contact]:
    """What a token points at; raises BadToken for a forged one, NotFound for a stale one."""
    payload = unsign(secret, UNSUBSCRIBE, token)
    message = session.get(Message, int(payload)) if payload.isdigit() else None
    contact = None
    if message is not None and message.contact_id is not None:
        contact = session.get(Contact, message.contact_id)
    if message is None or contact is None or contact.account_id != message.account_id:
        raise NotFound("this unsubscribe link is no longer valid")
    return message, contact


def _unsubscribed(session: Session, contact: Contact) -> bool:
    """Whether the address no longer receives mail: unsubscribed, or suppressed when its
    status cannot say so (an invalid address)."""
    # A complaint already unsubscribed and suppressed the address, and says more than an
    # unsubscription: it stays recorded as such.
    if contact.email_status in (ChannelStatus.UNSUBSCRIBED, ChannelStatus.COMPLAINED):
        return True
    if CHANNEL_STATUS.allowed(ChannelStatus(contact.email_status), ChannelStatus.UNSUBSCRIBED):
        return False
    return is_suppressed(session, contact.account_id, "email", contact.email)


def _target(session: Session, message: Message, contact: Contact) -> UnsubscribeTarget:
    assert message.id is not None
    return UnsubscribeTarget(message.id, contact.email, _unsubscribed(session, contact))


def resolve_unsubscribe(session: Session, secret: str, token: str) -> UnsubscribeTarget:
    """Who a token unsubscribes."""
    return _target(session, *_message_and_contact(session, secret, token))


def _lists_of(session: Session, contact: Contact) -> list[ListChoice]:
    rows = session.execute(
        select(col(MailingList.id), col(MailingList.name))
        .join(ListMember, col(ListMember.list_id) == col(MailingList.id))
        .where(
            col(ListMember.contact_id) == contact.id,
            col(MailingList.account_id) == contact.account_id,
        )
        .order_by(col(MailingList.name))
    ).all()
    return [ListChoice(int(list_id), name) for list_id, name in rows]


def preferences(session: Session, secret: str, token: str) -> Preferences:
    message, contact = _message_and_contact(session, secret, token)
    return Preferences(
        target=_target(session, message, contact),
        status=contact.email_status,
        lists=_lists_of(session, contact),
        can_resubscribe=contact.email_status == ChannelStatus.UNSUBSCRIBED,
    )


def unsubscribe(
    session: Session, secret: str, token: str, *, source: str, list_id: int | None = None
) -> UnsubscribeTarget:
    """Unsubscribe the contact a message went to, at once: from every mail (``list_id``
    None) or from one of their lists.  Idempotent: a replay changes and records nothing."""
    message, contact = _message_and_contact(session, secret, token)
    target = _target(session, message, contact)
    if list_id is not None:
        removed = session.execute(
            delete(ListMember).where(
                col(ListMember.contact_id) == contact.id,
                col(ListMember.list_id).in_(
                    select(col(MailingList.id)).where(
                        col(MailingList.id) == list_id,
                        col(MailingList.account_id) == contact.account_id,
                    )
                ),
            )
        )
        if getattr(removed, "rowcount", 0):
            _record(session, message, EventKind.UNSUBSCRIBED, source=source, list_id=list_id)
        return target
    if target.already:
        return target
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
    _record(session, message, EventKind.UNSUBSCRIBED, source=source)
    return UnsubscribeTarget(target.message_id, target.email, True)


def resubscribe(session: Session, secret: str, token: str, *, ip: str = "") -> UnsubscribeTarget:
    """Undo an unsubscribe from the page: a new consent, kept as proof (Ley 29733), which
    makes the address active again.  Nothing happens for a contact that is not unsubscribed
    (a bounced or complained address cannot be brought back this way)."""
    message, contact = _message_and_contact(session, secret, token)
    if contact.email_status == ChannelStatus.UNSUBSCRIBED:
        record_consent(
            session,
            contact,
            granted=True,
            source="link:resubscribe",
            ip=ip,
            text="Volver a suscribirse desde el enlace de baja",
        )
        _record(session, message, EventKind.RESUBSCRIBED, source="page")
    return _target(session, message, contact)


def _record(session: Session, message: Message, kind: EventKind, **data: Any) -> None:
    append_event(
        session,
        message.account_id,
        kind.value,
        campaign_id=message.campaign_id,
        message_id=message.id,
        contact_id=message.contact_id,
        **data,
    )


# -- web version -----------------------------------------------------------------------

# tracking sits below campaigns (DESIGN.md layers), so it reads the one thing it needs of a
# campaign, its frozen content and name, through a narrow table clause of that table
# instead of importing the Campaign model.
_CAMPAIGNS = table(
    "campaigns",
    column("id", Integer),
    column("account_id", Integer),
    column("name", String),
    column("content", JsonDict),
)

_COMPILED_SIZE = 16
_compiled: OrderedDict[tuple[int, str], CompiledTemplate] = OrderedDict()
_compiled_lock = threading.Lock()


def _compiled_content(campaign_id: int, content: dict[str, Any]) -> CompiledTemplate:
    digest = hashlib.sha256(
        "\x00".join(str(content.get(part) or "") for part in ("subject", "html", "text")).encode()
    ).hexdigest()
    key = (campaign_id, digest)
    with _compiled_lock:
        found = _compiled.get(key)
        if found is not None:
            _compiled.move_to_end(key)
            return found
    compiled = compile_template(content["subject"], content["html"], content.get("text"))
    with _compiled_lock:
        _compiled[key] = compiled
        while len(_compiled) > _COMPILED_SIZE:
            _compiled.popitem(last=False)
    return compiled


@dataclass(frozen=True, slots=True)
class WebVersion:
    message_id: int
    subject: str
    html: str


def web_version(session: Session, base_url: str, secret: str, token: str) -> WebVersion:
    """The message of a web-version token, rendered again for its recipient from the
    campaign's frozen content (links tracked, no pixel: the view itself is recorded).
    Raises BadToken for a forged token, NotFound when there is nothing to show."""
    message = session.get(Message, read_web_token(secret, token))
    if message is None or message.campaign_id is None or message.id is None:
        raise NotFound("this message is no longer available")
    campaign = session.execute(
        select(_CAMPAIGNS.c.name, _CAMPAIGNS.c.content).where(
            _CAMPAIGNS.c.id == message.campaign_id,
            _CAMPAIGNS.c.account_id == message.account_id,
        )
    ).first()
    if campaign is None or not campaign.content:
        raise NotFound("this message is no longer available")
    contact = session.get(Contact, message.contact_id) if message.contact_id else None
    fields = contact.template_fields() if contact else {"email": message.to_address}
    context = {
        "contact": fields,
        "campaign": {"name": campaign.name, "id": message.campaign_id},
        "unsubscribe_url": unsubscribe_url(base_url, secret, message.id),
        "web_version_url": web_version_url(base_url, secret, message.id),
    }
    rendered = _compiled_content(message.campaign_id, campaign.content).render(
        context, link_rewriter(base_url, secret, message.id)
    )
    return WebVersion(message.id, rendered.subject, rendered.html)
