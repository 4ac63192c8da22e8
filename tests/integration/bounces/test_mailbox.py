"""Polling a mailbox for bounces and complaints, against a real IMAP and POP3 server: a
Dovecot of the suite's own (``tests/dovecot.py``), on 127.0.0.1.

Real reports from the bounce corpus, adapted to a message the engine sent through the real
pipeline (``adapt`` and the ``sent`` fixture of ``test_inbound.py``), are delivered into the
Maildir as an MDA would (``Return-Path`` and ``Delivered-To`` on top).  A poll over IMAP or
POP3 must act on them, commit, and only then remove them; what cannot be handled stays (IMAP:
flagged or moved to the error folder) and the next message is handled; bad credentials give
an error naming the settings to fix; a crash between the commit and the removal handles
the message again on the next poll, recording nothing twice.  Each test has a Dovecot user
of its own on a server the module shares; their passwords are not ASCII (IMAP logs in with
AUTHENTICATE PLAIN), the reconnect test's is (LOGIN).  Without Dovecot these tests skip
locally and fail under CI=true."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mailer.audience.models import ChannelStatus
from mailer.bounces import MailboxError, MailboxLoginFailed, MailboxPoller, poll_once
from mailer.bounces import mailbox as mailbox_module
from mailer.cli import app
from mailer.core.config import InboundSettings, MailboxSettings, Settings, get_settings
from mailer.core.errors import ConfigError
from mailer.events.models import EventKind
from mailer.messages.models import MessageState
from tests.conftest import IN_CI, REPO
from tests.dovecot import DovecotServer, MailUser, dovecot_available, free_port
from tests.helpers import build_world, start_recording_relay
from tests.integration.bounces import test_inbound as inbound_tests
from tests.integration.bounces.test_inbound import (
    BOUNCE_DOMAIN,
    FBL_ADDRESS,
    PERSON,
    Sent,
    adapt,
    contact_state,
    events,
    row_state,
    send_campaign,
)
from tests.mta import wait_for_banner

sent = inbound_tests.sent  # one campaign sent on each database backend (a fixture)

DSN_SAMPLE = "lhost-postfix-06.eml"  # Postfix, host unknown: a hard bounce
ARF_SAMPLE = "arf-14.eml"  # a feedback-loop complaint


def require_dovecot() -> None:
    if dovecot_available():
        return
    message = "dovecot is missing (Debian packages dovecot-imapd, dovecot-pop3d)"
    if IN_CI:
        pytest.fail(f"{message} (required under CI=true)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[DovecotServer]:
    """A Dovecot serving IMAP and POP3 without TLS, shared by this module's tests."""
    require_dovecot()
    with DovecotServer() as server:
        yield server


@pytest.fixture(scope="module")
def dovecot_tls_server() -> Iterator[DovecotServer]:
    """A Dovecot with IMAPS, POP3S and STARTTLS (a self-signed certificate)."""
    require_dovecot()
    with DovecotServer(tls=True) as server:
        yield server


@pytest.fixture
def dovecot(dovecot_server: DovecotServer) -> MailUser:
    """A user of its own, with an empty mailbox, for one test."""
    return dovecot_server.add_user()


@pytest.fixture
def dovecot_tls(dovecot_tls_server: DovecotServer) -> MailUser:
    return dovecot_tls_server.add_user()


@pytest.fixture
def sent_sqlite(configure: object, tmp_path: Path) -> Iterator[Sent]:
    """As test_inbound's ``sent``, on SQLite only."""
    capture, recorder = start_recording_relay()
    try:
        settings: Settings = configure(  # type: ignore[operator]
            None,
            MAILER_RELAY__PORT=str(capture.port),
            MAILER_DELIVERY__BOUNCE_DOMAIN=BOUNCE_DOMAIN,
            MAILER_INBOUND__DOMAINS=BOUNCE_DOMAIN,
            MAILER_INBOUND__FBL_ADDRESS=FBL_ADDRESS,
            MAILER_DNS__TIMEOUT_SECONDS="0.05",
        )
        world = build_world(settings, tmp_path, 1)
        yield send_campaign(settings, world, recorder, world.campaign_id)
    finally:
        capture.stop()


# --- helpers ----------------------------------------------------------------------------------


def with_mailbox(
    settings: Settings,
    server: DovecotServer | MailUser,
    protocol: str = "imap",
    security: str = "none",
    **changes: Any,
) -> Settings:
    """*settings* polling *server*'s mailbox."""
    if security == "tls":
        port = server.imaps_port if protocol == "imap" else server.pop3s_port
    else:
        port = server.imap_port if protocol == "imap" else server.pop3_port
    values: dict[str, Any] = {
        "protocol": protocol,
        "host": "127.0.0.1",
        "port": port,
        "security": security,
        "username": server.username,
        "password": server.password,
        "ca_file": str(server.ca_file or ""),
        "poll_seconds": 0.2,
        **changes,
    }
    mailbox = MailboxSettings(**values)
    inbound = settings.inbound.model_copy(update={"mailbox": mailbox})
    return settings.model_copy(update={"inbound": inbound})


def delivered(data: bytes, rcpt: str, mail_from: str = "") -> bytes:
    """*data* as a delivery agent stores it: the envelope's Return-Path and Delivered-To on
    top, in the message's own line endings."""
    eol = b"\r\n" if b"\r\n" in data[:2000] else b"\n"
    top = [f"Return-Path: <{mail_from}>".encode(), f"Delivered-To: {rcpt}".encode()]
    return eol.join(top) + eol + data


def dsn_for(sent: Sent) -> bytes:
    dsn = adapt(DSN_SAMPLE, recipient=PERSON, sender=sent.verp, message_id=sent.message_id)
    return delivered(dsn, sent.verp)


def summary_of(settings: Settings, poller: MailboxPoller | None = None) -> dict[str, int]:
    return (poller or MailboxPoller(settings)).poll().as_dict()


def counts(fetched: int, handled: int, left: int = 0, errors: int = 0) -> dict[str, int]:
    return {"fetched": fetched, "handled": handled, "left": left, "errors": errors}


def assert_bounced_once(sent: Sent) -> None:
    assert row_state(sent.settings, sent.row.id) == MessageState.BOUNCED
    assert contact_state(sent) == (ChannelStatus.BOUNCED, True)
    [bounce] = events(sent.settings, EventKind.BOUNCED)
    assert bounce.message_id == sent.row.id
    assert bounce.data["hard"] is True and bounce.data["reason"] == "hostunknown"
    assert bounce.data["matched_by"] == "verp"


# --- the pure part: what the headers say ------------------------------------------------------


def envelope_settings() -> Settings:
    return Settings(
        inbound=InboundSettings(domains=[BOUNCE_DOMAIN], fbl_address=FBL_ADDRESS),  # type: ignore[call-arg]
    )


def test_the_envelope_comes_from_the_delivery_headers_then_to_and_cc() -> None:
    settings = envelope_settings()
    verp = f"bounces+12-abcdef@{BOUNCE_DOMAIN}"
    envelope = mailbox_module.envelope_of
    # The final mailbox is not ours, the original recipient is: that one.
    data = (
        b"Return-Path: <>\nDelivered-To: rebotes@isp.example\n"
        b"X-Original-To: " + verp.encode() + b"\nTo: someone@example.org\n\nbody\n"
    )
    assert envelope(settings, data) == mailbox_module.Envelope("", [verp])
    # Several delivery headers: every address of ours, once, in order.
    data = (
        f"Delivered-To: {verp.upper()}\nEnvelope-To: {FBL_ADDRESS}, other@example.org\n"
        f"X-Envelope-To: <{verp}>\n\nbody\n"
    ).encode()
    assert envelope(settings, data).rcpt_tos == [verp.upper(), FBL_ADDRESS, verp]
    # No delivery header of ours: To and Cc (ours only; another domain is not ours).
    data = (
        f"Delivered-To: rebotes@isp.example\nTo: Rebotes <bounces@{BOUNCE_DOMAIN}>\n"
        f"Cc: bounces+1-a@otra.example, {FBL_ADDRESS}\n\nbody\n"
    ).encode()
    assert envelope(settings, data).rcpt_tos == [f"bounces@{BOUNCE_DOMAIN}", FBL_ADDRESS]
    # Nothing of ours anywhere: no recipient (the report is matched by its content).
    assert envelope(settings, b"To: a@example.org\n\nbody\n").rcpt_tos == []


def test_the_sender_is_the_return_path_else_from_unless_automatic() -> None:
    settings = envelope_settings()
    envelope = mailbox_module.envelope_of
    top = b"Return-Path: <ana@example.pe>\nReturn-Path: <>\nFrom: otro@example.pe\n\nx\n"
    assert envelope(settings, top).mail_from == "ana@example.pe"
    assert envelope(settings, b"Return-Path: <>\nFrom: ana@example.pe\n\nx\n").mail_from == ""
    assert envelope(settings, b"From: Ana <ana@example.pe>\n\nx\n").mail_from == "ana@example.pe"
    auto = b"From: ana@example.pe\nAuto-Submitted: auto-replied\n\nx\n"
    assert envelope(settings, auto).mail_from == ""
    for junk in (b"", b"\x00\x01\xff not a mail message at all\n"):
        with pytest.raises(mailbox_module.UnreadableMessage):
            envelope(settings, junk)


def test_mailbox_settings_refuse_what_cannot_work() -> None:
    base = {"host": "mail.example.org", "username": "rebotes", "password": "secreto"}
    assert MailboxSettings(**base).effective_port == 993  # type: ignore[arg-type]
    assert MailboxSettings(**base, protocol="pop3", security="starttls").effective_port == 110  # type: ignore[arg-type]
    assert not MailboxSettings().enabled  # empty host: no polling, nothing required
    cases = [
        ({"username": ""}, "inbound.mailbox.username"),
        ({"password": ""}, "inbound.mailbox.password"),
        ({"password": "change-me"}, "inbound.mailbox.password"),
        ({"security": "none"}, "inbound.mailbox.security"),
        ({"protocol": "pop3", "processed_folder": "Hechos"}, "inbound.mailbox.protocol"),
    ]
    for change, field in cases:
        with pytest.raises(ConfigError) as caught:
            MailboxSettings(**{**base, **change})  # type: ignore[arg-type]
        assert caught.value.field == field, change
    local = MailboxSettings(**{**base, "host": "localhost", "security": "none"})  # type: ignore[arg-type]
    assert local.effective_port == 143


# --- reports through a real mailbox -----------------------------------------------------------


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_dsn_in_the_mailbox_bounces_suppresses_and_is_removed(
    sent: Sent, dovecot: MailUser, protocol: str
) -> None:
    settings = with_mailbox(sent.settings, dovecot, protocol)
    dsn = dsn_for(sent)
    dovecot.deliver(dsn)
    assert summary_of(settings) == counts(1, 1)
    assert_bounced_once(sent)
    assert dovecot.messages() == []

    # The same report again (a second copy, or one whose removal was lost): handled,
    # removed, recorded nothing twice.
    dovecot.deliver(dsn)
    assert summary_of(settings) == counts(1, 1)
    assert_bounced_once(sent)
    assert dovecot.messages() == []
    assert summary_of(settings) == counts(0, 0)


def test_imap_moves_handled_messages_to_the_processed_folder(
    sent_sqlite: Sent, dovecot: MailUser
) -> None:
    sent = sent_sqlite
    settings = with_mailbox(sent.settings, dovecot, processed_folder="Procesados")
    report = adapt(ARF_SAMPLE, recipient=PERSON, sender=sent.verp, message_id=sent.message_id)
    stored = delivered(report, FBL_ADDRESS, "fbl@yahoo.example")
    dovecot.deliver(stored)
    assert summary_of(settings) == counts(1, 1)
    assert contact_state(sent) == (ChannelStatus.COMPLAINED, True)
    [complaint] = events(sent.settings, EventKind.COMPLAINED)
    assert complaint.message_id == sent.row.id
    assert dovecot.messages() == []
    assert dovecot.messages("Procesados") == [stored]


@pytest.mark.parametrize("where", ["imap", "imap-error-folder", "pop3"])
def test_a_message_that_cannot_be_handled_stays_and_the_next_one_is_handled(
    sent_sqlite: Sent,
    dovecot: MailUser,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    sent = sent_sqlite
    protocol = "pop3" if where == "pop3" else "imap"
    extra = {"error_folder": "Errores"} if where == "imap-error-folder" else {}
    settings = with_mailbox(sent.settings, dovecot, protocol, **extra)
    real = mailbox_module.handle_inbound

    def failing_on_poison(*args: Any, **kwargs: Any) -> Any:
        if b"X-Poison: yes" in args[4]:
            raise RuntimeError("a bug met this message")
        return real(*args, **kwargs)

    monkeypatch.setattr(mailbox_module, "handle_inbound", failing_on_poison)
    junk = b"\x00\x01 not a mail message: no header at all\n"
    poison = delivered(b"X-Poison: yes\nSubject: hola\n\nhola\n", sent.verp)
    dovecot.deliver(junk)
    dovecot.deliver(poison)
    dovecot.deliver(dsn_for(sent))

    poller = MailboxPoller(settings)
    assert summary_of(settings, poller) == counts(3, 1, left=2, errors=2)
    assert_bounced_once(sent)
    assert "not handled" in caplog.text and "a bug met this message" in caplog.text
    if where == "imap":
        assert sorted(dovecot.messages()) == sorted([junk, poison])
        assert all("F" in flags for flags in dovecot.flags())
    elif where == "imap-error-folder":
        assert dovecot.messages() == []
        assert sorted(dovecot.messages("Errores")) == sorted([junk, poison])
    else:
        assert len(dovecot.messages()) == 2
    # They are not tried again and again: flagged (IMAP), remembered (POP3).
    assert summary_of(settings, poller) == counts(0, 0)
    if where == "pop3":
        # A new process (cron's --poll-once) has no memory: they are tried, and stay.
        assert summary_of(settings) == counts(2, 0, left=2, errors=2)
        assert len(dovecot.messages()) == 2
    else:
        assert summary_of(settings) == counts(0, 0)


def test_a_message_over_max_bytes_is_not_fetched(
    sqlite_settings: Settings, dovecot: MailUser
) -> None:
    inbound = sqlite_settings.inbound.model_copy(update={"max_bytes": 4096})
    settings = with_mailbox(sqlite_settings.model_copy(update={"inbound": inbound}), dovecot)
    big = b"Subject: big\n\n" + b"x" * 76 + (b"\n" + b"x" * 76) * 80 + b"\n"
    dovecot.deliver(big)
    dovecot.deliver(b"Subject: small\n\nhello\n")
    assert summary_of(settings) == counts(2, 1, left=1, errors=1)
    assert dovecot.messages() == [big] and dovecot.flags() == ["F"]


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_crash_between_commit_and_removal_handles_the_message_again_harmlessly(
    sent: Sent, dovecot: MailUser, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    settings = with_mailbox(sent.settings, dovecot, protocol)
    box_class = mailbox_module._Imap if protocol == "imap" else mailbox_module._Pop3
    real_remove: Callable[..., None] = box_class.remove
    calls = {"n": 0}

    def remove_fails_once(self: Any, item: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionResetError("connection lost before the removal")
        real_remove(self, item)

    monkeypatch.setattr(box_class, "remove", remove_fails_once)
    dovecot.deliver(dsn_for(sent))
    first = MailboxPoller(settings).poll()
    assert first.as_dict() == counts(1, 0, left=1, errors=1)
    assert "connection lost" in first.aborted
    assert_bounced_once(sent)  # committed before the removal was tried
    [flags] = dovecot.flags()  # neither removed nor set aside
    assert len(dovecot.messages()) == 1 and "T" not in flags and "F" not in flags

    assert summary_of(settings) == counts(1, 1)
    assert_bounced_once(sent)  # the second handling recorded nothing
    assert dovecot.messages() == []


# --- connections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "security"),
    [("imap", "tls"), ("imap", "starttls"), ("pop3", "tls"), ("pop3", "starttls")],
)
def test_tls_and_starttls_with_a_verified_certificate(
    sqlite_settings: Settings, dovecot_tls: MailUser, protocol: str, security: str
) -> None:
    settings = with_mailbox(sqlite_settings, dovecot_tls, protocol, security)
    dovecot_tls.deliver(b"From: ana@example.pe\nTo: fbl@example.pe\nSubject: hola\n\nhola\n")
    assert summary_of(settings) == counts(1, 1)  # not a report: handled, nothing recorded
    assert dovecot_tls.messages() == []
    # Without the CA file the self-signed certificate is refused, saying what to set.
    untrusted = with_mailbox(sqlite_settings, dovecot_tls, protocol, security, ca_file="")
    with pytest.raises(MailboxError) as caught:
        poll_once(untrusted)
    assert "inbound.mailbox.ca_file" in caught.value.message


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_bad_credentials_give_an_error_that_names_the_settings(
    sqlite_settings: Settings, dovecot: MailUser, protocol: str
) -> None:
    settings = with_mailbox(sqlite_settings, dovecot, protocol, password="not-the-password")
    dovecot.deliver(b"Subject: hola\n\nhola\n")
    with pytest.raises(MailboxLoginFailed) as caught:
        poll_once(settings)
    message = caught.value.message
    assert caught.value.field == "inbound.mailbox.password"
    port = dovecot.imap_port if protocol == "imap" else dovecot.pop3_port
    assert f"{protocol}://127.0.0.1:{port}" in message and repr(dovecot.username) in message
    assert "inbound.mailbox.username and inbound.mailbox.password" in message
    assert "MAILER_INBOUND__MAILBOX__PASSWORD" in message
    assert "Authentication failed" in message  # what the server said
    assert len(dovecot.messages()) == 1
    # Nothing listening: a connection error that says where and what to check.
    closed = with_mailbox(sqlite_settings, dovecot, protocol, port=free_port())
    with pytest.raises(MailboxError) as refused:
        poll_once(closed)
    assert "cannot connect" in refused.value.message
    assert "inbound.mailbox.host, port and security" in refused.value.message


# --- the command ------------------------------------------------------------------------------


def mailbox_env(server: MailUser, protocol: str = "imap", **extra: str) -> dict[str, str]:
    return {
        "MAILER_INBOUND__MAILBOX__PROTOCOL": protocol,
        "MAILER_INBOUND__MAILBOX__HOST": "127.0.0.1",
        "MAILER_INBOUND__MAILBOX__PORT": str(
            server.imap_port if protocol == "imap" else server.pop3_port
        ),
        "MAILER_INBOUND__MAILBOX__SECURITY": "none",
        "MAILER_INBOUND__MAILBOX__USERNAME": server.username,
        "MAILER_INBOUND__MAILBOX__PASSWORD": server.password,
        **extra,
    }


def test_poll_once_prints_a_json_summary_and_fails_clearly_on_bad_credentials(
    sent_sqlite: Sent, dovecot: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = sent_sqlite
    dovecot.deliver(dsn_for(sent))
    dovecot.deliver(b"\x00 junk\n")
    runner = CliRunner()
    for key, value in mailbox_env(dovecot, "pop3").items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    result = runner.invoke(app, ["inbound", "--poll-once"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == counts(2, 1, left=1, errors=1)
    assert_bounced_once(sent)

    monkeypatch.setenv("MAILER_INBOUND__MAILBOX__PASSWORD", "wrong")
    get_settings.cache_clear()
    result = runner.invoke(app, ["inbound", "--poll-once"])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 1
    assert "error (inbound.mailbox.password)" in output and "refused the login" in output

    monkeypatch.delenv("MAILER_INBOUND__MAILBOX__HOST")
    get_settings.cache_clear()
    result = runner.invoke(app, ["inbound", "--poll-once"])
    output = " ".join(result.output.split())
    assert result.exit_code == 1 and "no mailbox to poll: set inbound.mailbox.host" in output
    get_settings.cache_clear()


def test_the_inbound_command_polls_alongside_the_smtp_receiver_until_sigterm(
    sent_sqlite: Sent, dovecot: MailUser, tmp_path: Path
) -> None:
    sent = sent_sqlite
    port = free_port()
    env = {**os.environ, "MAILER_INBOUND__PORT": str(port), **mailbox_env(dovecot)}
    env["MAILER_INBOUND__MAILBOX__POLL_SECONDS"] = "0.2"
    mailer = Path(sys.executable).with_name("mailer")
    log = tmp_path / "inbound.log"
    process = subprocess.Popen(
        [str(mailer), "inbound"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        wait_for_banner(
            "127.0.0.1", port, time.monotonic() + 30, alive=lambda: process.poll() is None
        )
        dovecot.deliver(dsn_for(sent))
        wait_until(lambda: dovecot.messages() == [], 30)
        assert_bounced_once(sent)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "polling the mailbox imap://127.0.0.1" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_poller_backs_off_and_reconnects_when_the_server_comes_back(
    sent_sqlite: Sent, caplog: pytest.LogCaptureFixture
) -> None:
    require_dovecot()
    sent = sent_sqlite
    server = DovecotServer()  # its ports are chosen, nothing listens on them yet
    settings = with_mailbox(sent.settings, server)
    attempts: list[float] = []
    poller = MailboxPoller(settings, backoff_first=0.1, backoff_max=0.4)
    real_poll = poller.poll

    def counted(stop: threading.Event | None = None) -> Any:
        attempts.append(time.monotonic())
        return real_poll(stop)

    poller.poll = counted  # type: ignore[method-assign]
    try:
        with poller:
            wait_until(lambda: len(attempts) >= 4, 20)
            gaps = [b - a for a, b in itertools.pairwise(attempts)]
            assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and max(gaps) < 2  # 0.1, 0.2, 0.4...
            assert "cannot connect to the mailbox" in caplog.text
            with server:
                server.deliver(dsn_for(sent))
                wait_until(lambda: server.messages() == [], 30)
                assert_bounced_once(sent)
    finally:
        server.stop()


def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not true after {seconds}s")
