"""Bounces and complaints: reading DSN, ARF and auto-reply messages and classifying delivery
failures (synchronous SMTP replies included) with sisimai's reason vocabulary.

The parsing API is pure (no I/O, no database): ``classify_smtp`` and ``is_rate_limited`` for
the delivery engine, ``parse_message`` and ``report_json`` for inbound report messages.
``handle_inbound`` acts on one inbound message (bounce, complaint, mailto unsubscribe) and
``InboundReceiver`` / ``run_inbound`` are the SMTP server that receives them;
``MailboxPoller`` / ``poll_once`` fetch them from an IMAP or POP3 mailbox instead."""

from mailer.bounces.classify import Classification, classify_smtp, is_rate_limited
from mailer.bounces.inbound import InboundReceiver, run_inbound
from mailer.bounces.mailbox import (
    MailboxError,
    MailboxLoginFailed,
    MailboxPoller,
    PollSummary,
    poll_once,
)
from mailer.bounces.parser import Recipient, Report, parse_message, report_json
from mailer.bounces.service import InboundOutcome, handle_inbound

__all__ = [
    "Classification",
    "InboundOutcome",
    "InboundReceiver",
    "MailboxError",
    "MailboxLoginFailed",
    "MailboxPoller",
    "PollSummary",
    "Recipient",
    "Report",
    "classify_smtp",
    "handle_inbound",
    "is_rate_limited",
    "parse_message",
    "poll_once",
    "report_json",
    "run_inbound",
]
