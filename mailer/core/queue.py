"""Tasks and the queue, without binding domain code to a broker at import time.

Domain packages declare their actors in ``tasks.py`` with :func:`task` and enqueue them by
function with :func:`enqueue`; ``mailer.workers`` picks the broker (in-process, Redis or
RabbitMQ) and declares every registered task on it as a dramatiq actor.  Messages carry
ids only; actors are idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import dramatiq

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    fn: Callable[..., Any]
    queue_name: str
    options: dict[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, TaskSpec] = {}


def task(
    *, queue_name: str = "default", name: str | None = None, **options: Any
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Register *fn* as a task; options are dramatiq actor options (max_retries, ...)."""

    def register(fn: Callable[P, R]) -> Callable[P, R]:
        actor_name = name or f"{fn.__module__.removeprefix('mailer.')}.{fn.__name__}"
        REGISTRY[actor_name] = TaskSpec(actor_name, fn, queue_name, options)
        fn.actor_name = actor_name  # type: ignore[attr-defined]
        return fn

    return register


def enqueue(
    fn: Callable[..., Any], *args: Any, delay_ms: int | None = None
) -> dramatiq.Message[Any]:
    """Put a call of task *fn* with *args* (ids, plain values) on the current broker."""
    spec = REGISTRY[fn.actor_name]  # type: ignore[attr-defined]
    broker = dramatiq.get_broker()
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=spec.queue_name,
        actor_name=spec.name,
        args=args,
        kwargs={},
        options={},
    )
    return broker.enqueue(message, delay=delay_ms)
