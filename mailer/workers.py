"""Broker selection and actor registration.

- ``broker_url`` empty: dramatiq's in-process broker, consumed by worker threads inside
  ``mailer serve`` (the embedded default; the ledger, not the queue, survives a restart).
- ``redis://...``: dramatiq's Redis broker; ``amqp://...``: its RabbitMQ broker.  Then
  ``mailer worker`` processes on any machine consume the queues.

Every ``mailer.*.tasks`` module is imported and each function registered with
``mailer.core.queue.task`` is declared on the broker as a dramatiq actor.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker
from dramatiq.common import q_name
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

import mailer
from mailer.core.config import Settings, get_settings
from mailer.core.queue import REGISTRY
from mailer.webhooks.tasks import QUEUE as WEBHOOKS_QUEUE

log = logging.getLogger(__name__)

QUEUES = ("default", "delivery", WEBHOOKS_QUEUE)
_configured: tuple[str, dramatiq.Broker] | None = None


def _middleware() -> list[Any]:
    return [
        AgeLimit(),
        TimeLimit(time_limit=30 * 60 * 1000),
        ShutdownNotifications(),
        Callbacks(),
        Pipelines(),
        Retries(max_retries=20),
    ]


def make_broker(broker_url: str) -> dramatiq.Broker:
    if not broker_url:
        broker: dramatiq.Broker = StubBroker(middleware=_middleware())
        broker.emit_after("process_boot")
        return broker
    if broker_url.startswith(("redis://", "rediss://", "unix://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(  # type: ignore[no-untyped-call]
            url=broker_url, middleware=_middleware(), namespace="mailer"
        )
    if broker_url.startswith(("amqp://", "amqps://")):
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        return RabbitmqBroker(url=broker_url, middleware=_middleware())
    from mailer.core.errors import ConfigError

    raise ConfigError(
        f"unsupported broker_url {broker_url!r}: leave it empty (in-process), "
        "or use redis://host:6379/0 or amqp://user:pass@host:5672/",
        field="broker_url",
    )


def import_task_modules() -> None:
    for info in pkgutil.iter_modules(mailer.__path__):
        if info.ispkg:
            try:
                importlib.import_module(f"mailer.{info.name}.tasks")
            except ModuleNotFoundError as exc:
                if exc.name != f"mailer.{info.name}.tasks":
                    raise


def configure_broker(settings: Settings | None = None, *, force: bool = False) -> dramatiq.Broker:
    """Create the broker of *settings*, make it dramatiq's global one and declare the actors."""
    global _configured
    settings = settings or get_settings()
    if _configured is not None and _configured[0] == settings.broker_url and not force:
        return _configured[1]
    broker = make_broker(settings.broker_url)
    dramatiq.set_broker(broker)
    import_task_modules()
    for spec in REGISTRY.values():
        dramatiq.actor(  # type: ignore[call-overload]
            spec.fn, actor_name=spec.name, queue_name=spec.queue_name, broker=broker, **spec.options
        )
    for queue in QUEUES:
        broker.declare_queue(queue)
    _configured = (settings.broker_url, broker)
    return broker


class Workers:
    """The worker threads of one process: *threads* for every queue but the webhooks one,
    which has threads of its own, so a slow or dead receiver never holds up sending."""

    def __init__(self, broker: dramatiq.Broker, threads: int, webhook_threads: int) -> None:
        others = {q for q in broker.get_declared_queues() if q_name(q) != WEBHOOKS_QUEUE}
        self.main = dramatiq.Worker(
            broker, queues=others, worker_threads=threads, worker_timeout=200
        )
        self.webhooks = dramatiq.Worker(
            broker, queues={WEBHOOKS_QUEUE}, worker_threads=webhook_threads, worker_timeout=200
        )

    def start(self) -> None:
        self.main.start()
        self.webhooks.start()

    def join(self) -> None:
        """Wait until both have nothing left to do (tests)."""
        self.main.join()
        self.webhooks.join()
        self.main.join()

    def stop(self) -> None:
        self.webhooks.stop()
        self.main.stop()


def start_worker(
    broker: dramatiq.Broker, threads: int, webhook_threads: int | None = None
) -> Workers:
    if webhook_threads is None:
        webhook_threads = get_settings().webhooks.worker_threads
    worker = Workers(broker, threads, webhook_threads)
    worker.start()
    return worker


def broker_reachable(broker: dramatiq.Broker) -> bool:
    """Readiness: can we talk to the broker?"""
    try:
        if isinstance(broker, StubBroker):
            return True
        client = getattr(broker, "client", None)
        if client is not None:  # Redis
            return bool(client.ping())
        broker.get_declared_queues()
        connection = getattr(broker, "connection", None)
        return connection is None or bool(connection.is_open)
    except Exception:  # any failure to reach it means not ready
        return False


def queue_depth(broker: dramatiq.Broker) -> dict[str, int]:
    """Messages waiting per queue, where the broker can tell."""
    depths: dict[str, int] = {}
    for queue in QUEUES:
        try:
            if isinstance(broker, StubBroker):
                depths[queue] = broker.queues[queue].qsize()
            elif hasattr(broker, "client"):
                depths[queue] = int(broker.client.llen(f"mailer:{queue}"))
            elif hasattr(broker, "get_queue_message_counts"):
                depths[queue] = int(broker.get_queue_message_counts(queue)[0])
        except Exception:  # depth is informative; never fail a scrape for it
            log.debug("queue depth of %s unavailable", queue, exc_info=True)
    return depths
