"""Signatures checked by an independent implementation: the ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import json
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from mailer.webhooks import signing


def test_secret_is_whsec_and_32_random_bytes() -> None:
    secret = signing.generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert signing.generate_secret() != secret


def test_signature_verifies_with_standardwebhooks() -> None:
    secret = signing.generate_secret()
    body = json.dumps({"type": "email.sent", "data": {"email": "ñandú@example.pe"}}).encode()
    headers = signing.headers([secret], "msg_abc", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers) == json.loads(body)


@pytest.mark.parametrize("part", ["body", "id", "timestamp", "secret"])
def test_any_change_breaks_the_signature(part: str) -> None:
    secret = signing.generate_secret()
    body = b'{"type":"email.opened"}'
    now = int(time.time())
    headers = signing.headers([secret], "msg_1", now, body)
    if part == "body":
        body = b'{"type":"email.clicked"}'
    elif part == "id":
        headers["webhook-id"] = "msg_2"
    elif part == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        secret = signing.generate_secret()
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_rotation_signs_with_both_secrets() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b'{"type":"sms.delivered"}'
    headers = signing.headers([new, old], "msg_9", int(time.time()), body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(body, headers)
    Webhook(old).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, headers)


def test_stale_timestamp_is_refused_by_receivers() -> None:
    secret = signing.generate_secret()
    body = b"{}"
    headers = signing.headers([secret], "msg_old", int(time.time()) - 3600, body)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(body, headers)
