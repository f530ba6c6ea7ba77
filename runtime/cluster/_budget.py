"""Budgets shared by every process: each spend is added to Redis, each guard reads the totals.

A :class:`SharedBudgetGuard` is a :class:`~runtime.accounting.budget.BudgetGuard` whose
used amounts are the cluster's: every :meth:`spend` (the settle of a request) is queued to
Redis as an increment of the day's and the month's totals, and the totals Redis answers
(and those the periodic sync reads) replace the local ones when larger. Admission stays
synchronous and local, on those totals: no round trip per request. So a budget spent
across processes is refused everywhere within one sync interval; requests already in
flight in other processes at that moment can still pass it by their own size.
Reservations (estimates in flight) are per process. Spend made while Redis was away is
kept and added when it is back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..accounting.budget import BudgetGuard
from ..policy import Budget
from ._link import Call

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["SharedBudgetGuard"]

# Totals outlive their period by a margin, then Redis forgets them.
_DAY_TTL = 2 * 86400
_MONTH_TTL = 40 * 86400


class SharedBudgetGuard(BudgetGuard):
    """A budget guard whose totals are shared through Redis (per scope: runtime, endpoint, key)."""

    def __init__(self, budget: Budget, state: SharedState, *, scope: str = "runtime") -> None:
        super().__init__(budget, scope=scope)
        self._state = state
        tag = "{" + f"{state.policy.prefix}:budget:{scope}".replace("{", "(").replace("}", ")") + "}"
        self._tag = tag
        self._unsent: dict[tuple[str, str], tuple[int, float]] = {}

    def _keys(self) -> tuple[str, str]:
        day = self._day.isoformat()
        month = f"{self._month[0]:04d}-{self._month[1]:02d}"
        return f"{self._tag}:d:{day}", f"{self._tag}:m:{month}"

    def spend(self, tokens: int, usd: float) -> None:
        """Charge usage here and in the shared totals."""
        super().spend(tokens, usd)
        keys = self._keys()
        if not self._state.link.available:
            tokens0, usd0 = self._unsent.get(keys, (0, 0.0))
            self._unsent[keys] = (tokens0 + tokens, usd0 + usd)
            return
        self._state.send(self._spend_call(keys, tokens, usd), lambda reply: self.merge(keys, reply, tokens, usd))

    def _spend_call(self, keys: tuple[str, str], tokens: int, usd: float) -> Call:
        return ("spend", keys, [tokens, repr(usd), _DAY_TTL, _MONTH_TTL])

    def sync_call(self) -> tuple[Call, tuple[str, str]]:
        """A call that reads the totals (adds nothing), for the periodic sync."""
        self._roll()
        keys = self._keys()
        return self._spend_call(keys, 0, 0.0), keys

    def resync(self) -> list[tuple[Call, tuple[str, str], int, float]]:
        """The spend made while Redis was away, to add now: (call, keys, tokens, usd)."""
        unsent, self._unsent = self._unsent, {}
        return [(self._spend_call(keys, tokens, usd), keys, tokens, usd) for keys, (tokens, usd) in unsent.items()]

    def merge(self, keys: tuple[str, str], reply: list[str] | None, tokens: int = 0, usd: float = 0.0) -> None:
        """Take the shared totals ``reply`` (of ``keys``' period) where they are larger;
        None: the call that added ``tokens`` and ``usd`` was lost, so keep them for the resync."""
        if reply is None:
            if tokens or usd:
                tokens0, usd0 = self._unsent.get(keys, (0, 0.0))
                self._unsent[keys] = (tokens0 + tokens, usd0 + usd)
            return
        self._roll()
        if keys != self._keys():
            return  # a total of a period that has ended here meanwhile
        day_tokens, day_usd, month_tokens, month_usd = (float(x) for x in reply[:4])
        # Totals only grow within a period, so the larger of the two is the fresher.
        self._day_tokens = max(self._day_tokens, int(day_tokens))
        self._day_usd = max(self._day_usd, day_usd)
        self._month_tokens = max(self._month_tokens, int(month_tokens))
        self._month_usd = max(self._month_usd, month_usd)
        self._check_warnings()

