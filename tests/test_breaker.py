"""The circuit breaker: classification, opening conditions, half-open trials, open periods,
manual control, state in pybreaker's storage, and one span per transition.

Every test passes ``now`` explicitly: the breaker never reads a clock.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pybreaker
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.endpoint.breaker import Breaker, BreakerRecord, BreakerState, BreakerStorage, Outcome, classify
from runtime.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
    StreamInterrupted,
    Timeout,
)
from runtime.policy import BreakerPolicy

S, F, IGN = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED
POLICY = BreakerPolicy(
    failure_threshold=3,
    failure_rate=0.5,
    min_calls=10,
    window=60.0,
    open_for=10.0,
    max_open_for=40.0,
    half_open_calls=2,
)


def make(policy: BreakerPolicy = POLICY, **kwargs: Any) -> Breaker:
    kwargs.setdefault("rng", random.Random(7))
    return Breaker(policy, endpoint="primary", provider="openai", model="gpt-4o-mini", **kwargs)


def trip(breaker: Breaker, now: float) -> None:
    for _ in range(POLICY.failure_threshold):
        assert breaker.admit(now)
        breaker.record(F, now)
    assert breaker.state is BreakerState.OPEN


class Hook:
    """Records on_transition calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[BreakerState, BreakerState, str, dict[str, Any]]] = []

    def __call__(self, frm: BreakerState, to: BreakerState, reason: str, figures: dict[str, Any]) -> None:
        self.calls.append((frm, to, reason, figures))


# --- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, S),
        (ServerError("boom", status=500), F),
        (Overloaded("busy", status=529), F),
        (Timeout("slow"), F),
        (ConnectionFailed("refused"), F),
        (ProtocolError("bad json"), F),
        (RateLimited("slow down", status=429, retry_after=7), IGN),
        (BadRequest("bad", status=400), IGN),
        (NotFound("no model", status=404), IGN),
        (ContextWindowExceeded("too long"), IGN),
        (ContentFiltered("no"), IGN),
        (AuthenticationFailed("key", status=401), IGN),
        (InvalidRequest("refused before sending"), IGN),
        (asyncio.CancelledError(), IGN),
        (BaseExceptionGroup("cancelled", [asyncio.CancelledError(), asyncio.CancelledError()]), IGN),
        (ExceptionGroup("mixed", [ValueError("x"), BadRequest("bad")]), F),
        (KeyboardInterrupt(), IGN),
        (RuntimeError("unmapped"), F),
        (TimeoutError(), F),
        (StreamInterrupted("cut", partial="Once", cause=Timeout("idle")), F),
        (StreamInterrupted("cut", partial="Once", cause=BadRequest("bad")), IGN),
    ],
)
def test_classify_follows_the_failure_classes(error: BaseException | None, expected: Outcome) -> None:
    """5xx, timeouts, connection and protocol errors fail; 429, caller errors, auth and cancellation are ignored."""
    assert classify(error, 0.1, POLICY) is expected


def test_classify_counts_slow_successes_as_failures() -> None:
    """A success slower than slow_call is a failure, given the policy or just the threshold."""
    policy = BreakerPolicy(slow_call=2.0)
    assert classify(None, 2.5, policy) is F
    assert classify(None, 1.5, policy) is S
    assert classify(None, 2.5, 2.0) is F
    assert classify(None, 2.5, None) is S
    assert classify(None, 99.0, BreakerPolicy()) is S  # slow_call is off by default


# --- opening --------------------------------------------------------------------------


def test_opens_on_consecutive_failures() -> None:
    """The failure_threshold-th failure in a row opens it; admission is then refused."""
    breaker = make()
    for _ in range(2):
        breaker.admit(0.0)
        breaker.record(F, 0.0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2
    breaker.admit(0.0)
    breaker.record(F, 0.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_at is not None and 9.0 <= breaker.retry_at <= 11.0
    assert not breaker.admit(5.0)


def test_a_success_breaks_the_run() -> None:
    """Consecutive means consecutive: a success in between resets the count."""
    breaker = make()
    for outcome in (F, F, S, F, F):
        breaker.admit(0.0)
        breaker.record(outcome, 0.0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 2


def test_opens_on_failure_rate_once_min_calls_reached() -> None:
    """Half the calls failing opens it, but only once min_calls calls are in the window."""
    breaker = make()
    for i in range(9):
        breaker.admit(float(i))
        breaker.record(F if i % 2 else S, float(i))
    assert breaker.state is BreakerState.CLOSED  # 4/9 failed, and below min_calls anyway
    breaker.admit(9.0)
    breaker.record(F, 9.0)
    assert breaker.state is BreakerState.OPEN  # 5/10
    assert breaker.statistics().failure_rate == pytest.approx(0.5)


def test_failure_rate_needs_min_calls() -> None:
    """Below min_calls even a 100 % failure rate does not open it (the threshold is far)."""
    breaker = make(BreakerPolicy(failure_threshold=100, min_calls=10, failure_rate=0.5))
    for i in range(9):
        breaker.admit(float(i))
        breaker.record(F, float(i))
    assert breaker.state is BreakerState.CLOSED


def test_window_forgets_old_calls() -> None:
    """Calls older than the window no longer count towards the rate."""
    breaker = make(BreakerPolicy(failure_threshold=100, min_calls=10, failure_rate=0.5, window=60.0))
    for i in range(8):
        breaker.admit(0.0)
        breaker.record(F if i % 2 else S, 0.0)
    assert breaker.statistics().calls_in_window == 8
    start = 61.0
    for i in range(9):
        breaker.admit(start + i)
        breaker.record(F if i % 2 else S, start + i)
        assert breaker.state is BreakerState.CLOSED, i  # with the old calls it would have opened
    assert breaker.statistics().calls_in_window == 9
    breaker.admit(start + 9)
    breaker.record(F, start + 9)
    assert breaker.state is BreakerState.OPEN


def test_ignored_outcomes_count_for_nothing() -> None:
    """Cancellations, 400s and 429s neither fail nor succeed: the run and the window are untouched."""
    breaker = make()
    breaker.admit(0.0)
    breaker.record(F, 0.0)
    for error in (asyncio.CancelledError(), BadRequest("bad", status=400), RateLimited("429", status=429)):
        for _ in range(10):
            breaker.admit(1.0)
            breaker.record(classify(error, 0.1, POLICY), 1.0)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 1
    assert breaker.statistics().calls_in_window == 1


# --- half-open ------------------------------------------------------------------------


def test_open_moves_to_half_open_when_its_period_ends() -> None:
    """Before retry_at it refuses; at retry_at admit (or tick) moves it to half-open."""
    breaker = make()
    trip(breaker, 0.0)
    retry_at = breaker.retry_at
    assert retry_at is not None
    assert not breaker.admit(retry_at - 0.001)
    assert breaker.tick(retry_at - 0.001) is BreakerState.OPEN
    assert breaker.tick(retry_at) is BreakerState.HALF_OPEN
    assert breaker.retry_at is None


def test_half_open_admits_exactly_the_configured_trials() -> None:
    """half_open_calls permits, the rest refused at once; successes still count against the quota."""
    breaker = make()
    trip(breaker, 0.0)
    now = (breaker.retry_at or 0.0) + 1.0
    assert breaker.admit(now)
    assert breaker.admit(now)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.admit(now)
    assert not breaker.admit(now)
    breaker.record(S, now)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.admit(now)  # one trial succeeded, one still out: the quota is spent


def test_all_trials_succeeding_closes_it() -> None:
    """The breaker closes once every trial succeeded, and the failure history is cleared."""
    breaker = make()
    trip(breaker, 0.0)
    now = (breaker.retry_at or 0.0) + 1.0
    breaker.admit(now)
    breaker.admit(now)
    breaker.record(S, now)
    breaker.record(S, now)
    assert breaker.state is BreakerState.CLOSED
    stats = breaker.statistics()
    assert stats.consecutive_failures == 0 and stats.calls_in_window == 0
    assert breaker.admit(now)


def test_an_ignored_trial_gives_its_permit_back() -> None:
    """A cancelled or 429'd trial decides nothing and frees its permit for another trial."""
    breaker = make()
    trip(breaker, 0.0)
    now = (breaker.retry_at or 0.0) + 1.0
    assert breaker.admit(now) and breaker.admit(now)
    breaker.record(IGN, now)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit(now)
    assert not breaker.admit(now)


def test_failed_trial_reopens_for_longer_doubling_capped_and_jittered() -> None:
    """Each failed trial reopens for twice as long (±10 %), never above max_open_for."""
    breaker = make(rng=random.Random(3))
    trip(breaker, 0.0)
    periods = [breaker.statistics().open_for or 0.0]
    now = 0.0
    for _ in range(4):
        now = (breaker.retry_at or 0.0) + 0.5
        assert breaker.admit(now)
        breaker.record(F, now)
        assert breaker.state is BreakerState.OPEN
        assert breaker.retry_at == pytest.approx(now + (breaker.statistics().open_for or 0.0))
        periods.append(breaker.statistics().open_for or 0.0)
    assert 9.0 <= periods[0] <= 11.0
    assert 18.0 <= periods[1] <= 22.0
    for period in periods[2:]:
        assert 36.0 <= period <= 40.0
    assert breaker.statistics().trips == 5


def test_jitter_spreads_open_periods() -> None:
    """Two breakers tripping together do not retry at the same moment."""
    periods = set()
    for seed in range(20):
        breaker = make(rng=random.Random(seed))
        trip(breaker, 0.0)
        periods.add(round(breaker.retry_at or 0.0, 6))
    assert len(periods) == 20
    assert all(9.0 <= p <= 11.0 for p in periods)


def test_growth_restarts_after_a_close() -> None:
    """After a successful trial closes it, the next trip opens for open_for again."""
    breaker = make()
    trip(breaker, 0.0)
    now = (breaker.retry_at or 0.0) + 1.0
    breaker.admit(now)
    breaker.record(F, now)  # streak 2: ~20 s
    now = (breaker.retry_at or 0.0) + 1.0
    breaker.admit(now)
    breaker.admit(now)
    breaker.record(S, now)
    breaker.record(S, now)
    assert breaker.state is BreakerState.CLOSED
    trip(breaker, now)
    assert 9.0 <= (breaker.statistics().open_for or 0.0) <= 11.0


def test_retry_after_sets_the_open_period() -> None:
    """A Retry-After with the tripping failure sets the period (not sooner, +10 % at most, capped)."""
    breaker = make()
    breaker.admit(0.0)
    breaker.record(F, 0.0)
    breaker.admit(0.0)
    breaker.record(F, 0.0)
    breaker.admit(0.0)
    breaker.record(F, 0.0, retry_after=25.0)
    assert breaker.state is BreakerState.OPEN
    assert 25.0 <= (breaker.retry_at or 0.0) <= 27.5

    capped = make()
    capped.trip(0.0, "overloaded", retry_after=1000.0)
    assert capped.retry_at == pytest.approx(40.0)


def test_trip_on_open_breaker_only_extends() -> None:
    """trip() on an open breaker can push retry_at later, never earlier, and is no transition."""
    hook = Hook()
    breaker = make(on_transition=hook)
    trip(breaker, 0.0)
    first = breaker.retry_at or 0.0
    breaker.trip(1.0, "again", retry_after=1.0)
    assert breaker.retry_at == first
    breaker.trip(1.0, "again", retry_after=30.0)
    assert (breaker.retry_at or 0.0) >= 31.0
    assert len(hook.calls) == 1


def test_late_results_while_open_are_dropped() -> None:
    """Calls admitted before the trip that end while open change nothing."""
    breaker = make()
    breaker.admit(0.0)
    breaker.admit(0.0)
    trip(breaker, 0.0)
    retry_at = breaker.retry_at
    breaker.record(S, 1.0)
    breaker.record(F, 1.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_at == retry_at


# --- manual control and active recovery ---------------------------------------------------


def test_isolate_holds_open_until_reset() -> None:
    """isolate() opens it past any timer and probe; reset() closes it and clears the history."""
    breaker = make()
    breaker.admit(0.0)
    breaker.record(F, 0.0)
    breaker.isolate(1.0)
    assert breaker.state is BreakerState.OPEN
    assert breaker.isolated and breaker.retry_at is None
    assert not breaker.admit(10_000.0)
    assert breaker.tick(10_000.0) is BreakerState.OPEN
    assert not breaker.probe_succeeded(10_000.0)
    breaker.reset(10_001.0)
    assert breaker.state is BreakerState.CLOSED
    assert not breaker.isolated
    assert breaker.consecutive_failures == 0
    assert breaker.admit(10_001.0)


def test_isolate_overrides_a_running_timer() -> None:
    """Isolating an already open breaker cancels its timer."""
    breaker = make()
    trip(breaker, 0.0)
    breaker.isolate(1.0)
    assert breaker.retry_at is None
    assert breaker.tick(1000.0) is BreakerState.OPEN


def test_probe_success_moves_open_to_half_open_at_once() -> None:
    """Active recovery: a good probe ends the open period early; trials then decide."""
    breaker = make()
    trip(breaker, 0.0)
    assert breaker.probe_succeeded(1.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit(1.0)
    assert not breaker.probe_succeeded(1.0)  # only from open


# --- state in pybreaker's storage ------------------------------------------------------------


def test_pybreaker_holds_the_state_and_counters() -> None:
    """pybreaker's circuit and storage follow every transition and the failure run."""
    breaker = make()
    storage = breaker.storage
    breaker.admit(0.0)
    breaker.record(F, 0.0)
    assert storage.counter == 1
    breaker.admit(0.0)
    breaker.record(S, 0.0)
    assert storage.counter == 0
    trip(breaker, 0.0)
    assert breaker.circuit.current_state == pybreaker.STATE_OPEN
    breaker.tick(100.0)
    assert breaker.circuit.current_state == pybreaker.STATE_HALF_OPEN
    breaker.admit(100.0)
    breaker.record(S, 100.0)
    assert storage.success_counter == 1
    breaker.admit(100.0)
    breaker.record(S, 100.0)
    assert breaker.circuit.current_state == pybreaker.STATE_CLOSED
    assert storage.counter == 0


def test_state_survives_a_restart_with_shared_storage() -> None:
    """A new breaker on the same storage resumes open, with its deadline, trips and growth."""
    first = make()
    trip(first, 0.0)
    retry_at = first.retry_at
    second = make(storage=first.storage)
    assert second.state is BreakerState.OPEN
    assert second.retry_at == retry_at
    assert second.statistics().trips == 1
    now = (retry_at or 0.0) + 1.0
    assert second.admit(now)
    second.record(F, now)
    assert 18.0 <= (second.statistics().open_for or 0.0) <= 22.0  # the streak carried over


def test_closed_run_survives_a_restart() -> None:
    """The consecutive-failure count lives in the storage too."""
    first = make()
    first.admit(0.0)
    first.record(F, 0.0)
    first.admit(0.0)
    first.record(F, 0.0)
    second = make(storage=first.storage)
    assert second.consecutive_failures == 2
    second.admit(1.0)
    second.record(F, 1.0)
    assert second.state is BreakerState.OPEN


def test_open_state_set_through_pybreaker_keeps_its_wall_clock_period() -> None:
    """Opened through pybreaker's own API (no deadline on our clock), it stays open for the rest of open_for."""
    storage = BreakerStorage()
    breaker = make(storage=storage)
    breaker.circuit.open()
    storage.opened_at = datetime.now(UTC) - timedelta(seconds=4)
    assert breaker.state is BreakerState.OPEN
    assert breaker.tick(500.0) is BreakerState.OPEN
    assert breaker.retry_at == pytest.approx(506.0, abs=0.5)
    assert breaker.tick(506.6) is BreakerState.HALF_OPEN


def test_half_open_trials_carry_over_a_restart() -> None:
    """Trial permits are in the record: a trial admitted before a restart still decides after it."""
    first = make()
    trip(first, 0.0)
    now = (first.retry_at or 0.0) + 1.0
    assert first.admit(now) and first.admit(now)
    second = make(storage=first.storage)
    assert second.state is BreakerState.HALF_OPEN
    assert not second.admit(now)  # both permits are out
    first.record(S, now)
    second.record(S, now)
    assert second.state is BreakerState.CLOSED


def test_trial_permits_of_a_vanished_holder_expire() -> None:
    """Permits never settled (their process died) are forgotten after max_open_for."""
    breaker = make()
    trip(breaker, 0.0)
    now = (breaker.retry_at or 0.0) + 1.0
    assert breaker.admit(now) and breaker.admit(now)
    assert not breaker.admit(now + POLICY.max_open_for - 1.0)
    assert breaker.admit(now + POLICY.max_open_for)


def test_the_whole_state_round_trips_through_the_record() -> None:
    """Encoding the storage's record and decoding it into a new storage gives the same breaker."""
    first = make()
    for k in range(2):
        first.admit(float(k))
        first.record(F, float(k))
    first.admit(2.0)
    first.record(S, 2.0)
    trip(first, 3.0)
    wire = msgspec.json.encode(first.storage.record)
    second = make(storage=BreakerStorage(msgspec.json.decode(wire, type=BreakerRecord)))
    assert second.statistics() == first.statistics()
    assert repr(second) == repr(first)
    assert second.retry_at == first.retry_at
    now = (second.retry_at or 0.0) + 1.0
    assert second.admit(now)
    second.record(F, now)
    assert second.statistics().trips == 2
    assert 18.0 <= (second.statistics().open_for or 0.0) <= 22.0  # the streak carried over


# --- telemetry, statistics, repr ---------------------------------------------------------


def test_one_span_per_transition_with_attributes(span_exporter: InMemorySpanExporter) -> None:
    """open, half_open and closed each emit exactly one span with endpoint, states, reason and figures."""
    hook = Hook()
    breaker = make(on_transition=hook)
    trip(breaker, 0.0)
    now = (breaker.retry_at or 0.0) + 1.0
    breaker.admit(now)
    breaker.admit(now)
    breaker.record(S, now)
    breaker.record(S, now)
    spans = span_exporter.get_finished_spans()
    assert [s.name for s in spans] == ["breaker open", "breaker half_open", "breaker closed"]
    opened = dict(spans[0].attributes or {})
    assert opened["endpoint"] == "primary"
    assert opened["provider"] == "openai"
    assert opened["model"] == "gpt-4o-mini"
    assert (opened["from_state"], opened["to_state"]) == ("closed", "open")
    assert opened["reason"] == "3 consecutive failures"
    assert opened["failure_count"] == 3
    assert opened["failure_rate"] == pytest.approx(1.0)
    assert 9.0 <= float(opened["open_for"]) <= 11.0  # type: ignore[arg-type]
    assert "retry_after" not in opened
    assert dict(spans[1].attributes or {})["reason"] == "open period elapsed"
    assert dict(spans[2].attributes or {})["from_state"] == "half_open"
    assert [(c[0], c[1]) for c in hook.calls] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert set(hook.calls[0][3]) == {"failure_count", "failure_rate", "open_for", "retry_after"}


def test_retry_after_appears_in_the_span(span_exporter: InMemorySpanExporter) -> None:
    """The figures behind a Retry-After trip include retry_after."""
    breaker = make()
    breaker.trip(0.0, "overloaded", retry_after=12.0)
    (span,) = span_exporter.get_finished_spans()
    assert dict(span.attributes or {})["retry_after"] == 12.0


def test_no_op_transitions_emit_nothing(span_exporter: InMemorySpanExporter) -> None:
    """Resetting a closed breaker, isolating twice, probing a closed one: no span, no hook call."""
    hook = Hook()
    listener_changes: list[tuple[str | None, str]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            listener_changes.append((old_state.name if old_state else None, new_state.name))

    breaker = make(on_transition=hook)
    breaker.circuit.add_listener(Listener())
    breaker.reset(0.0)
    assert not breaker.probe_succeeded(0.0)
    assert breaker.tick(0.0) is BreakerState.CLOSED
    for _ in range(50):
        breaker.admit(0.0)
        breaker.record(S, 0.0)
    assert span_exporter.get_finished_spans() == ()
    assert hook.calls == [] and listener_changes == []
    breaker.isolate(1.0)
    breaker.isolate(2.0)
    breaker.trip(3.0, "again")
    assert len(span_exporter.get_finished_spans()) == 1
    assert len(hook.calls) == 1
    assert listener_changes == [("closed", "open")]


def test_statistics_are_a_frozen_snapshot() -> None:
    """statistics() is an immutable struct with the figures of the moment."""
    breaker = make()
    trip(breaker, 0.0)
    stats = breaker.statistics()
    assert stats.state == "open" and stats.trips == 1 and stats.consecutive_failures == 3
    assert stats.retry_at == breaker.retry_at
    with pytest.raises(AttributeError):
        stats.trips = 2  # type: ignore[misc]
    assert msgspec.json.decode(msgspec.json.encode(stats))["state"] == "open"


def test_repr_tells_state_and_figures() -> None:
    """The repr names the endpoint, the state, the run and the window."""
    breaker = make()
    assert repr(breaker) == "<Breaker 'primary' [closed | 0 consecutive failures | 0/0 failed in window | trips 0]>"
    trip(breaker, 0.0)
    assert repr(breaker).startswith("<Breaker 'primary' [open until ")
    assert "3 consecutive failures" in repr(breaker)
    breaker.isolate(1.0)
    assert "open (isolated)" in repr(breaker)
