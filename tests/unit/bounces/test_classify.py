"""classify_smtp and is_rate_limited on synchronous SMTP replies, as the delivery engine
sees them (the text may start with the refused command); classify_failure on the failure
texts bounce reports quote."""

from __future__ import annotations

import pytest

from mailer.bounces import Classification, classify_smtp, is_rate_limited
from mailer.bounces.classify import classify_failure, find_command


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (
            550,
            "5.1.1 <x@y.example>: Recipient address rejected: User unknown",
            Classification(hard=True, reason="userunknown", status="5.1.1"),
        ),
        (
            550,
            "RCPT: 550 5.1.1 <x@y.example>: Recipient address rejected: User unknown",
            Classification(hard=True, reason="userunknown", status="5.1.1"),
        ),
        (
            552,
            "5.2.2 Mailbox full",
            Classification(hard=False, reason="mailboxfull", status="5.2.2"),
        ),
        (
            451,
            "4.7.1 rate limited",
            Classification(hard=False, reason="toomanyconn", status="4.7.1"),
        ),
        (
            550,
            "RCPT: 550 No such user here",
            Classification(hard=True, reason="userunknown", status="5.0.0"),
        ),
        (
            550,
            "DATA: 550 User unknown",
            Classification(hard=False, reason="filtered", status="5.0.0"),
        ),
        (
            550,
            "MAIL: 553 5.1.8 Domain of sender address does not exist",
            Classification(hard=False, reason="rejected", status="5.1.8"),
        ),
        (
            554,
            "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            Classification(hard=False, reason="blocked", status="5.7.1"),
        ),
        (
            550,
            "5.7.26 Unauthenticated email is not accepted due to domain's DMARC policy",
            Classification(hard=False, reason="authfailure", status="5.7.26"),
        ),
        (
            554,
            "5.6.0 This message has been scored as spam",
            Classification(hard=False, reason="spamdetected", status="5.6.0"),
        ),
        (
            550,
            "5.2.1 The email account that you tried to reach is disabled.",
            Classification(hard=False, reason="suspend", status="5.2.1"),
        ),
        (
            550,
            "5.1.6 recipient no longer on server",
            Classification(hard=True, reason="hasmoved", status="5.1.6"),
        ),
        (
            554,
            "5.3.4 Message too big for system",
            Classification(hard=False, reason="mesgtoobig", status="5.3.4"),
        ),
        (
            550,
            "HELO: 550 5.7.1 Access denied",
            Classification(hard=False, reason="blocked", status="5.7.1"),
        ),
        (
            556,
            "5.1.10 Recipient address has null MX",
            Classification(hard=True, reason="notaccept", status="5.1.10"),
        ),
        (250, "2.0.0 Ok: queued", Classification(hard=False, reason="delivered", status="2.0.0")),
        (None, "", Classification(hard=False, reason="undefined", status="")),
    ],
)
def test_classify_smtp(code: int | None, text: str, expected: Classification) -> None:
    assert classify_smtp(code, text) == expected


def test_temporary_user_unknown_is_not_hard() -> None:
    """A 4xx is retried, so even an "unknown user" answer must not suppress the address."""
    result = classify_smtp(450, "4.1.1 <x@y.example>: Recipient address rejected: User unknown")
    assert result.reason == "userunknown"
    assert result.hard is False


def test_status_ignores_ip_addresses_and_versions() -> None:
    result = classify_smtp(554, "host 192.0.2.5.4 said: v1.2.3 rejected")
    assert result.status == "5.0.0"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (421, "4.7.0 Try again later, closing connection."),
        (451, "4.7.1 rate limited"),
        (421, "4.7.28 Our system has detected an unusual rate of unsolicited mail"),
        (452, "4.3.2 Connection rate limit exceeded."),
        (450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"),
        (421, "Too many concurrent SMTP connections from this IP address; please try again later"),
        (451, "Throttled: too many messages from your host"),
        (550, "5.2.1 The user you are trying to contact is receiving mail at a rate that prevents"),
    ],
)
def test_rate_limited(code: int, text: str) -> None:
    assert is_rate_limited(code, text)
    assert not classify_smtp(code, text).hard


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.1.1 User unknown"),
        (552, "5.2.2 Mailbox full"),
        (554, "5.7.1 Message rejected as spam"),
        (450, "4.2.2 Mailbox full"),
    ],
)
def test_not_rate_limited(code: int, text: str) -> None:
    assert not is_rate_limited(code, text)


@pytest.mark.parametrize(
    ("text", "status", "command", "reason"),
    [
        # A quoted reply that names no command: sisimai reads "unknown user" as a filter...
        ("550 : User unknown", "", "", "filtered"),
        ("The email account that you tried to reach does not exist.", "5.0.0", "", "filtered"),
        # ...unless the status code says the address is unknown,
        ("550 5.1.1 <x@y.example>... User Unknown", "", "", "userunknown"),
        # or the form of the reply shows it answered RCPT (sendmail, Postfix),
        ("550 x@y.example... No such user", "5.0.0", "", "userunknown"),
        ("550 <x@y.example>: Recipient address rejected: User unknown", "", "", "userunknown"),
        # or the provider says in so many words that it has no such account,
        (
            "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com)",
            "5.0.0",
            "DATA",
            "userunknown",
        ),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", "", "", "userunknown"),
        # or there is no SMTP reply at all: the reporting MTA's own directory lookup.
        ("The recipient name is not recognized", "", "", "userunknown"),
        ("550 User unknown", "", "RCPT", "userunknown"),
        ("550 User unknown", "", "DATA", "filtered"),
    ],
)
def test_unknown_user_in_a_report(text: str, status: str, command: str, reason: str) -> None:
    result = classify_failure(text, status=status, command=command, report=True)
    assert result.reason == reason
    assert result.hard is (reason == "userunknown")


def test_a_live_reply_without_a_command_is_taken_at_its_word() -> None:
    assert classify_smtp(550, "User unknown").reason == "userunknown"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("550 5.2.0 Mail rejete. Mail rejected. ofr_506 [506]", "spamdetected"),
        ("421 mwinf5c77 ME Service refuse. Veuillez essayer plus tard. OFR_999 [999]", "blocked"),
        ("550 5.5.0 Le compte du destinataire est bloque. LPN007_426", "suspend"),
        ("552 5.1.1 Boite du destinataire pleine. Recipient overquota. OFR_417", "mailboxfull"),
    ],
)
def test_orange_and_la_poste_codes(text: str, reason: str) -> None:
    assert classify_failure(text, report=True).reason == reason


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("550 550 5.1.1 <x@y.example>... User Unknown (state 14).", "RCPT"),
        ("550 550 Unknown user x@y.example (state 18).", "DATA"),
        ("550 550 5.7.1 <x@y.example>... Access denied (state 13).", "HELO"),
    ],
)
def test_gmail_states_name_the_command(text: str, command: str) -> None:
    assert find_command(text) == command


def test_cpanel_account_or_domain_may_not_exist_is_an_unknown_host() -> None:
    text = (
        "The mail server could not deliver mail to x@y.example.  The account or domain may not"
        " exist, they may be blacklisted, or missing the proper dns entries."
    )
    result = classify_failure(text, report=True)
    assert (result.reason, result.hard) == ("hostunknown", True)
