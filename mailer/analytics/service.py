"""Figures for the dashboard, the metrics endpoint and the campaign statistics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlmodel import Session, col

from mailer.events import rollup as figures
from mailer.messages.models import Message, MessageState


def ledger_totals(session: Session, account_id: int | None = None) -> dict[str, int]:
    """Ledger rows by state, for one account or for the whole install."""
    query = select(col(Message.state), func.count()).group_by(col(Message.state))
    if account_id is not None:
        query = query.where(col(Message.account_id) == account_id)
    return {state: int(n) for state, n in session.execute(query).all()}


def _rate(part: int, whole: int) -> float:
    """A percentage with one decimal (0.0 when there is nothing to divide by)."""
    return round(100.0 * part / whole, 1) if whole else 0.0


def campaign_stats(session: Session, account_id: int, campaign_id: int) -> dict[str, Any]:
    """Statistics v1 of one campaign of *account_id* (all zero for another account's).

    Delivery figures come from the ledger; engagement from the events still kept plus the
    counters they were rolled up into.  ``sent`` is what the relay accepted (later bounces
    included); ``delivered`` is sent minus what bounced back.  Open, click, unsubscribe and
    complaint rates are over delivered; the bounce rate is over the messages attempted (sent
    and refused with a 5xx at once); click-to-open is human clicks
    over human opens.  Every open and click figure comes as total and human-only: machine
    activity (proxy prefetches, link scanners) is in the total, never in ``human``; a human
    click counts as a human open.
    """
    states = dict(
        session.execute(
            select(col(Message.state), func.count())
            .where(col(Message.campaign_id) == campaign_id, col(Message.account_id) == account_id)
            .group_by(col(Message.state))
        ).all()
    )
    recipients = int(sum(states.values()))
    sent = int(states.get(MessageState.SENT, 0) + states.get(MessageState.BOUNCED, 0))
    found = figures.campaign_figures(session, account_id, campaign_id)
    value = found.values.get
    bounced = value(figures.BOUNCED, 0)
    hard = value(figures.BOUNCED_HARD, 0)
    # A 5xx at RCPT or DATA is a bounce whose row never left (FAILED); one that came back
    # later is a BOUNCED row.  Delivered: accepted and not bounced back.
    delivered = int(states.get(MessageState.SENT, 0))
    attempted = sent + max(bounced - int(states.get(MessageState.BOUNCED, 0)), 0)
    opened_human = value(figures.OPENED_HUMAN, 0)
    clicked_human = value(figures.CLICKED_HUMAN, 0)
    links = [
        {
            "index": index,
            "url": found.urls.get(index, ""),
            "total": metrics.get(figures.CLICKS, 0),
            "human_total": metrics.get(figures.CLICKS_HUMAN, 0),
            "unique": metrics.get(figures.CLICKED, 0),
            "human_unique": metrics.get(figures.CLICKED_HUMAN, 0),
        }
        for index, metrics in sorted(found.links.items())
    ]
    return {
        "campaign_id": campaign_id,
        "recipients": recipients,
        "queued": int(states.get(MessageState.QUEUED, 0) + states.get(MessageState.SENDING, 0)),
        "sent": sent,
        "delivered": delivered,
        "deferred": int(states.get(MessageState.DEFERRED, 0)),
        "failed": int(states.get(MessageState.FAILED, 0)),
        "cancelled": int(states.get(MessageState.CANCELLED, 0)),
        "bounced": {"total": bounced, "hard": hard, "soft": bounced - hard},
        "opened": {
            "unique": value(figures.OPENED, 0),
            "total": value(figures.OPENS, 0),
            "human_unique": opened_human,
            "human_total": value(figures.OPENS_HUMAN, 0),
        },
        "clicked": {
            "unique": value(figures.CLICKED, 0),
            "total": value(figures.CLICKS, 0),
            "human_unique": clicked_human,
            "human_total": value(figures.CLICKS_HUMAN, 0),
            "links": links,
        },
        "machine": {
            "messages": value(figures.MACHINE, 0),
            "scanned": value(figures.SCANNED, 0),
        },
        "unsubscribed": value(figures.UNSUBSCRIBED, 0),
        "complained": value(figures.COMPLAINED, 0),
        "rates": {
            "basis": "delivered",
            "delivery": _rate(delivered, sent),
            "bounce": _rate(bounced, attempted),
            "open": _rate(value(figures.OPENED, 0), delivered),
            "open_human": _rate(opened_human, delivered),
            "click": _rate(value(figures.CLICKED, 0), delivered),
            "click_human": _rate(clicked_human, delivered),
            "click_to_open": _rate(clicked_human, opened_human),
            "unsubscribe": _rate(value(figures.UNSUBSCRIBED, 0), delivered),
            "complaint": _rate(value(figures.COMPLAINED, 0), delivered),
        },
    }
