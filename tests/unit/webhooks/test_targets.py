"""The webhook target policy: which addresses and ports are refused by default, the forms
an address hides in, what an allow-list opens, and the settings that configure it."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import httpcore2
import pytest

from mailer.core.config import WebhookSettings
from mailer.core.errors import ConfigError, ValidationFailed
from mailer.webhooks import targets
from mailer.webhooks.errors import TargetRefused
from mailer.webhooks.targets import PinnedBackend, TargetPolicy

DEFAULT = TargetPolicy()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("10.1.2", "10.1.0.2"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("8.8.8.8.", "8.8.8.8"),
        ("256.1.1.1", None),
        ("1.2.3.4.5", None),
        ("0x1g", None),
        ("08.1.1.1", None),  # 08 is not octal
        ("example.pe", None),
        ("1e100.net", None),
        ("", None),
    ],
)
def test_legacy_ipv4_forms_are_read_as_inet_aton_does(text: str, expected: str | None) -> None:
    found = targets.legacy_ipv4(text)
    assert (str(found) if found else None) == expected


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("0.0.0.0", "the unspecified address"),
        ("0.1.2.3", "an address reserved for special use"),  # 0.0.0.0/8, "this network"
        ("::", "the unspecified address"),
        ("10.20.1.5", "a private address"),
        ("172.16.0.1", "a private address"),
        ("192.168.1.1", "a private address"),
        ("169.254.169.254", "a link-local address (such as the cloud metadata service)"),
        ("fe80::1", "a link-local address (such as the cloud metadata service)"),
        ("100.64.0.1", "a carrier-grade NAT address"),
        ("224.0.0.1", "a multicast address"),
        ("ff02::1", "a multicast address"),
        ("255.255.255.255", "the broadcast address"),
        ("240.0.0.1", "a reserved address"),
        ("fd12:3456::1", "a private address"),
        ("fec0::1", "a site-local address"),
        ("192.0.2.10", "an address reserved for special use"),  # documentation
        ("198.18.0.1", "an address reserved for special use"),  # benchmarking
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "an address reserved for special use"),  # Teredo
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str, reason: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert DEFAULT.refusal(parsed) == (parsed, reason)


@pytest.mark.parametrize(
    ("address", "reached"),
    [
        ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
        ("::ffff:169.254.169.254", "169.254.169.254"),
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
        ("2002:a00:1::", "10.0.0.1"),
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64
        ("64:ff9b::a9fe:a9fe", "169.254.169.254"),
    ],
)
def test_ipv6_forms_are_judged_by_the_ipv4_address_they_reach(address: str, reached: str) -> None:
    refused = DEFAULT.refusal(ipaddress.ip_address(address))
    assert refused is not None and str(refused[0]) == reached


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "2606:2800:220:1::1", "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert DEFAULT.refusal(ipaddress.ip_address(address)) is None


def test_allowed_networks_open_only_themselves() -> None:
    policy = TargetPolicy.from_settings(
        WebhookSettings(allowed_networks=["10.20.0.0/16", "fd00:1::/64"])  # type: ignore[call-arg]
    )
    assert policy.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert policy.refusal(ipaddress.ip_address("fd00:1::5")) is None
    assert policy.refusal(ipaddress.ip_address("10.21.0.1")) is not None
    assert policy.refusal(ipaddress.ip_address("127.0.0.1")) is not None
    assert policy.refusal(ipaddress.ip_address("fd00:2::5")) is not None


def test_default_ports_are_80_443_and_unprivileged() -> None:
    assert [p for p in (22, 25, 53, 79, 80, 81, 443, 1023, 1024, 8080, 65535) if
            DEFAULT.port_allowed(p)] == [80, 443, 1024, 8080, 65535]  # fmt: skip
    assert TargetPolicy.from_settings(WebhookSettings()) == DEFAULT  # type: ignore[call-arg]


def test_settings_read_lists_from_the_environment_form_and_refuse_mistakes() -> None:
    settings = WebhookSettings(
        allowed_networks="10.20.0.0/16, 192.168.5.7",  # type: ignore[arg-type]
        allowed_ports="443,8000-8999",  # type: ignore[arg-type]
    )
    assert settings.allowed_networks == ["10.20.0.0/16", "192.168.5.7/32"]
    assert settings.port_ranges == [(443, 443), (8000, 8999)]
    json_form = WebhookSettings(allowed_networks='["10.0.0.0/8"]')  # type: ignore[arg-type]
    assert json_form.allowed_networks == ["10.0.0.0/8"]
    assert WebhookSettings(allowed_ports=[443, "1024-2048"]).port_ranges == [  # type: ignore[list-item]
        (443, 443),
        (1024, 2048),
    ]
    with pytest.raises(ConfigError, match=r"10\.20\.1\.0/16"):
        WebhookSettings(allowed_networks=["10.20.1.0/16"])  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="70000"):
        WebhookSettings(allowed_ports=["70000"])  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1/", "127.0.0.1, a loopback address"),
        ("http://[::1]:8080/", "::1, a loopback address"),
        ("https://10.1.2.3/hook", "10.1.2.3, a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254, a link-local"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1 = 127.0.0.1, a loopback address"),
        ("http://2130706433/", "2130706433 (127.0.0.1), a loopback address"),
        ("http://0x7f.1/", "0x7f.1 (127.0.0.1), a loopback address"),
        ("http://localhost:8080/", "localhost (127.0.0.1), a loopback address"),
    ],
)
def test_check_target_refuses_what_a_url_reaches(url: str, shown: str) -> None:
    with pytest.raises(TargetRefused) as refused:
        targets.check_target(urlsplit(url), DEFAULT)
    assert refused.value.field == "url" and shown in refused.value.message
    assert "webhooks.allowed_networks" in refused.value.message


def test_check_target_refuses_ports_and_names_that_do_not_resolve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(TargetRefused, match="port 22; the allowed ports are 80, 443, 1024-65535"):
        targets.check_target(urlsplit("http://93.184.216.34:22/"), DEFAULT)

    def unresolvable(host: str, port: int) -> list[targets.IPAddress]:
        raise OSError("Name or service not known")

    monkeypatch.setattr(targets, "resolve", unresolvable)
    with pytest.raises(ValidationFailed, match="cannot be resolved") as failed:
        targets.check_target(urlsplit("https://nowhere.invalid/"), DEFAULT)
    assert failed.value.field == "url"


def test_a_name_with_one_refused_address_among_public_ones_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.7")]
    monkeypatch.setattr(targets, "resolve", lambda host, port: found)
    with pytest.raises(TargetRefused, match=r"erp.example.pe \(10.0.0.7\), a private address"):
        targets.check_target(urlsplit("https://erp.example.pe/"), DEFAULT)
    found.pop()
    targets.check_target(urlsplit("https://erp.example.pe/"), DEFAULT)


def test_pinned_backend_connects_only_to_the_checked_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resolved once: the socket is opened to the numeric address that was checked."""
    answers = iter([["93.184.216.34"], ["127.0.0.1"]])
    monkeypatch.setattr(
        targets, "resolve", lambda host, port: [ipaddress.ip_address(a) for a in next(answers)]
    )
    opened: list[tuple[str, int]] = []

    def connect(self: object, host: str, port: int, *args: object) -> httpcore2.NetworkStream:
        opened.append((host, port))
        raise httpcore2.ConnectError("not really connecting")

    monkeypatch.setattr(httpcore2.SyncBackend, "connect_tcp", connect)
    backend = PinnedBackend(DEFAULT)
    with pytest.raises(httpcore2.ConnectError, match="not really"):
        backend.connect_tcp("hooks.example.pe", 443)
    assert opened == [("93.184.216.34", 443)]
    with pytest.raises(targets.RefusedConnection, match="a loopback address"):
        backend.connect_tcp("hooks.example.pe", 443)  # the name now points home
    for host, port in [("10.1.1.1", 80), ("169.254.169.254", 80), ("::ffff:127.0.0.1", 80),
                       ("0x7f.1", 80), ("93.184.216.34", 25)]:  # fmt: skip
        with pytest.raises(targets.RefusedConnection):
            backend.connect_tcp(host, port)
    assert opened == [("93.184.216.34", 443)]  # nothing else was even tried
