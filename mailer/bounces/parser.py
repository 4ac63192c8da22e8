"""Reading one inbound report message: a bounce, a delay notice, a complaint, an auto-reply.

``parse_message(data)`` turns the raw bytes into a :class:`Report`:

* RFC 3464 delivery status notifications (``multipart/report; report-type=delivery-status``):
  one :class:`Recipient` per per-recipient block, its Action deciding the kind (``failed`` is a
  bounce, ``delayed`` is not, ``delivered``/``relayed``/``expanded`` is a positive DSN);
* RFC 5965 feedback reports (ARF) become a ``complaint`` with the ``feedback_type``;
* RFC 3834 auto-replies (``Auto-Submitted: auto-replied``, ``X-Autoreply``, vacation
  subjects) become ``autoreply``;
* the many non-standard bounces (qmail, Exim, Exchange, Gmail, Yahoo, Domino...) are read by
  general rules: cut the human-readable text where the returned message starts, find the lines
  that name a failed address, and classify the lines that follow each one.

Each failure text goes through :func:`mailer.bounces.classify.classify_failure`, the same
classifier the delivery engine applies to synchronous SMTP replies.  The headers of the
returned original message (Message-ID, Return-Path, To, ``X-Mailer-*``) are kept so that the
caller can find the ledger row; nothing here touches the database.  Malformed input never
raises: it comes back as kind ``unknown``.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import email.policy
import html
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from typing import Any

from mailer.bounces.classify import HARD_REASONS, classify_failure, find_command

__all__ = ["Recipient", "Report", "parse_message", "report_json"]


@dataclass(slots=True)
class Recipient:
    """One address a report speaks about: whether the failure is ``hard``, its sisimai
    ``reason`` ("userunknown", "feedback", "vacation", "delivered"...), the enhanced
    ``status`` code, the ``diagnostic`` text as the remote side gave it, and the DSN
    ``action`` ("failed", "delayed", "delivered"...; "" when the report has none)."""

    address: str
    hard: bool
    reason: str
    status: str = ""
    diagnostic: str = ""
    action: str = ""


@dataclass(slots=True)
class Report:
    """What one inbound message reports.

    ``kind`` is "bounce", "complaint", "delayed", "autoreply", "delivered" or "unknown".
    ``original_*`` come from the returned original message (its headers or the copy the
    report carries); ``report_to`` is the address the report itself was sent to, which for a
    bounce is the original envelope sender (the VERP return path).  ``mailer_headers`` holds
    the original's ``X-Mailer-*`` headers, names lower-cased."""

    kind: str
    recipients: list[Recipient] = field(default_factory=list)
    feedback_type: str = ""
    original_message_id: str = ""
    original_return_path: str = ""
    original_to: str = ""
    original_from: str = ""
    report_to: str = ""
    mailer_headers: dict[str, str] = field(default_factory=dict)

    @property
    def verp_token(self) -> str:
        """What follows the first "+" in the local part of the original return path (or, when
        the copy lacks one, of the address the report was sent to): ``bounces+TOKEN@host``
        names the ledger row.  "" when neither has one."""
        for address in (self.original_return_path, self.report_to):
            local, _, domain = address.rpartition("@")
            if domain and "+" in local:
                return local.split("+", 1)[1]
        return ""


def report_json(report: Report) -> dict[str, Any]:
    """The report as plain JSON-ready data (the ``mailer bounces parse`` output)."""
    return {
        "kind": report.kind,
        "recipients": [
            {
                "address": recipient.address,
                "hard": recipient.hard,
                "reason": recipient.reason,
                "status": recipient.status,
                "diagnostic": recipient.diagnostic,
                "action": recipient.action,
            }
            for recipient in report.recipients
        ],
        "feedback_type": report.feedback_type,
        "original_message_id": report.original_message_id,
        "original_return_path": report.original_return_path,
        "original_to": report.original_to,
        "report_to": report.report_to,
        "verp_token": report.verp_token,
        "mailer_headers": dict(report.mailer_headers),
    }


def parse_message(data: bytes) -> Report:
    """Parse one raw report message; never raises on malformed input (kind "unknown")."""
    try:
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        return _parse(message, data)
    except Exception:  # a broken message must not stop the inbound pipeline
        return Report(kind="unknown")


# --- addresses ----------------------------------------------------------------------------------

_ADDRESS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z0-9-]{2,}"
_ADDRESS_RE = re.compile(_ADDRESS)
_VALID_ADDRESS_RE = re.compile(rf"^{_ADDRESS}$")


def _clean_address(value: str) -> str:
    """The bare address (domain lower-cased) of a header or DSN field value ("rfc822; <a@b>",
    "Name <a@b>", "@relay:a@b"), or "" if there is no valid one."""
    value = value.strip()
    if ";" in value[:12]:
        value = value.split(";", 1)[1]
    match = _ADDRESS_RE.search(value.replace("<", " ").replace(">", " "))
    if match is None:
        return ""
    # Source routes ("@a.example,@b.example:user@c.example") keep only the mailbox.  The
    # domain is case-insensitive; the local part is kept as written (a VERP token is not).
    local, _, domain = match.group(0).strip(".").rsplit(":", 1)[-1].rpartition("@")
    return f"{local}@{domain.lower()}"


def _header(message: Message, name: str) -> str:
    """A header as text, RFC 2047 words decoded, "" when absent or undecodable."""
    raw = message.get(name)
    if raw is None:
        return ""
    try:
        parts = email.header.decode_header(str(raw))
        return str(email.header.make_header(parts))
    except (LookupError, UnicodeError, ValueError, email.errors.HeaderParseError):
        return str(raw)


# --- message structure --------------------------------------------------------------------------


@dataclass(slots=True)
class _Parts:
    """The parts of a report that matter, found without descending into attached messages."""

    texts: list[str] = field(default_factory=list)
    delivery_status: list[str] = field(default_factory=list)
    feedback_report: list[str] = field(default_factory=list)
    original: Message | None = None


def _payload_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("utf-8", errors="replace")


def _fields_text(part: Message) -> str:
    """The text of a message/delivery-status or message/feedback-report part, whether the
    parser split it into header blocks or left it as a string."""
    payload = part.get_payload()
    if isinstance(payload, list):
        blocks = []
        for block in payload:
            if isinstance(block, Message):
                blocks.append("\n".join(f"{name}: {value}" for name, value in block.items()))
        return "\n\n".join(blocks)
    return _payload_text(part)


_HTML_TAG_RE = re.compile(r"<(?:style|script)\b.*?</(?:style|script)>|<[^>]+>", re.S | re.I)


def _collect(message: Message, parts: _Parts) -> None:
    content_type = message.get_content_type()
    if content_type in ("message/delivery-status", "message/global-delivery-status"):
        parts.delivery_status.append(_fields_text(message))
    elif content_type == "message/feedback-report":
        parts.feedback_report.append(_fields_text(message))
    elif content_type in ("message/rfc822", "message/global"):
        payload = message.get_payload()
        if parts.original is None and isinstance(payload, list) and payload:
            inner = payload[0]
            if isinstance(inner, Message):
                parts.original = inner
    elif content_type in ("text/rfc822-headers", "text/rfc822-header", "message/rfc822-headers"):
        if parts.original is None:
            parts.original = HeaderParser().parsestr(_payload_text(message).lstrip())
    elif message.is_multipart():
        payload = message.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, Message):
                    _collect(child, parts)
    elif message.get_content_maintype() == "multipart":
        payload = message.get_payload()
        if isinstance(payload, str):  # the boundary never shows up: keep the body as text
            parts.texts.append(payload)
    elif content_type == "text/html":
        text = html.unescape(_HTML_TAG_RE.sub(" ", _payload_text(message)))
        parts.texts.append(text)
    elif message.get_content_maintype() == "text" or not message.get_content_maintype():
        parts.texts.append(_payload_text(message))


# --- DSN fields ---------------------------------------------------------------------------------

_GROUP_FIELDS = frozenset(
    {"final-recipient", "original-recipient", "action", "status", "diagnostic-code"}
)
_FIELD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(.*)$")


def _field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 3464 field groups: blocks separated by blank lines, continuation lines unfolded,
    names lower-cased (the first value of a repeated name wins)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
            continue
        if line[0] in " \t" and last:
            current[last] += " " + line.strip()
            continue
        match = _FIELD_RE.match(line)
        if match:
            last = match.group(1).lower()
            if last in current and last in _GROUP_FIELDS:
                # a second recipient written without the blank line that should separate it
                blocks.append(current)
                current = {}
            current.setdefault(last, match.group(2).strip())
    if current:
        blocks.append(current)
    return blocks


# A delivery-status part as it stands in the raw message.  The email package splits such a
# part into header blocks and drops the groups it cannot parse (a "blank" line holding spaces
# ends nothing for it), so the field text is read from the source when it is plain text.
_RAW_DELIVERY_STATUS_RE = re.compile(
    r"^Content-Type:[ \t]*message/(?:global-)?delivery-status\b[^\n]*\n"
    r"(?:[ \t][^\n]*\n|[\w-]+:[^\n]*\n)*?[ \t]*\n(.*?)(?=^--|\Z)",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)


def _raw_delivery_status(data: bytes) -> list[str]:
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    return [
        match.group(1)
        for match in _RAW_DELIVERY_STATUS_RE.finditer(text)
        if re.search(r"^(?:Final|Original)-Recipient:|^Action:", match.group(1), re.I | re.M)
    ]


# More recipients than any real report lists: the rest of a hostile one is ignored.
_MAX_RECIPIENTS = 1000
_RECIPIENT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")


# PowerMTA files each failure under a category of its own (X-PowerMTA-BounceCategory in the
# DSN); where the category names a cause, it is the sender's own verdict and wins over the text.
_POWERMTA_CATEGORIES = {
    "bad-mailbox": "userunknown",
    "bad-domain": "hostunknown",
    "inactive-mailbox": "suspend",
    "quota-issues": "mailboxfull",
    "message-expired": "expired",
    "no-answer-from-host": "networkerror",
    "policy-related": "policyviolation",
    "routing-errors": "systemerror",
    "spam-related": "spamdetected",
    "virus-related": "virusdetected",
    "relaying-issues": "norelaying",
}


def _diagnostic(value: str) -> str:
    """A Diagnostic-Code without its type ("smtp; 550 ..." -> "550 ...")."""
    value = " ".join(value.split())
    head, sep, rest = value.partition(";")
    if sep and len(head) < 24 and " " not in head.strip():
        return rest.strip()
    return value


# --- the human-readable text --------------------------------------------------------------------

# Where the copy of the returned message starts in a plain-text bounce.
_ORIGINAL_MARKER_RE = re.compile(
    r"^[ \t]*(?:(?:-{2,}|={2,}|\*{2,})[ \t]*)?(?:Below this line is a copy|This is a copy"
    r"|(?:The )?Original message|Returned message|Undelivered message|Message headers follow"
    r"|The header of the original message|Headers of the original|Returned mail"
    r"|Original message headers|The body of the message|Text of the original|Forwarded message"
    r"|Your message\W*$)",
    re.IGNORECASE | re.MULTILINE,
)
# A header line of the copied original (not indented, a known name).
_COPIED_HEADER_RE = re.compile(
    r"^(?:Return-Path|Received|DKIM-Signature|Message-Id|X-Received|Delivered-To|Date"
    r"|MIME-Version|Content-Type|X-Mailer|Authentication-Results|Subject|From|To):[ \t]?\S",
    re.IGNORECASE | re.MULTILINE,
)

# A line that is an address: "  user@host", "<user@host>:", "user@host on <date>",
# "<user@host>: host mx said: ...", "user@host (generated from ...)".
_ADDRESS_LINE_RE = re.compile(
    rf"^[ \t]*(?:\d+\.[ \t]*|(?:>>>[ \t]*)?RCPT TO:[ \t]*)?[<\"']?({_ADDRESS})[>\"']?"
    rf"(?=[ \t]*(?::|\.\.\.|,|\(|$|\bon\b))",
    re.MULTILINE | re.IGNORECASE,
)
# A line that starts with an address followed by prose ("user@host Invalid Address, ..."):
# weaker evidence, never taken when the address is on the sender side.
_ADDRESS_LEAD_RE = re.compile(rf"^[ \t]*<?({_ADDRESS})>?[ \t]+\S", re.MULTILINE)
# Sentences that name the failed address inline.
_ADDRESS_PHRASE_RE = re.compile(
    r"(?:delivering your (?:mail|message) to|(?:wasn'?t|was not|could not be|couldn'?t be"
    r"|not be|cannot be|has not been) delivered to:?|delivery to the following recipients?"
    r" (?:failed|has been delayed)[^\n]*|failed recipient:?|undeliverable to|mail to"
    r"|(?:unknown|invalid|failed|bad) (?:user|recipient|address|mailbox)e?s?:)"
    rf"\s*(?:the following (?:recipients?|addresses?):?\s*)?<?({_ADDRESS})>?",
    re.IGNORECASE,
)
_GENERATED_RE = re.compile(rf"generated (?:by|from)\s+<?({_ADDRESS})>?", re.IGNORECASE)


# The part of a report written for people is short; the cap bounds the work on hostile input.
_MAX_HUMAN_TEXT = 32_000


def _human_text(texts: list[str]) -> tuple[str, str]:
    """The report's own words (the text parts, cut where a copy of the original begins) and
    the copy of the original that follows them, if any."""
    text = "\n".join(texts).replace("\r\n", "\n")[:_MAX_HUMAN_TEXT]
    cut = len(text)
    marker = _ORIGINAL_MARKER_RE.search(text)
    if marker and marker.start() > 0:
        cut = marker.start()
    for header in _COPIED_HEADER_RE.finditer(text, 0, cut):
        if header.start() == 0:
            continue
        # Two consecutive header lines mark the copy; a lone "Subject:" is still prose.
        following = text[header.end() :].split("\n", 2)
        if len(following) > 1 and re.match(r"^(?:[\w-]+:|[ \t]+\S)", following[1]):
            cut = header.start()
            break
    rest = text[cut:]
    start = _COPIED_HEADER_RE.search(rest)
    return text[:cut], rest[start.start() :] if start else ""


def _text_blocks(text: str, exclude: set[str]) -> dict[str, str]:
    """Address -> the lines that speak about it, in order of appearance."""
    marks: list[tuple[int, int, str]] = []
    for match in _ADDRESS_LINE_RE.finditer(text):
        marks.append((match.start(), match.end(1), match.group(1)))
    for match in _ADDRESS_PHRASE_RE.finditer(text):
        marks.append((match.start(), match.end(1), match.group(1)))
    starts = {mark[0] for mark in marks}
    weak = [
        (match.start(), match.end(1), match.group(1))
        for match in _ADDRESS_LEAD_RE.finditer(text)
        if match.start() not in starts and match.group(1).lower() not in exclude
    ]
    kept = [mark for mark in marks if mark[2].lower().strip(".") not in exclude] + weak
    marks += weak
    # When every address named is on the sender side, the report is about the sender itself
    # (a message sent to oneself): keep them.
    marks = kept or marks
    if not marks:
        marks = [
            (match.start(), match.end(1), match.group(1))
            for match in _GENERATED_RE.finditer(text)
            if match.group(1).lower() not in exclude
        ]
    marks.sort()
    blocks: dict[str, str] = {}
    for index, (_, end, address) in enumerate(marks):
        stop = marks[index + 1][0] if index + 1 < len(marks) else len(text)
        address = _clean_address(address)
        body = text[end:stop] if stop > end else ""
        blocks[address] = (blocks.get(address, "") + "\n" + body).strip()
    return blocks


def _squeeze(text: str, limit: int = 1000) -> str:
    return " ".join(text.split())[:limit]


# --- kinds --------------------------------------------------------------------------------------

_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|deliver(?:y|ed)? (?:status|failure|failed|report|notification|problem)"
    r"|mail delivery|returned mail|failure notice|delivery has failed|non-?delivery"
    r"|could not be delivered|not delivered|returned to sender|delivery failure"
    r"|mail system error|rejected|bounce|недоставлен|не доставлен|unzustellbar|no entregado",
    re.IGNORECASE,
)
_BOUNCE_FROM_RE = re.compile(
    r"mailer-daemon|postmaster|mail delivery|mail administrator|\bmailer@|dsn|bounce",
    re.IGNORECASE,
)
_DELAY_RE = re.compile(
    r"has been delayed|delivery (?:is |has been )?delayed|warning message only|will be retried"
    r"|will (?:continue to )?(?:try|retry)|still trying|not yet been delivered|\(delay\)",
    re.IGNORECASE,
)
_AUTOREPLY_SUBJECT_RE = re.compile(
    r"^(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|auto:|out of (?:the )?office"
    r"|away (?:from|until)|on vacation|vacation|abwesenheit|respuesta autom|fuera de la oficina"
    r"|réponse automatique|absence)",
    re.IGNORECASE,
)


def _is_autoreply(message: Message) -> bool:
    submitted = _header(message, "Auto-Submitted").strip().lower()
    if submitted.startswith("auto-replied"):
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    precedence = _header(message, "Precedence").strip().lower()
    if precedence == "auto_reply":
        return True
    return bool(_AUTOREPLY_SUBJECT_RE.search(_header(message, "Subject").strip()))


def _looks_like_bounce(message: Message) -> bool:
    return bool(
        _BOUNCE_SUBJECT_RE.search(_header(message, "Subject"))
        or _BOUNCE_FROM_RE.search(_header(message, "From"))
        or _header(message, "Return-Path").strip() == "<>"
    )


# --- the parse ----------------------------------------------------------------------------------


def _parse(message: Message, data: bytes) -> Report:
    parts = _Parts()
    _collect(message, parts)
    if parts.delivery_status:
        raw = _raw_delivery_status(data)[: len(parts.delivery_status)]
        if len(raw) == len(parts.delivery_status):
            parts.delivery_status = raw
    report = Report(kind="unknown")
    human, copied = _human_text(parts.texts)
    if parts.original is None and copied:
        parts.original = HeaderParser().parsestr(copied)
    _fill_original(report, message, parts.original)

    if parts.feedback_report or message.get_param("report-type") == "feedback-report":
        return _complaint(report, parts)

    exclude = _sender_side(report, message)
    dsn_text = "\n\n".join(parts.delivery_status) or _inline_dsn("\n".join(parts.texts))
    if dsn_text:
        recipients = _dsn_recipients(dsn_text, human, exclude)
        if recipients:
            report.recipients = recipients
            report.kind = _dsn_kind(recipients)
            return report

    if _looks_like_bounce(message):
        recipients = _plain_recipients(message, human, exclude, report)
        if recipients:
            report.recipients = recipients
            delayed = recipients[0].action == "delayed"
            report.kind = "delayed" if delayed else "bounce"
            return report
    if _is_autoreply(message):
        address = _clean_address(_header(message, "From"))
        report.kind = "autoreply"
        report.recipients = [Recipient(address=address, hard=False, reason="vacation")]
        return report
    if _looks_like_bounce(message):
        report.kind = "bounce"
    return report


_INLINE_DSN_RE = re.compile(r"^(?:[\w-]+-MTA|Final-Recipient|Original-Recipient):", re.I | re.M)


def _inline_dsn(text: str) -> str:
    """DSN fields written straight into the body (a report whose MIME boundary is broken),
    from the first one on; "" when there are none."""
    if not re.search(r"^(?:Final|Original)-Recipient:", text, re.I | re.M):
        return ""
    start = _INLINE_DSN_RE.search(text)
    return text[start.start() :] if start else ""


def _fill_original(report: Report, message: Message, original: Message | None) -> None:
    report.report_to = _clean_address(_header(message, "X-Original-To") or _header(message, "To"))
    if original is None:
        return
    report.original_message_id = _header(original, "Message-ID").strip()
    report.original_return_path = _clean_address(_header(original, "Return-Path"))
    report.original_to = _clean_address(_header(original, "To"))
    report.original_from = _clean_address(_header(original, "From"))
    report.mailer_headers = {
        name.lower(): _header(original, name).strip()
        for name in original
        if name.lower().startswith("x-mailer-")
    }


def _sender_side(report: Report, message: Message) -> set[str]:
    """Addresses that cannot be the failed recipient: the report's own sender and
    destination, and the original's sender."""
    found = {_clean_address(_header(message, name)) for name in ("From", "To", "Return-Path")}
    found |= {report.original_from, report.original_return_path, report.report_to}
    found.discard("")
    return {address.lower() for address in found}


def _complaint(report: Report, parts: _Parts) -> Report:
    fields: dict[str, list[str]] = {}
    for text in parts.feedback_report:
        for line in text.replace("\r\n", "\n").split("\n"):
            match = _FIELD_RE.match(line)
            if match:
                fields.setdefault(match.group(1).lower(), []).append(match.group(2).strip())
    report.kind = "complaint"
    report.feedback_type = (fields.get("feedback-type") or [""])[0].lower()
    addresses = [_clean_address(value) for value in fields.get("removal-recipient", [])]
    if not any(addresses):
        addresses = [_clean_address(value) for value in fields.get("original-rcpt-to", [])]
    if not any(addresses) and report.original_to:
        addresses = [report.original_to]
    addresses = list(dict.fromkeys(address for address in addresses if address)) or [""]
    report.recipients = [
        Recipient(address=address, hard=False, reason="feedback", diagnostic=report.feedback_type)
        for address in addresses
    ]
    return report


def _dsn_recipients(dsn_text: str, human: str, exclude: set[str]) -> list[Recipient]:
    blocks = [
        block
        for block in _field_blocks(dsn_text)
        if any(name in block for name in (*_RECIPIENT_FIELDS, "action"))
    ][:_MAX_RECIPIENTS]
    text_blocks = _text_blocks(human, exclude)
    global_command = find_command(human)
    recipients: list[Recipient] = []
    for block in blocks:
        address = ""
        for name in _RECIPIENT_FIELDS:
            address = _clean_address(block.get(name, ""))
            if address and "." in address.rsplit("@", 1)[1]:
                break
            address = ""
        if not address:
            unused = [
                known for known in text_blocks if known not in {r.address for r in recipients}
            ]
            address = unused[0] if unused else ""
        if not address:
            continue
        action = block.get("action", "").split()[0].lower() if block.get("action") else ""
        if action.startswith("deliver"):
            action = "delivered"
        status_field = block.get("status", "")
        status = status_field.split()[0] if status_field else ""
        if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status):
            status = ""
        diagnostic = _diagnostic(block.get("diagnostic-code", ""))
        context = text_blocks.get(address, "")
        if not context and len(blocks) == 1 and len(text_blocks) <= 1:
            context = next(iter(text_blocks.values()), "") or human
        text = diagnostic or _squeeze(context) or status_field
        command = find_command(diagnostic) or find_command(context) or global_command
        category = block.get("x-powermta-bouncecategory", "").strip().lower()
        recipients.append(
            _recipient(
                address,
                action or "failed",
                text,
                status,
                command,
                known_reason=_POWERMTA_CATEGORIES.get(category, ""),
            )
        )
    return recipients


def _recipient(
    address: str, action: str, text: str, status: str, command: str, known_reason: str = ""
) -> Recipient:
    delayed = action == "delayed"
    classification = classify_failure(
        text,
        status=status,
        command=command,
        temporary=delayed or action == "delivered",
        report=True,
    )
    reason = classification.reason
    hard = classification.hard
    if known_reason and classification.reason != "delivered":
        reason = known_reason
        hard = reason in HARD_REASONS and not classification.status.startswith("4")
    if action in ("delivered", "relayed", "expanded"):
        reason = "delivered"
    elif delayed and reason in ("undefined", "networkerror", "systemerror"):
        # A delay notice without a precise cause: the message is ageing in a queue.
        reason = "expired"
    return Recipient(
        address=address,
        hard=hard and action == "failed",
        reason=reason,
        status=classification.status,
        diagnostic=_squeeze(text),
        action=action,
    )


def _dsn_kind(recipients: list[Recipient]) -> str:
    actions = {recipient.action for recipient in recipients}
    if "failed" in actions:
        return "bounce"
    if "delayed" in actions:
        return "delayed"
    return "delivered"


def _plain_recipients(
    message: Message, human: str, exclude: set[str], report: Report
) -> list[Recipient]:
    blocks = _text_blocks(human, exclude)
    if not blocks:
        if not _looks_like_bounce(message) or not report.original_to:
            return []
        blocks = {report.original_to: ""}
    delayed = bool(_DELAY_RE.search(human) or _DELAY_RE.search(_header(message, "Subject")))
    action = "delayed" if delayed else "failed"
    global_command = find_command(human)
    recipients = []
    for address, context in blocks.items():
        text = context if re.search(r"[A-Za-z]{3}", context) else human
        command = find_command(text) or global_command
        recipients.append(_recipient(address, action, _squeeze(text), "", command))
    return recipients
