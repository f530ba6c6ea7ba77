"""Budgets refuse before sending, reconcile estimates with real usage, warn once per period."""

from __future__ import annotations

import datetime
import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.accounting.budget import BudgetGuard
from runtime.errors import BudgetExceeded
from runtime.policy import Budget

UTC = datetime.UTC


class WallClock:
    """A settable UTC wall clock."""

    def __init__(self, start: datetime.datetime) -> None:
        self.now = start

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += datetime.timedelta(**delta)


@pytest.fixture
def clock() -> WallClock:
    """A clock at 2026-03-31 22:00 UTC: two hours before both a day and a month end."""
    return WallClock(datetime.datetime(2026, 3, 31, 22, 0, tzinfo=UTC))


def warnings_of(exporter: InMemorySpanExporter) -> list[dict[str, object]]:
    """The attributes of every "budget warning" span exported so far."""
    return [dict(s.attributes or {}) for s in exporter.get_finished_spans() if s.name == "budget warning"]


def test_refuses_before_anything_is_held(clock: WallClock) -> None:
    """A request that would pass the limit raises BudgetExceeded and reserves nothing."""
    guard = BudgetGuard(Budget(daily_tokens=1_000), now=clock)
    guard.spend(900, 0.0)
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve(200)
    err = info.value
    assert (err.kind, err.used, err.limit, err.scope) == ("daily_tokens", 900, 1_000, "runtime")
    assert "daily tokens" in str(err) and "200" in str(err)
    assert guard.remaining() == {"daily_tokens": 100}
    assert guard.statistics().in_flight == 0


def test_reservations_count_against_the_limit(clock: WallClock) -> None:
    """In-flight reservations are held, so concurrent requests cannot overspend together."""
    guard = BudgetGuard(Budget(daily_tokens=1_000, daily_usd=1.0), now=clock)
    first = guard.reserve(600, 0.2)
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve(600, 0.2)
    assert info.value.kind == "daily_tokens" and info.value.used == 600
    guard.release(first)
    guard.reserve(600, 0.2)


def test_usd_limit_refuses(clock: WallClock) -> None:
    """The USD limit refuses on the estimated cost, with its own kind."""
    guard = BudgetGuard(Budget(daily_usd=0.5), scope="primary", now=clock)
    guard.spend(0, 0.45)
    with pytest.raises(BudgetExceeded) as info:
        guard.reserve(10, 0.1)
    assert (info.value.kind, info.value.scope) == ("daily_usd", "primary")


def test_settle_reconciles_estimate_with_usage(clock: WallClock) -> None:
    """Settling swaps the estimate for the real figures; a second settle changes nothing."""
    guard = BudgetGuard(Budget(daily_tokens=10_000, monthly_usd=10.0), now=clock)
    reservation = guard.reserve(4_000, 1.0)
    assert guard.remaining() == {"daily_tokens": 6_000, "monthly_usd": 9.0}
    guard.settle(reservation, 1_500, 0.25)
    assert guard.remaining() == {"daily_tokens": 8_500, "monthly_usd": 9.75}
    guard.settle(reservation, 1_500, 0.25)
    guard.release(reservation)
    assert guard.remaining() == {"daily_tokens": 8_500, "monthly_usd": 9.75}
    stats = guard.statistics()
    assert stats.used == {"daily_tokens": 1_500, "monthly_usd": 0.25}
    assert stats.reserved_tokens == 0 and stats.reserved_usd == 0.0


def test_release_returns_everything(clock: WallClock) -> None:
    """A request that sent nothing gives its whole reservation back."""
    guard = BudgetGuard(Budget(daily_tokens=100), now=clock)
    reservation = guard.reserve(100)
    assert guard.exhausted()
    guard.release(reservation)
    assert not guard.exhausted() and guard.remaining() == {"daily_tokens": 100}


def test_day_rolls_over_at_utc_midnight(clock: WallClock) -> None:
    """Daily usage resets at midnight UTC; monthly usage carries on within the month."""
    clock.now = datetime.datetime(2026, 3, 30, 23, 0, tzinfo=UTC)
    guard = BudgetGuard(Budget(daily_tokens=1_000, monthly_tokens=5_000), now=clock)
    guard.spend(1_000, 0.0)
    assert guard.exhausted()
    clock.advance(hours=1)
    assert guard.remaining() == {"daily_tokens": 1_000, "monthly_tokens": 4_000}


def test_month_rolls_over_on_the_first(clock: WallClock) -> None:
    """Monthly usage resets on the first of the month, UTC."""
    guard = BudgetGuard(Budget(monthly_tokens=1_000), now=clock)
    guard.spend(1_000, 0.0)
    clock.advance(hours=1)  # 23:00 on the 31st, still March
    assert guard.exhausted()
    clock.advance(hours=1)  # April 1st
    assert guard.remaining() == {"monthly_tokens": 1_000}


def test_non_utc_clock_is_read_as_utc() -> None:
    """A wall clock in another zone rolls the day over at UTC midnight, not local midnight."""
    tz = datetime.timezone(datetime.timedelta(hours=5))
    clock = WallClock(datetime.datetime(2026, 6, 1, 4, 30, tzinfo=tz))  # 23:30 UTC on May 31st
    guard = BudgetGuard(Budget(daily_tokens=10), now=clock)
    guard.spend(10, 0.0)
    assert guard.statistics().day == "2026-05-31"
    clock.advance(hours=1)
    assert guard.statistics().day == "2026-06-01" and not guard.exhausted()


def test_in_flight_reservation_settles_into_the_new_day(clock: WallClock) -> None:
    """A request in flight at midnight is charged to the day it finishes in."""
    clock.now = datetime.datetime(2026, 3, 30, 23, 59, tzinfo=UTC)
    guard = BudgetGuard(Budget(daily_tokens=1_000), now=clock)
    reservation = guard.reserve(500)
    clock.advance(minutes=2)
    assert guard.remaining() == {"daily_tokens": 500}
    guard.settle(reservation, 300, 0.0)
    assert guard.statistics().used == {"daily_tokens": 300}


def test_warning_span_once_per_period(
    clock: WallClock, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """Crossing warn_at emits one span and one log line per limit and period, not one per request."""
    caplog.set_level(logging.WARNING, logger="runtime.budget")
    clock.now = datetime.datetime(2026, 3, 30, 12, 0, tzinfo=UTC)
    guard = BudgetGuard(Budget(daily_tokens=1_000, warn_at=0.8), scope="primary", now=clock)
    guard.settle(guard.reserve(700), 700, 0.0)
    assert warnings_of(span_exporter) == []
    for _ in range(3):
        guard.settle(guard.reserve(50), 50, 0.0)
    spans = warnings_of(span_exporter)
    assert spans == [
        {
            "scope": "primary",
            "kind": "daily_tokens",
            "used": 800,
            "limit": 1000.0,
            "warn_at": 0.8,
            "period": "2026-03-30",
        }
    ]
    assert len([r for r in caplog.records if r.name == "runtime.budget"]) == 1
    assert "primary daily_tokens at 80%" in caplog.records[-1].getMessage()
    clock.advance(days=1)
    guard.spend(900, 0.0)
    guard.spend(10, 0.0)
    spans = warnings_of(span_exporter)
    assert len(spans) == 2 and spans[1]["period"] == "2026-03-31"
    assert guard.statistics().warned == ["daily_tokens"]


def test_each_limit_warns_on_its_own(clock: WallClock, span_exporter: InMemorySpanExporter) -> None:
    """Tokens and USD limits warn separately, each once."""
    guard = BudgetGuard(Budget(daily_tokens=100, daily_usd=1.0, warn_at=0.5), now=clock)
    guard.spend(60, 0.1)
    guard.spend(0, 0.5)
    guard.spend(10, 0.1)
    assert sorted(str(s["kind"]) for s in warnings_of(span_exporter)) == ["daily_tokens", "daily_usd"]


def test_no_limits_never_refuses(clock: WallClock) -> None:
    """A Budget with no limit set reserves anything and reports nothing remaining."""
    guard = BudgetGuard(Budget(), now=clock)
    guard.settle(guard.reserve(10**9, 10**6), 10**9, 10**6)
    assert guard.remaining() == {} and not guard.exhausted()
    assert "no limits" in repr(guard)
