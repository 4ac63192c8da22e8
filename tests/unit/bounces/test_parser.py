"""parse_message on the kinds of report it must tell apart, and report_json's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailer.bounces import parse_message, report_json

SAMPLES = Path(__file__).resolve().parents[2] / "fixtures" / "bounces" / "samples"

VERP_DSN = b"""\
Return-Path: <>
From: MAILER-DAEMON@mx.sender.example (Mail Delivery System)
To: bounces+l7Qx2-9f@bounce.sender.example
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain

<ana@peru.example>: host mx.peru.example[192.0.2.7] said: 550 5.1.1
    <ana@peru.example>: Recipient address rejected: User unknown (in reply to
    RCPT TO command)

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.sender.example

Final-Recipient: rfc822; ana@peru.example
Original-Recipient: rfc822;ana@peru.example
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <ana@peru.example>: Recipient address
    rejected: User unknown

--B1
Content-Type: text/rfc822-headers

Return-Path: <bounces+l7Qx2-9f@bounce.sender.example>
Message-ID: <campaign-12.row-345@sender.example>
From: Tienda <news@sender.example>
To: ana@peru.example
X-Mailer-Campaign: 12
X-Mailer-Row: 345
Subject: Ofertas

--B1--
"""


def test_dsn_with_verp_return_path() -> None:
    report = parse_message(VERP_DSN)
    assert report.kind == "bounce"
    [recipient] = report.recipients
    assert recipient.address == "ana@peru.example"
    assert (recipient.hard, recipient.reason, recipient.status) == (True, "userunknown", "5.1.1")
    assert recipient.action == "failed"
    assert "User unknown" in recipient.diagnostic
    assert report.original_message_id == "<campaign-12.row-345@sender.example>"
    assert report.original_return_path == "bounces+l7Qx2-9f@bounce.sender.example"
    assert report.original_to == "ana@peru.example"
    assert report.report_to == "bounces+l7Qx2-9f@bounce.sender.example"
    assert report.verp_token == "l7Qx2-9f"
    assert report.mailer_headers == {"x-mailer-campaign": "12", "x-mailer-row": "345"}


def test_verp_token_falls_back_to_the_report_destination() -> None:
    without_copy = VERP_DSN.split(b"--B1\nContent-Type: text/rfc822-headers")[0] + b"--B1--\n"
    report = parse_message(without_copy)
    assert report.kind == "bounce"
    assert report.original_message_id == ""
    assert report.verp_token == "l7Qx2-9f"


def test_delayed_dsn_is_not_a_bounce() -> None:
    report = parse_message((SAMPLES / "rfc3464-07.eml").read_bytes())
    assert report.kind == "delayed"
    [recipient] = report.recipients
    assert recipient.address == "kijitora@example.net"
    assert recipient.action == "delayed"
    assert recipient.hard is False
    assert recipient.reason == "expired"


def test_delayed_plain_text_notice() -> None:
    report = parse_message((SAMPLES / "lhost-gmail-06.eml").read_bytes())
    assert report.kind == "delayed"
    assert [(r.address, r.reason, r.hard) for r in report.recipients] == [
        ("kijitora@example.jp", "mailboxfull", False)
    ]


def test_positive_dsn_is_delivered() -> None:
    report = parse_message((SAMPLES / "rfc3464-28.eml").read_bytes())
    assert report.kind == "delivered"
    [recipient] = report.recipients
    assert (recipient.address, recipient.reason, recipient.hard) == (
        "kijitora@neko.example.jp",
        "delivered",
        False,
    )
    assert recipient.status == "2.1.5"


def test_arf_complaint() -> None:
    report = parse_message((SAMPLES / "arf-16.eml").read_bytes())
    assert report.kind == "complaint"
    assert report.feedback_type == "abuse"
    assert len(report.recipients) == 7
    assert {r.reason for r in report.recipients} == {"feedback"}
    assert not any(r.hard for r in report.recipients)


def test_arf_opt_out_names_the_removal_recipient() -> None:
    report = parse_message((SAMPLES / "arf-12.eml").read_bytes())
    assert (report.kind, report.feedback_type) == ("complaint", "opt-out")
    assert [r.address for r in report.recipients] == ["user@example.com"]


def test_auto_reply() -> None:
    report = parse_message((SAMPLES / "rfc3834-01.eml").read_bytes())
    assert report.kind == "autoreply"
    assert [(r.address, r.reason, r.hard) for r in report.recipients] == [
        ("kijitora@example.net", "vacation", False)
    ]


def test_vacation_subject_without_headers() -> None:
    message = (
        b"From: ana@peru.example\nTo: news@sender.example\nSubject: Out of office\n\nBack soon."
    )
    assert parse_message(message).kind == "autoreply"


def test_plain_text_bounce_by_general_rules() -> None:
    message = b"""\
From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: bounces+t0k@bounce.sender.example
Subject: Mail delivery failed: returning message to sender

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  luis@lima.example
    host mx.lima.example [192.0.2.9]
    SMTP error from remote mail server after RCPT TO:<luis@lima.example>:
    552 5.2.2 Mailbox quota exceeded

------ This is a copy of the message, including all the headers. ------

Return-path: <bounces+t0k@bounce.sender.example>
Message-ID: <m1@sender.example>
From: news@sender.example
To: luis@lima.example
Subject: Hola

Hola
"""
    report = parse_message(message)
    assert report.kind == "bounce"
    assert [(r.address, r.reason, r.hard, r.status) for r in report.recipients] == [
        ("luis@lima.example", "mailboxfull", False, "5.2.2")
    ]
    assert report.original_message_id == "<m1@sender.example>"
    assert report.verp_token == "t0k"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage \x80\x81",
        bytes(range(256)) * 20,
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n",
        b"Subject: hello\n\nJust a normal letter, nothing to report.",
    ],
)
def test_garbage_is_unknown(data: bytes) -> None:
    report = parse_message(data)
    assert report.kind == "unknown"
    assert report.recipients == []


def test_report_json_shape() -> None:
    payload = report_json(parse_message(VERP_DSN))
    assert payload["kind"] == "bounce"
    assert payload["recipients"] == [
        {
            "address": "ana@peru.example",
            "hard": True,
            "reason": "userunknown",
            "status": "5.1.1",
            "diagnostic": "550 5.1.1 <ana@peru.example>: Recipient address rejected: User unknown",
            "action": "failed",
        }
    ]
    assert payload["verp_token"] == "l7Qx2-9f"
    assert payload["feedback_type"] == ""


POWERMTA_DSN = b"""\
Return-Path: <>
From: postmaster@mta.sender.example
To: bounces@sender.example
Subject: Delivery report
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="P1"

--P1
Content-Type: text/plain

Hello, this is the mail server on mta.sender.example.

<ana@peru.example> delivery failed; will not continue trying

--P1
Content-Type: message/delivery-status

Reporting-MTA: dns;mta.sender.example
X-PowerMTA-VirtualMTA: mta.sender.example

Final-Recipient: rfc822;ana@peru.example
Action: failed
Status: 5.0.0 (undefined status)
Remote-MTA: dns;mx.peru.example (192.0.2.7)
Diagnostic-Code: smtp;550 Requested action not taken
X-PowerMTA-BounceCategory: %s

--P1--
"""


@pytest.mark.parametrize(
    ("category", "reason", "hard"),
    [
        (b"bad-mailbox", "userunknown", True),
        (b"quota-issues", "mailboxfull", False),
        (b"spam-related", "spamdetected", False),
        (b"other", "undefined", False),
    ],
)
def test_powermta_category_names_the_reason(category: bytes, reason: str, hard: bool) -> None:
    [recipient] = parse_message(POWERMTA_DSN % category).recipients
    assert recipient.address == "ana@peru.example"
    assert (recipient.reason, recipient.hard) == (reason, hard)
