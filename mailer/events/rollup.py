"""Engagement figures over events, and their roll-up into permanent counters.

One definition of every figure serves both the live statistics of a campaign (over the
events still kept) and the retention job, which counts the events it is about to delete
into :class:`CampaignCounter` rows; a campaign's figures are always counters + live events.

Unique figures count messages.  A message's events are rolled up and deleted together,
once the message has been quiet (no event) for the whole retention period, so a message
is never counted once in the counters and again among the live events.  (The exception: a
message that shows new activity after its events were rolled up is counted again in the
unique figures; after a year of silence that is rare enough to accept.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, distinct, false, func, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from mailer.core.clock import utcnow
from mailer.events.models import NO_LINK, CampaignCounter, Event, EventKind

# Campaign figures (``link`` = NO_LINK).
OPENS = "opens"  # open hits
OPENS_HUMAN = "opens_human"
OPENED = "opened"  # messages opened, or clicked by a human
OPENED_HUMAN = "opened_human"  # messages opened or clicked by a human
CLICKS = "clicks"
CLICKS_HUMAN = "clicks_human"
CLICKED = "clicked"
CLICKED_HUMAN = "clicked_human"
UNSUBSCRIBED = "unsubscribed"
COMPLAINED = "complained"
BOUNCED = "bounced"
BOUNCED_HARD = "bounced_hard"
SCANNED = "scanned"  # messages whose hidden link a machine followed
MACHINE = "machine"  # messages with any machine open or click

LINK_METRICS = (CLICKS, CLICKS_HUMAN, CLICKED, CLICKED_HUMAN)


@dataclass
class Figures:
    """The figures of one campaign: ``values[metric]`` and ``links[index][metric]``."""

    values: dict[str, int] = field(default_factory=dict)
    links: dict[int, dict[str, int]] = field(default_factory=dict)
    urls: dict[int, str] = field(default_factory=dict)

    def add(self, other: Figures) -> None:
        for metric, value in other.values.items():
            self.values[metric] = self.values.get(metric, 0) + value
        for index, metrics in other.links.items():
            mine = self.links.setdefault(index, {})
            for metric, value in metrics.items():
                mine[metric] = mine.get(metric, 0) + value
        for index, url in other.urls.items():
            self.urls.setdefault(index, url)


def _is(kind: EventKind) -> ColumnElement[bool]:
    return col(Event.kind) == kind.value


_HUMAN = col(Event.machine) == false()
_MACHINE = col(Event.machine) == true()
_ENGAGED = col(Event.kind).in_([EventKind.OPENED.value, EventKind.CLICKED.value])
_LINK = col(Event.data)["link"].as_integer()
_URL = col(Event.data)["url"].as_string()
_HARD = col(Event.data)["hard"].as_boolean()


def _hits(condition: ColumnElement[bool]) -> Any:
    return func.count(case((condition, 1)))


def _messages(condition: ColumnElement[bool]) -> Any:
    return func.count(distinct(case((condition, col(Event.message_id)))))


_CAMPAIGN_COLUMNS: tuple[tuple[str, Any], ...] = (
    (OPENS, _hits(_is(EventKind.OPENED))),
    (OPENS_HUMAN, _hits(_is(EventKind.OPENED) & _HUMAN)),
    # A human click implies a human open; a machine's click implies nothing.
    (OPENED, _messages(_is(EventKind.OPENED) | (_is(EventKind.CLICKED) & _HUMAN))),
    (OPENED_HUMAN, _messages(_ENGAGED & _HUMAN)),
    (CLICKS, _hits(_is(EventKind.CLICKED))),
    (CLICKS_HUMAN, _hits(_is(EventKind.CLICKED) & _HUMAN)),
    (CLICKED, _messages(_is(EventKind.CLICKED))),
    (CLICKED_HUMAN, _messages(_is(EventKind.CLICKED) & _HUMAN)),
    (UNSUBSCRIBED, _messages(_is(EventKind.UNSUBSCRIBED))),
    (COMPLAINED, _messages(_is(EventKind.COMPLAINED))),
    (BOUNCED, _messages(_is(EventKind.BOUNCED))),
    (BOUNCED_HARD, _messages(_is(EventKind.BOUNCED) & _HARD.is_(true()))),
    (SCANNED, _messages(_is(EventKind.SCANNED))),
    (MACHINE, _messages(_ENGAGED & _MACHINE)),
)


def engagement_figures(
    session: Session, conditions: Sequence[ColumnElement[bool]]
) -> dict[int, Figures]:
    """The figures of the events matching *conditions*, by campaign (two grouped queries)."""
    figures: dict[int, Figures] = {}
    campaign = col(Event.campaign_id)
    query = (
        select(campaign, *(column for _name, column in _CAMPAIGN_COLUMNS))
        .where(campaign.is_not(None), *conditions)
        .group_by(campaign)
    )
    for row in session.execute(query).all():
        names = (name for name, _column in _CAMPAIGN_COLUMNS)
        values = {name: int(value or 0) for name, value in zip(names, row[1:], strict=True)}
        figures[int(row[0])] = Figures(values={k: v for k, v in values.items() if v})
    link = _LINK.label("link")
    per_link = (
        select(
            campaign,
            link,
            func.count(),
            _hits(_HUMAN),
            func.count(distinct(col(Event.message_id))),
            _messages(_HUMAN),
            func.min(_URL),
            func.max(_URL),
        )
        .where(campaign.is_not(None), _is(EventKind.CLICKED), *conditions)
        .group_by(campaign, link)
    )
    for campaign_id, index, clicks, human, clicked, clicked_human, low, high in session.execute(
        per_link
    ).all():
        if index is None:
            continue
        target = figures.setdefault(int(campaign_id), Figures())
        target.links[int(index)] = {
            CLICKS: int(clicks),
            CLICKS_HUMAN: int(human or 0),
            CLICKED: int(clicked),
            CLICKED_HUMAN: int(clicked_human or 0),
        }
        target.urls[int(index)] = link_label(low or "", high or "")
    return figures


def link_label(lowest: str, highest: str) -> str:
    """What to call a link whose clicks went to URLs from *lowest* to *highest*: the URL, or
    for a link personalised per recipient its common part (no one recipient's data)."""
    if lowest == highest:
        return lowest
    common = lowest.split("?", 1)[0]
    if highest.split("?", 1)[0] == common:
        return common + "?…"
    prefix = ""
    for a, b in zip(lowest, highest):  # noqa: B905 (the shorter one bounds the prefix)
        if a != b:
            break
        prefix += a
    return prefix + "…"


def counter_figures(
    session: Session, account_id: int, campaign_ids: Iterable[int]
) -> dict[int, Figures]:
    """The rolled-up figures of campaigns (from events deleted after retention)."""
    ids = list(campaign_ids)
    figures: dict[int, Figures] = {}
    if not ids:
        return figures
    rows = session.execute(
        select(CampaignCounter).where(
            col(CampaignCounter.account_id) == account_id,
            col(CampaignCounter.campaign_id).in_(ids),
        )
    ).scalars()
    for counter in rows:
        target = figures.setdefault(counter.campaign_id, Figures())
        if counter.link == NO_LINK:
            target.values[counter.metric] = counter.value
        else:
            target.links.setdefault(counter.link, {})[counter.metric] = counter.value
            if counter.url:
                target.urls.setdefault(counter.link, counter.url)
    return figures


def campaign_figures(session: Session, account_id: int, campaign_id: int) -> Figures:
    """Counters plus live events: every figure of one campaign of *account_id*."""
    total = counter_figures(session, account_id, [campaign_id]).get(campaign_id, Figures())
    live = engagement_figures(
        session,
        [col(Event.campaign_id) == campaign_id, col(Event.account_id) == account_id],
    ).get(campaign_id)
    if live is not None:
        total.add(live)
    return total


@dataclass(frozen=True, slots=True)
class PurgeResult:
    messages: int  # messages whose events were rolled up and deleted
    events: int  # events deleted


def _add_counters(
    session: Session, accounts: dict[int, int], figures: dict[int, Figures], now: datetime
) -> None:
    rows: list[dict[str, Any]] = []
    for campaign_id, figure in figures.items():
        base = {"campaign_id": campaign_id, "account_id": accounts[campaign_id], "updated_at": now}
        rows += [
            {**base, "metric": metric, "link": NO_LINK, "value": value, "url": ""}
            for metric, value in figure.values.items()
        ]
        rows += [
            {
                **base,
                "metric": metric,
                "link": index,
                "value": value,
                "url": figure.urls.get(index, "")[:2000],
            }
            for index, metrics in figure.links.items()
            for metric, value in metrics.items()
        ]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(CampaignCounter)
    statement = statement.on_conflict_do_update(
        index_elements=["campaign_id", "metric", "link"],
        set_={
            "value": col(CampaignCounter.value) + statement.excluded.value,
            "updated_at": statement.excluded.updated_at,
        },
    )
    session.execute(statement, rows)


def purge_quiet_messages(
    session: Session, cutoff: datetime, *, after_message_id: int = 0, limit: int = 2000
) -> tuple[PurgeResult, int | None]:
    """Roll up and delete the events of up to *limit* messages with an event before *cutoff*
    and none since; returns what was done and the message id to continue after (None when
    there is nothing left).  One transaction per call: counters and deletion together."""
    message = col(Event.message_id)
    candidates = list(
        session.execute(
            select(message)
            .where(col(Event.occurred_at) < cutoff, message > after_message_id)
            .group_by(message)
            .order_by(message)
            .limit(limit)
        ).scalars()
    )
    if not candidates:
        return PurgeResult(0, 0), None
    active = set(
        session.execute(
            select(message)
            .where(message.in_(candidates), col(Event.occurred_at) >= cutoff)
            .distinct()
        ).scalars()
    )
    quiet = [m for m in candidates if m not in active]
    deleted = 0
    if quiet:
        scope = [message.in_(quiet), col(Event.occurred_at) < cutoff]
        figures = engagement_figures(session, scope)
        accounts = (
            dict(
                session.execute(
                    select(col(Event.campaign_id), func.min(col(Event.account_id)))
                    .where(col(Event.campaign_id).in_(list(figures)), *scope)
                    .group_by(col(Event.campaign_id))
                ).all()
            )
            if figures
            else {}
        )
        _add_counters(session, accounts, figures, utcnow())
        result = session.execute(delete(Event).where(*scope))
        deleted = int(getattr(result, "rowcount", 0) or 0)
    return PurgeResult(len(quiet), deleted), candidates[-1]


def purge_unattached(session: Session, cutoff: datetime) -> int:
    """Delete events of no message (campaign state changes) older than *cutoff*."""
    result = session.execute(
        delete(Event).where(col(Event.message_id).is_(None), col(Event.occurred_at) < cutoff)
    )
    return int(getattr(result, "rowcount", 0) or 0)
