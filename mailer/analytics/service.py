"""Account-level figures for the dashboard and the metrics endpoint."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import Session, col

from mailer.messages.models import Message


def ledger_totals(session: Session, account_id: int | None = None) -> dict[str, int]:
    """Ledger rows by state, for one account or for the whole install."""
    query = select(col(Message.state), func.count()).group_by(col(Message.state))
    if account_id is not None:
        query = query.where(col(Message.account_id) == account_id)
    return {state: int(n) for state, n in session.execute(query).all()}
