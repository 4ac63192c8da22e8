"""The credit ledger on both database backends: grants, reservations settled as charges and
releases, transfers to sub-accounts, expiry, and no overspending under concurrency."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update

from mailer.accounts import credits
from mailer.accounts.models import CreditBalance
from mailer.accounts.service import create_account
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import PermissionDenied, ValidationFailed
from mailer.storage.db import session_scope


def _accounts(settings: Settings) -> tuple[int, int, int]:
    with session_scope(settings) as session:
        parent = create_account(session, "Entidad")
        child = create_account(session, "Área de logística", parent_id=parent.id)
        other = create_account(session, "Otra entidad")
        assert parent.id and child.id and other.id
        return parent.id, child.id, other.id


def test_an_account_without_an_allowance_is_not_metered(settings: Settings) -> None:
    parent, _, _ = _accounts(settings)
    with session_scope(settings) as session:
        assert credits.balance(session, parent, "sms") is None
        assert credits.reserve(session, parent, "sms", 10_000, ref="x") is False
        credits.settle(session, parent, "sms", charged=10, released=5)  # nothing to settle
        assert credits.movements(session, parent) == []


def test_grant_reserve_charge_release_are_movements_with_running_balances(
    settings: Settings,
) -> None:
    parent, _, _ = _accounts(settings)
    with session_scope(settings) as session:
        credits.grant(session, parent, "sms", 80_000, actor="user:1", note="contrato 2026")
        assert credits.reserve(session, parent, "sms", 300, ref="campaign:1") is True
        credits.settle(session, parent, "sms", charged=250, released=50, ref="sms:receipts")
    with session_scope(settings) as session:
        current = credits.balance(session, parent, "sms")
        assert current is not None
        assert (current.available, current.held) == (80_000 - 250, 0)
        assert current.valid_until is not None
        assert current.valid_until - utcnow() > timedelta(days=364)
        kinds = [
            (m.kind, m.quantity, m.available_after, m.held_after)
            for m in reversed(credits.movements(session, parent))
        ]
        assert kinds == [
            ("grant", 80_000, 80_000, 0),
            ("reserve", 300, 79_700, 300),
            ("charge", 250, 79_700, 50),
            ("release", 50, 79_750, 0),
        ]
        assert credits.verify(session, parent, "sms") == (79_750, 0)


def test_a_reservation_beyond_the_allowance_is_refused_with_the_figures(
    settings: Settings,
) -> None:
    parent, _, _ = _accounts(settings)
    with session_scope(settings) as session:
        credits.grant(session, parent, "email", 100)
    with (
        session_scope(settings) as session,
        pytest.raises(credits.InsufficientCredit, match="needs 101 and the account has 100 left"),
    ):
        credits.reserve(session, parent, "email", 101, ref="campaign:2")
    with session_scope(settings) as session, pytest.raises(ValidationFailed, match="channel"):
        credits.grant(session, parent, "fax", 1)


def test_transfers_move_units_between_an_account_and_its_sub_accounts_only(
    settings: Settings,
) -> None:
    parent, child, other = _accounts(settings)
    with session_scope(settings) as session:
        credits.grant(session, parent, "email", 5_000_000)
        credits.transfer(session, parent, child, "email", 1_000_000, actor="user:1")
    with session_scope(settings) as session:
        assert credits.balance(session, parent, "email").available == 4_000_000  # type: ignore[union-attr]
        assert credits.balance(session, child, "email").available == 1_000_000  # type: ignore[union-attr]
        # The sub-account cannot exceed what it holds.
        with pytest.raises(credits.InsufficientCredit):
            credits.reserve(session, child, "email", 1_000_001, ref="campaign:3")
    with session_scope(settings) as session:
        credits.transfer(session, child, parent, "email", 400_000)  # taken back
        with pytest.raises(PermissionDenied, match="own sub-accounts"):
            credits.transfer(session, parent, other, "email", 1)
        with pytest.raises(credits.InsufficientCredit):
            credits.transfer(session, parent, child, "email", 10_000_000)
    with session_scope(settings) as session:
        assert credits.verify(session, parent, "email") == (4_400_000, 0)
        assert credits.verify(session, child, "email") == (600_000, 0)
        [back, given] = credits.movements(session, child)
        assert (back.kind, back.counterpart_id) == ("transfer_out", parent)
        assert (given.kind, given.counterpart_id) == ("transfer_in", parent)


def test_what_is_left_when_the_validity_ends_expires(settings: Settings) -> None:
    parent, _, _ = _accounts(settings)
    with session_scope(settings) as session:
        credits.grant(session, parent, "sms", 1_000, valid_days=365)
        credits.reserve(session, parent, "sms", 100, ref="sms:1")
        session.execute(update(CreditBalance).values(valid_until=utcnow() - timedelta(seconds=1)))
    with session_scope(settings) as session:
        assert credits.expire_due(session) == 1
        assert credits.expire_due(session) == 0
    with session_scope(settings) as session:
        current = credits.balance(session, parent, "sms")
        assert current is not None and (current.available, current.held) == (0, 100)
        with pytest.raises(credits.InsufficientCredit):
            credits.reserve(session, parent, "sms", 1, ref="sms:2")
        assert credits.movements(session, parent)[0].kind == "expire"


def test_concurrent_reservations_never_spend_more_than_the_allowance(
    settings: Settings,
) -> None:
    parent, _, _ = _accounts(settings)
    with session_scope(settings) as session:
        credits.grant(session, parent, "sms", 50)
    won: list[int] = []
    lost: list[int] = []

    def spend(i: int) -> None:
        try:
            with session_scope(settings) as session:
                credits.reserve(session, parent, "sms", 7, ref=f"sms:{i}")
            won.append(i)
        except credits.InsufficientCredit:
            lost.append(i)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 7 and len(lost) == 5  # 7 x 7 = 49 <= 50
    with session_scope(settings) as session:
        current = credits.balance(session, parent, "sms")
        assert current is not None and (current.available, current.held) == (1, 49)
        assert credits.verify(session, parent, "sms") == (1, 49)
