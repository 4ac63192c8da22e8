"""Typed settings, read from ``mailer.toml`` and ``MAILER_*`` environment variables.

Every key has a default that works embedded (SQLite, in-process broker, capture relay), so
``mailer serve`` needs no configuration at all.  Precedence, highest first: explicit
arguments, environment (``MAILER_RELAY__HOST=...`` for nested keys), the TOML file
(``MAILER_CONFIG`` or ``./mailer.toml``), defaults.  Outside development, secrets left at
their placeholder are refused.
"""

from __future__ import annotations

import ipaddress
import json
import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from mailer.core.errors import ConfigError

PLACEHOLDER_SECRET = "change-me-development-only"  # noqa: S105 (refused in production)


class RelaySettings(BaseModel):
    """The SMTP relay campaigns are delivered through (the capture relay by default)."""

    host: str = Field("127.0.0.1", description="Relay host name or address.")
    port: int = Field(2525, description="Relay port; 2525 is the built-in capture relay.")
    starttls: bool = Field(False, description="Upgrade the connection with STARTTLS.")
    implicit_tls: bool = Field(False, description="Connect with TLS from the start (port 465).")
    username: str | None = Field(None, description="SMTP AUTH user, if the relay needs one.")
    password: str | None = Field(None, description="SMTP AUTH password.")
    timeout_seconds: float = Field(30.0, description="Per-command SMTP timeout.")
    max_connections: int = Field(4, ge=1, description="Connections to this relay per worker.")
    messages_per_connection: int = Field(100, ge=1, description="Messages before reconnecting.")
    name: str = Field("", description="Name in logs and the ledger; empty = host:port.")
    max_rate: float = Field(
        0, ge=0, description="Messages per second per worker process through it; 0 = no limit."
    )
    daily_cap: int = Field(0, ge=0, description="Messages per day through it; 0 = no cap.")
    warmup_start: int = Field(
        0, ge=0, description="Warm-up: daily volume on its first day (0 = no warm-up)."
    )
    warmup_growth: float = Field(
        1.5, gt=1, description="Warm-up: each day's volume is the previous day's times this."
    )
    warmup_started_on: date | None = Field(
        None, description="Warm-up: the first day of sending through it (default: first use)."
    )

    @property
    def label(self) -> str:
        return self.name or f"{self.host}:{self.port}"


class ProviderLimits(BaseModel):
    """How hard one mailbox provider may be pushed (per worker process)."""

    connections: int = Field(10, ge=1, description="Transactions in flight at once.")
    messages_per_connection: int = Field(100, ge=1, description="Messages before reconnecting.")
    rate: float = Field(0, ge=0, description="Messages per second; 0 = no limit.")


def _default_providers() -> dict[str, ProviderLimits]:
    return {
        "google": ProviderLimits(connections=5, messages_per_connection=50),
        "microsoft": ProviderLimits(connections=5, messages_per_connection=50),
        "yahoo": ProviderLimits(connections=10, messages_per_connection=20),
        "icloud": ProviderLimits(connections=10, messages_per_connection=5),
        "other": ProviderLimits(connections=10, messages_per_connection=100),
    }


class DeliverySettings(BaseModel):
    """Retries, bounce handling and the reputation guard of campaign sends."""

    retry_base_seconds: int = Field(
        300, ge=1, description="First retry of a deferred message; doubles each attempt."
    )
    retry_max_seconds: int = Field(7200, ge=1, description="Longest wait between two retries.")
    expiry_hours: float = Field(
        24, gt=0, description="A message still deferred this long after queueing fails."
    )
    bounce_domain: str = Field(
        "", description="Domain of VERP return paths (bounces+TOKEN@...); empty = the From domain."
    )
    relay_down_seconds: int = Field(
        30, ge=1, description="A relay that fails is left out this long (doubling, up to 15 min)."
    )
    guard_bounce_rate: float = Field(
        0.05, ge=0, le=1, description="Pause a campaign whose bounce rate exceeds this."
    )
    guard_complaint_rate: float = Field(
        0.001, ge=0, le=1, description="Pause a campaign whose complaint rate exceeds this."
    )
    guard_min_sample: int = Field(
        500, ge=1, description="Messages attempted before the guard judges a campaign."
    )
    soft_bounce_limit: int = Field(
        3, ge=1, description="Soft bounces within soft_bounce_days that suppress an address."
    )
    soft_bounce_days: int = Field(30, ge=1, description="Window for soft_bounce_limit.")


class CaptureSettings(BaseModel):
    """The built-in capture relay: an SMTP server that stores what it receives for the portal."""

    enabled: bool = Field(True, description="Start the capture relay with `mailer serve`.")
    host: str = Field("127.0.0.1", description="Address the capture relay listens on.")
    port: int = Field(2525, description="Port the capture relay listens on.")
    keep: int = Field(5000, ge=1, description="Captured messages kept (oldest deleted first).")


class DnsSettings(BaseModel):
    """The resolvers address cleaning asks (MX, A, AAAA of every recipient domain)."""

    servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='Resolvers as "host", "host:port" or "[v6]:port" (IP addresses); also a '
        'comma-separated string, as in MAILER_DNS_SERVERS="127.0.0.1:5353,10.0.0.1". '
        "Empty = the system resolver (/etc/resolv.conf).",
    )
    port: int = Field(53, ge=1, le=65535, description="Port of servers given without one.")
    timeout_seconds: float = Field(
        3.0, gt=0, description="Lifetime of one DNS query; longer is reported unknown."
    )
    cache_seconds: int = Field(
        300, ge=0, description="Upper bound on how long answers (also negative) are cached."
    )
    concurrency: int = Field(200, ge=1, description="DNS queries in flight at once.")

    @field_validator("servers", mode="before")
    @classmethod
    def _split_servers(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except ValueError:
                    pass  # "[::1]:53" is an address, not JSON
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, value: list[str]) -> list[str]:
        for entry in value:
            DnsSettings.parse_server(entry, 53)
        return value

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """``(ip, port)`` of each configured resolver, in order."""
        return [self.parse_server(entry, self.port) for entry in self.servers]

    @staticmethod
    def parse_server(entry: str, default_port: int) -> tuple[str, int]:
        """``"10.0.0.1"``, ``"127.0.0.1:5353"``, ``"::1"`` or ``"[::1]:5353"`` -> ``(ip, port)``."""
        text = entry.strip()
        port_text: str | None = None
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                host = ""  # refused below
            elif rest:
                port_text = rest[1:]
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host = text  # a bare IPv4 or IPv6 address
        try:
            address = ipaddress.ip_address(host)
            port = default_port if port_text is None else int(port_text)
        except ValueError:
            port = 0
            address = None
        if address is None or not 0 < port < 65536:
            raise ConfigError(
                'DNS server "{entry}" is not an IP address with an optional port '
                "(host, host:port or [ipv6]:port)",
                field="dns.servers",
                entry=entry,
            )
        return str(address), port


class TrackingSettings(BaseModel):
    """Opens, clicks and their events: what is kept, and what counts as a machine."""

    retention_days: int = Field(
        400,
        ge=45,
        description="Days a message's events are kept after its last activity; older ones are "
        "rolled up into permanent per-campaign counters, then deleted (at least 45).",
    )
    scanner_window_seconds: float = Field(
        10.0, ge=0, description="A click this soon after the message was sent is a link scanner."
    )
    prefetch_window_seconds: float = Field(
        120.0,
        ge=0,
        description="An image proxy that fetches the pixel this soon after sending prefetched "
        "it on delivery (no one opened the message yet).",
    )
    burst_seconds: float = Field(
        1.0, gt=0, description="Distinct links of one message clicked within this are a machine."
    )
    burst_links: int = Field(2, ge=2, description="How many distinct links make a burst.")
    trap_window_seconds: float = Field(
        60.0,
        ge=0,
        description="Opens and clicks this close to a hit on the hidden link are a machine.",
    )
    ip_mode: Literal["truncate", "hash"] = Field(
        "truncate",
        description="How a hit's IP address is kept: truncate (/24 IPv4, /48 IPv6; not enough "
        "to single out a person, Ley 29733) or hash (HMAC with the secret key: distinct "
        "visitors countable, the address not recoverable).",
    )
    flush_seconds: float = Field(
        0.25, gt=0, le=5, description="How often buffered hits are written, in one batch."
    )
    writer: Literal["process", "thread"] = Field(
        "process",
        description="Who writes the hits of an HTTP process: a writer process of its own, fed "
        "through a pipe (the event loop only appends; the default), or a thread of the HTTP "
        "process (one process fewer; its writing then competes with the requests for the GIL).",
    )


SmsReceiptState = Literal[
    "delivered", "undelivered", "expired", "rejected", "deleted", "accepted", "enroute", "unknown"
]
"""The states of an SMS delivery receipt (``mailer.sms.types.ReceiptState``)."""


def _default_sms_status_map() -> dict[str, SmsReceiptState]:
    return {
        "delivered": "delivered",
        "undelivered": "undelivered",
        "failed": "undelivered",
        "expired": "expired",
        "rejected": "rejected",
        "deleted": "deleted",
        "accepted": "accepted",
        "queued": "accepted",
        "sent": "enroute",
        "enroute": "enroute",
        # The SMPP receipt words, which many HTTP aggregators pass on as they are.
        "delivrd": "delivered",
        "undeliv": "undelivered",
        "rejectd": "rejected",
        "acceptd": "accepted",
    }


class SmsGatewaySettings(BaseModel):
    """One SMS gateway ([[sms_gateways]] in mailer.toml; MAILER_SMS_GATEWAYS as a JSON list):
    an SMPP 3.4 bind (``kind = "smpp"``) or a generic HTTP provider (``kind = "http"``)."""

    name: str = Field(min_length=1, description="Name in logs and the ledger; unique.")
    kind: Literal["smpp", "http"] = Field("smpp", description="smpp or http.")
    # --- SMPP -------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="SMSC host (smpp).")
    port: int = Field(2775, ge=1, le=65535, description="SMSC port (smpp).")
    system_id: str = Field("", max_length=15, description="Bind system_id (smpp).")
    password: SecretStr = Field(
        SecretStr(""), description="Bind password (smpp; at most 8 characters)."
    )
    system_type: str = Field("", max_length=12, description="Bind system_type (smpp).")
    rate_per_second: float = Field(
        0, ge=0, description="Messages (parts) per second through this bind; 0 = no limit."
    )
    window: int = Field(
        100, ge=1, le=10000, description="Requests in flight (submitted, not yet answered)."
    )
    reconnect_min_seconds: float = Field(
        1.0, gt=0, description="First wait before binding again after a failure; doubles."
    )
    reconnect_max_seconds: float = Field(60.0, gt=0, description="Longest wait between binds.")
    enquire_link_seconds: float = Field(
        30.0, gt=0, description="Idle time after which the link is checked (enquire_link)."
    )
    response_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for an answer to a request (smpp and http)."
    )
    throttle_backoff_seconds: float = Field(
        1.0, gt=0, description="Pause after a 'throttled'/'queue full' answer; doubles, 30 s max."
    )
    max_retries: int = Field(
        3, ge=0, description="Retries of a part after a transient error, before 'deferred'."
    )
    default_sender: str = Field(
        "", max_length=20, description="Sender when a message has none (short code or id)."
    )
    validity_seconds: int | None = Field(
        None, ge=60, description="Validity period asked of the SMSC; none = its default."
    )
    receipt_text_id: Literal["same", "decimal"] = Field(
        "same",
        description='How the receipt text writes the message id: "same" as submit_sm_resp, or '
        '"decimal" (the SMSC answers submit_sm in hexadecimal and writes receipts in decimal).',
    )
    inbound_parts_timeout_seconds: float = Field(
        600, gt=0, description="An inbound concatenated message still missing parts is passed on."
    )
    # --- HTTP -------------------------------------------------------------------------------
    http_url: str = Field("", description="Endpoint that takes one message (http).")
    http_method: Literal["POST", "PUT", "GET"] = Field("POST", description="HTTP method.")
    http_auth: Literal["none", "bearer", "basic", "header"] = Field(
        "none", description="bearer (http_token), basic (http_username + http_token) or header."
    )
    http_username: str = Field("", description="User of basic auth.")
    http_token: SecretStr = Field(
        SecretStr(""), description="Bearer token, basic password or the auth header's value."
    )
    http_header_name: str = Field("", description="Auth header name (http_auth = header).")
    http_headers: dict[str, str] = Field(default_factory=dict, description="Extra headers.")
    http_body: Literal["json", "form", "query"] = Field(
        "json", description="How http_template is sent: JSON body, form body or query string."
    )
    http_template: dict[str, Any] = Field(
        default_factory=lambda: {
            "to": "{to}",
            "from": "{sender}",
            "text": "{text}",
            "reference": "{ref}",
        },
        description="Request fields; strings may hold {to}, {to_digits}, {sender}, {text}, "
        "{ref}, {parts}, {validity_seconds}; nested objects and lists are allowed (json).",
    )
    http_id_path: str = Field(
        "id", description="Dotted path to the message id in the JSON answer (a.b.0.c)."
    )
    http_deferred_statuses: list[int] = Field(
        default_factory=lambda: [408, 425, 429, 500, 502, 503, 504],
        description="HTTP statuses that mean 'try again later'; other non-2xx are rejections.",
    )
    http_rejected_body: str = Field(
        "", description="Regular expression: an answer body matching it is a rejection."
    )
    http_deferred_body: str = Field(
        "", description="Regular expression: an answer body matching it means try later."
    )
    http_status_items_path: str = Field(
        "", description="Dotted path to the list of statuses in a status webhook; empty = body."
    )
    http_status_id_path: str = Field("id", description="Message id within one status.")
    http_status_state_path: str = Field("status", description="State within one status.")
    http_status_error_path: str = Field("", description="Error code within one status.")
    http_status_done_path: str = Field("", description="Time of the state (ISO 8601 or epoch).")
    http_status_map: dict[str, SmsReceiptState] = Field(
        default_factory=_default_sms_status_map,
        description="Provider state (case-insensitive) -> receipt state; others are unknown.",
    )

    @model_validator(mode="after")
    def _check_kind(self) -> SmsGatewaySettings:
        if self.kind == "smpp":
            if not self.system_id:
                raise ConfigError(
                    "SMS gateway {name}: an smpp gateway needs a system_id",
                    field="sms_gateways",
                    name=self.name,
                )
            if len(self.password.get_secret_value()) > 8:
                raise ConfigError(
                    "SMS gateway {name}: an SMPP password has at most 8 characters",
                    field="sms_gateways",
                    name=self.name,
                )
        elif not self.http_url:
            raise ConfigError(
                "SMS gateway {name}: an http gateway needs http_url",
                field="sms_gateways",
                name=self.name,
            )
        return self


class SmsSettings(BaseModel):
    """The SMS channel's business rules (the gateways themselves are ``sms_gateways``)."""

    gateway: str = Field(
        "",
        description="Name of the gateway of ``sms_gateways`` that sends; empty = the first; "
        "none configured = the capture gateway (accepts and reports delivered, sends nothing).",
    )
    default_region: str = Field("PE", description="Region of numbers given without +code.")
    default_sender: str = Field(
        "INFO", max_length=16, description="Sender id when the account has none of its own."
    )
    validity_hours: int = Field(
        48, ge=1, le=24 * 7, description="A submitted SMS with no final receipt expires then."
    )
    batch_size: int = Field(200, ge=1, le=5000, description="Messages per queue message.")
    max_parts: int = Field(
        10, ge=1, le=255, description="Longest SMS accepted, in parts (each part is charged)."
    )
    submit_timeout_seconds: float = Field(
        300, gt=0, description="How long a batch may wait for the gateway's answers."
    )
    retry_seconds: int = Field(60, ge=1, description="First retry of a deferred SMS (doubles).")
    stop_keywords: list[str] = Field(
        default_factory=lambda: ["BAJA", "STOP", "SALIR"],
        description="Replies that leave SMS (case- and accent-insensitive).",
    )
    start_keywords: list[str] = Field(
        default_factory=lambda: ["ALTA"], description="Replies that rejoin SMS."
    )
    stop_reply: str = Field(
        "Listo: no recibirás más SMS de {account}. Responde ALTA para volver.",
        description="Acknowledgement of a stop keyword; empty = none.",
    )
    start_reply: str = Field(
        "Listo: vuelves a recibir SMS de {account}. Responde BAJA para salir.",
        description="Acknowledgement of a start keyword; empty = none.",
    )


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def _is_loopback(host: str) -> bool:
    name = host.strip().strip("[]").lower().rstrip(".")
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class MailboxSettings(BaseModel):
    """An IMAP or POP3 mailbox that `mailer inbound` polls for the same bounces, complaints
    and mailto unsubscribes, where they are delivered to a mailbox rather than to the SMTP
    receiver ([inbound.mailbox] in mailer.toml, MAILER_INBOUND__MAILBOX__HOST=...)."""

    protocol: Literal["imap", "pop3"] = Field("imap", description="imap or pop3.")
    host: str = Field("", description="Mail server host name; empty = no polling.")
    port: int = Field(
        0, ge=0, le=65535, description="0 = the protocol's: 993/995 with tls, 143/110 otherwise."
    )
    security: Literal["tls", "starttls", "none"] = Field(
        "tls",
        description="tls (implicit, IMAPS/POP3S), starttls, or none (only for a server on "
        "this machine: 127.0.0.1, ::1, localhost).",
    )
    username: str = Field("", description="Login name.")
    password: SecretStr = Field(SecretStr(""), description="Login password.")
    ca_file: str = Field(
        "", description="PEM file of the CA(s) to trust for the server; empty = the system's."
    )
    folder: str = Field("INBOX", description="IMAP folder polled (POP3: always the inbox).")
    processed_folder: str = Field(
        "", description="IMAP: handled messages are moved here; empty = they are deleted."
    )
    error_folder: str = Field(
        "",
        description="IMAP: messages that could not be handled are moved here; empty = they "
        "stay, flagged, and are skipped until unflagged.",
    )
    poll_seconds: float = Field(60, gt=0, description="Wait between two polls.")
    max_per_poll: int = Field(100, ge=1, description="Messages fetched per poll at most.")
    timeout_seconds: float = Field(60, gt=0, description="Network timeout of one command.")

    @property
    def enabled(self) -> bool:
        return bool(self.host.strip())

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        if self.protocol == "imap":
            return 993 if self.security == "tls" else 143
        return 995 if self.security == "tls" else 110

    @model_validator(mode="after")
    def _check_mailbox(self) -> MailboxSettings:
        if not self.enabled:
            return self
        password = self.password.get_secret_value()
        if not self.username.strip():
            raise ConfigError(
                "inbound.mailbox.host is set but inbound.mailbox.username is empty: set "
                "MAILER_INBOUND__MAILBOX__USERNAME (or username in [inbound.mailbox])",
                field="inbound.mailbox.username",
            )
        if not password or password == PLACEHOLDER_SECRET or password.startswith("change-me"):
            raise ConfigError(
                "inbound.mailbox.password is empty or a placeholder: set "
                "MAILER_INBOUND__MAILBOX__PASSWORD (or password in [inbound.mailbox])",
                field="inbound.mailbox.password",
            )
        if self.security == "none" and not _is_loopback(self.host):
            raise ConfigError(
                'inbound.mailbox.security = "none" sends the password in clear text: it is '
                'allowed only for a server on this machine, not {host}; use "tls" or "starttls"',
                field="inbound.mailbox.security",
                host=self.host,
            )
        if self.protocol == "pop3" and (
            self.processed_folder or self.error_folder or self.folder.upper() != "INBOX"
        ):
            raise ConfigError(
                "POP3 has no folders: leave inbound.mailbox.folder, processed_folder and "
                'error_folder at their defaults, or use protocol = "imap"',
                field="inbound.mailbox.protocol",
            )
        return self


class InboundSettings(BaseModel):
    """The inbound SMTP receiver (`mailer inbound`): bounces, complaints and mailto
    unsubscribes come back to it."""

    host: str = Field("127.0.0.1", description="Address the inbound receiver listens on.")
    port: int = Field(2526, ge=0, le=65535, description="Port the inbound receiver listens on.")
    domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Domains it accepts bounces+TOKEN@, unsubscribe+TOKEN@ and bounces@ for "
        '(also a comma-separated string, as in MAILER_INBOUND__DOMAINS="rebotes.example.pe"); '
        "empty = those local parts at any domain.  Any other recipient is refused (550).",
    )
    fbl_address: str = Field(
        "", description="Address feedback-loop (ARF) complaints are sent to; empty = none."
    )
    max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest message accepted (larger: 552)."
    )
    mailbox: MailboxSettings = Field(
        default_factory=MailboxSettings,  # type: ignore[arg-type]
        description="An IMAP or POP3 mailbox polled for the same messages (empty host = none).",
    )

    @field_validator("domains", mode="before")
    @classmethod
    def _split_domains(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class WebhookSettings(BaseModel):
    """Outbound signed webhooks: timeouts, the retry schedule and when an endpoint is
    disabled."""

    timeout_seconds: float = Field(
        5.0, gt=0, le=60, description="Longest wait for a receiver's answer to one attempt."
    )
    retry_delays_seconds: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 36000],
        description="Wait before each retry after a failed attempt (5 s, 5 min, 30 min, 2 h, "
        "5 h, 10 h, 10 h), each with jitter; also a comma-separated string.",
    )
    max_age_hours: float = Field(
        24,
        gt=0,
        description="An attempt series lasts at most this long: a retry that would fall later "
        "is made at the deadline, then the delivery fails (it can be replayed).",
    )
    jitter: float = Field(
        0.1, ge=0, le=0.5, description="Each retry delay varies by up to this fraction."
    )
    disable_after_hours: float = Field(
        24,
        gt=0,
        description="An endpoint is disabled when a delivery runs out of retries and no attempt "
        "to it succeeded for this long (a 410 Gone answer disables it at once).",
    )
    worker_threads: int = Field(
        2, ge=1, description="Threads per worker process for the webhooks queue only."
    )
    claim_lease_seconds: int = Field(
        600, ge=30, description="A claimed delivery not recorded after this is claimed again."
    )
    dispatch_batch: int = Field(1000, ge=1, description="Events read per dispatcher step.")
    gap_grace_seconds: float = Field(
        300,
        ge=0,
        description="How long the dispatcher waits for an event id it skipped (a transaction "
        "that committed late) before giving it up.",
    )
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Networks webhooks may be posted to although they are not public "
        '(loopback, private, link-local, CGNAT...), as in ["10.20.0.0/16", "fd00:1::/64"]; '
        'also a comma-separated string (MAILER_WEBHOOKS__ALLOWED_NETWORKS="10.20.0.0/16"). '
        "Empty = public addresses only.  A URL is checked when it is saved and the address "
        "actually connected to at every attempt.",
    )
    allowed_ports: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["80", "443", "1024-65535"],
        description='Ports webhooks may be posted to: numbers and ranges ("8000-8999"); also a '
        "comma-separated string.  The default leaves out the other system ports (1-1023: "
        "SSH, SMTP, DNS, LDAP, SMB...), which are never webhook receivers.",
    )

    @field_validator("retry_delays_seconds", mode="before")
    @classmethod
    def _split_delays(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip().removeprefix("[").removesuffix("]")
            return [int(part) for part in text.split(",") if part.strip()]
        return value

    @field_validator("retry_delays_seconds")
    @classmethod
    def _check_delays(cls, value: list[int]) -> list[int]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays are seconds, zero or more")
        return value

    @field_validator("allowed_networks", "allowed_ports", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        networks = []
        for entry in value:
            try:
                networks.append(str(ipaddress.ip_network(str(entry).strip(), strict=True)))
            except ValueError:
                raise ConfigError(
                    'webhooks.allowed_networks: "{entry}" is not a network such as '
                    '"10.20.0.0/16" (no host bits set) or an IP address',
                    field="webhooks.allowed_networks",
                    entry=entry,
                ) from None
        return networks

    @field_validator("allowed_ports", mode="before")
    @classmethod
    def _ports_as_text(cls, value: object) -> object:
        if isinstance(value, list):
            return [str(item) for item in value]
        return value

    @field_validator("allowed_ports")
    @classmethod
    def _check_ports(cls, value: list[str]) -> list[str]:
        for entry in value:
            WebhookSettings.parse_port_range(entry)
        return value

    @staticmethod
    def parse_port_range(entry: str) -> tuple[int, int]:
        """``"443"`` -> ``(443, 443)``; ``"1024-65535"`` -> ``(1024, 65535)``."""
        low, _, high = entry.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            first = last = 0
        if not 0 < first <= last < 65536:
            raise ConfigError(
                'webhooks.allowed_ports: "{entry}" is not a port or a range such as "8000-8999"',
                field="webhooks.allowed_ports",
                entry=entry,
            )
        return first, last

    @property
    def port_ranges(self) -> list[tuple[int, int]]:
        return [self.parse_port_range(entry) for entry in self.allowed_ports]


class WelcomeSettings(BaseModel):
    """The welcome e-mail of a new portal user: a short usage guide, with a link to choose a
    password when the user was created without one."""

    enabled: bool = Field(True, description="Send a welcome e-mail to new portal users.")
    from_email: str = Field(
        "",
        description="Sender of the welcome; empty = no-responder@ the first sending domain "
        "(with no sending domain the welcome is skipped and the page says so).",
    )
    from_name: str = Field("mailer", description="Sender name of the welcome.")
    set_password_days: int = Field(
        7, ge=1, le=30, description="Days the link to choose a password stays valid."
    )


class ApiSettings(BaseModel):
    """The REST API: OAuth access tokens, rate limits per application, idempotency keys."""

    token_seconds: int = Field(
        3600, ge=60, le=86400, description="Lifetime of an OAuth 2.0 access token."
    )
    rate_per_second: float = Field(
        100,
        ge=0,
        description="Requests per second an application (API key or OAuth client) may make, "
        "sustained; 0 = no limit.  A key or client may have its own.  Shared by all processes "
        "through Redis when broker_url is redis://, per process otherwise.",
    )
    burst: int = Field(
        200, ge=1, description="Requests an application may make at once (the bucket's size)."
    )
    idempotency_hours: float = Field(
        24, gt=0, description="How long an Idempotency-Key and its stored response are kept."
    )
    idempotency_wait_seconds: float = Field(
        2.0,
        ge=0,
        le=30,
        description="How long a duplicate of a request still running waits for its outcome "
        "before answering 409 request_in_progress.",
    )
    idempotency_lease_seconds: float = Field(
        300,
        ge=10,
        description="A request that claimed a key and neither committed nor answered within "
        "this (its process died) leaves the key to a retry.",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAILER_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses placeholder secrets."
    )
    secret_key: str = Field(
        PLACEHOLDER_SECRET,
        description="Signs sessions, CSRF and tracking tokens; the key that encrypts secrets "
        "kept in the database (two-factor seeds, webhook signing secrets) derives from it.",
    )
    previous_secret_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Earlier values of secret_key, newest first, still accepted to decrypt "
        "the secrets kept in the database after secret_key was changed (new ones are "
        "encrypted with secret_key); a JSON list in MAILER_PREVIOUS_SECRET_KEYS.  Sessions "
        "and signed links are not carried over.",
    )
    data_dir: Path = Field(Path("var"), description="Where the embedded database lives.")
    database_url: str = Field(
        "", description="SQLAlchemy URL; empty = SQLite in data_dir (postgresql+psycopg://...)."
    )
    broker_url: str = Field(
        "", description="Empty = in-process broker; redis://... or amqp://... at scale."
    )
    worker_threads: int = Field(4, ge=1, description="Worker threads per worker process.")
    http_host: str = Field("127.0.0.1", description="Address `mailer serve` binds.")
    http_port: int = Field(8000, description="Port `mailer serve` binds.")
    http_concurrency: int = Field(
        12,
        ge=1,
        description="Requests one HTTP process works on at once (each holds a database "
        "connection from a pool of 30); more wait their turn instead of starving the pool.",
    )
    base_url: str = Field(
        "http://127.0.0.1:8000", description="Public URL of the portal, API and tracking host."
    )
    cookie_secure: bool | None = Field(
        None, description="Secure flag on the session cookie; default: when base_url is https."
    )
    metrics_token: str = Field(
        "", description="Bearer token for /metrics; empty = only scrapes from this machine."
    )
    timezone: str = Field("America/Lima", description="Default account time zone.")
    sending_domains_dir: Path = Field(
        Path("sending_domains"), description="One folder per sending domain (DKIM keys)."
    )
    templates_dir: Path = Field(Path("templates"), description="Library of ready-made templates.")
    batch_size: int = Field(250, ge=1, le=10000, description="Ledger ids per queue message.")
    max_attempts: int = Field(
        30, ge=1, description="Delivery attempts before a row fails (deferrals also expire)."
    )
    send_lease_seconds: int = Field(
        3600,
        description="After this, a row claimed by a dead worker is offered again; longer "
        "than the actor time limit (30 min), so a live worker is never overtaken.",
    )
    stall_seconds: int = Field(
        600, description="A sending campaign with no ledger change for this long is re-enqueued."
    )
    relay: RelaySettings = Field(default_factory=RelaySettings)  # type: ignore[arg-type]
    relays: list[RelaySettings] = Field(
        default_factory=list,
        description="The relay pool ([[relays]] in mailer.toml); empty = just `relay`.",
    )
    providers: dict[str, ProviderLimits] = Field(
        default_factory=_default_providers,
        description="Limits per mailbox provider (google, microsoft, yahoo, icloud, other).",
    )
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)  # type: ignore[arg-type]
    capture: CaptureSettings = Field(default_factory=CaptureSettings)  # type: ignore[arg-type]
    dns: DnsSettings = Field(default_factory=DnsSettings)  # type: ignore[arg-type]
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)  # type: ignore[arg-type]
    inbound: InboundSettings = Field(default_factory=InboundSettings)  # type: ignore[arg-type]
    sms: SmsSettings = Field(default_factory=SmsSettings)  # type: ignore[arg-type]
    sms_gateways: list[SmsGatewaySettings] = Field(
        default_factory=list,
        description="SMS gateways ([[sms_gateways]] in mailer.toml, MAILER_SMS_GATEWAYS as JSON).",
    )
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)  # type: ignore[arg-type]
    api: ApiSettings = Field(default_factory=ApiSettings)  # type: ignore[arg-type]
    welcome: WelcomeSettings = Field(default_factory=WelcomeSettings)  # type: ignore[arg-type]
    audit_retention_days: int = Field(
        400,
        ge=365,
        description="Audit log entries older than this are purged (at least a year is kept).",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("MAILER_CONFIG", "mailer.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    @model_validator(mode="before")
    @classmethod
    def _dns_servers_alias(cls, data: Any) -> Any:
        # MAILER_DNS_SERVERS="127.0.0.1:5353,10.0.0.1" is the documented short form of
        # MAILER_DNS__SERVERS; the nested form wins when both are set, and explicit
        # DnsSettings objects passed in code are left alone.
        alias = os.environ.get("MAILER_DNS_SERVERS")
        if alias is None or "MAILER_DNS__SERVERS" in os.environ or not isinstance(data, dict):
            return data
        dns = data.get("dns")
        if isinstance(dns, DnsSettings):
            return data
        return {**data, "dns": {**(dns if isinstance(dns, dict) else {}), "servers": alias}}

    @field_validator("previous_secret_keys", mode="before")
    @classmethod
    def _previous_keys_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [text] if text else []
        return value

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment == "production" and self.secret_key == PLACEHOLDER_SECRET:
            raise ConfigError(
                "secret_key is still the development placeholder: set MAILER_SECRET_KEY "
                "(or secret_key in mailer.toml) to a long random value",
                field="secret_key",
            )
        if self.environment == "production" and len(self.secret_key) < 32:
            raise ConfigError("secret_key must be at least 32 characters", field="secret_key")
        return self

    @field_validator("providers", mode="before")
    @classmethod
    def _merge_provider_defaults(cls, value: object) -> object:
        # Configuring one limit of one provider keeps every other default.
        if not isinstance(value, dict):
            return value
        merged: dict[str, Any] = {k: v.model_dump() for k, v in _default_providers().items()}
        for name, limits in value.items():
            base = merged.get(name, ProviderLimits().model_dump())
            if isinstance(limits, ProviderLimits):
                limits = limits.model_dump(exclude_unset=True)
            merged[name] = {**base, **limits} if isinstance(limits, dict) else limits
        return merged

    @model_validator(mode="after")
    def _check_relays(self) -> Settings:
        names = [relay.label for relay in self.pool_relays]
        if len(set(names)) != len(names):
            raise ConfigError("relay names must be unique: {names}", field="relays", names=names)
        return self

    @property
    def pool_relays(self) -> list[RelaySettings]:
        """The relays campaigns go through: ``relays``, or the single ``relay``."""
        return self.relays or [self.relay]

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'mailer.db').as_posix()}"

    @property
    def effective_cookie_secure(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.base_url.startswith("https://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; tests call ``get_settings.cache_clear()`` after changing env."""
    return Settings()
