"""DnsSettings: resolvers as host[:port], from TOML, MAILER_DNS__SERVERS or MAILER_DNS_SERVERS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mailer.core.config import DnsSettings, Settings
from mailer.core.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("MAILER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MAILER_CONFIG", str(tmp_path / "mailer.toml"))


def test_defaults_use_the_system_resolver() -> None:
    dns = Settings().dns
    assert dns.servers == []
    assert dns.nameservers == []
    assert dns.concurrency == 200


def test_short_env_alias_is_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_DNS_SERVERS", "127.0.0.1:5353, 10.0.0.1")
    dns = Settings().dns
    assert dns.servers == ["127.0.0.1:5353", "10.0.0.1"]
    assert dns.nameservers == [("127.0.0.1", 5353), ("10.0.0.1", 53)]


def test_nested_env_accepts_commas_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_DNS__SERVERS", "[::1]:5353,192.0.2.1")
    monkeypatch.setenv("MAILER_DNS__CONCURRENCY", "50")
    dns = Settings().dns
    assert dns.nameservers == [("::1", 5353), ("192.0.2.1", 53)]
    assert dns.concurrency == 50
    monkeypatch.setenv("MAILER_DNS__SERVERS", '["192.0.2.1:54"]')
    assert Settings().dns.nameservers == [("192.0.2.1", 54)]


def test_nested_env_wins_over_the_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_DNS_SERVERS", "10.0.0.1")
    monkeypatch.setenv("MAILER_DNS__SERVERS", "10.0.0.2")
    assert Settings().dns.servers == ["10.0.0.2"]


def test_alias_wins_over_toml_and_keeps_other_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "mailer.toml").write_text(
        '[dns]\nservers = ["192.0.2.7"]\nport = 5300\ntimeout_seconds = 1.5\n', encoding="utf-8"
    )
    assert Settings().dns.nameservers == [("192.0.2.7", 5300)]
    monkeypatch.setenv("MAILER_DNS_SERVERS", "192.0.2.8")
    dns = Settings().dns
    assert dns.nameservers == [("192.0.2.8", 5300)]
    assert dns.timeout_seconds == 1.5


def test_an_empty_alias_means_the_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_DNS_SERVERS", "")
    assert Settings().dns.servers == []


def test_explicit_settings_are_not_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_DNS_SERVERS", "10.0.0.1")
    settings = Settings(dns=DnsSettings(servers=["10.0.0.9"]))
    assert settings.dns.servers == ["10.0.0.9"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("10.0.0.1", ("10.0.0.1", 53)),
        ("10.0.0.1:5353", ("10.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
        ("[::1]", ("::1", 53)),
        (" 127.0.0.1 ", ("127.0.0.1", 53)),
    ],
)
def test_server_entries(entry: str, expected: tuple[str, int]) -> None:
    assert DnsSettings.parse_server(entry, 53) == expected


@pytest.mark.parametrize(
    "entry",
    ["dns.google", "10.0.0.1:", "10.0.0.1:dns", "10.0.0.1:70000", "[::1", "[::1]x", "300.1.1.1"],
)
def test_bad_server_entries_are_config_errors(entry: str) -> None:
    with pytest.raises(ConfigError, match="DNS server") as caught:
        DnsSettings(servers=[entry])
    assert caught.value.field == "dns.servers"
