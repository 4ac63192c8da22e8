"""Daily caps and warm-up shared through the database, on both backends."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import date

from mailer.core.config import RelaySettings, Settings
from mailer.delivery.quota import daily_allowance, give_back, reserve
from mailer.storage.db import session_scope

DAY = date(2026, 11, 22)


def test_warm_up_grows_day_by_day_up_to_the_cap() -> None:
    relay = RelaySettings(
        name="new-ip", daily_cap=5000, warmup_start=500, warmup_growth=2, warmup_started_on=DAY
    )
    allowances = [daily_allowance(relay, date(2026, 11, 22 + n), None) for n in range(6)]
    assert allowances == [500, 1000, 2000, 4000, 5000, 5000]
    assert daily_allowance(RelaySettings(), DAY, None) is None
    assert daily_allowance(RelaySettings(daily_cap=10), DAY, None) == 10
    # Without a start date the first day of use counts as day 0.
    unset = RelaySettings(warmup_start=100, warmup_growth=1.5)
    assert daily_allowance(unset, date(2026, 11, 24), first_day=DAY) == 225


def test_reservations_never_exceed_the_allowance_and_unused_is_given_back(
    settings: Settings,
) -> None:
    capped = RelaySettings(name="capped", daily_cap=1000)
    free = RelaySettings(name="free")

    def take(n: int) -> dict[str, int | None]:
        with session_scope(settings) as session:
            return reserve(session, [capped, free], n, DAY)

    with ThreadPoolExecutor(4) as pool:
        grants = list(pool.map(take, [300] * 5))
    assert all(g["free"] is None for g in grants)
    assert sum(g["capped"] or 0 for g in grants) == 1000  # five workers, one cap
    with session_scope(settings) as session:
        give_back(session, {"capped": 300, "free": None}, {"capped": 100}, DAY)
    assert take(500)["capped"] == 200  # the 200 unused came back
    assert take(1)["capped"] == 0
