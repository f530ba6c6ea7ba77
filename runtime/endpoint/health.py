"""When the next health probe runs.

The probe itself (a token-free GET of the provider's model list) is I/O and belongs to
the endpoint actor; this module only decides the delays, so the schedule is testable
without a clock or a socket. The actor loops: ``await sleep(schedule.next_delay(ok))``,
probe, repeat, with ``ok`` the last probe's result.
"""

from __future__ import annotations

import random

from ..policy import HealthPolicy
from ..types import FrozenStruct

__all__ = ["MAX_BACKOFF", "PROBE_JITTER", "ProbeSchedule", "ProbeScheduleStats"]

# While the endpoint is down the interval doubles per failed probe up to this factor:
# a dead endpoint is not hammered, yet recovery is still noticed within minutes at the
# default 15 s interval (8 × 15 s = 2 min), sooner than most breakers' longest period.
MAX_BACKOFF = 8
# ±20 % jitter keeps a fleet of endpoints (and of processes) from probing in lockstep.
PROBE_JITTER = 0.2
# One stream for every schedule built without its own (a Random is 2.5 KiB of state).
_SHARED_RNG = random.Random()


class ProbeScheduleStats(FrozenStruct, frozen=True):
    """The schedule's figures: the base interval, failed probes in a row, the last delay."""

    interval: float
    consecutive_failures: int
    backoff: int
    last_delay: float | None
    delays: int


class ProbeSchedule:
    """Jittered probe delays that back off exponentially while the endpoint is down.

    The first delay is drawn uniformly from (0, interval], so endpoints started together
    spread their first probes over one interval instead of probing as one. After that,
    a healthy endpoint is probed every ``interval`` seconds (±20 %); each failed probe in
    a row doubles the base delay up to :data:`MAX_BACKOFF` × ``interval``; one good
    probe returns it to ``interval``.
    """

    __slots__ = ("_delays", "_failures", "_interval", "_last", "_rng", "_started")

    def __init__(self, policy: HealthPolicy, rng: random.Random | None = None) -> None:
        self._interval = policy.interval
        self._rng = rng if rng is not None else _SHARED_RNG
        self._failures = 0
        self._started = False
        self._last: float | None = None
        self._delays = 0

    @property
    def consecutive_failures(self) -> int:
        """Failed probes in a row."""
        return self._failures

    @property
    def backoff(self) -> int:
        """The factor the interval is multiplied by now (1 while healthy)."""
        return min(2 ** min(self._failures, 30), MAX_BACKOFF) if self._failures else 1

    def next_delay(self, healthy: bool) -> float:
        """Seconds until the next probe, given whether the last one (or traffic) was healthy."""
        self._delays += 1
        if not self._started:
            self._started = True
            if healthy:
                delay = self._interval * (1.0 - self._rng.random())  # (0, interval]
                self._last = delay
                return delay
        if healthy:
            self._failures = 0
        else:
            self._failures += 1
        delay = self._interval * self.backoff * self._rng.uniform(1.0 - PROBE_JITTER, 1.0 + PROBE_JITTER)
        self._last = delay
        return delay

    def reset(self) -> None:
        """Forget the failures: the next delay is the plain interval."""
        self._failures = 0

    def statistics(self) -> ProbeScheduleStats:
        """The schedule's figures now."""
        return ProbeScheduleStats(
            interval=self._interval,
            consecutive_failures=self._failures,
            backoff=self.backoff,
            last_delay=self._last,
            delays=self._delays,
        )

    def __repr__(self) -> str:
        last = "none yet" if self._last is None else f"{self._last:.3f}s"
        return (
            f"<ProbeSchedule [every {self._interval:g}s × {self.backoff} | "
            f"{self._failures} failed in a row | last delay {last}]>"
        )
