"""Rate limits per application: a token bucket per API key or OAuth client, answered with
429 and Retry-After; per process embedded, shared through Redis at scale."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from mailer.accounts.service import create_api_key
from mailer.api.limits import REDIS_PREFIX, LocalBuckets
from mailer.asgi import create_app
from mailer.core.config import Settings
from mailer.storage.db import session_scope
from tests.conftest import REDIS_URL, require_server
from tests.helpers import World, build_world


def key(world: World, name: str, **limits: float) -> dict[str, str]:
    with session_scope() as session:
        _key, plaintext = create_api_key(
            session,
            world.account_id,
            name,
            "viewer",
            **limits,  # type: ignore[arg-type]
        )
    return {"Authorization": f"Bearer {plaintext}", "Accept-Language": "en"}


def test_an_application_over_its_rate_gets_429(settings: Settings, tmp_path: Path) -> None:
    world = build_world(settings, tmp_path, 1)
    settings.api.rate_per_second, settings.api.burst = 0.1, 3
    limited, other = key(world, "Lenta"), key(world, "Otra")
    unlimited = key(world, "Sin límite", rate_per_second=0)
    own = key(world, "Propia", rate_per_second=100, burst=10)
    with TestClient(create_app(settings)) as client:
        codes = [client.get("/api/v1/lists", headers=limited).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = client.get("/api/v1/lists", headers=limited)
        assert refused.status_code == 429
        wait = refused.headers["retry-after"]
        assert wait in ("9", "10")  # a token every 10 s
        assert refused.json() == {
            "error": {
                "code": "rate_limited",
                "message": f"too many requests: wait {wait} s before the next one",
                "field": None,
            }
        }
        spanish = client.get("/api/v1/lists", headers={"Authorization": limited["Authorization"]})
        assert spanish.json()["error"]["message"].startswith("demasiadas solicitudes")
        # Each application has its own bucket; a key may have its own limit or none.
        assert client.get("/api/v1/lists", headers=other).status_code == 200
        assert all(
            client.get("/api/v1/lists", headers=unlimited).status_code == 200 for _ in range(8)
        )
        assert all(client.get("/api/v1/lists", headers=own).status_code == 200 for _ in range(8))


def test_the_local_bucket_refills_at_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("mailer.api.limits.time.monotonic", lambda: now[0])
    buckets = LocalBuckets()
    assert [buckets.take("k1", 10, 2) for _ in range(2)] == [0.0, 0.0]
    assert buckets.take("k1", 10, 2) == pytest.approx(0.1)
    now[0] += 0.1
    assert buckets.take("k1", 10, 2) == 0.0
    now[0] += 60  # never more than the burst
    assert [buckets.take("k1", 10, 2) for _ in range(3)][2] > 0


@pytest.mark.redis
def test_buckets_are_shared_across_processes_through_redis(
    configure: object, tmp_path: Path
) -> None:
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    store = redis.Redis.from_url(REDIS_URL)
    for name in store.scan_iter(f"{REDIS_PREFIX}*"):
        store.delete(name)
    settings: Settings = configure(None, MAILER_BROKER_URL=REDIS_URL)  # type: ignore[operator]
    world = build_world(settings, tmp_path, 1)
    settings.api.rate_per_second, settings.api.burst = 0.1, 4
    headers = key(world, "Compartida")
    # Two apps: two processes' worth of limiters, one bucket in Redis.
    with (
        TestClient(create_app(settings)) as first,
        TestClient(create_app(settings)) as second,
    ):
        codes = [
            (first if i % 2 else second).get("/api/v1/lists", headers=headers).status_code
            for i in range(5)
        ]
        assert codes == [200, 200, 200, 200, 429]
        refused = first.get("/api/v1/lists", headers=headers)
        assert refused.status_code == 429 and refused.headers["retry-after"] in ("9", "10")
    assert list(store.scan_iter(f"{REDIS_PREFIX}*"))  # the bucket lives in Redis
    assert store.pttl(next(store.scan_iter(f"{REDIS_PREFIX}*"))) > 0  # and expires
