"""Retry rationing and backoff.

A retry policy alone multiplies load during an outage: every caller retries, so a
provider that is already down sees three times the traffic. The :class:`RetryBudget`
caps extra attempts at a fraction of the requests of the last few seconds plus a small
floor per second (Finagle's retry budget), so an outage cannot turn into a storm. The
same class rations hedged requests.
"""

from __future__ import annotations

import random

from ..types import FrozenStruct

__all__ = ["RetryBudget", "RetryBudgetStats", "backoff_delay"]


class RetryBudgetStats(FrozenStruct, frozen=True):
    """What the budget saw over its window."""

    requests: int
    retries: int
    allowed: float
    refused: int


class RetryBudget:
    """At most ``ratio`` × recent requests + ``floor`` per second of extra attempts.

    Counts live in one-second buckets over ``window`` seconds: memory is constant and
    each call is O(1) amortised. The current second's requests are one counter, put in
    its bucket when the second is over: counting a request (every one) is one comparison
    and one add.
    """

    __slots__ = ("_current", "_floor_total", "_ratio", "_requests", "_retries", "_second", "_until", "_window", "refused")

    def __init__(self, ratio: float, floor: float, *, window: int = 10) -> None:
        self._ratio = ratio
        self._floor_total = floor * window
        self._window = window
        self._requests = [0] * window  # by second, the current one's in _current
        self._retries = [0] * window
        self._second = 0
        self._until = 1.0  # when the current second ends
        self._current = 0  # requests in the current second
        self.refused = 0

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<RetryBudget [requests: {s.requests} | retries: {s.retries}/{s.allowed:g} | refused: {s.refused}]>"

    def _advance(self, now: float) -> int:
        second = int(now)
        gap = second - self._second
        if gap > 0:
            window = self._window
            self._requests[self._second % window] += self._current  # the second just over, in its bucket
            self._current = 0
            for k in range(1, min(gap, window) + 1):
                slot = (self._second + k) % window
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._second = second
            self._until = second + 1.0
        return second % self._window

    def record_request(self, now: float) -> None:
        """Count a first attempt (callers read ``now`` just before: never before the current second)."""
        if now < self._until:  # within the current second: nearly every request under load
            self._current += 1
        else:
            self._advance(now)
            self._current = 1

    def can_spend(self, now: float, ratio: float | None = None) -> bool:
        """Whether one extra attempt would pass now, without taking it."""
        self._advance(now)
        share = self._ratio if ratio is None else ratio
        return sum(self._retries) + 1 <= self._floor_total + share * (sum(self._requests) + self._current)

    def try_spend(self, now: float, ratio: float | None = None) -> bool:
        """Take one extra attempt from the budget; False when it is spent.

        ``ratio`` replaces the budget's own for this one spend (a per-request hedge
        policy's share of the same count of requests).
        """
        if not self.can_spend(now, ratio):
            self.refused += 1
            return False
        self._retries[int(now) % self._window] += 1
        return True

    def statistics(self) -> RetryBudgetStats:
        """Counts over the current window."""
        requests = sum(self._requests) + self._current
        return RetryBudgetStats(
            requests=requests,
            retries=sum(self._retries),
            allowed=self._floor_total + self._ratio * requests,
            refused=self.refused,
        )


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff before the ``attempt``-th retry of one endpoint (1-based)."""
    return rng.uniform(0.0, min(cap, base * (2.0 ** (attempt - 1))))
