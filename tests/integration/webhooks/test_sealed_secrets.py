"""Webhook signing secrets are stored sealed, on SQLite and PostgreSQL: the raw columns
reveal nothing, deliveries are still verified by an independent Standard Webhooks
verifier, and migration 0013 seals the rows of an existing install (and opens them again
on the way down)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text
from sqlmodel import select
from typer.testing import CliRunner

from mailer.accounts import totp
from mailer.accounts.models import AuditEntry, User
from mailer.accounts.service import create_account, create_user
from mailer.cli import app
from mailer.core.config import Settings
from mailer.core.sealing import Sealer
from mailer.storage.db import dispose_engines, session_scope
from mailer.storage.migrate import alembic_config, current_revision, upgrade
from mailer.webhooks import service, signing
from mailer.webhooks.models import WebhookDelivery, WebhookSubscription
from tests.integration.webhooks.conftest import Receiver

runner = CliRunner()


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, configure: Any) -> Settings:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    settings: Settings = configure(url)
    return settings


def raw_secrets(settings: Settings) -> list[tuple[str, str | None]]:
    with session_scope(settings) as session:
        rows = session.execute(
            text("SELECT secret, previous_secret FROM webhook_subscriptions ORDER BY id")
        ).all()
    return [(str(secret), previous) for secret, previous in rows]


def dump(settings: Settings) -> str:
    """Every column of every subscription, as a database dump would show them."""
    with session_scope(settings) as session:
        rows = session.execute(text("SELECT * FROM webhook_subscriptions")).all()
    return repr([tuple(row) for row in rows])


def test_a_dump_reveals_no_secret_and_receivers_still_verify(
    db: Settings, receiver: Receiver
) -> None:
    with session_scope(db) as session:
        account = create_account(session, "Entidad de prueba")
        subscription, first = service.create_subscription(
            session, account.id or 0, receiver.url, ["email.sent"]
        )
    with session_scope(db) as session:
        _sub, second = service.rotate_secret(session, account.id or 0, subscription.id or 0)
    for secret in (first, second):
        key = secret.removeprefix(signing.SECRET_PREFIX)
        assert key not in dump(db) and key[:12] not in dump(db)
    ((sealed, previous_sealed),) = raw_secrets(db)
    assert sealed.startswith("gAAAA") and previous_sealed and previous_sealed.startswith("gAAAA")
    assert signing.unseal_secret(sealed, db) == second
    assert signing.unseal_secret(previous_sealed, db) == first

    receiver.secrets[:] = [first]  # a receiver that has not switched yet
    with session_scope(db) as session:
        service.send_test_event(session, account.id or 0, subscription.id or 0)
    service.deliver_due(db)
    (request,) = receiver.wait_for(1)
    assert request.verified  # by the standardwebhooks package, with the old secret
    receiver.secrets[:] = [second]
    receiver.handle(request.headers, request.body)
    assert receiver.requests[-1].verified  # and with the new one


def test_migration_0013_seals_existing_secrets_and_0012_opens_them(
    db: Settings, receiver: Receiver
) -> None:
    command.downgrade(alembic_config(db), "0012")
    dispose_engines()
    clear, previous = signing.generate_secret(), signing.generate_secret()
    with session_scope(db) as session:
        account = create_account(session, "Instalación anterior")
        subscription = WebhookSubscription(
            account_id=account.id or 0,
            url=receiver.url,
            secret=clear,
            previous_secret=previous,
            event_types=["email.sent"],
        )
        bare = WebhookSubscription(
            account_id=account.id or 0, url=receiver.url, secret=clear, event_types=["email.sent"]
        )
        session.add_all([subscription, bare])
        session.flush()
        # A delivery points at the table SQLite rebuilds to widen its columns.
        session.add(
            WebhookDelivery(
                account_id=account.id or 0,
                subscription_id=subscription.id or 0,
                webhook_id="msg_before_0013",
                event_type="webhook.test",
                payload='{"type": "webhook.test"}',
            )
        )
        subscription_id = subscription.id or 0
    assert raw_secrets(db) == [(clear, previous), (clear, None)]

    upgrade(db)
    dispose_engines()
    assert current_revision(db) == "0013"
    sealed = raw_secrets(db)
    assert clear not in dump(db) and previous not in dump(db)
    sealer = Sealer.from_settings(signing.SEALING_PURPOSE, db)
    assert [(sealer.unseal(a), b and sealer.unseal(b)) for a, b in sealed] == [
        (clear, previous),
        (clear, None),
    ]
    with session_scope(db) as session:
        assert session.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar_one() == 1

    # The delivery made before the upgrade goes out signed with the sealed secrets.
    receiver.secrets[:] = [clear]
    with session_scope(db) as session:
        session.execute(
            text("UPDATE webhook_deliveries SET next_attempt_at = :now"),
            {"now": "2000-01-01 00:00:00+00:00"},
        )
    assert [o.status_code for o in service.deliver_due(db)] == [200]
    (request,) = receiver.wait_for(1)
    assert request.verified and request.webhook_id == "msg_before_0013"
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    with session_scope(db) as session:
        assert service.get_subscription(session, account.id or 0, subscription_id).active

    command.downgrade(alembic_config(db), "0012")
    dispose_engines()
    assert raw_secrets(db) == [(clear, previous), (clear, None)]
    upgrade(db)
    dispose_engines()
    assert [sealer.unseal(a) for a, _b in raw_secrets(db)] == [clear, clear]


def test_after_a_change_of_secret_key_reseal_lets_the_old_key_go(
    db: Settings, configure: Any, receiver: Receiver
) -> None:
    """`mailer secrets reseal` seals the webhook and two-factor secrets again under the new
    key; then the old key can leave previous_secret_keys and both still open."""
    old_key = db.secret_key
    with session_scope(db) as session:
        account = create_account(session, "Entidad de prueba")
        _subscription, secret = service.create_subscription(
            session, account.id or 0, receiver.url, ["email.sent"]
        )
        user = create_user(
            session, account.id or 0, "ana@entidad.pe", "una clave larga 123", "admin"
        )
        enrolment = totp.begin_enrolment(session, user, old_key)
    url = db.database_url
    new_key = "the-new-secret-" + "y" * 32
    rotated = configure(
        url, MAILER_SECRET_KEY=new_key, MAILER_PREVIOUS_SECRET_KEYS=json.dumps([old_key])
    )
    result = runner.invoke(app, ["secrets", "reseal"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[-1]) == {
        "totp": {"resealed": 1, "unreadable": 0},
        "webhooks": {"resealed": 1, "unreadable": 0},
    }
    alone = configure(url, MAILER_SECRET_KEY=new_key, MAILER_PREVIOUS_SECRET_KEYS="[]")
    ((sealed, _previous),) = raw_secrets(alone)
    assert signing.unseal_secret(sealed, alone) == secret
    with session_scope(alone) as session:
        stored = session.get(User, user.id)
        assert stored is not None
        assert totp.pending_enrolment(stored, new_key) == enrolment
        entries = session.exec(select(AuditEntry).where(AuditEntry.action == "secrets.reseal"))
        assert len(list(entries)) == 1
    assert rotated.previous_secret_keys == [old_key]

    # A secret sealed under a key the install no longer has is reported, and left alone.
    stranger = Sealer.with_keys(signing.SEALING_PURPOSE, "some other install's key " * 2)
    with session_scope(alone) as session:
        session.execute(
            text("UPDATE webhook_subscriptions SET secret = :sealed"),
            {"sealed": stranger.seal(signing.generate_secret())},
        )
    result = runner.invoke(app, ["secrets", "reseal"])
    assert result.exit_code == 1
    assert json.loads(result.output.splitlines()[0])["webhooks"] == {
        "resealed": 0,
        "unreadable": 1,
    }
