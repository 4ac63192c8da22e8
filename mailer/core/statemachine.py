"""A small explicit state machine: an enum and a transition table.

Every stateful thing (campaign, ledger row, contact channel, SMS) declares its table
here-style; ``check`` raises :class:`IllegalTransition` for anything not in the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Generic, TypeVar

from mailer.core.errors import IllegalTransition

S = TypeVar("S", bound=StrEnum)


class StateMachine(Generic[S]):
    def __init__(self, name: str, transitions: Mapping[S, frozenset[S]]) -> None:
        self.name = name
        self.transitions = dict(transitions)

    def allowed(self, current: S, target: S) -> bool:
        return target in self.transitions.get(current, frozenset())

    def check(self, current: S, target: S) -> S:
        if not self.allowed(current, target):
            raise IllegalTransition(self.name, str(current), str(target))
        return target

    def sources_of(self, target: S) -> frozenset[S]:
        """States from which *target* may be reached (for bulk ``UPDATE ... WHERE state IN``)."""
        return frozenset(s for s, targets in self.transitions.items() if target in targets)
