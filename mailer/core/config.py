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

from pydantic import BaseModel, Field, field_validator, model_validator
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

    @field_validator("domains", mode="before")
    @classmethod
    def _split_domains(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


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
        PLACEHOLDER_SECRET, description="Signs sessions, CSRF and tracking tokens."
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
