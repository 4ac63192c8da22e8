"""Tenancy administration services: sub-accounts with their allowance, users and roles
(an account keeps an administrator), set-password links good once, the welcome's content
and sender, audit queries and retention, and two-factor codes (RFC 6238)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pyotp
import pytest
from jinja2 import meta
from sqlmodel import select

from mailer.accounts import admin, credits, totp
from mailer.accounts.models import AuditEntry, User
from mailer.accounts.service import audit, authenticate, create_account, create_user
from mailer.content import compile_template
from mailer.content.sandbox import TEMPLATE_GLOBALS, TEXT_ENV
from mailer.core.clock import utcnow
from mailer.core.config import Settings
from mailer.core.errors import (
    AuthenticationFailed,
    Conflict,
    NotFound,
    PermissionDenied,
    ValidationFailed,
)
from mailer.core.tokens import BadToken
from mailer.delivery.domains import add_domain
from mailer.storage.db import session_scope

SECRET = "test-secret-" + "x" * 32
PASSWORD = "una clave larga 123"


def _parent(settings: Settings) -> int:
    with session_scope(settings) as session:
        parent = create_account(session, "Entidad")
        assert parent.id
        create_user(session, parent.id, "jefa@example.pe", PASSWORD, "admin")
        credits.grant(session, parent.id, "email", 1_000)
        return parent.id


def test_a_sub_account_gets_its_admin_and_a_share_of_the_allowance(settings: Settings) -> None:
    parent = _parent(settings)
    with session_scope(settings) as session:
        created = admin.create_sub_account(
            session,
            parent,
            "Logística",
            admin_email="Luis@Example.pe",
            allowances={"email": 400, "sms": 0},
            actor="user:1",
        )
        sub = created.account.id
        assert sub and created.needs_password
        assert [(e.kind, e.quantity) for e in created.transfers] == [("transfer_in", 400)]
        assert created.admin.email == "luis@example.pe" and created.admin.role == "admin"
        assert not admin.has_password(created.admin)
    with session_scope(settings) as session:
        assert [b.available for b in credits.balances(session, parent)] == [600]
        assert [(b.channel, b.available) for b in credits.balances(session, sub)] == [
            ("email", 400)
        ]
        assert [a.id for a in admin.sub_accounts(session, parent)] == [sub]
        [summary] = admin.sub_account_summaries(session, parent)
        assert (summary.users, summary.admins) == (1, 1)
        # A user without a password cannot log in with any.
        with pytest.raises(AuthenticationFailed):
            authenticate(session, "luis@example.pe", "!unset")
    with session_scope(settings) as session:
        admin.move_allowance(session, parent, sub, "email", 150, take_back=True, actor="user:1")
        with pytest.raises(credits.InsufficientCredit):
            admin.move_allowance(session, parent, sub, "email", 10_000)
    with session_scope(settings) as session:
        assert credits.balance(session, sub, "email").available == 250  # type: ignore[union-attr]
        # Neither a sibling nor the parent is a sub-account of the sub-account.
        other = create_account(session, "Otra")
        with pytest.raises(NotFound):
            admin.get_sub_account(session, parent, other.id or 0)
        with pytest.raises(NotFound):
            admin.visible_account(session, sub, parent)
        assert admin.visible_account_ids(session, parent) == [parent, sub]


def test_an_overdraft_leaves_nothing_behind(sqlite_settings: Settings) -> None:
    parent = _parent(sqlite_settings)
    with pytest.raises(credits.InsufficientCredit), session_scope(sqlite_settings) as session:
        admin.create_sub_account(
            session, parent, "Demasiado", admin_email="x@example.pe", allowances={"email": 5_000}
        )
    with session_scope(sqlite_settings) as session:
        assert admin.sub_accounts(session, parent) == []
        assert session.exec(select(User).where(User.email == "x@example.pe")).first() is None
        with pytest.raises(ValidationFailed):
            admin.create_sub_account(
                session, parent, "Mal", admin_email="y@example.pe", allowances={"fax": 1}
            )


def test_roles_and_deactivation_keep_an_administrator(sqlite_settings: Settings) -> None:
    parent = _parent(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        boss = session.exec(select(User).where(User.email == "jefa@example.pe")).one()
        clerk = admin.invite_user(session, parent, "clerk@example.pe", "viewer", password=PASSWORD)
        boss_id, clerk_id = boss.id or 0, clerk.id or 0
        with pytest.raises(PermissionDenied):
            admin.change_role(session, parent, boss_id, "viewer", acting_user_id=boss_id)
        with pytest.raises(Conflict):  # the last administrator
            admin.change_role(session, parent, boss_id, "viewer", acting_user_id=clerk_id)
        epoch = clerk.session_epoch
        user, former = admin.change_role(session, parent, clerk_id, "admin", acting_user_id=boss_id)
        assert (former, user.role, user.session_epoch) == ("viewer", "admin", epoch + 1)
        # Now there are two: one may step down, but not deactivate themselves.
        admin.change_role(session, parent, boss_id, "editor", acting_user_id=clerk_id)
        with pytest.raises(PermissionDenied):
            admin.set_active(session, parent, clerk_id, False, acting_user_id=clerk_id)
        with pytest.raises(Conflict):
            admin.set_active(session, parent, clerk_id, False, acting_user_id=boss_id)
        off = admin.set_active(session, parent, boss_id, False, acting_user_id=clerk_id)
        assert not off.active
        with pytest.raises(NotFound):
            admin.change_role(session, parent + 99, clerk_id, "viewer", acting_user_id=boss_id)


def test_a_set_password_link_is_good_once_and_expires(sqlite_settings: Settings) -> None:
    parent = _parent(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        user = admin.invite_user(session, parent, "nuevo@example.pe", "editor")
        token = admin.set_password_token(SECRET, user)
        expired = admin.set_password_token(SECRET, user, days=-1)
        assert admin.user_for_token(session, SECRET, token).id == user.id
        with pytest.raises(BadToken):
            admin.user_for_token(session, SECRET, expired)
        with pytest.raises(BadToken):
            admin.user_for_token(session, SECRET, token[:-2] + "AA")
        with pytest.raises(BadToken):
            admin.user_for_token(session, "another secret " + "y" * 32, token)
        with pytest.raises(ValidationFailed):
            admin.set_password_with_token(session, SECRET, token, "corta")
        admin.set_password_with_token(session, SECRET, token, "clave elegida 2026")
        with pytest.raises(BadToken):
            admin.set_password_with_token(session, SECRET, token, "otra clave 2026")
        assert authenticate(session, "nuevo@example.pe", "clave elegida 2026").id == user.id


def test_the_welcome_needs_a_sender_and_reads_only_its_variables(
    sqlite_settings: Settings, tmp_path: Path
) -> None:
    parent = _parent(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        user = admin.invite_user(session, parent, "ana@example.pe", "editor", name="Ana")
        account = admin.visible_account(session, parent, parent)
    settings = sqlite_settings.model_copy(update={"sending_domains_dir": tmp_path / "none"})
    assert admin.welcome_sender(settings) is None
    assert (
        admin.welcome_message(settings, user, account, inviter="x", set_password_url=None) is None
    )
    add_domain(tmp_path / "domains", "envios.example.pe")
    settings = settings.model_copy(update={"sending_domains_dir": tmp_path / "domains"})
    assert admin.welcome_sender(settings) == "no-responder@envios.example.pe"
    configured = settings.model_copy(
        update={"welcome": settings.welcome.model_copy(update={"from_email": "hola@x.pe"})}
    )
    assert admin.welcome_sender(configured) == "hola@x.pe"
    message = admin.welcome_message(
        settings, user, account, inviter="jefa@example.pe", set_password_url="https://x/sp/t"
    )
    assert message is not None and message.to == "ana@example.pe"
    rendered = compile_template(message.subject, message.html, message.text).render(
        {**message.variables, "contact": {"email": message.to}}, link_url=lambda i, url: url
    )
    assert "Entidad" in rendered.subject
    for text in (rendered.html, rendered.text):
        assert "Hola Ana" in text and "Editor (crea, no envía)" in text
        assert "https://x/sp/t" in text and "jefa@example.pe" in text and "29733" in text
    # The library template asks only for what the portal gives, and renders with its sample.
    template = admin.welcome_template(sqlite_settings)
    for source in (template.subject, template.html, template.text or "", template.preheader):
        used = meta.find_undeclared_variables(TEXT_ENV.parse(source))
        assert used <= set(message.variables) | set(TEMPLATE_GLOBALS), used
    sample = compile_template(template.subject, template.html, template.text).render(
        template.sample, link_url=lambda i, url: url
    )
    assert "Elegir mi contraseña" in sample.html and "None" not in sample.text


def test_audit_queries_filter_scope_and_purge(sqlite_settings: Settings) -> None:
    parent = _parent(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        sub = create_account(session, "Sub", parent_id=parent)
        other = create_account(session, "Otra")
        boss = session.exec(select(User).where(User.email == "jefa@example.pe")).one()
        audit(session, None, "login.failed", "jefa@example.pe", account_id=parent)
        audit(session, None, "login", "", account_id=parent)
        audit(session, None, "credits.transfer", f"account:{sub.id}", account_id=sub.id)
        audit(session, None, "login", "", account_id=other.id)
        session.add(
            AuditEntry(
                account_id=parent, actor=f"user:{boss.id}", action="user.role", target="user:9"
            )
        )
        session.add(
            AuditEntry(
                account_id=parent,
                actor="system",
                action="old",
                created_at=utcnow() - timedelta(days=500),
            )
        )
    with session_scope(sqlite_settings) as session:
        ids = admin.visible_account_ids(session, parent)

        def actions(**filters: object) -> list[str]:
            flt = admin.AuditFilter(**filters)  # type: ignore[arg-type]
            return sorted(e.action for e in admin.audit_entries(session, ids, flt))

        assert actions() == sorted(
            ["login.failed", "login", "credits.transfer", "user.role", "old"]
        )
        assert actions(account_id=sub.id) == ["credits.transfer"]
        assert actions(account_id=other.id) == actions()  # not visible: ignored
        assert actions(action="login.") == ["login", "login.failed"]
        assert actions(action="login") == ["login"]
        assert actions(actor="jefa@example.pe") == ["user.role"]
        assert actions(actor="sys") == sorted(["login.failed", "login", "credits.transfer", "old"])
        assert actions(target="%") == []  # wildcards are text
        assert actions(since=utcnow() - timedelta(days=1)) == sorted(
            ["login.failed", "login", "credits.transfer", "user.role"]
        )
        assert admin.count_audit_entries(session, ids, admin.AuditFilter(until=utcnow())) == 5
        assert "user.role" in admin.audit_actions(session, ids)
        with pytest.raises(ValidationFailed):
            admin.purge_audit(session, 30)
        assert admin.purge_audit(session, 400) == 1
        assert "old" not in actions()


def test_totp_codes_drift_replay_recovery_and_lock(sqlite_settings: Settings) -> None:
    parent = _parent(sqlite_settings)
    with session_scope(sqlite_settings) as session:
        user = session.exec(select(User).where(User.email == "jefa@example.pe")).one()
        enrolment = totp.begin_enrolment(session, user, SECRET)
        assert enrolment.uri.startswith("otpauth://totp/mailer:jefa%40example.pe?secret=")
        assert enrolment.secret not in user.totp_secret  # stored encrypted
        assert not totp.is_enabled(user)
        with pytest.raises(Conflict):
            totp.confirm_enrolment(session, totp_user_without_secret(), "123456", SECRET)
        generator = pyotp.TOTP(enrolment.secret)
        codes = totp.confirm_enrolment(session, user, generator.now(), SECRET)
        assert totp.is_enabled(user) and len(codes) == totp.RECOVERY_CODES
        with pytest.raises(Conflict):
            totp.begin_enrolment(session, user, SECRET)
        # One step of drift either way, never a code twice, never an old one.
        now = time.time()
        step = int(now // 30)
        assert totp._matching_step(enrolment.secret, generator.at(now + 30), 0, now) == step + 1
        assert totp._matching_step(enrolment.secret, generator.at(now - 30), 0, now) == step - 1
        assert totp._matching_step(enrolment.secret, generator.at(now + 90), 0, now) is None
        assert totp._matching_step(enrolment.secret, generator.at(now), step, now) is None
        assert totp._matching_step(enrolment.secret, "12345", 0, now) is None
        assert totp.check_code(session, user, generator.at(time.time() + 30), SECRET) == "totp"
        with pytest.raises(AuthenticationFailed):
            totp.check_code(session, user, generator.at(time.time() + 30), SECRET)
        assert totp.check_code(session, user, codes[0], SECRET) == "recovery"
        assert totp.recovery_codes_left(user) == totp.RECOVERY_CODES - 1
        with pytest.raises(AuthenticationFailed):
            totp.check_code(session, user, codes[0], SECRET)
        # Another secret key cannot read the enrolment.
        with pytest.raises(AuthenticationFailed, match="secret key changed"):
            totp.check_code(session, user, generator.now(), "another " + "k" * 40)
        for _ in range(totp.MAX_FAILURES):
            audit(session, None, totp.FAILED_ACTION, f"user:{user.id}", account_id=parent)
        session.flush()
        with pytest.raises(totp.TotpLocked):
            totp.check_code(session, user, codes[1], SECRET)
    with session_scope(sqlite_settings) as session:
        user = session.exec(select(User).where(User.email == "jefa@example.pe")).one()
        with pytest.raises(AuthenticationFailed):
            totp.disable(session, user, "no es la clave", codes[1], SECRET)
        totp.reset(session, user)
        assert not totp.is_enabled(user) and user.totp_secret == "" and user.totp_recovery == ""


def totp_user_without_secret() -> User:
    return User(account_id=1, email="n@example.pe", password_hash="x", role="viewer")
