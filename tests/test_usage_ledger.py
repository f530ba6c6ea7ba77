"""The usage ledger totals requests, tokens, cost, errors and cache hits four ways."""

from __future__ import annotations

import datetime

import msgspec
import pytest

from runtime.accounting.usage import UsageLedger, UsageTotals
from runtime.types import Usage


class WallClock:
    """A settable wall clock."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now


def test_totals_by_endpoint_model_and_day() -> None:
    """Each record lands in the total, its endpoint, its model and its UTC day."""
    clock = WallClock(datetime.datetime(2026, 5, 1, 23, 30, tzinfo=datetime.UTC))
    ledger = UsageLedger(now=clock)
    ledger.record("primary", "gpt-4o-mini", Usage(input_tokens=100, output_tokens=20), 0.01)
    ledger.record("backup", "claude-3-5-haiku", Usage(input_tokens=50, output_tokens=10), 0.02)
    clock.now += datetime.timedelta(hours=1)
    ledger.record("primary", "gpt-4o-mini", Usage(input_tokens=10, output_tokens=5), 0.005)
    report = ledger.report()
    assert report.total == UsageTotals(requests=3, input_tokens=160, output_tokens=35, cost_usd=pytest.approx(0.035))
    assert report.by_endpoint["primary"].requests == 2 and report.by_endpoint["primary"].input_tokens == 110
    assert report.by_model["claude-3-5-haiku"].cost_usd == pytest.approx(0.02)
    assert sorted(report.by_day) == ["2026-05-01", "2026-05-02"]
    assert report.by_day["2026-05-02"].output_tokens == 5


def test_errors_and_cache_hits_are_requests_too() -> None:
    """Errors and cache hits count as requests, with their own counters and no tokens."""
    ledger = UsageLedger()
    ledger.record_error("primary", "gpt-4o", "RateLimited")
    ledger.record_error(None, None, "NoEndpointAvailable")
    ledger.record_cache_hit("primary", "gpt-4o")
    ledger.record("primary", "gpt-4o", Usage(input_tokens=7, output_tokens=3), 0.001, cached=False)
    report = ledger.report()
    assert (report.total.requests, report.total.errors, report.total.cache_hits) == (4, 2, 1)
    assert report.by_endpoint["primary"].requests == 3 and report.by_endpoint["primary"].errors == 1
    assert set(report.by_endpoint) == {"primary"} and set(report.by_model) == {"gpt-4o"}
    assert sum(t.requests for t in report.by_day.values()) == 4


def test_report_is_a_frozen_snapshot() -> None:
    """A report does not change when more is recorded, and cannot be modified."""
    ledger = UsageLedger()
    ledger.record("a", "m", Usage(input_tokens=1), 0.0)
    report = ledger.report()
    ledger.record("a", "m", Usage(input_tokens=1), 0.0)
    assert report.total.requests == 1 and ledger.usage().total.requests == 2
    with pytest.raises(AttributeError):
        report.total.requests = 5  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(report))["total"]["input_tokens"] == 1


def test_naive_clock_is_utc() -> None:
    """A naive datetime from the clock is taken as UTC."""
    ledger = UsageLedger(now=lambda: datetime.datetime(2026, 1, 2, 3, 4))
    ledger.record("a", "m")
    assert list(ledger.report().by_day) == ["2026-01-02"]
    assert "1 requests" in repr(ledger)
