"""The latency tracker: peak EWMA, recent p95, outcome counts, redacted last error."""

from __future__ import annotations

import math

import pytest

from runtime.endpoint.stats import SAMPLES, LatencyTracker, short_error


def test_ewma_jumps_to_a_higher_latency_at_once() -> None:
    """Peak sensitivity: one slow answer raises the average to it immediately."""
    tracker = LatencyTracker()
    assert tracker.ewma == 0.0
    tracker.observe(0.1, 0.0)
    tracker.observe(0.1, 1.0)
    tracker.observe(2.0, 1.5)
    assert tracker.ewma == 2.0


def test_ewma_decays_towards_lower_latencies_with_its_time_constant() -> None:
    """A faster answer pulls the average down by exp(-elapsed/decay)."""
    tracker = LatencyTracker(decay=10.0)
    tracker.observe(1.0, 0.0)
    tracker.observe(0.1, 10.0)
    w = math.exp(-1.0)
    assert tracker.ewma == pytest.approx(1.0 * w + 0.1 * (1 - w))
    tracker.observe(0.1, 10.0)  # no time passed: no decay
    assert tracker.ewma == pytest.approx(1.0 * w + 0.1 * (1 - w))
    for t in range(11, 200):
        tracker.observe(0.1, float(t))
    assert tracker.ewma == pytest.approx(0.1, rel=1e-3)


def test_cost_decays_towards_zero_while_idle() -> None:
    """An endpoint with an old peak and no traffic looks cheaper as time passes."""
    tracker = LatencyTracker(decay=10.0)
    tracker.observe(3.0, 0.0)
    assert tracker.cost(0.0) == 3.0
    assert tracker.cost(10.0) == pytest.approx(3.0 / math.e)
    assert tracker.cost(100.0) < 0.001
    assert tracker.ewma == 3.0  # reading the cost changes nothing


def test_p95_over_recent_samples() -> None:
    """p95 is the nearest-rank 95th percentile of the last samples."""
    tracker = LatencyTracker()
    assert tracker.p95 is None
    for ms in range(1, 101):
        tracker.observe(ms / 1000, float(ms))
    assert tracker.p95 == pytest.approx(0.095)
    assert tracker.percentile(0.5) == pytest.approx(0.050)
    assert tracker.percentile(1.0) == pytest.approx(0.100)


def test_samples_are_bounded_and_recent() -> None:
    """The ring keeps only the last SAMPLES latencies: old slow ones drop out of the p95."""
    tracker = LatencyTracker()
    for i in range(1000):
        tracker.observe(5.0, float(i))
    for i in range(SAMPLES):
        tracker.observe(0.2, 1000.0 + i)
    assert tracker.samples == SAMPLES
    assert tracker.p95 == pytest.approx(0.2)


def test_counts_by_outcome() -> None:
    """Successes are counted by observe; other outcomes by kind."""
    tracker = LatencyTracker()
    tracker.observe(0.1, 0.0)
    tracker.observe(0.1, 1.0)
    tracker.count("ignored")
    tracker.count("Timeout")
    tracker.count("Timeout")
    tracker.error("ServerError: HTTP 500", 2.0)
    assert tracker.counts == {"success": 2, "ignored": 1, "Timeout": 2, "failure": 1}
    tracker.error("again", 3.0, kind=None)
    assert tracker.counts["failure"] == 1


def test_last_error_is_short_and_carries_no_secret() -> None:
    """The last error is masked of anything key-like and cut short."""
    tracker = LatencyTracker()
    tracker.error(
        "401: invalid key sk-proj-abcdefghijklmnop, Authorization: Bearer sk-abcdef1234567890 " + "x" * 500, 4.0
    )
    assert tracker.last_error is not None
    assert "abcdefghijklmnop" not in tracker.last_error
    assert "sk-abcdef1234567890" not in tracker.last_error
    assert len(tracker.last_error) <= 200
    assert tracker.last_error_at == 4.0
    assert short_error('{"api_key": "secret123"}') == '{"api_key": "***"}'
    assert short_error("api-key=abc123 failed") == "api-key=*** failed"


def test_statistics_and_repr() -> None:
    """statistics() is a frozen snapshot; the repr shows latency and counts."""
    tracker = LatencyTracker()
    assert repr(tracker) == "<LatencyTracker [no samples | no calls]>"
    tracker.observe(0.25, 1.0)
    tracker.state_changed(2.0)
    stats = tracker.statistics()
    assert (stats.ewma, stats.p50, stats.p95, stats.samples) == (0.25, 0.25, 0.25, 1)
    assert stats.state_since == 2.0 and stats.last_sample_at == 1.0
    with pytest.raises(AttributeError):
        stats.ewma = 0.0  # type: ignore[misc]
    assert repr(tracker) == "<LatencyTracker [ewma 250.0ms, p95 250.0ms over 1 | success 1]>"


def test_rejects_nonsense_settings() -> None:
    """A non-positive decay or an empty ring is refused."""
    with pytest.raises(ValueError):
        LatencyTracker(decay=0.0)
    with pytest.raises(ValueError):
        LatencyTracker(samples=0)
