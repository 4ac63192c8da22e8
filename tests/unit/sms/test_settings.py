"""``sms_gateways``: TOML and environment forms, secrets kept secret, checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailer.core.config import Settings, SmsGatewaySettings
from mailer.core.errors import ConfigError
from mailer.sms.http import HttpGateway
from mailer.sms.runner import gateways_from_settings
from mailer.sms.smpp import SmppGateway


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MAILER_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("MAILER_SMS_GATEWAYS", raising=False)


def test_no_gateways_by_default() -> None:
    assert Settings().sms_gateways == []
    assert gateways_from_settings(Settings()) == {}


def test_gateways_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MAILER_SMS_GATEWAYS",
        json.dumps(
            [
                {"name": "claro", "host": "10.0.0.5", "system_id": "entidad", "password": "s3cr"},
                {"name": "rest", "kind": "http", "http_url": "https://api.example/sms"},
            ]
        ),
    )
    settings = Settings()
    claro, _rest = settings.sms_gateways
    assert (claro.kind, claro.host, claro.port, claro.window) == ("smpp", "10.0.0.5", 2775, 100)
    assert claro.password.get_secret_value() == "s3cr"
    assert "s3cr" not in repr(claro)
    gateways = gateways_from_settings(settings)
    assert isinstance(gateways["claro"], SmppGateway)
    assert isinstance(gateways["rest"], HttpGateway)


def test_gateways_from_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "mailer.toml"
    toml.write_text(
        """
[[sms_gateways]]
name = "claro"
system_id = "entidad"
password = "s3cr"
rate_per_second = 50
receipt_text_id = "decimal"

[[sms_gateways]]
name = "rest"
kind = "http"
http_url = "https://api.example/sms"
http_auth = "bearer"
http_token = "t0k"
http_template = { to = "{to}", body = "{text}" }
http_status_map = { DLV = "delivered", UND = "undelivered" }
""",
        encoding="utf-8",
    )
    monkeypatch.setenv("MAILER_CONFIG", str(toml))
    claro, rest = Settings().sms_gateways
    assert (claro.rate_per_second, claro.receipt_text_id) == (50, "decimal")
    assert rest.http_template == {"to": "{to}", "body": "{text}"}
    assert rest.http_status_map == {"DLV": "delivered", "UND": "undelivered"}


def test_checks() -> None:
    with pytest.raises(ConfigError, match="system_id"):
        SmsGatewaySettings(name="x")
    with pytest.raises(ConfigError, match="8 characters"):
        SmsGatewaySettings(name="x", system_id="a", password="123456789")
    with pytest.raises(ConfigError, match="http_url"):
        SmsGatewaySettings(name="x", kind="http")
    settings = Settings(
        sms_gateways=[
            SmsGatewaySettings(name="same", system_id="a"),
            SmsGatewaySettings(name="same", system_id="b"),
        ]
    )
    with pytest.raises(ConfigError, match="unique"):
        gateways_from_settings(settings)
