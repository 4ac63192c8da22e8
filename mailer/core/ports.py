"""Ports: the narrow interfaces the upper layers program against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from mailer.core.types import DeliveryResult, Envelope


@runtime_checkable
class Transport(Protocol):
    """Moves envelopes and reports, per envelope, what the other side said."""

    async def send_many(self, envelopes: Sequence[Envelope]) -> list[DeliveryResult]:
        """Deliver *envelopes*; one result per envelope, in the same order."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
