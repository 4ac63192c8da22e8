"""Shared value types that cross package boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


class Role(StrEnum):
    """User and API key roles, from most to least powerful."""

    ADMIN = "admin"  # users, sub-accounts, domains, relays, gateways; everything else
    MANAGER = "manager"  # create and send
    EDITOR = "editor"  # create and edit, never send
    VIEWER = "viewer"  # read only


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message ready for a transport: SMTP envelope plus the signed wire bytes."""

    message_id: int
    mail_from: str
    rcpt_to: str
    data: bytes


class DeliveryStatus(StrEnum):
    ACCEPTED = "accepted"
    DEFERRED = "deferred"  # 4xx or a connection problem: try again later
    REJECTED = "rejected"  # 5xx: permanent for this message
    HELD = "held"  # not attempted (quota, no relay up, destination pause): try later, free


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What a transport saw for one envelope.  A 4xx or 5xx is an outcome, not an exception."""

    message_id: int
    status: DeliveryStatus
    code: int | None = None
    text: str = ""
    relay: str = ""
    retry_at: datetime | None = None
    provider_id: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status is DeliveryStatus.ACCEPTED
