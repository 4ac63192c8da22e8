"""One contract for every SmsGateway: the SMPP gateway (real SMSC), the HTTP gateway (real
HTTP server) and the capture gateway of the embedded default."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mailer.core.config import SmsGatewaySettings
from mailer.sms.capture import CaptureGateway
from mailer.sms.http import HttpGateway
from mailer.sms.smpp import SmppGateway
from mailer.sms.types import SmsGateway, SmsOutbound
from tests.integration.sms.conftest import Running, require_smsc
from tests.integration.sms.test_http_gateway import Provider
from tests.smsc import Smsc


@pytest.fixture(params=["smpp", "http", "capture"])
def gateway(request: pytest.FixtureRequest) -> Iterator[SmsGateway]:
    if request.param == "smpp":
        require_smsc()
        with Smsc(receipt_delay_ms=10) as smsc:
            yield SmppGateway(smsc.gateway_settings())
    elif request.param == "http":
        provider = Provider()
        try:
            yield HttpGateway(
                SmsGatewaySettings(
                    name="rest", kind="http", http_url=provider.url, http_id_path="messages.0.id"
                )
            )
        finally:
            provider.close()
    else:
        yield CaptureGateway()


def test_the_gateway_contract(
    gateway: SmsGateway, run_gateway: Callable[[SmsGateway], Running]
) -> None:
    assert isinstance(gateway, SmsGateway)
    running = run_gateway(gateway)
    messages: list[Any] = [
        SmsOutbound(ref=30, to="+51987000001", sender="ENTIDAD", text="Hola"),
        SmsOutbound(ref=10, to="+51987000002", sender="ENTIDAD", text="a" * 200),
        SmsOutbound(ref=20, to="+51987000003", sender="ENTIDAD", text="Adiós"),
    ]
    results = running.submit(messages)
    assert [r.ref for r in results] == [30, 10, 20]  # one per message, in order
    assert {r.status for r in results} == {"submitted"}
    assert all(r.provider_ids for r in results)
    assert all(pid == pid.strip().lower() for r in results for pid in r.provider_ids)
    assert running.submit([]) == []
