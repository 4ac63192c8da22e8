"""Classifying one delivery failure text: an SMTP reply the delivery engine received, or the
diagnostic a bounce message carries for one recipient.

The answer uses sisimai's reason vocabulary (``userunknown``, ``mailboxfull``, ``blocked``...)
and its hard/soft convention: a reason decides, not the status class.  Only the reasons that
say the address itself can never receive mail are hard (``userunknown``, ``hostunknown``,
``hasmoved`` and ``notaccept``); everything else, a full mailbox or a 5.7.1 refusal included,
is soft.  Where we part from sisimai: a temporary (4xx) failure is never hard, whatever its
reason, because it is retried.

How a reason is chosen, in order:

1. a numbered cause code of a provider that publishes its codes (Orange and La Poste's
   "OFR_506", "LPN007_426"...);
2. phrases that name the cause precisely (mailbox full, account disabled, SPF/DMARC, rate
   limits, spam, virus...) win over everything else;
3. then the SMTP command the reply answered: a refused HELO or connection is ``blocked``,
   a refused MAIL FROM is ``rejected`` (or ``blocked`` if the text blames the client host);
4. then the broader phrases (sender rejected, unknown user, unknown host, blocklists,
   expired...), with sisimai's rule that "user unknown" is ``userunknown`` only at RCPT time
   or with a status that says so (x.1.1): in answer to DATA, or in a report that names no
   command but quotes an SMTP reply, it is ``filtered`` (see :func:`_unknown_user`);
5. then the enhanced status code (RFC 3463) alone; then ``undefined``.

The command comes from the caller or from the text: "in reply to RCPT TO command", Exim's
"after end of data", a sendmail transcript's ">>> DATA", Gmail's "(state 14)"...

Nothing here does I/O; ``mailer.bounces.parser`` calls :func:`classify_failure` for every
recipient of a bounce message, the delivery engine calls :func:`classify_smtp`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "HARD_REASONS",
    "Classification",
    "classify_failure",
    "classify_smtp",
    "find_command",
    "find_status",
    "is_rate_limited",
]

# Reasons that mean the address cannot receive mail at all (sisimai's hard bounces).
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})


@dataclass(frozen=True, slots=True)
class Classification:
    """What one failure means: ``hard`` (stop mailing the address), sisimai's ``reason`` name,
    and the enhanced ``status`` code found in the text or derived from the reply code
    ("5.1.1", "4.0.0"; "" when there is neither)."""

    hard: bool
    reason: str
    status: str


# --- status codes and commands -----------------------------------------------------------------

# An enhanced status code ("5.1.1", "4.7.26", "#5.1.0"), not part of an IP address or a
# version number: no digit, dot or "v" right before it, no ".digit" right after it.
_STATUS_RE = re.compile(r"(?<![\d.vV])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
# A basic reply code at the start of a line or after "said:"/"reply:" ("550 ", "550-", "550:").
_REPLY_CODE_RE = re.compile(r"(?:^|[\s;:(<'\"])([245]\d\d)(?=[\s:-]|$)")

# Where an MTA says which command the reply answered ("in reply to RCPT TO command", exim's
# "after end of data", sendmail's ">>> DATA", Yahoo's "[MAIL_FROM]", qmail's phrases...).
_COMMAND_CONTEXT_RE = re.compile(
    r"(?:in reply to|after|>>>|most progress was|did not like our)\s*"
    r"(rcpt[ _]?to|mail[ _]?from|end of data|data|helo|ehlo|initial connection)"
    r"|\[(rcpt_to|mail_from|data)\]"
    r"|(does not like recipient|sender was rejected|my name was rejected)"
    r"|\(state (1[3-8])\)",
    re.IGNORECASE,
)
# Gmail ends the remote reply it quotes with "(state N)", the SMTP state it had reached:
# 13 is the greeting/EHLO, 14 RCPT, 15 to 18 the DATA phase.
_GMAIL_STATES = {"13": "HELO", "14": "RCPT"}


def _command_name(phrase: str) -> str:
    phrase = phrase.lower()
    if phrase.isdigit():
        return _GMAIL_STATES.get(phrase, "DATA")
    if phrase.startswith("rcpt") or "recipient" in phrase:
        return "RCPT"
    if phrase.startswith("mail") or "sender" in phrase:
        return "MAIL"
    if "data" in phrase:
        return "DATA"
    return "HELO"


def find_status(text: str) -> str:
    """The most specific enhanced status code in *text*: the first one that is not a
    generic x.0.0 or 4.4.7, else the first generic one, else ""."""
    generic = ""
    for match in _STATUS_RE.finditer(text):
        klass, subject, detail = match.groups()
        if int(subject) > 7:
            continue
        code = f"{klass}.{int(subject)}.{int(detail)}"
        if (subject == "0" and detail == "0") or code == "4.4.7":
            generic = generic or code
            continue
        return code
    return generic


def find_reply_code(text: str) -> int | None:
    """The first basic SMTP reply code (250, 452, 550...) in *text*, or None."""
    match = _REPLY_CODE_RE.search(text)
    return int(match.group(1)) if match else None


def find_command(text: str) -> str:
    """The SMTP command a failure answered, as "RCPT", "MAIL", "DATA" or "HELO" ("" if the
    text does not say): the last one the text names, since transcripts run in order."""
    found = ""
    for match in _COMMAND_CONTEXT_RE.finditer(text):
        found = _command_name(next(group for group in match.groups() if group))
    return found


# --- reason phrases -------------------------------------------------------------------------

# Reasons that say precisely what went wrong, checked first, in this order.
_PRECISE: tuple[tuple[str, str], ...] = (
    (
        "mailboxfull",
        r"mail ?box (?:is )?(?:full|over|exceed)|mail ?box.{0,40}\bfull\b|over ?quota"
        r"|quota (?:exceeded|full|violation)|exceed\w* (?:\w+ )?(?:storage|quota)"
        r"|out of (?:storage|disk) space|(?:insufficient|not enough) (?:disk |storage )?space"
        r"|user is over|inbox is full|account is full|mailbox size limit|disk quota"
        r"|quotaexceeded|storage (?:allocation|limit) exceeded|is full",
    ),
    (
        "mesgtoobig",
        r"message (?:is )?too (?:big|large)|message size exceeds|size (?:limit )?exceed"
        r"|exceeds? (?:the )?(?:maximum|max|fixed) (?:allowed )?(?:message )?size"
        r"|message length exceeds|line (?:length )?limit exceeded|message too long",
    ),
    ("exceedlimit", r"exceeds? (?:the )?(?:administrative|per-?mailbox) limit"),
    (
        "suspend",
        r"(?:account|mailbox|user|address)\b.{0,40}\b(?:disabled|suspended|deactivated"
        r"|locked|on hold|is blocked|is not active|expired)"
        r"|disabled (?:recipient|mailbox|account|user)|account (?:is )?(?:inactive|closed)"
        r"|recipient account is blocked|temporar(?:il)?y (?:locked|disabled|suspended)",
    ),
    ("hasmoved", r"no longer on (?:this )?server|(?:address|mailbox) has (?:been )?moved"),
    # cPanel's Exim, when routing found no host: "The account or domain may not exist, they
    # may be blacklisted, or missing the proper dns entries."
    ("hostunknown", r"(?:account|address) or domain may not exist"),
    (
        "norelaying",
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)"
        r"|not (?:configured|permitted|allowed|authori[sz]ed) to relay|unable to relay"
        r"|we do not relay|no relaying|relaying (?:mail )?(?:to .{0,60})?(?:is )?not allowed",
    ),
    (
        "authfailure",
        r"\bdmarc\b|\bspf\b|sender policy framework|dkim (?:signature )?(?:verification )?fail"
        r"|unauthenticated (?:e-?mail|message)|authentication checks? failed",
    ),
    (
        "requireptr",
        r"\bptr\b|reverse (?:dns|lookup|hostname|resolution)|\brdns\b"
        r"|cannot find your (?:reverse )?hostname|no reverse|hostname (?:does not|doesn't) resolve",
    ),
    ("badreputation", r"(?:low|bad|poor) reputation|reputation of the sending"),
    (
        "speeding",
        r"receiving mail at a rate|try again slower|sending (?:too )?(?:fast|quickly)"
        r"|rate that prevents",
    ),
    (
        "toomanyconn",
        r"too many (?:connections|concurrent|simultaneous|sessions|smtp sessions|errors)"
        r"|connection (?:rate )?limit|rate limit|rate-limit|throttl"
        r"|max(?:imum)? (?:emails|messages) per (?:hour|day)|sending rate exceeded"
        r"|too many messages",
    ),
    ("virusdetected", r"\bvirus|malware|infected"),
    (
        "spamdetected",
        r"\bspam(?!haus|cop)|\bube\b|unsolicited|junk ?mail|bulk (?:e-?)?mail|content rejected",
    ),
    (
        "policyviolation",
        r"policy violation|violat\w* (?:our |the )?(?:\w+ )?polic|protocol violation"
        r"|header error|network not allowed|prohibited by (?:our )?policy",
    ),
    (
        "securityerror",
        r"authentication required|auth\w* (?:is )?required|must (?:issue a )?starttls"
        r"|(?:tls|encryption) (?:is )?required|certificate (?:verification )?fail",
    ),
)

# Phrases that blame the sending host or network rather than the message or the address.
_BLOCKED = (
    r"blocked using|black ?list|block ?list|deny ?list|\bdnsbl\b|rbl\b|spamhaus|spamcop"
    r"|\blisted (?:at|in|on|by)\b|banned (?:sending )?ip|client host (?:\[.{0,60}\] )?"
    r"(?:rejected|blocked|refused)|(?:ip|host|address) (?:\S+ )?(?:is )?(?:blocked|banned"
    r"|blacklisted|not allowed)|smtp server of your isp|dynamic ip|dial-?up|residential"
    r"|may not be mail exchanger|\bblocked\b|connection refused by|access denied.{0,40}\bip\b"
)
# Sender-side refusals, Google Groups' "you may not have permission to post" (in Japanese:
# 投稿する権限がない) included.
_REJECTED = (
    r"sender (?:address )?(?:was )?rejected|domain of sender|sender domain|unroutable sender"
    r"|sender verify failed|(?:invalid|bad|unknown) sender|sender (?:address )?"
    r"(?:is )?(?:not allowed|not authori[sz]ed|unknown|invalid)|envelope sender"
    r"|rejected (?:the )?sender|not (?:allowed|authori[sz]ed) to (?:post|send)"
    r"|you do not have permission|permission to post|投稿する権限"
)
_USERUNKNOWN = (
    r"user (?:is )?unknown|unknown (?:user|recipient|address|local|mailbox)|no such "
    r"(?:user|mailbox|recipient|account|address|local)|(?:user|mailbox|recipient|account"
    r"|address)\b.{0,30}(?:does not|doesn't|did not|not) exist|recipient (?:unknown|not found"
    r"|name is not recognized|rejected)|invalid (?:recipient|mailbox|user)|user not found"
    r"|mailbox not found|not listed in|(?:doesn't|does not) have an? .{0,40}account"
    r"|recip(?:ient)?notfound|address (?:couldn't|could not|can't|cannot) be found"
    r"|unknown or illegal"
    r"|recipient address rejected: (?:access denied|user)|no mailbox here|not a valid"
    r" (?:user|mailbox|recipient)|address (?:not found|unknown)|undeliverable address"
    r"|inactive (?:e-?mail )?address|bad destination|no valid recipients?"
)
_HOSTUNKNOWN = (
    r"host (?:or domain name )?not found|host unknown|unknown host|no such (?:domain|host)"
    r"|(?:domain|host) (?:name )?(?:does not|doesn't|may not) exist|couldn't find any host"
    r"|name or service not known|invalid domain|domain (?:is )?not reachable"
    r"|unrouteable address|illegal host|no (?:valid )?mx|host \S+ not found|nxdomain"
)
_NOTACCEPT = r"does not accept mail|accepts? no mail|null mx|no mail service|not accepting mail"
_NETWORKERROR = (
    r"name service error|name server reply|network (?:is )?unreachable|no route to host"
    r"|connection refused|mail loop|loops back to myself|too many hops|routing loop"
)
_EXPIRED = (
    r"retry time(?:out)? (?:exceeded|reached)|message expired|queue\.expired|\bexpired\b"
    r"|(?:in|on) the queue too long|too long in (?:the )?queue|timed? ?out|delivery time expired"
    r"|could not be delivered within|unable to deliver in|delivery attempts? (?:have )?"
    r"(?:been )?(?:failed|exhausted)"
)
_FILTERED = r"\bfiltered\b|rejected by (?:\w+ )?(?:filter|rule)|content filter"
_SYSTEMERROR = (
    r"system (?:config(?:uration)? )?error|internal (?:server )?error|local error"
    r"|server (?:configuration|misconfigur)|mail system (?:problem|error)"
)
_SYNTAXERROR = (
    r"syntax error|command (?:parameter )?not implemented|command unrecogni[sz]ed"
    r"|unrecogni[sz]ed command|bad sequence of commands|line too long"
)
_CONTENTERROR = r"content (?:error|problem)|invalid (?:mime|message)|improper mime|malformed"

# Orange and La Poste end a refusal with a numbered code ("OFR_506 [506]", "LPN105_104",
# "OFR006_102") that says more than the text ("Mail rejete. Mail rejected."); the meanings
# they publish for the codes that name a cause:
_ORANGE_CODE_RE = re.compile(r"\b(?:OFR|LPN|OUK)(?:\d{3}[_-]|_)?(\d{3})\b", re.IGNORECASE)
_ORANGE_CODES: dict[str, str] = {
    **dict.fromkeys(("102", "103", "401", "510", "999"), "blocked"),
    "104": "toomanyconn",
    **dict.fromkeys(("305", "402"), "securityerror"),
    **dict.fromkeys(("403", "405", "415", "421"), "rejected"),
    **dict.fromkeys(("416", "418"), "userunknown"),
    "417": "mailboxfull",
    **dict.fromkeys(("420", "426"), "suspend"),
    "505": "systemerror",
    "506": "spamdetected",
    "514": "mesgtoobig",
}

# A provider saying in so many words that its directory has no such account, whatever the
# SMTP state: Yahoo refuses unknown users after DATA ("554 delivery error: dd This user
# doesn't have a yahoo.com account"), Exchange names its resolver's verdict
# ("550 5.1.10 RESOLVER.ADR.RecipientNotFound").
_NO_ACCOUNT_RE = re.compile(
    r"this user (?:doesn'?t|does not) have an? \S+ account|resolver\.adr\.recip(?:ient)?notfound",
    re.IGNORECASE,
)
# Replies whose very form shows they answered RCPT, for reports that do not name the
# command: sendmail's per-recipient "<address>... reason" and Postfix's "Recipient address
# rejected: ...".
_RCPT_FORM_RE = re.compile(r"@[\w.-]+>?\.\.\.\s|recipient address rejected", re.IGNORECASE)

_PRECISE_RE = tuple((reason, re.compile(pattern, re.IGNORECASE)) for reason, pattern in _PRECISE)
_BLOCKED_RE = re.compile(_BLOCKED, re.IGNORECASE)
_REJECTED_RE = re.compile(_REJECTED, re.IGNORECASE)
_USERUNKNOWN_RE = re.compile(_USERUNKNOWN, re.IGNORECASE)
# The broad phrases, checked after the precise ones and after the command rule.
_BROAD_RE: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern, re.IGNORECASE))
    for reason, pattern in (
        ("notaccept", _NOTACCEPT),
        ("hostunknown", _HOSTUNKNOWN),
        ("networkerror", _NETWORKERROR),
        ("filtered", _FILTERED),
        ("blocked", _BLOCKED),
        ("expired", _EXPIRED),
        ("systemerror", _SYSTEMERROR),
        ("syntaxerror", _SYNTAXERROR),
        ("contenterror", _CONTENTERROR),
    )
)

# RFC 3463 subject.detail -> reason, for permanent (5.x.x) failures; _TEMPORARY_STATUS
# overrides it for 4.x.x.  The same table sisimai applies when the text says nothing more.
_PERMANENT_STATUS: dict[str, str] = {
    "1.0": "userunknown",
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",
    "1.4": "filtered",
    "1.6": "hasmoved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.9": "systemerror",
    "1.10": "notaccept",
    "2.0": "filtered",
    "2.1": "filtered",
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "2.4": "filtered",
    "3.0": "systemerror",
    "3.1": "systemfull",
    "3.2": "notaccept",
    "3.3": "systemerror",
    "3.4": "mesgtoobig",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "expired",
    "4.2": "networkerror",
    "4.3": "systemerror",
    "4.4": "hostunknown",
    "4.6": "networkerror",
    "4.7": "expired",
    "5.2": "syntaxerror",
    "5.3": "toomanyconn",
    "5.4": "systemerror",
    "5.5": "systemerror",
    "5.6": "syntaxerror",
    "6.0": "contenterror",
    "6.1": "contenterror",
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.5": "contenterror",
    "6.6": "contenterror",
    "7.13": "suspend",
    "7.16": "mesgtoobig",
    "7.17": "hasmoved",
    "7.18": "hasmoved",
    "7.20": "authfailure",
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "notaccept",
}
_TEMPORARY_STATUS: dict[str, str] = {
    "2.1": "suspend",
    "3.2": "toomanyconn",
    "4.4": "networkerror",
    "4.5": "systemfull",
    "7.1": "blocked",
    "7.2": "blocked",
    "7.28": "toomanyconn",
}


def _status_reason(status: str) -> str:
    """The reason an enhanced status code alone implies ("" when it says nothing useful)."""
    if not status:
        return ""
    klass, subject, detail = status.split(".")
    if klass == "2":
        return "delivered"
    key = f"{subject}.{detail}"
    if klass == "4" and key in _TEMPORARY_STATUS:
        return _TEMPORARY_STATUS[key]
    reason = _PERMANENT_STATUS.get(key, "")
    if not reason and subject == "7":
        reason = "securityerror"
    return reason


def _is_temporary(code: int | None, status: str) -> bool:
    if status:
        return status.startswith("4")
    return code is not None and 400 <= code < 500


def _unknown_user(text: str, status: str, command: str, report: bool) -> str:
    """sisimai's rule for an "unknown user" reply: the directory speaks at RCPT time, or when
    the status code says so (x.1.0, x.1.1, x.1.3).  An address refused after the message was
    sent (DATA) had been accepted at RCPT, so the refusal is a filter speaking; so is one whose
    report names no command, when it quotes an SMTP reply (a code or a status) whose form does
    not show it answered RCPT.  A report without any code is the MTA's own directory lookup
    (Exchange, Domino, Notes...), and a live SMTP reply without a command is taken at its word.
    """
    if status[2:] in ("1.1", "1.0", "1.3") or command == "RCPT" or _NO_ACCOUNT_RE.search(text):
        return "userunknown"
    if command == "DATA":
        return "filtered"
    if report and not command and status and not _RCPT_FORM_RE.search(text):
        return "filtered"
    return "userunknown"


def _reason(text: str, status: str, command: str, report: bool = False) -> str:
    orange = _ORANGE_CODE_RE.search(text)
    if orange and orange.group(1) in _ORANGE_CODES:
        return _ORANGE_CODES[orange.group(1)]
    for reason, pattern in _PRECISE_RE:
        if pattern.search(text):
            return reason
    if command == "HELO":
        return "blocked"
    if command == "MAIL":
        return "blocked" if _BLOCKED_RE.search(text) else "rejected"
    if _REJECTED_RE.search(text):
        return "rejected"
    if _USERUNKNOWN_RE.search(text):
        return _unknown_user(text, status, command, report)
    for reason, pattern in _BROAD_RE:
        if pattern.search(text):
            return reason
    return _status_reason(status) or "undefined"


# A reply, even a multi-line one, says what matters in its first lines; the cap keeps hostile
# or absurd input from costing more than a normal reply.
_MAX_TEXT = 4000


def classify_failure(
    text: str,
    *,
    code: int | None = None,
    status: str = "",
    command: str = "",
    temporary: bool | None = None,
    report: bool = False,
) -> Classification:
    """Classify one failure from its *text* plus whatever the caller already knows: the basic
    reply *code*, the enhanced *status* (from a DSN's Status field) and the SMTP *command*.
    *temporary* forces the failure to be soft (a delayed DSN); by default a 4xx is soft too.
    *report* says the text comes from a bounce report rather than a live SMTP reply: there a
    quoted "unknown user" reply whose command the report does not name counts as ``filtered``
    (see :func:`_unknown_user`).

    The enhanced status found in the text is preferred to a generic x.0.0 given by the caller,
    because DSN generators often write "Status: 5.0.0" over a precise diagnostic."""
    text = text[:_MAX_TEXT]
    found = find_status(text)
    if not status or (status.endswith(".0.0") and found and found[0] == status[0]):
        status = found or status
    if code is None:
        code = find_reply_code(text)
    if not status and code is not None:
        status = f"{code // 100}.0.0"
    command = command or find_command(text)
    reason = _reason(text, status, command, report)
    if status.startswith("2") or (code is not None and 200 <= code < 300):
        reason = "delivered"
    if temporary is None:
        temporary = _is_temporary(code, status)
    hard = reason in HARD_REASONS and not temporary
    return Classification(hard=hard, reason=reason, status=status)


_SMTP_COMMAND_PREFIX = re.compile(r"^\s*(RCPT|MAIL|DATA|HELO|EHLO|CONN|AUTH)\s*:\s*", re.I)


def classify_smtp(code: int | None, text: str) -> Classification:
    """Classify a synchronous SMTP reply: its basic *code* (550, 452...; None when only the
    text is known) and *text*, which may start with the command that was refused
    ("RCPT: 550 5.1.1 <x@y>: Recipient address rejected: User unknown").

    >>> classify_smtp(550, "5.1.1 <x@y>: Recipient address rejected: User unknown")
    Classification(hard=True, reason='userunknown', status='5.1.1')
    """
    command = ""
    prefix = _SMTP_COMMAND_PREFIX.match(text)
    if prefix:
        command = prefix.group(1).upper()
        command = {"EHLO": "HELO", "CONN": "HELO", "AUTH": "MAIL"}.get(command, command)
        text = text[prefix.end() :]
    return classify_failure(text, code=code, command=command)


# Replies that ask the sender to slow down rather than judging the address or the message.
_SLOW_DOWN_RE = re.compile(
    r"try (?:again )?later|try again in|rate limit|rate-limit|\bthrottl|slow down|too many"
    r"|temporarily (?:deferred|rejected|refused)|unusual (?:rate|volume)|unexpected volume"
    r"|exceeded .{0,40}(?:limit|per (?:hour|minute|day))|too fast|busy|congest",
    re.IGNORECASE,
)
_RATE_STATUSES = frozenset({"4.7.0", "4.7.28", "4.3.2", "4.4.5", "4.5.3"})


def is_rate_limited(code: int | None, text: str) -> bool:
    """Whether a reply means "slow down": the destination throttles us (rate or connection
    limits, "try again later", 421 4.7.0 and 4.7.28...).  The sender backs off the whole
    destination on these instead of retrying the recipient soon."""
    classification = classify_smtp(code, text)
    if classification.reason in ("speeding", "toomanyconn"):
        return True
    status = classification.status
    temporary = (code is not None and 400 <= code < 500) or status.startswith("4")
    if not temporary:
        return False
    return status in _RATE_STATUSES or code == 421 or bool(_SLOW_DOWN_RE.search(text))
