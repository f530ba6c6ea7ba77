"""The usage ledger: what every request used and cost, overall, by endpoint, model and day.

The runtime records one outcome per request (a reply, a cache hit or an error); the
ledger keeps running totals, so recording is O(1) and :meth:`UsageLedger.report` costs
only the number of distinct endpoints, models and days. Days are UTC dates
(``"2026-11-21"``), from a wall clock that tests can replace.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable

import msgspec

from ..types import FrozenStruct, Usage

__all__ = ["UsageLedger", "UsageReport", "UsageTotals"]


class UsageTotals(FrozenStruct, frozen=True):
    """Totals over a set of requests. ``errors``, ``cache_hits`` and ``unpriced`` are counts
    of requests; ``unpriced`` ones had no known price, so ``cost_usd`` leaves them out."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    errors: int = 0
    cache_hits: int = 0
    unpriced: int = 0


class UsageReport(FrozenStruct, frozen=True):
    """Usage overall (``total``), by endpoint, by model and by UTC day (``"YYYY-MM-DD"``)."""

    total: UsageTotals = UsageTotals()
    by_endpoint: dict[str, UsageTotals] = msgspec.field(default_factory=dict)
    by_model: dict[str, UsageTotals] = msgspec.field(default_factory=dict)
    by_day: dict[str, UsageTotals] = msgspec.field(default_factory=dict)


class _Tally:
    """Mutable running totals; frozen into :class:`UsageTotals` for a report."""

    __slots__ = ("cache_hits", "cost_usd", "errors", "input_tokens", "output_tokens", "requests", "unpriced")

    def __init__(self) -> None:
        self.requests = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0
        self.errors = 0
        self.unpriced = 0
        self.cache_hits = 0

    def merge(self, other: _Tally) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_usd += other.cost_usd
        self.errors += other.errors
        self.unpriced += other.unpriced
        self.cache_hits += other.cache_hits

    def freeze(self) -> UsageTotals:
        return UsageTotals(
            requests=self.requests,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd,
            errors=self.errors,
            unpriced=self.unpriced,
            cache_hits=self.cache_hits,
        )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class UsageLedger:
    """Running usage totals of one runtime.

    ``now`` is the wall clock that dates each record (default: UTC now); a naive
    datetime it returns is taken as UTC.
    """

    def __init__(self, *, now: Callable[[], datetime.datetime] = _utc_now) -> None:
        self._now = now
        self._tallies: dict[tuple[str, str | None, str | None], _Tally] = {}
        self._day_key = ""
        self._day_end = -math.inf

    def __repr__(self) -> str:
        t = self.report().total
        return (
            f"<UsageLedger [{t.requests} requests, {t.errors} errors, {t.cache_hits} cache hits | "
            f"{t.input_tokens} in, {t.output_tokens} out | ${t.cost_usd:.4f}]>"
        )

    def _day(self) -> str:
        """The day a record counts in, when :meth:`record`'s check (before the known day's
        end, which only the default clock sets: one float comparison) did not find it."""
        if self._now is _utc_now:
            t = time.time()
            today = datetime.datetime.fromtimestamp(t, datetime.UTC).date()
            self._day_key = today.isoformat()
            self._day_end = datetime.datetime.combine(today, datetime.time(), datetime.UTC).timestamp() + 86400.0
            return self._day_key
        now = self._now()
        if now.tzinfo is not None:
            now = now.astimezone(datetime.UTC)
        return now.date().isoformat()

    def record(
        self,
        endpoint: str | None,
        model: str | None,
        usage: Usage | None = None,
        cost_usd: float = 0.0,
        # Not keyword-only (callers name them): a keyword-only parameter left out costs a
        # dict lookup for its default on every call.
        error: str | None = None,
        cached: bool = False,
        priced: bool = True,
        request: bool = True,
    ) -> None:
        """Record one request's outcome.

        ``error`` is the error's class name when it failed; ``cached`` marks a reply served
        from the response cache; ``priced`` false marks a reply whose cost is unknown
        (counted as 0 in ``cost_usd`` and once in ``unpriced``). An outcome without an endpoint or model (refused before
        any endpoint was chosen) counts in the total and its day only. ``request`` false
        adds tokens and cost without counting a request: what a stream's answer used
        before it failed mid-way (the request is counted by its outcome).
        """
        # One tally per (day, endpoint, model): one lookup and one add per request; the
        # totals by day, endpoint and model are summed when a report is asked for.
        # The default clock before midnight UTC (nearly always): the day known, without a call
        # (with another clock the day's end stays -inf: asked each time).
        day = self._day_key if time.time() < self._day_end else self._day()
        key = (day, endpoint, model or None)
        tally = self._tallies.get(key)
        if tally is None:
            tally = self._tallies[key] = _Tally()
        if request:
            tally.requests += 1
        if usage is not None:
            tally.input_tokens += usage.input_tokens
            tally.output_tokens += usage.output_tokens
        tally.cost_usd += cost_usd
        if error is not None:
            tally.errors += 1
        if not priced:
            tally.unpriced += 1
        if cached:
            tally.cache_hits += 1

    def record_cache_hit(self, endpoint: str | None, model: str | None) -> None:
        """Record a request answered from the response cache (it used and cost nothing)."""
        self.record(endpoint, model, cached=True)

    def record_error(self, endpoint: str | None, model: str | None, error: str) -> None:
        """Record a request that failed with the error class named ``error``."""
        self.record(endpoint, model, error=error)

    def report(self) -> UsageReport:
        """A frozen snapshot of the totals."""
        total = _Tally()
        by_day: dict[str, _Tally] = {}
        by_endpoint: dict[str, _Tally] = {}
        by_model: dict[str, _Tally] = {}
        for (day, endpoint, model), tally in self._tallies.items():
            total.merge(tally)
            by_day.setdefault(day, _Tally()).merge(tally)
            if endpoint is not None:
                by_endpoint.setdefault(endpoint, _Tally()).merge(tally)
            if model is not None:
                by_model.setdefault(model, _Tally()).merge(tally)
        return UsageReport(
            total=total.freeze(),
            by_endpoint={k: v.freeze() for k, v in by_endpoint.items()},
            by_model={k: v.freeze() for k, v in by_model.items()},
            by_day={k: v.freeze() for k, v in by_day.items()},
        )

    usage = report
