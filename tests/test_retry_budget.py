"""The retry budget caps extra attempts at a ratio of recent requests plus a floor."""

from __future__ import annotations

import random

from runtime.dispatch.retry import RetryBudget, backoff_delay


def test_budget_allows_ratio_of_requests_plus_floor() -> None:
    """With 100 requests, ratio 0.2 and floor 0.5/s over 10 s, exactly 25 retries pass."""
    budget = RetryBudget(0.2, 0.5, window=10)
    for _ in range(100):
        budget.record_request(5.0)
    allowed = sum(budget.try_spend(5.0) for _ in range(100))
    assert allowed == 25
    assert budget.statistics().refused == 75


def test_budget_forgets_old_requests() -> None:
    """Requests older than the window no longer earn retries."""
    budget = RetryBudget(1.0, 0.0, window=10)
    for _ in range(50):
        budget.record_request(0.0)
    assert budget.try_spend(0.5)
    assert not budget.try_spend(20.0)


def test_backoff_is_jittered_and_capped() -> None:
    """Full jitter stays within [0, min(cap, base * 2**(n-1))]."""
    rng = random.Random(1)
    delays = [backoff_delay(n, 0.1, 1.0, rng) for n in range(1, 10) for _ in range(50)]
    assert all(0 <= d <= 1.0 for d in delays)
    assert max(backoff_delay(1, 0.1, 1.0, rng) for _ in range(100)) <= 0.1
