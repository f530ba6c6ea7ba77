"""Budgets: refuse a request before sending it when it would overspend a token or USD limit.

A :class:`BudgetGuard` enforces one :class:`~runtime.policy.Budget` (daily and monthly,
tokens and USD). The request path is reserve → send → settle:

* :meth:`BudgetGuard.reserve` takes the request's *estimated* tokens and USD (prompt plus
  ``max_tokens``) and raises :class:`~runtime.errors.BudgetExceeded` if the amount used,
  plus what other in-flight requests reserved, plus this estimate would pass a limit.
  It runs before any byte is sent.
* :meth:`BudgetGuard.settle` swaps the estimate for the real usage once the reply is in;
  :meth:`BudgetGuard.release` returns the reservation of a request that sent nothing.
  Both are idempotent: a reservation is settled or released once, later calls are no-ops.
* :meth:`BudgetGuard.spend` charges usage that had no reservation.

When the amount used crosses ``warn_at`` of a limit, the guard emits one OpenTelemetry
span named ``"budget warning"`` (attributes ``scope``, ``kind``, ``used``, ``limit``,
``warn_at``, ``period``) and logs one warning on the ``runtime.budget`` logger: once per
limit and period. Daily limits roll over at midnight UTC, monthly ones on the first of the
month; in-flight reservations carry over and are charged to the period they settle in.
The wall clock is injectable (``now``) so tests can cross midnight instantly.

A per-endpoint budget is the same class with ``scope`` set to the endpoint's name; the
dispatcher skips an endpoint whose guard reports :meth:`BudgetGuard.exhausted`.
All methods are synchronous and meant for one event loop's thread.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from ..errors import BudgetExceeded
from ..policy import Budget
from ..telemetry import tracer
from ..types import FrozenStruct

__all__ = ["BudgetGuard", "BudgetStatistics", "Reservation"]

logger = logging.getLogger("runtime.budget")

# (kind, period, unit): the four limits a Budget can set.
_KINDS: Final = (
    ("daily_tokens", "day", "tokens"),
    ("daily_usd", "day", "usd"),
    ("monthly_tokens", "month", "tokens"),
    ("monthly_usd", "month", "usd"),
)


class Reservation(FrozenStruct, frozen=True):
    """Estimated tokens and USD held for one in-flight request."""

    id: int
    tokens: int
    usd: float


class BudgetStatistics(FrozenStruct, frozen=True):
    """A snapshot of a budget: what is used, reserved and left, per limit set."""

    scope: str
    day: str
    month: str
    used: dict[str, float]
    reserved_tokens: int
    reserved_usd: float
    remaining: dict[str, float]
    warned: list[str]
    in_flight: int


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class BudgetGuard:
    """Enforces one :class:`~runtime.policy.Budget` for a scope (``"runtime"`` or an endpoint)."""

    #: Set by a guard whose totals are shared with other processes: awaited after
    #: :meth:`reserve` and before anything is sent, it holds the reservation where the
    #: totals are, or raises :class:`BudgetExceeded`. None: this process's totals decide.
    hold: Callable[[Reservation], Awaitable[None]] | None = None

    def __init__(
        self,
        budget: Budget,
        *,
        scope: str = "runtime",
        now: Callable[[], datetime.datetime] = _utc_now,
    ) -> None:
        self.budget = budget
        self.scope = scope
        self._now = now
        self._limits = {kind: float(limit) for kind, *_ in _KINDS if (limit := getattr(budget, kind)) is not None}
        # Each limit as a number (inf: not set), and the use at which it warns: the request
        # path compares against all four at once, and walks _limits only to name the one passed.
        limits = self._limits
        self._cap_day_tokens = limits.get("daily_tokens", math.inf)
        self._cap_day_usd = limits.get("daily_usd", math.inf)
        self._cap_month_tokens = limits.get("monthly_tokens", math.inf)
        self._cap_month_usd = limits.get("monthly_usd", math.inf)
        warn_at = budget.warn_at
        self._warn_day_tokens = warn_at * self._cap_day_tokens
        self._warn_day_usd = warn_at * self._cap_day_usd
        self._warn_month_tokens = warn_at * self._cap_month_tokens
        self._warn_month_usd = warn_at * self._cap_month_usd
        # When the day the totals count in ends (wall clock): only the default clock sets it,
        # so that a period check is one float comparison; another clock is asked each time.
        self._day_end = -math.inf
        self._ids = itertools.count(1)
        self._outstanding: dict[int, Reservation] = {}
        self._reserved_tokens = 0
        self._reserved_usd = 0.0
        self._day_tokens = 0
        self._day_usd = 0.0
        self._month_tokens = 0
        self._month_usd = 0.0
        self._warned: set[str] = set()
        today = self._today()
        self._day = today
        self._month = (today.year, today.month)

    def __repr__(self) -> str:
        parts = [f"{kind} {self._used(kind):g}/{limit:g}" for kind, limit in self._limits.items()]
        return f"<BudgetGuard {self.scope!r} [{', '.join(parts) or 'no limits'} | {len(self._outstanding)} in flight]>"

    # --- periods ------------------------------------------------------------------------

    def _today(self) -> datetime.date:
        if self._now is _utc_now:
            today = datetime.datetime.fromtimestamp(time.time(), datetime.UTC).date()
            self._day_end = datetime.datetime.combine(today, datetime.time(), datetime.UTC).timestamp() + 86400.0
            return today
        now = self._now()
        if now.tzinfo is not None:
            now = now.astimezone(datetime.UTC)
        return now.date()

    def _roll(self) -> None:
        """Start a new day or month when the clock has passed into one."""
        today = self._today()
        if today == self._day:
            return
        self._day = today
        self._day_tokens = 0
        self._day_usd = 0.0
        self._warned.discard("daily_tokens")
        self._warned.discard("daily_usd")
        month = (today.year, today.month)
        if month != self._month:
            self._month = month
            self._month_tokens = 0
            self._month_usd = 0.0
            self._warned.discard("monthly_tokens")
            self._warned.discard("monthly_usd")

    def _used(self, kind: str) -> float:
        match kind:
            case "daily_tokens":
                return self._day_tokens
            case "daily_usd":
                return self._day_usd
            case "monthly_tokens":
                return self._month_tokens
            case _:
                return self._month_usd

    def _reserved(self, kind: str) -> float:
        return self._reserved_tokens if kind.endswith("tokens") else self._reserved_usd

    def _period(self, kind: str) -> str:
        return self._day.isoformat() if kind.startswith("daily") else f"{self._month[0]:04d}-{self._month[1]:02d}"

    # --- the request path ---------------------------------------------------------------

    def reserve(self, estimated_tokens: int, estimated_usd: float = 0.0) -> Reservation:
        """Hold an estimate for a request about to be sent, or raise :class:`BudgetExceeded`.

        Refuses when used + reserved + this estimate would pass any limit. Nothing is
        held when it refuses.
        """
        if time.time() >= self._day_end:  # a new day may have begun (always asked with another clock)
            self._roll()
        # used + reserved + need against each limit, summed in the order _refuse sums them.
        tokens, usd = self._reserved_tokens, self._reserved_usd
        if (
            self._day_tokens + tokens + estimated_tokens > self._cap_day_tokens
            or self._day_usd + usd + estimated_usd > self._cap_day_usd
            or self._month_tokens + tokens + estimated_tokens > self._cap_month_tokens
            or self._month_usd + usd + estimated_usd > self._cap_month_usd
        ):
            self._refuse(estimated_tokens, estimated_usd)
        reservation = Reservation(id=next(self._ids), tokens=estimated_tokens, usd=estimated_usd)
        self._outstanding[reservation.id] = reservation
        self._reserved_tokens += estimated_tokens
        self._reserved_usd += estimated_usd
        return reservation

    def _refuse(self, estimated_tokens: int, estimated_usd: float) -> None:
        """Raise the refusal naming the first limit (in _KINDS order) the estimate would pass."""
        for kind, limit in self._limits.items():
            committed = self._used(kind) + self._reserved(kind)
            need = estimated_tokens if kind.endswith("tokens") else estimated_usd
            if committed + need > limit:
                raise self.exceeded(kind, committed, need)

    def exceeded(self, kind: str, committed: float, need: float) -> BudgetExceeded:
        """The refusal of a request needing ``need`` more of ``kind``, of which ``committed``
        is used or reserved."""
        limit = self._limits[kind]
        unit = "tokens" if kind.endswith("tokens") else "USD"
        return BudgetExceeded(
            f"{self.scope} {kind.replace('_', ' ')} budget would be exceeded: {committed:g} of {limit:g} {unit} "
            f"used or reserved in {self._period(kind)}, and this request needs about {need:g} more",
            kind=kind,
            used=committed,
            limit=limit,
            scope=self.scope,
        )

    def _drop(self, reservation: Reservation) -> bool:
        if self._outstanding.pop(reservation.id, None) is None:
            return False
        self._reserved_tokens -= reservation.tokens
        self._reserved_usd -= reservation.usd
        if not self._outstanding:
            self._reserved_usd = 0.0  # no float residue once nothing is in flight
        return True

    def settle(self, reservation: Reservation, actual_tokens: int, actual_usd: float) -> None:
        """Replace ``reservation``'s estimate with the real usage (once; later calls do nothing)."""
        if self._drop(reservation):
            self.spend(actual_tokens, actual_usd)

    def release(self, reservation: Reservation) -> None:
        """Return the reservation of a request that sent nothing or was cancelled (once)."""
        self._drop(reservation)

    def spend(self, tokens: int, usd: float) -> None:
        """Charge usage that had no reservation (and check the warning thresholds)."""
        if time.time() >= self._day_end:
            self._roll()
        self._day_tokens += tokens
        self._day_usd += usd
        self._month_tokens += tokens
        self._month_usd += usd
        # Below every warning threshold (nearly always): nothing to look up.
        if (
            self._day_tokens >= self._warn_day_tokens
            or self._day_usd >= self._warn_day_usd
            or self._month_tokens >= self._warn_month_tokens
            or self._month_usd >= self._warn_month_usd
        ):
            self._check_warnings()

    # --- warnings -----------------------------------------------------------------------

    def _check_warnings(self) -> None:
        warn_at = self.budget.warn_at
        for kind, limit in self._limits.items():
            if kind in self._warned:
                continue
            used = self._used(kind)
            if used >= warn_at * limit:
                self._warned.add(kind)
                self._warn(kind, used, limit)

    def _warn(self, kind: str, used: float, limit: float) -> None:
        period = self._period(kind)
        warn_at = self.budget.warn_at
        span = tracer().start_span(
            "budget warning",
            attributes={
                "scope": self.scope,
                "kind": kind,
                "used": used,
                "limit": limit,
                "warn_at": warn_at,
                "period": period,
            },
        )
        span.end()
        logger.warning(
            "budget warning: %s %s at %.0f%% (%g of %g) in %s",
            self.scope,
            kind,
            100 * used / limit,
            used,
            limit,
            period,
        )

    # --- reading ------------------------------------------------------------------------

    def remaining(self) -> dict[str, float]:
        """What is left of each limit set (never below 0), net of in-flight reservations."""
        self._roll()
        return {kind: max(0.0, limit - self._used(kind) - self._reserved(kind)) for kind, limit in self._limits.items()}

    def exhausted(self) -> bool:
        """True when any limit is fully used or reserved: nothing more can be sent now."""
        if time.time() >= self._day_end:
            self._roll()
        tokens, usd = self._reserved_tokens, self._reserved_usd
        return (
            self._day_tokens + tokens >= self._cap_day_tokens
            or self._day_usd + usd >= self._cap_day_usd
            or self._month_tokens + tokens >= self._cap_month_tokens
            or self._month_usd + usd >= self._cap_month_usd
        )

    def statistics(self) -> BudgetStatistics:
        """A frozen snapshot for status output and tests."""
        remaining = self.remaining()
        return BudgetStatistics(
            scope=self.scope,
            day=self._day.isoformat(),
            month=f"{self._month[0]:04d}-{self._month[1]:02d}",
            used={kind: self._used(kind) for kind in self._limits},
            reserved_tokens=self._reserved_tokens,
            reserved_usd=self._reserved_usd,
            remaining=remaining,
            warned=sorted(self._warned),
            in_flight=len(self._outstanding),
        )
