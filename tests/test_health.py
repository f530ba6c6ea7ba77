"""The probe schedule: spread first probe, jittered interval, exponential backoff while down."""

from __future__ import annotations

import random

import pytest

from runtime.endpoint.health import MAX_BACKOFF, PROBE_JITTER, ProbeSchedule
from runtime.policy import HealthPolicy

POLICY = HealthPolicy(interval=10.0)
LOW, HIGH = 1.0 - PROBE_JITTER, 1.0 + PROBE_JITTER


def test_first_probe_is_spread_over_one_interval() -> None:
    """Endpoints started together probe first at different moments within one interval."""
    firsts = [ProbeSchedule(POLICY, random.Random(seed)).next_delay(True) for seed in range(50)]
    assert all(0.0 < d <= 10.0 for d in firsts)
    assert len(set(firsts)) == 50
    assert min(firsts) < 3.0 and max(firsts) > 7.0


def test_healthy_delays_are_the_interval_jittered() -> None:
    """While healthy the delay stays within ±20 % of the interval, and varies."""
    schedule = ProbeSchedule(POLICY, random.Random(1))
    schedule.next_delay(True)
    delays = [schedule.next_delay(True) for _ in range(200)]
    assert all(10.0 * LOW <= d <= 10.0 * HIGH for d in delays)
    assert max(delays) - min(delays) > 2.0


def test_backs_off_exponentially_while_down_and_caps() -> None:
    """Each failed probe doubles the base delay, up to 8x the interval."""
    schedule = ProbeSchedule(POLICY, random.Random(2))
    schedule.next_delay(True)
    bases = [2, 4, 8, 8, 8, 8]
    for base in bases:
        delay = schedule.next_delay(False)
        assert 10.0 * base * LOW <= delay <= 10.0 * base * HIGH
    assert schedule.backoff == MAX_BACKOFF
    assert schedule.consecutive_failures == len(bases)


def test_a_good_probe_resets_the_backoff() -> None:
    """One healthy result returns the delay to the plain interval."""
    schedule = ProbeSchedule(POLICY, random.Random(3))
    for _ in range(5):
        schedule.next_delay(False)
    delay = schedule.next_delay(True)
    assert 10.0 * LOW <= delay <= 10.0 * HIGH
    assert schedule.consecutive_failures == 0 and schedule.backoff == 1


def test_first_delay_after_a_failing_start_backs_off() -> None:
    """An endpoint down from the start is not probed at the spread first delay but backed off."""
    schedule = ProbeSchedule(POLICY, random.Random(4))
    assert 20.0 * LOW <= schedule.next_delay(False) <= 20.0 * HIGH


def test_reset_statistics_and_repr() -> None:
    """reset() forgets failures; statistics() is frozen; the repr shows the backoff."""
    schedule = ProbeSchedule(POLICY, random.Random(5))
    schedule.next_delay(False)
    schedule.next_delay(False)
    assert "every 10s × 4 | 2 failed in a row" in repr(schedule)
    stats = schedule.statistics()
    assert (stats.interval, stats.consecutive_failures, stats.backoff, stats.delays) == (10.0, 2, 4, 2)
    with pytest.raises(AttributeError):
        stats.backoff = 1  # type: ignore[misc]
    schedule.reset()
    assert schedule.backoff == 1
    assert repr(ProbeSchedule(POLICY)).endswith("last delay none yet]>")
