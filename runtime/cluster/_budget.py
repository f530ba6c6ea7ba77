"""Budgets shared by every process: requests hold their estimates on Redis, settled usage is
added to Redis's totals, and every guard refuses on the cluster's figures.

A :class:`SharedBudgetGuard` is a :class:`~runtime.accounting.budget.BudgetGuard` whose
used amounts are the cluster's. A reservation is checked locally first (a budget this
process already knows to be spent costs no round trip), then :meth:`SharedBudgetGuard.hold`
holds its estimate on Redis in one atomic script that refuses when the cluster's used and
held amounts leave no room for it: so processes cannot together pass a budget by what
they have in flight. Settling frees the hold and adds the real usage in one script, queued
off the request path; a hold whose process died expires after ``lease_ttl``. Usage without
a reservation (:meth:`spend`: a per-endpoint budget, a stream's cut answer) is added to the
totals, which every reply and the periodic sync bring back (replacing the local ones when
larger), so such budgets are refused everywhere within one sync interval. Spend made while
Redis was away is kept and added when it is back; a reservation made then is this
process's alone.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from ..accounting.budget import BudgetGuard, Reservation
from ..policy import Budget
from ._link import PROCESS, Call, Unavailable

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["SharedBudgetGuard"]

# Totals outlive their period by a margin, then Redis forgets them.
_DAY_TTL = 2 * 86400
_MONTH_TTL = 40 * 86400

_LIMITS = ("daily_tokens", "daily_usd", "monthly_tokens", "monthly_usd")
_HOLDS = itertools.count(1)


class SharedBudgetGuard(BudgetGuard):
    """A budget guard whose totals are shared through Redis (per scope: runtime, endpoint, key)."""

    def __init__(self, budget: Budget, state: SharedState, *, scope: str = "runtime") -> None:
        super().__init__(budget, scope=scope)
        self._state = state
        tag = "{" + f"{state.policy.prefix}:budget:{scope}".replace("{", "(").replace("}", ")") + "}"
        self._tag = tag
        self._unsent: dict[tuple[str, str], tuple[int, float]] = {}
        # Reservation id -> its hold's member on Redis ('': held in this process only).
        self._holds: dict[int, str] = {}
        self._unfreed: list[str] = []  # holds of requests that ended while Redis was away
        self._limit_args = ["" if (limit := getattr(budget, kind)) is None else limit for kind in _LIMITS]

    def _keys(self) -> tuple[str, str]:
        day = self._day.isoformat()
        month = f"{self._month[0]:04d}-{self._month[1]:02d}"
        return f"{self._tag}:d:{day}", f"{self._tag}:m:{month}"

    def _hold_keys(self) -> tuple[str, str, str, str]:
        return (*self._keys(), f"{self._tag}:held", f"{self._tag}:holds")

    async def hold(self, reservation: Reservation) -> None:
        """Hold ``reservation``'s estimate on Redis too, or raise :class:`BudgetExceeded`
        when the cluster's used and held amounts leave no room for it (the caller releases
        the reservation). Once per reservation; without Redis the local reservation stands."""
        if reservation.id in self._holds or reservation.id not in self._outstanding:
            return
        if not self._state.link.available:
            self._holds[reservation.id] = ""
            return
        member = f"{PROCESS}:{next(_HOLDS)} {reservation.tokens} {reservation.usd!r}"
        # Known before the answer: a request cancelled while asking still frees its hold.
        self._holds[reservation.id] = member
        keys = self._hold_keys()
        args = [reservation.tokens, repr(reservation.usd), member, self._state.policy.lease_ttl, *self._limit_args]
        try:
            reply = await self._state.call(("budget_hold", keys, args))
        except Unavailable:
            return  # held or not, the settle frees it once Redis is back, or it expires
        self.merge(keys[:2], reply)
        if reply[4]:
            self._holds[reservation.id] = ""  # refused: nothing held on Redis
            kind = reply[4]
            raise self.exceeded(kind, float(reply[5]), reservation.tokens if kind.endswith("tokens") else reservation.usd)

    def settle(self, reservation: Reservation, actual_tokens: int, actual_usd: float) -> None:
        """Replace the estimate with the real usage, here and (freeing its hold) on Redis."""
        member = self._holds.pop(reservation.id, "")
        if not member:
            super().settle(reservation, actual_tokens, actual_usd)
        elif self._drop(reservation):
            BudgetGuard.spend(self, actual_tokens, actual_usd)  # here only: freeing the hold adds it on Redis
            self._free(member, actual_tokens, actual_usd)

    def release(self, reservation: Reservation) -> None:
        """Return the reservation, here and (freeing its hold) on Redis."""
        member = self._holds.pop(reservation.id, "")
        if self._drop(reservation) and member:
            self._free(member, 0, 0.0)

    def spend(self, tokens: int, usd: float) -> None:
        """Charge usage here and in the shared totals."""
        super().spend(tokens, usd)
        keys = self._keys()
        if not self._state.link.available:
            self.merge(keys, None, tokens, usd)
            return
        self._state.send(self._spend_call(keys, tokens, usd), lambda reply: self.merge(keys, reply, tokens, usd))

    def _free(self, member: str, tokens: int, usd: float) -> None:
        """Free ``member``'s hold on Redis and add the usage to the totals, queued. While Redis
        is away both wait for the resync (the usage as unsent spend)."""
        keys = self._hold_keys()

        def done(reply: list[str] | None) -> None:
            if reply is None:
                self._unfreed.append(member)
            self.merge(keys[:2], reply, tokens, usd)

        if not self._state.link.available:
            done(None)
            return
        self._state.send(("budget_settle", keys, [member, tokens, repr(usd), _DAY_TTL, _MONTH_TTL]), done)

    def _spend_call(self, keys: tuple[str, str], tokens: int, usd: float) -> Call:
        return ("spend", keys, [tokens, repr(usd), _DAY_TTL, _MONTH_TTL])

    def sync_call(self) -> tuple[Call, tuple[str, str]]:
        """A call that reads the totals (adds nothing), for the periodic sync."""
        self._roll()
        keys = self._keys()
        return self._spend_call(keys, 0, 0.0), keys

    def resync(self) -> list[tuple[Call, tuple[str, str], int, float]]:
        """The spend made while Redis was away, to add now, and the holds of the requests that
        ended meanwhile, to free: (call, keys, tokens, usd)."""
        unsent, self._unsent = self._unsent, {}
        unfreed, self._unfreed = self._unfreed, []
        calls = [(self._spend_call(keys, tokens, usd), keys, tokens, usd) for keys, (tokens, usd) in unsent.items()]
        held = self._hold_keys()
        calls += [(("budget_settle", held, [m, 0, "0.0", _DAY_TTL, _MONTH_TTL]), held[:2], 0, 0.0) for m in unfreed]
        return calls

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

