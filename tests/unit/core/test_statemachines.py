"""Every transition of every state machine: the allowed ones pass, all others raise."""

from __future__ import annotations

from enum import StrEnum
from itertools import product
from typing import Any

import pytest

from mailer.audience.models import CHANNEL_STATUS, ChannelStatus
from mailer.campaigns.models import CAMPAIGN_STATE, CampaignState
from mailer.core.errors import IllegalTransition
from mailer.core.statemachine import StateMachine
from mailer.messages.models import MESSAGE_STATE, MessageState

MACHINES: list[tuple[StateMachine[Any], type[StrEnum]]] = [
    (CAMPAIGN_STATE, CampaignState),
    (MESSAGE_STATE, MessageState),
    (CHANNEL_STATUS, ChannelStatus),
]

CASES = [
    (machine, current, target)
    for machine, states in MACHINES
    for current, target in product(list(states), repeat=2)
]


@pytest.mark.parametrize(("machine", "current", "target"), CASES)
def test_transition(machine: StateMachine[Any], current: StrEnum, target: StrEnum) -> None:
    if target in machine.transitions.get(current, frozenset()):
        assert machine.check(current, target) is target
    else:
        with pytest.raises(IllegalTransition) as info:
            machine.check(current, target)
        assert info.value.current == current and info.value.target == target


def test_every_state_is_in_its_table() -> None:
    for machine, states in MACHINES:
        assert set(machine.transitions) == set(states), machine.name


def test_expected_paths() -> None:
    assert CAMPAIGN_STATE.allowed(CampaignState.DRAFT, CampaignState.SENDING)
    assert not CAMPAIGN_STATE.allowed(CampaignState.COMPLETED, CampaignState.SENDING)
    assert MESSAGE_STATE.allowed(MessageState.SENDING, MessageState.SENT)
    assert not MESSAGE_STATE.allowed(MessageState.SENT, MessageState.SENDING)  # never twice
    assert not CHANNEL_STATUS.allowed(ChannelStatus.COMPLAINED, ChannelStatus.ACTIVE)
    assert MESSAGE_STATE.sources_of(MessageState.SENDING) == {
        MessageState.QUEUED,
        MessageState.DEFERRED,
    }
