"""Scopes, OAuth access tokens and idempotency keys, at the service level."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import select

from mailer.accounts import idempotency
from mailer.accounts.models import IdempotencyKey
from mailer.accounts.roles import Permission
from mailer.accounts.scopes import (
    InsufficientScope,
    Scope,
    check_within_role,
    parse_scopes,
    require_scope,
    role_scopes,
)
from mailer.accounts.service import (
    OAuthError,
    create_account,
    create_oauth_client,
    issue_access_token,
    verify_access_token,
)
from mailer.audience.models import MailingList
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import AuthenticationFailed, ValidationFailed
from mailer.storage.db import session_scope

SECRET = "test-secret-" + "x" * 32
HOUR = timedelta(hours=1)


def test_scopes_parse_and_stay_within_the_role() -> None:
    assert parse_scopes("read, send sms:send") == {Scope.READ, Scope.SEND, Scope.SMS_SEND}
    with pytest.raises(ValidationFailed, match="unknown scope 'fly'"):
        parse_scopes("read fly")
    assert role_scopes("viewer") == {Scope.READ}
    assert Scope.ADMIN not in role_scopes("manager") and Scope.SMS_SEND in role_scopes("manager")
    with pytest.raises(ValidationFailed, match="cannot have the scopes edit"):
        check_within_role("viewer", {Scope.READ, Scope.EDIT})


def test_a_route_needs_a_scope_that_covers_it() -> None:
    require_scope(None, Permission.ADMIN)  # not restricted: the role decides
    require_scope(frozenset({"send"}), Permission.SEND, Scope.SMS_SEND)
    require_scope(frozenset({"sms:send"}), Permission.SEND, Scope.SMS_SEND)
    with pytest.raises(InsufficientScope, match="lacks the scope send or email:send"):
        require_scope(frozenset({"sms:send"}), Permission.SEND, Scope.EMAIL_SEND)
    with pytest.raises(InsufficientScope, match=r"lacks the scope read \(it has: send\)"):
        require_scope(frozenset({"send"}), Permission.READ)


def test_access_tokens_are_signed_scoped_and_expire(sqlite_settings: Settings) -> None:
    with session_scope() as session:
        account = create_account(session, "Entidad")
        assert account.id
        client, secret = create_oauth_client(
            session, account.id, "ERP", "manager", scopes="read send"
        )
        client_id = client.client_id
    with session_scope() as session:
        token = issue_access_token(
            session, client_id, secret, "send", secret_key=SECRET, lifetime=HOUR
        )
        assert token.scopes == {"send"} and token.expires_in == 3600
        principal = verify_access_token(session, token.token, secret_key=SECRET)
        assert principal.scopes == {"send"} and principal.role == "manager"
        assert principal.actor == f"oauth:{client.id} (ERP)" and principal.application
        with pytest.raises(AuthenticationFailed, match="expired"):
            verify_access_token(session, token.token, secret_key=SECRET, now=utcnow() + HOUR)
        with pytest.raises(AuthenticationFailed, match="invalid access token"):
            verify_access_token(session, token.token, secret_key="other-" + SECRET)
        for scope, error in (("admin", "invalid_scope"), ("nope", "invalid_scope")):
            with pytest.raises(OAuthError) as refused:
                issue_access_token(
                    session, client_id, secret, scope, secret_key=SECRET, lifetime=HOUR
                )
            assert refused.value.code == error
        with pytest.raises(OAuthError) as wrong:
            issue_access_token(session, client_id, "mcs_x", None, secret_key=SECRET, lifetime=HOUR)
        assert wrong.value.code == "invalid_client"


def _claim(settings: Settings, key: str = "k1", request_hash: str = "h1") -> object:
    return idempotency.claim(
        settings,
        "apikey:1 (ERP)",
        key,
        request_hash,
        lease=timedelta(minutes=5),
        wait_seconds=0,
    )


def test_an_idempotency_key_goes_started_committed_completed(sqlite_settings: Settings) -> None:
    held = _claim(sqlite_settings)
    assert isinstance(held, idempotency.Claim)
    with pytest.raises(idempotency.RequestInProgress):
        _claim(sqlite_settings)
    with pytest.raises(idempotency.IdempotencyKeyReused):
        _claim(sqlite_settings, request_hash="h2")
    with session_scope() as session:
        idempotency.bind_to_transaction(session, held)
    assert idempotency.finish(sqlite_settings, held, 201, {"content-type": "x"}, b"{}")
    stored = _claim(sqlite_settings)
    assert stored == idempotency.StoredResponse(201, {"content-type": "x"}, b"{}")


def test_a_request_that_did_not_commit_frees_its_key(sqlite_settings: Settings) -> None:
    held = _claim(sqlite_settings)
    assert isinstance(held, idempotency.Claim)
    assert not idempotency.finish(sqlite_settings, held, 404, {}, b"")
    assert isinstance(_claim(sqlite_settings), idempotency.Claim)


def test_a_request_overtaken_after_its_lease_cannot_commit(sqlite_settings: Settings) -> None:
    """The original outlived its lease and a retry took the key: the original's commit
    fails and its work is rolled back, so exactly one of them does the work."""
    with session_scope() as session:
        account = create_account(session, "Entidad")
        account_id = account.id
    first = _claim(sqlite_settings)
    assert isinstance(first, idempotency.Claim)
    with session_scope() as session:
        row = session.get(IdempotencyKey, first.id)
        assert row is not None
        row.claimed_at = utcnow() - timedelta(minutes=10)
        session.add(row)
    second = _claim(sqlite_settings)
    assert isinstance(second, idempotency.Claim) and second.id == first.id
    with pytest.raises(idempotency.RequestInProgress), session_scope() as session:
        idempotency.bind_to_transaction(session, first)
        session.add(MailingList(account_id=account_id or 0, name="Doble"))
        session.commit()
    with session_scope() as session:
        assert session.exec(select(MailingList)).all() == []


def test_old_keys_are_purged(sqlite_settings: Settings) -> None:
    held = _claim(sqlite_settings)
    assert isinstance(held, idempotency.Claim)
    with session_scope() as session:
        assert idempotency.purge_expired(session, timedelta(hours=24)) == 0
        later = utcnow() + timedelta(hours=25)
        assert idempotency.purge_expired(session, timedelta(hours=24), now=later) == 1


def test_the_periodic_purge_keeps_a_day_of_keys(sqlite_settings: Settings) -> None:
    from mailer.scheduler.service import PERIODIC
    from mailer.scheduler.tasks import purge_idempotency_keys

    assert purge_idempotency_keys in {job for job, _interval in PERIODIC}
    fresh, old = _claim(sqlite_settings, "fresh"), _claim(sqlite_settings, "old")
    assert isinstance(old, idempotency.Claim) and isinstance(fresh, idempotency.Claim)
    with session_scope() as session:
        row = session.get(IdempotencyKey, old.id)
        assert row is not None
        row.created_at = utcnow() - timedelta(hours=25)
        session.add(row)
    purge_idempotency_keys()
    with session_scope() as session:
        assert [k.key for k in session.exec(select(IdempotencyKey)).all()] == ["fresh"]
