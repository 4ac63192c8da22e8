"""The webhook target policy end to end: internal URLs are refused when saved and when a
delivery connects (also after the name's DNS answer changed), a refused delivery is a
failed attempt like any other, and an allowed network is reached through the checked
address with the URL's Host header and TLS verified against the name."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import Session

from mailer.accounts.service import create_account
from mailer.core.config import Settings
from mailer.core.errors import ValidationFailed
from mailer.events.models import EventKind
from mailer.events.service import append
from mailer.storage.db import session_scope
from mailer.webhooks import sender, service, signing, targets
from mailer.webhooks.models import WebhookSubscription
from mailer.webhooks.targets import TargetPolicy
from tests.integration.webhooks.conftest import Receiver

PUBLIC = "93.184.216.34"


def strict(settings: Settings) -> Settings:
    """*settings* with the default policy (the test settings allow 127.0.0.0/8)."""
    webhooks = settings.webhooks.model_copy(update={"allowed_networks": []})
    return settings.model_copy(update={"webhooks": webhooks})


def new_account(settings: Settings) -> int:
    with session_scope(settings) as session:
        account = create_account(session, "Entidad de prueba")
        assert account.id
        return account.id


def fake_dns(monkeypatch: pytest.MonkeyPatch, names: dict[str, str]) -> dict[str, str]:
    """Resolve the names of *names* (changeable later) to its addresses, refuse others."""

    def resolve(host: str, port: int) -> list[targets.IPAddress]:
        if host not in names:
            raise OSError(f"{host}: Name or service not known")
        return [ipaddress.ip_address(names[host])]

    monkeypatch.setattr(targets, "resolve", resolve)
    return names


def refused_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hooks",
        f"http://[::1]:{port}/hooks",
        "http://10.1.2.3/hooks",
        "http://169.254.169.254/latest/meta-data/",
        f"http://[::ffff:127.0.0.1]:{port}/hooks",
        f"http://2130706433:{port}/hooks",
        f"http://0x7f.1:{port}/hooks",
        f"http://localhost:{port}/hooks",
        "http://[fd00::1]/hooks",
        "http://100.64.0.1/hooks",
        f"http://{PUBLIC}:22/hooks",
    ]


def test_default_policy_refuses_internal_urls_when_saved(configure: Any) -> None:
    settings: Settings = configure(MAILER_WEBHOOKS__ALLOWED_NETWORKS="")
    account_id = new_account(settings)
    for url in refused_urls(8080):
        with session_scope(settings) as session, pytest.raises(ValidationFailed) as refused:
            service.create_subscription(session, account_id, url, ["email.sent"])
        assert refused.value.field == "url", url
        assert "may not be posted to" in refused.value.message, (url, refused.value.message)
    with session_scope(settings) as session:
        subscription, _ = service.create_subscription(
            session, account_id, f"https://{PUBLIC}/hooks", ["email.sent"]
        )
        for url in ("http://127.0.0.1/", "http://localhost/"):
            with pytest.raises(ValidationFailed, match="a loopback address"):
                service.update_subscription(session, account_id, subscription.id or 0, url=url)
        with pytest.raises(ValidationFailed, match="cannot be resolved") as unresolved:
            service.update_subscription(
                session, account_id, subscription.id or 0, url="https://no-such-host.invalid/"
            )
        assert unresolved.value.field == "url"


def add_test_event(settings: Settings, account_id: int, url: str) -> int:
    """A subscription to *url* saved as it was (before the policy, or under another one),
    with a test event waiting for it."""
    with session_scope(settings) as session:
        subscription = WebhookSubscription(
            account_id=account_id,
            url=url,
            secret=signing.seal_secret(signing.generate_secret(), settings),
            event_types=["email.sent"],
        )
        session.add(subscription)
        session.flush()
        assert subscription.id
        return subscription.id


def test_default_policy_refuses_internal_targets_at_delivery(
    configure: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Subscriptions saved while 127.0.0.0/8 was allowed (and older rows that were never
    checked) are refused once it is not: each attempt fails, nothing is connected to."""
    allowing: Settings = configure(MAILER_WEBHOOKS__ALLOWED_NETWORKS="127.0.0.0/8,::1/128")
    account_id = new_account(allowing)
    port = int(receiver.url.rsplit(":", 1)[1].split("/")[0])
    urls = refused_urls(port)[:-1]  # the port 22 one cannot be saved in any case
    ids = []
    with session_scope(allowing) as session:
        for url in urls:
            if "10.1.2.3" in url or "169.254" in url or "fd00" in url or "100.64" in url:
                continue
            subscription, secret = service.create_subscription(
                session, account_id, url, ["email.sent"]
            )
            receiver.secrets.append(secret)
            ids.append(subscription.id or 0)
    for url in urls:
        if "10.1.2.3" in url or "169.254" in url or "fd00" in url or "100.64" in url:
            ids.append(add_test_event(allowing, account_id, url))
    with session_scope(allowing) as session:
        for subscription_id in ids:
            service.send_test_event(session, account_id, subscription_id)

    connected: list[str] = []
    real_connect = httpcore2.SyncBackend.connect_tcp

    def watched(self: httpcore2.SyncBackend, host: str, port: int, *args: Any) -> Any:
        connected.append(host)
        return real_connect(self, host, port, *args)

    monkeypatch.setattr(httpcore2.SyncBackend, "connect_tcp", watched)
    outcomes = service.deliver_due(strict(allowing))
    assert len(outcomes) == len(urls)
    assert connected == [] and receiver.requests == []
    for outcome in outcomes:
        assert outcome.status_code is None and outcome.error.startswith("refused: "), outcome
        assert "webhooks.allowed_networks" in outcome.error
    with session_scope(allowing) as session:
        for subscription_id in ids:
            (delivery,) = service.list_deliveries(session, account_id, subscription_id)
            assert delivery.state == "pending" and delivery.next_attempt_at is not None
            assert delivery.last_error.startswith("refused: ")
            (attempt,) = service.list_attempts(session, [delivery.id or 0])[delivery.id or 0]
            assert attempt.error == delivery.last_error and not attempt.succeeded
            subscription = service.get_subscription(session, account_id, subscription_id)
            assert subscription.active and subscription.failure_streak == 1
    errors = " | ".join(o.error for o in outcomes)
    for shown in (
        "127.0.0.1, a loopback address",
        "::1, a loopback address",
        "10.1.2.3, a private address",
        "169.254.169.254, a link-local address",
        "::ffff:127.0.0.1 = 127.0.0.1, a loopback address",
        "2130706433 (127.0.0.1), a loopback address",
        "0x7f.1 (127.0.0.1), a loopback address",
        "localhost (",
    ):
        assert shown in errors, shown


def test_a_name_that_points_home_after_it_was_saved_is_refused(
    configure: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings: Settings = configure(MAILER_WEBHOOKS__ALLOWED_NETWORKS="")
    names = fake_dns(monkeypatch, {"hooks.example.pe": PUBLIC})
    account_id = new_account(settings)
    port = receiver.url.rsplit(":", 1)[1]
    with session_scope(settings) as session:
        subscription, _ = service.create_subscription(
            session, account_id, f"http://hooks.example.pe:{port}", ["email.sent"]
        )
        service.send_test_event(session, account_id, subscription.id or 0)
    names["hooks.example.pe"] = "127.0.0.1"  # DNS rebinding
    (outcome,) = service.deliver_due(settings)
    assert outcome.error.startswith(
        "refused: webhooks may not be posted to hooks.example.pe (127.0.0.1), a loopback address"
    )
    assert receiver.requests == []


def test_an_allowed_network_is_reached_through_the_checked_address(
    configure: Any, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test settings allow 127.0.0.0/8: a name of the operator's network that only our
    resolver knows is posted to its checked address, with its own Host header."""
    settings: Settings = configure()
    assert settings.webhooks.allowed_networks == ["127.0.0.0/8"]
    fake_dns(monkeypatch, {"erp.intranet.test": "127.0.0.1"})
    account_id = new_account(settings)
    port = receiver.url.rsplit(":", 1)[1].split("/")[0]
    url = f"http://erp.intranet.test:{port}/hooks"
    with session_scope(settings) as session:
        subscription, secret = service.create_subscription(session, account_id, url, ["email.sent"])
    receiver.secrets.append(secret)
    with session_scope(settings) as session:
        append(session, account_id, EventKind.SENT, message_id=None)
    assert service.dispatch_new_events(settings) == 1
    assert [o.status_code for o in service.deliver_due(settings)] == [200]
    (request,) = receiver.wait_for(1)
    assert request.verified and request.headers["host"] == f"erp.intranet.test:{port}"
    with session_scope(settings) as session:
        assert _subscription(session, subscription.id or 0).last_success_at is not None


def _subscription(session: Session, subscription_id: int) -> WebhookSubscription:
    found = session.get(WebhookSubscription, subscription_id)
    assert found is not None
    return found


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    """An HTTPS receiver on 127.0.0.1 whose certificate names erp.intranet.test only;
    yields its port, the certificate (to trust) and the SNI names it was asked for."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "erp.intranet.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("erp.intranet.test")]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.sni_callback = lambda _sock, sni, _ctx: server_names.append(sni or "")  # type: ignore[assignment, func-returns-value]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], cert_path, server_names
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_tls_is_verified_against_the_name_while_connecting_to_the_checked_address(
    tls_receiver: tuple[int, Path, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, cert_path, server_names = tls_receiver
    monkeypatch.setattr(sender, "_clients", {})
    monkeypatch.setattr(
        httpx2, "create_ssl_context", lambda: ssl.create_default_context(cafile=str(cert_path))
    )
    fake_dns(monkeypatch, {"erp.intranet.test": "127.0.0.1", "other.intranet.test": "127.0.0.1"})
    policy = TargetPolicy((ipaddress.ip_network("127.0.0.0/8"),))
    ok = sender.post(f"https://erp.intranet.test:{port}/hooks", b"{}", {}, 5, policy)
    assert (ok.status_code, ok.error) == (204, "")
    assert server_names == ["erp.intranet.test"]
    wrong = sender.post(f"https://other.intranet.test:{port}/hooks", b"{}", {}, 5, policy)
    assert wrong.status_code is None and "certificate" in wrong.error.lower()
    refused = sender.post(f"https://erp.intranet.test:{port}/hooks", b"{}", {}, 5)
    assert refused.error.startswith("refused: ") and len(server_names) == 2
