"""The limiter: concurrency, RPM and TPM buckets, reconciliation with real usage,
fairness for large requests, throttling and provider rate-limit headers.

These tests run on the conftest's fast-forwarding loop: ``await asyncio.sleep(7)`` moves
loop time 7 s at once.
"""

from __future__ import annotations

import asyncio
import math

import anyio
import pytest

from runtime.endpoint.limiter import HEAD_OF_LINE_GRACE, Limiter
from runtime.types import RateLimitSnapshot

pytestmark = pytest.mark.anyio


def now() -> float:
    return anyio.current_time()


async def test_unlimited_limiter_admits_and_counts_in_flight() -> None:
    """With no limits everything is admitted; in_flight follows reservations; a double release is harmless."""
    limiter = Limiter()
    held = [limiter.try_acquire(1000, now()) for _ in range(100)]
    assert all(r is not None for r in held)
    assert limiter.in_flight == 100
    for r in held:
        assert r is not None
        limiter.release(r, 10, now())
        limiter.release(r, 10, now())
    assert limiter.in_flight == 0
    t = now()
    assert limiter.available_at(10**9, t) == t
    assert limiter.statistics().tokens_used == 1000


async def test_concurrency_cap() -> None:
    """max_concurrency reservations at most; a release makes room; no time estimate while full."""
    limiter = Limiter(max_concurrency=2)
    a = limiter.try_acquire(1, now())
    b = limiter.try_acquire(1, now())
    assert a is not None and b is not None
    assert limiter.try_acquire(1, now()) is None
    assert limiter.last_refusal == "concurrency"
    assert limiter.available_at(1, now()) == math.inf
    limiter.release(a, 1, now())
    assert limiter.try_acquire(1, now()) is not None


async def test_requests_per_minute() -> None:
    """rpm requests go at once, the next waits for one to leak out (60/rpm seconds)."""
    limiter = Limiter(rpm=3)
    t = now()  # one reading for the steps below: the loop clock is real time plus jumps, so readings drift under load
    for _ in range(3):
        r = limiter.try_acquire(1, t)
        assert r is not None
        limiter.release(r, 1, t)
    assert limiter.try_acquire(1, t) is None
    assert limiter.last_refusal == "rpm"
    assert limiter.available_at(1, t) == pytest.approx(t + 20.0, abs=0.01)
    await asyncio.sleep(19.5)
    assert limiter.try_acquire(1, now()) is None
    await asyncio.sleep(0.6)
    assert limiter.try_acquire(1, now()) is not None


async def test_tokens_per_minute() -> None:
    """A request that does not fit the TPM bucket is refused until enough has leaked out."""
    limiter = Limiter(tpm=1000)
    t = now()  # one reading for the steps below: the loop clock is real time plus jumps, so readings drift under load
    assert limiter.try_acquire(600, t) is not None
    assert limiter.try_acquire(500, t) is None
    assert limiter.last_refusal == "tpm"
    wait = (600 + 500 - 1000) / (1000 / 60)  # 6 s
    assert limiter.available_at(500, t) == pytest.approx(t + wait, abs=0.01)
    await asyncio.sleep(wait + 0.01)
    assert limiter.try_acquire(500, now()) is not None


async def test_request_larger_than_the_bucket_waits_for_an_empty_bucket() -> None:
    """A request above tpm is not refused for ever: it goes when the bucket is empty."""
    limiter = Limiter(tpm=1000)
    assert limiter.try_acquire(5000, now()) is not None
    assert limiter.try_acquire(1, now()) is None
    await asyncio.sleep(60.01)
    assert limiter.try_acquire(5000, now()) is not None


async def drive(limiter: Limiter, *, estimate: int, actual: int | None, seconds: float, every: float) -> int:
    """Offer a request every ``every`` seconds; release admitted ones at once with ``actual``."""
    used = 0
    for _ in range(int(seconds / every)):
        reservation = limiter.try_acquire(estimate, now())
        if reservation is not None:
            limiter.release(reservation, actual, now())
            used += actual if actual is not None else estimate
        await asyncio.sleep(every)
    return used


async def test_reconciliation_converges_on_true_usage_when_estimates_are_high() -> None:
    """Reserving 4x the real usage still lets real usage reach the TPM limit, not a quarter of it."""
    tpm, minutes = 6000, 10
    reconciled = await drive(Limiter(tpm=tpm), estimate=1000, actual=250, seconds=60.0 * minutes, every=0.25)
    # One bucket's burst plus tpm per minute is the most a leaky bucket can pass.
    ceiling = tpm * (minutes + 1)
    assert 0.9 * tpm * minutes <= reconciled <= ceiling
    # Without the real figures the estimates stand, and only a quarter of the limit is really used.
    blind = Limiter(tpm=tpm)
    await drive(blind, estimate=1000, actual=None, seconds=60.0 * minutes, every=0.25)
    assert blind.statistics().admitted * 250 <= 0.3 * reconciled


async def test_reconciliation_converges_when_estimates_are_low() -> None:
    """Using 4x the estimate is charged as debt: real usage stays at the TPM limit, not 4x it."""
    tpm, minutes = 6000, 10
    used = await drive(Limiter(tpm=tpm), estimate=100, actual=400, seconds=60.0 * minutes, every=0.25)
    assert 0.9 * tpm * minutes <= used <= tpm * (minutes + 1) + 400


async def test_a_refund_frees_the_unused_estimate_at_once() -> None:
    """Releasing with real usage below the estimate gives the difference back to the bucket now."""
    limiter = Limiter(tpm=1000)
    r = limiter.try_acquire(1000, now())
    assert r is not None
    assert limiter.try_acquire(1, now()) is None
    limiter.release(r, 100, now())
    assert limiter.statistics().tokens_in_bucket == pytest.approx(100, abs=0.1)
    assert limiter.try_acquire(900, now()) is not None
    assert limiter.try_acquire(1, now()) is None


async def test_usage_above_the_bucket_is_a_debt_waited_out() -> None:
    """A request that used more than the whole bucket holds later ones off until it leaked out."""
    limiter = Limiter(tpm=1000)
    t = now()  # one reading for the steps below: the loop clock is real time plus jumps, so readings drift under load
    r = limiter.try_acquire(100, t)
    assert r is not None
    limiter.release(r, 1500, t)
    assert limiter.available_at(100, t) == pytest.approx(t + 36.0, abs=0.01)
    await asyncio.sleep(35.9)
    assert limiter.try_acquire(100, now()) is None
    await asyncio.sleep(0.2)
    assert limiter.try_acquire(100, now()) is not None


async def test_large_request_is_not_starved_by_small_ones() -> None:
    """Once a large request is refused, small ones leave room for it and it gets in."""
    limiter = Limiter(tpm=1200)
    assert limiter.try_acquire(1200, now()) is not None  # the bucket starts full
    admitted_large_at = None
    start = now()
    for _ in range(400):
        # A steady stream of small requests, offered faster than the bucket drains...
        for _ in range(2):
            small = limiter.try_acquire(50, now())
            if small is not None:
                limiter.release(small, 50, now())
        # ... and one large one, retried at the same pace.
        large = limiter.try_acquire(900, now())
        if large is not None:
            admitted_large_at = now() - start
            break
        await asyncio.sleep(0.25)
    assert admitted_large_at is not None
    assert admitted_large_at <= 45.0 + 1.0  # 900 tokens leak out at 20/s
    assert limiter.statistics().refused.get("head_of_line", 0) > 0


async def test_head_of_line_hold_is_bounded() -> None:
    """A large request that never comes back holds small ones only until shortly after it would have fitted."""
    limiter = Limiter(tpm=600)
    assert limiter.try_acquire(600, now()) is not None
    assert limiter.try_acquire(500, now()) is None  # needs 50 s of leaking (10 tokens/s)
    assert limiter.statistics().head_of_line == 500
    await asyncio.sleep(20)
    assert limiter.try_acquire(50, now()) is None
    assert limiter.last_refusal == "head_of_line"
    await asyncio.sleep(50 - 20 + HEAD_OF_LINE_GRACE + 0.1)
    assert limiter.try_acquire(50, now()) is not None
    assert limiter.statistics().head_of_line == 0


async def test_throttle_refuses_everything_for_seven_seconds_of_loop_time() -> None:
    """After a 429 with Retry-After: 7 nothing is admitted for 7 s of loop time, then all is."""
    limiter = Limiter()
    limiter.throttle(now() + 7.0)
    assert limiter.try_acquire(1, now()) is None
    assert limiter.last_refusal == "throttled"
    assert limiter.available_at(1, now()) == pytest.approx(limiter.throttled_until)
    await asyncio.sleep(6.9)
    assert limiter.try_acquire(1, now()) is None
    await asyncio.sleep(0.1)
    assert limiter.try_acquire(1, now()) is not None


@pytest.mark.parametrize("limits", [{}, {"rpm": 1000, "tpm": 100_000}])
async def test_a_lifted_throttle_lets_one_trial_go_first(limits: dict[str, int]) -> None:
    """When a throttle lifts, one request is admitted and the rest are refused until it is
    released; a trial that meets another 429 makes the next lift's first request a trial too."""
    limiter = Limiter(**limits)
    limiter.throttle(now() + 5.0)
    await asyncio.sleep(5.0)
    trial = limiter.try_acquire(1, now())
    assert trial is not None
    assert [limiter.try_acquire(1, now()) for _ in range(4)] == [None] * 4
    assert limiter.last_refusal == "throttle_trial" and limiter.statistics().refused["throttle_trial"] == 4
    at = now()
    assert limiter.available_at(1, at) == at  # no wait is known: the trial's answer decides
    # The trial met another 429: released, then throttled again (as the actor settles it).
    limiter.release(trial, 0, now())
    limiter.throttle(now() + 5.0)
    await asyncio.sleep(5.0)
    second = limiter.try_acquire(1, now())
    assert second is not None and limiter.try_acquire(1, now()) is None
    # This one succeeded: everyone is admitted again.
    limiter.release(second, 10, now())
    assert all(limiter.try_acquire(1, now()) is not None for _ in range(5))
    assert limiter.in_flight == 5


async def test_unthrottle_ends_a_trial_too() -> None:
    """A reset by hand admits everyone at once, trial or not."""
    limiter = Limiter()
    limiter.throttle(now() + 1.0)
    await asyncio.sleep(1.0)
    assert limiter.try_acquire(1, now()) is not None
    limiter.unthrottle()
    assert limiter.try_acquire(1, now()) is not None


async def test_throttle_only_extends_and_unthrottle_ends_it() -> None:
    """A shorter Retry-After does not cut a longer throttle; unthrottle() ends it."""
    limiter = Limiter()
    limiter.throttle(now() + 10.0)
    limiter.throttle(now() + 2.0)
    assert limiter.throttled_until == pytest.approx(now() + 10.0)
    limiter.unthrottle()
    assert limiter.try_acquire(1, now()) is not None


async def test_headers_with_nothing_remaining_throttle_until_reset() -> None:
    """remaining 0 with a reset in N s throttles for N s."""
    limiter = Limiter()
    limiter.observe(RateLimitSnapshot(limit_requests=100, remaining_requests=0, reset_requests=7.0), now())
    assert limiter.throttled_until == pytest.approx(now() + 7.0)
    assert limiter.try_acquire(1, now()) is None
    limiter2 = Limiter(tpm=10_000)
    limiter2.observe(RateLimitSnapshot(remaining_tokens=0, reset_tokens=3.0), now())
    assert limiter2.throttled_until == pytest.approx(now() + 3.0)


async def test_low_remaining_headers_tighten_admission() -> None:
    """A low provider count gates admission by the provider's own figure until its reset."""
    limiter = Limiter()
    t = now()  # one reading for the steps below: the loop clock is real time plus jumps, so readings drift under load
    limiter.observe(RateLimitSnapshot(limit_tokens=100_000, remaining_tokens=500, reset_tokens=60.0), t)
    assert limiter.try_acquire(600, t) is None
    assert limiter.last_refusal == "provider_tokens"
    assert limiter.try_acquire(400, t) is not None
    assert limiter.try_acquire(200, t) is None
    assert limiter.statistics().provider_tokens_left == pytest.approx(100)
    # It refills towards the limit: (100000 - 500) / 60 s per second.
    assert limiter.available_at(200, t) == pytest.approx(t + 100 / ((100_000 - 500) / 60), abs=0.01)
    await asyncio.sleep(60)
    assert limiter.try_acquire(50_000, now()) is not None  # past the reset the gate is gone
    assert limiter.statistics().provider_tokens_left is None


async def test_low_request_count_without_limit_gates_requests() -> None:
    """Two requests left (limit unknown) means two more, then none until the reset."""
    limiter = Limiter(rpm=1000)
    t = now()  # one reading for the steps below: the loop clock is real time plus jumps, so readings drift under load
    limiter.observe(RateLimitSnapshot(remaining_requests=2, reset_requests=5.0), t)
    assert limiter.try_acquire(1, t) is not None
    assert limiter.try_acquire(1, t) is not None
    assert limiter.try_acquire(1, t) is None
    assert limiter.last_refusal == "provider_requests"
    assert limiter.available_at(1, t) == pytest.approx(t + 5.0)
    await asyncio.sleep(5)
    assert limiter.try_acquire(1, now()) is not None


async def test_healthy_headers_do_not_gate() -> None:
    """A provider count well above 20 % of its limit changes nothing, and lifts an earlier gate."""
    limiter = Limiter()
    limiter.observe(RateLimitSnapshot(limit_requests=100, remaining_requests=5, reset_requests=60.0), now())
    assert limiter.statistics().provider_requests_left == 5
    limiter.observe(RateLimitSnapshot(limit_requests=100, remaining_requests=90, reset_requests=60.0), now())
    assert limiter.statistics().provider_requests_left is None
    assert all(limiter.try_acquire(1, now()) is not None for _ in range(50))


async def test_statistics_and_repr() -> None:
    """statistics() is a frozen snapshot with refusals by reason; repr shows the limits."""
    limiter = Limiter(rpm=1, tpm=1000, max_concurrency=4)
    r = limiter.try_acquire(300, now())
    assert r is not None
    assert limiter.try_acquire(1, now()) is None
    stats = limiter.statistics()
    assert stats.in_flight == 1 and stats.admitted == 1 and stats.refused == {"rpm": 1}
    assert stats.tokens_reserved == 300
    with pytest.raises(AttributeError):
        stats.in_flight = 0  # type: ignore[misc]
    assert repr(limiter) == "<Limiter [in-flight 1/4 | rpm 1 | tpm 1000 (300 in bucket)]>"
    limiter.release(r, 100, now())
    assert limiter.statistics().tokens_in_bucket == pytest.approx(100, abs=0.1)
    assert repr(Limiter()) == "<Limiter [in-flight 0/∞]>"
