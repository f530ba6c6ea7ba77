"""The endpoint's circuit breaker: one record in pybreaker's storage holds all its state.

pybreaker is the breaker's home. :class:`BreakerStorage` is a
:class:`pybreaker.CircuitBreakerStorage` whose whole content is one :class:`BreakerRecord`:
pybreaker's own fields (state, failure counter, success counter, ``opened_at``) are fields
of the record, and so is everything this module adds — the failure-rate window, the trial
permits out, the open-until time, the open period, the trip streak and count, manual
isolation. A :class:`pybreaker.CircuitBreaker` on that storage reads the same record, and
its listeners hear every transition. Nothing is kept beside the record: a breaker object
is a view on its storage, so a supervisor that restarts a crashed endpoint actor with the
same storage gets the breaker back exactly as it was, and two views on one storage cannot
disagree.

Every change is one *step* on the record (:meth:`BreakerStorage.admit`, ``settle``,
``tick``, ``trip``, ``isolate``, ``reset``, ``probe_succeeded``): a pure function of the
record, the policy, ``now`` and (where a period is drawn) a uniform ``jitter`` the caller
draws, returning the transition it made, if any. A store shared between processes
implements each step as one atomic server-side call taking the same arguments.

What pybreaker cannot do itself, and why it does not decide through ``call``: it counts
every exception, even a cancellation, as a failure; lets any number of calls through in
half-open; opens on consecutive failures only; reads the wall clock; has no place for a
rate window or a growing open period. So the steps decide and pybreaker holds the state:

- outcome classification (:func:`classify`);
- a failure-rate condition over a sliding time window, besides consecutive failures;
- slow calls counted as failures (``BreakerPolicy.slow_call``);
- a timer-driven open → half-open move on the event loop's clock (``now`` is passed in;
  nothing here reads a clock), and active recovery (:meth:`Breaker.probe_succeeded`);
- exactly ``half_open_calls`` trial permits in half-open, the rest refused at once;
- an open period that doubles on each consecutive trip, capped, jittered, or taken from
  a ``Retry-After``;
- manual :meth:`Breaker.isolate` / :meth:`Breaker.reset`;
- exactly one span (and one ``on_transition`` call) per real transition, none for no-ops.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pybreaker

from ..errors import LLMError, ProviderError, StreamInterrupted
from ..policy import BreakerPolicy
from ..telemetry import emit_transition
from ..types import FrozenStruct

__all__ = [
    "Breaker",
    "BreakerRecord",
    "BreakerState",
    "BreakerStats",
    "BreakerStorage",
    "Outcome",
    "Transition",
    "TransitionHook",
    "classify",
]


class BreakerState(enum.Enum):
    """Where a breaker stands; the values are what status output and spans show."""

    CLOSED = "closed"  # calls flow; failures are being counted
    OPEN = "open"  # calls are refused at once until retry_at (or reset, when isolated)
    HALF_OPEN = "half_open"  # a fixed number of trial calls decide: close or reopen


class Outcome(enum.Enum):
    """How one finished call bears on the endpoint's health."""

    SUCCESS = "success"  # the endpoint answered well (and fast enough)
    FAILURE = "failure"  # the endpoint is unwell: 5xx, timeout, connection, malformed, slow
    IGNORED = "ignored"  # says nothing about the endpoint: cancelled, 429, 4xx, auth


# Module-level aliases: the hot path compares with ``is`` against these, which is a
# plain global load instead of an attribute lookup on the enum class.
_CLOSED = BreakerState.CLOSED
_OPEN = BreakerState.OPEN
_HALF_OPEN = BreakerState.HALF_OPEN
_SUCCESS = Outcome.SUCCESS
_FAILURE = Outcome.FAILURE
_IGNORED = Outcome.IGNORED

# The record keeps pybreaker's own state strings, so pybreaker reads it unchanged.
_TO_STORAGE = {
    _CLOSED: pybreaker.STATE_CLOSED,
    _OPEN: pybreaker.STATE_OPEN,
    _HALF_OPEN: pybreaker.STATE_HALF_OPEN,
}
_FROM_STORAGE = {value: key for key, value in _TO_STORAGE.items()}
S_CLOSED = pybreaker.STATE_CLOSED
S_OPEN = pybreaker.STATE_OPEN
S_HALF_OPEN = pybreaker.STATE_HALF_OPEN

# The sliding window is this many time buckets: memory stays fixed whatever the traffic,
# and the window slides in steps of window/10 (a call is forgotten between 0.9 and 1.0
# window after it was recorded), which is precise enough for a rate threshold.
WINDOW_BUCKETS = 10
# The open period is jittered by ±10 % so that breakers that tripped together (one
# provider outage seen by many processes) do not all send their trials at once.
OPEN_JITTER = 0.1

# Jitter needs no private stream per breaker: a Random is 2.5 KiB of Mersenne Twister
# state, more than the rest of a breaker. Pass ``rng`` for a reproducible one.
_SHARED_RNG = random.Random()

TransitionHook = Callable[[BreakerState, BreakerState, str, dict[str, Any]], None]
"""``on_transition(from_state, to_state, reason, figures)``; figures has ``failure_count``,
``failure_rate``, ``open_for`` and ``retry_after`` (None where it does not apply)."""


def classify(error: BaseException | None, elapsed: float, policy: BreakerPolicy | float | None = None) -> Outcome:
    """Classify a finished call for the breaker.

    ``error`` is what the call ended with (None: it succeeded), ``elapsed`` its duration
    in seconds, and ``policy`` the breaker policy (or just its ``slow_call`` threshold in
    seconds, or None) so that a success slower than ``slow_call`` counts as a failure.

    - None → SUCCESS (FAILURE when slower than ``slow_call``);
    - a :class:`~runtime.errors.ProviderError` → FAILURE when its class says
      ``breaker_failure`` (5xx, 529, timeouts, connection errors, malformed answers),
      IGNORED otherwise (429 throttles instead; 400/404/413/422 are the caller's;
      401/403 mark the endpoint misconfigured, which is not a health matter);
    - a :class:`~runtime.errors.StreamInterrupted` → as its cause;
    - any other :class:`~runtime.errors.LLMError` (refused before sending) → IGNORED;
    - cancellation (asyncio's or trio's, also inside an exception group), and
      process-level exits (``KeyboardInterrupt``, ``SystemExit``) → IGNORED;
    - any other exception → FAILURE: an unmapped error is a bug or an unwell endpoint,
      and either way the breaker should not keep sending traffic into it.
    """
    if error is None:
        if policy is None:
            return _SUCCESS
        slow = policy.slow_call if isinstance(policy, BreakerPolicy) else policy
        return _FAILURE if slow is not None and elapsed > slow else _SUCCESS
    if isinstance(error, ProviderError):
        return _FAILURE if error.breaker_failure else _IGNORED
    if isinstance(error, StreamInterrupted):
        return classify(error.cause, elapsed)
    if isinstance(error, LLMError):
        return _IGNORED
    if isinstance(error, BaseExceptionGroup):
        outcomes = [classify(inner, elapsed) for inner in error.exceptions]
        return _FAILURE if _FAILURE in outcomes else _IGNORED
    if _is_cancellation(error) or not isinstance(error, Exception):
        return _IGNORED
    return _FAILURE


def _is_cancellation(error: BaseException) -> bool:
    if isinstance(error, asyncio.CancelledError):
        return True
    # anyio on trio cancels with trio.Cancelled; look it up only if trio is loaded, so
    # the runtime never imports trio itself.
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(error, trio.Cancelled)


class BreakerStats(FrozenStruct, frozen=True):
    """A breaker's figures at one moment.

    ``failure_rate``, ``calls_in_window`` and ``failures_in_window`` are as of the last
    recorded call; ``open_for`` is the current (or last) open period in seconds and
    ``retry_at`` the loop time the open period ends (None unless open on a timer).
    """

    state: str
    consecutive_failures: int
    failure_rate: float
    calls_in_window: int
    failures_in_window: int
    trips: int
    open_for: float | None
    retry_at: float | None
    isolated: bool = False
    trial_permits: int = 0
    trial_successes: int = 0


def _zeros() -> list[int]:
    return [0] * WINDOW_BUCKETS


class BreakerRecord(msgspec.Struct):
    """The whole state of one breaker, as its storage holds it (flat: one hash in a shared store).

    ``state``, ``consecutive`` (pybreaker's failure counter), ``trial_successes``
    (pybreaker's success counter) and ``opened_at`` are pybreaker's fields; the rest is
    what this module adds. Times other than ``opened_at`` are on the clock of the ``now``
    the steps are given. ``trips`` is also the epoch of a half-open period: trial permits
    out are forgotten at ``trials_expire`` (one ``max_open_for``), so permits held by a
    process that died cannot keep a breaker half-open for ever.
    """

    state: str = pybreaker.STATE_CLOSED
    consecutive: int = 0
    trial_successes: int = 0
    opened_at: datetime | None = None
    trial_permits: int = 0
    trials_expire: float | None = None
    open_until: float | None = None
    open_for: float | None = None
    streak: int = 0  # trips since the breaker last closed: the open period grows with it
    trips: int = 0  # automatic trips over the storage's life
    isolated: bool = False
    window_bucket: int = -(2**62)  # no bucket yet: the first call clears the ring
    window_until: float = -math.inf  # the loop time the window's current bucket ends
    window_calls: list[int] = msgspec.field(default_factory=_zeros)
    window_fails: list[int] = msgspec.field(default_factory=_zeros)


Transition = tuple[str, str, str, dict[str, Any]]
"""``(from_state, to_state, reason, figures)`` in pybreaker's state strings; figures as for
:data:`TransitionHook`."""


# --- the steps: pure functions of the record -------------------------------------------------


def _window_totals(rec: BreakerRecord) -> tuple[int, int]:
    return sum(rec.window_calls), sum(rec.window_fails)


def _advance(rec: BreakerRecord, now: float, policy: BreakerPolicy) -> int:
    """Slide the window to ``now``'s bucket, forgetting the buckets that fell out; the slot."""
    bucket = int(now * WINDOW_BUCKETS / policy.window)
    steps = bucket - rec.window_bucket
    if steps > 0:  # (a clock that went back keeps counting in the current bucket)
        calls, fails = rec.window_calls, rec.window_fails
        if steps >= WINDOW_BUCKETS:
            calls[:] = _zeros()
            fails[:] = _zeros()
        else:
            for k in range(1, steps + 1):
                slot = (rec.window_bucket + k) % WINDOW_BUCKETS
                calls[slot] = 0
                fails[slot] = 0
        rec.window_bucket = bucket
        rec.window_until = _bucket_end(bucket, policy.window)
    return rec.window_bucket % WINDOW_BUCKETS


def _bucket_end(bucket: int, window: float) -> float:
    """The least time that :func:`_advance` puts past ``bucket``: a call before it counts
    in ``bucket`` (a comparison on the hot path, where the bucket's number takes a division)."""
    # The bucket of t is int(t * WINDOW_BUCKETS / window), rounded as floats round: start
    # from the exact boundary and step by ulps (one or two) to where the rounding puts it.
    # (int() truncates towards zero: bucket 0 spans both sides of 0, a negative one ends
    # just above its own lower number.)
    end = (bucket + 1 if bucket >= 0 else bucket) * window / WINDOW_BUCKETS
    while int(end * WINDOW_BUCKETS / window) <= bucket:
        end = math.nextafter(end, math.inf)
    while int((below := math.nextafter(end, -math.inf)) * WINDOW_BUCKETS / window) > bucket:
        end = below
    return end


def _clear_window(rec: BreakerRecord) -> None:
    rec.window_calls[:] = _zeros()
    rec.window_fails[:] = _zeros()


def _open_period(policy: BreakerPolicy, streak: int, retry_after: float | None, jitter: float) -> float:
    cap = policy.max_open_for
    if retry_after is not None and retry_after > 0:
        return min(cap, retry_after * (1.0 + OPEN_JITTER * jitter))
    base = min(cap, policy.open_for * 2.0 ** min(streak - 1, 62))
    period = base * (1.0 - OPEN_JITTER + 2.0 * OPEN_JITTER * jitter)
    # Reflect an overshoot below the cap rather than clamping, so periods at the cap
    # stay spread over [0.9, 1.0] × cap instead of piling up on the cap itself.
    return 2.0 * cap - period if period > cap else period


def _move(
    rec: BreakerRecord,
    to: str,
    reason: str,
    *,
    open_for: float | None = None,
    retry_after: float | None = None,
) -> Transition | None:
    """Change the record's state; the transition, or None for a no-op."""
    frm = rec.state
    if frm == to:
        return None
    calls, fails = _window_totals(rec)
    figures: dict[str, Any] = {
        "failure_count": rec.consecutive,
        "failure_rate": round(fails / calls, 6) if calls else 0.0,
        "open_for": None if open_for is None else round(open_for, 6),
        "retry_after": retry_after,
    }
    rec.state = to
    rec.trial_permits = 0
    rec.trial_successes = 0
    rec.trials_expire = None
    if to == S_OPEN:
        rec.opened_at = datetime.now(UTC)  # pybreaker's field, for pybreaker's readers
    elif to == S_CLOSED:
        rec.consecutive = 0
        rec.streak = 0
        rec.open_until = None
        _clear_window(rec)
    return frm, to, reason, figures


def _trip(
    rec: BreakerRecord, policy: BreakerPolicy, now: float, reason: str, retry_after: float | None, jitter: float
) -> Transition | None:
    streak = rec.streak + 1
    period = _open_period(policy, streak, retry_after, jitter)
    rec.streak = streak
    rec.trips += 1
    rec.open_for = period
    rec.open_until = now + period
    rec.isolated = False
    return _move(rec, S_OPEN, reason, open_for=period, retry_after=retry_after)


def _open_elapsed(rec: BreakerRecord, policy: BreakerPolicy, now: float) -> Transition | None:
    """In the open state: move to half-open once the period is over."""
    if rec.isolated:
        return None
    if rec.open_until is None:
        # Opened through pybreaker's own API (``circuit.open()``): no deadline on our
        # clock yet. Take the rest of ``open_for`` since pybreaker's wall-clock stamp.
        opened_at = rec.opened_at
        elapsed = 0.0 if opened_at is None else (datetime.now(UTC) - _aware(opened_at)).total_seconds()
        rec.open_for = rec.open_for or policy.open_for
        rec.open_until = now + max(0.0, policy.open_for - elapsed)
    if now < rec.open_until:
        return None
    return _move(rec, S_HALF_OPEN, "open period elapsed")


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def step_admit(rec: BreakerRecord, policy: BreakerPolicy, now: float) -> tuple[bool, Transition | None]:
    """May a call go now? In half-open a yes takes a trial permit."""
    state = rec.state
    if state == S_CLOSED:
        return True, None
    moved = None
    if state == S_OPEN:
        moved = _open_elapsed(rec, policy, now)
        if moved is None:
            return False, None
    if rec.trial_permits and rec.trials_expire is not None and now >= rec.trials_expire:
        rec.trial_permits = 0  # their holders are gone (a crashed process): free the permits
    if rec.trial_permits + rec.trial_successes < policy.half_open_calls:
        rec.trial_permits += 1
        rec.trials_expire = now + policy.max_open_for
        return True, moved
    return False, moved


def step_settle(
    rec: BreakerRecord, policy: BreakerPolicy, outcome: Outcome, now: float, retry_after: float | None, jitter: float
) -> Transition | None:
    """Record how an admitted call ended."""
    state = rec.state
    if state == S_CLOSED:
        if outcome is _IGNORED:
            return None
        slot = _advance(rec, now, policy)
        rec.window_calls[slot] += 1
        if outcome is _SUCCESS:
            rec.consecutive = 0
            return None
        rec.window_fails[slot] += 1
        rec.consecutive += 1
        if rec.consecutive >= policy.failure_threshold:
            return _trip(rec, policy, now, f"{rec.consecutive} consecutive failures", retry_after, jitter)
        calls, fails = _window_totals(rec)
        if calls >= policy.min_calls and fails >= policy.failure_rate * calls:
            return _trip(rec, policy, now, f"failure rate {fails}/{calls} over {policy.window:g}s", retry_after, jitter)
        return None
    if state != S_HALF_OPEN or rec.trial_permits <= 0:
        return None  # open, or half-open with no trial out: late news from before the trip
    rec.trial_permits -= 1
    if outcome is _SUCCESS:
        rec.trial_successes += 1
        if rec.trial_successes >= policy.half_open_calls:
            return _move(rec, S_CLOSED, "trial calls succeeded")
    elif outcome is _FAILURE:
        rec.consecutive += 1
        return _trip(rec, policy, now, "trial call failed", retry_after, jitter)
    return None  # ignored: the permit is back, nothing is decided


def step_trip(
    rec: BreakerRecord, policy: BreakerPolicy, now: float, reason: str, retry_after: float | None, jitter: float
) -> Transition | None:
    """Open now; on an open breaker a ``retry_after`` can only push ``open_until`` later."""
    if rec.state != S_OPEN:
        return _trip(rec, policy, now, reason, retry_after, jitter)
    if retry_after is not None and retry_after > 0 and not rec.isolated:
        period = _open_period(policy, rec.streak or 1, retry_after, jitter)
        if rec.open_until is None or now + period > rec.open_until:
            rec.open_until = now + period
            rec.open_for = period
    return None


def step_isolate(rec: BreakerRecord) -> Transition | None:
    """Open by hand, past any timer, until reset."""
    rec.isolated = True
    rec.open_until = None
    return _move(rec, S_OPEN, "isolated by hand")


def step_reset(rec: BreakerRecord) -> Transition | None:
    """Close by hand and forget the history."""
    rec.isolated = False
    rec.open_until = None
    rec.streak = 0
    rec.consecutive = 0
    _clear_window(rec)
    return _move(rec, S_CLOSED, "reset by hand")


def step_probe_succeeded(rec: BreakerRecord) -> Transition | None:
    """Active recovery: open (not isolated) → half-open at once."""
    if rec.state != S_OPEN or rec.isolated:
        return None
    return _move(rec, S_HALF_OPEN, "probe succeeded")


class BreakerStorage(pybreaker.CircuitBreakerStorage):
    """pybreaker storage whose content is one :class:`BreakerRecord`, changed by atomic steps.

    This in-process storage runs the step functions on its record; a storage shared
    between processes overrides the step methods, each with one atomic server-side call
    taking the same arguments and returning the same result. pybreaker's accessors read
    and write the same record, so a ``pybreaker.CircuitBreaker`` on this storage sees
    exactly the breaker's state.
    """

    def __init__(self, record: BreakerRecord | None = None, name: str = "memory") -> None:
        super().__init__(name)
        self.record = record if record is not None else BreakerRecord()

    # pybreaker's storage interface, on the record
    @property
    def state(self) -> str:
        """pybreaker's state string."""
        return self.record.state

    @state.setter
    def state(self, state: str) -> None:
        self.record.state = state

    def increment_counter(self) -> None:
        """pybreaker's failure counter + 1."""
        self.record.consecutive += 1

    def reset_counter(self) -> None:
        """pybreaker's failure counter to 0."""
        self.record.consecutive = 0

    def increment_success_counter(self) -> None:
        """pybreaker's success counter + 1."""
        self.record.trial_successes += 1

    def reset_success_counter(self) -> None:
        """pybreaker's success counter to 0."""
        self.record.trial_successes = 0

    @property
    def counter(self) -> int:
        """Consecutive failures."""
        return self.record.consecutive

    @property
    def success_counter(self) -> int:
        """Trial successes in this half-open period."""
        return self.record.trial_successes

    @property
    def opened_at(self) -> datetime | None:
        """Wall-clock time of the last opening."""
        return self.record.opened_at

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self.record.opened_at = when

    # the steps
    def admit(self, policy: BreakerPolicy, now: float) -> tuple[bool, Transition | None]:
        """:func:`step_admit` on the record."""
        return step_admit(self.record, policy, now)

    def settle(
        self, policy: BreakerPolicy, outcome: Outcome, now: float, retry_after: float | None, jitter: float
    ) -> Transition | None:
        """:func:`step_settle` on the record."""
        return step_settle(self.record, policy, outcome, now, retry_after, jitter)

    def tick(self, policy: BreakerPolicy, now: float) -> Transition | None:
        """Open → half-open once the period is over."""
        rec = self.record
        return _open_elapsed(rec, policy, now) if rec.state == S_OPEN else None

    def trip(
        self, policy: BreakerPolicy, now: float, reason: str, retry_after: float | None, jitter: float
    ) -> Transition | None:
        """:func:`step_trip` on the record."""
        return step_trip(self.record, policy, now, reason, retry_after, jitter)

    def isolate(self) -> Transition | None:
        """:func:`step_isolate` on the record."""
        return step_isolate(self.record)

    def reset(self) -> Transition | None:
        """:func:`step_reset` on the record."""
        return step_reset(self.record)

    def probe_succeeded(self) -> Transition | None:
        """:func:`step_probe_succeeded` on the record."""
        return step_probe_succeeded(self.record)


class Breaker:
    """One endpoint's circuit breaker: a view on its :class:`BreakerStorage`, on the loop's clock.

    The endpoint actor calls :meth:`admit` before each attempt (True: go ahead; in
    half-open this takes one of the ``half_open_calls`` trial permits) and, for every
    admitted call, :meth:`record` with the call's :class:`Outcome` once it ended. Every
    admitted call must be recorded exactly once, or a trial permit stays taken (until
    ``max_open_for`` later, when permits out are forgotten).

    Trial policy: the breaker closes once ``half_open_calls`` trials have *all*
    succeeded, and reopens at the first trial that fails. An ignored trial (cancelled,
    429, caller error) gives its permit back without deciding.

    Open periods: the first trip opens for ``open_for`` seconds; each further trip
    without a close in between doubles it, up to ``max_open_for``; each is jittered
    ±10 % (never above ``max_open_for``). A ``retry_after`` given with the failure that
    trips the breaker (or to :meth:`trip`) sets the period instead: jittered up to +10 %
    only (never sooner than the provider asked), and still capped at ``max_open_for``.

    The breaker keeps no state of its own: every figure is read from the storage's
    record and every change is a storage step, so a new breaker on the same storage
    (after an actor restart) continues exactly where the old one was, and results the
    old one admitted may still be recorded through either.

    Calls that were admitted in one state and end in another are late news: in the open
    state their outcome is dropped; in half-open they are taken for trials only while
    trial permits are out.
    """

    __slots__ = ("_circuit", "_on_transition", "_policy", "_rec", "_rng", "_storage", "endpoint", "model", "provider")

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        endpoint: str,
        provider: str,
        model: str,
        on_transition: TransitionHook | None = None,
        storage: BreakerStorage | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self.endpoint = endpoint
        self.provider = provider
        self.model = model
        self._on_transition = on_transition
        self._rng = rng if rng is not None else _SHARED_RNG
        self._storage = storage if storage is not None else BreakerStorage()
        # The storage's record, read directly on the hot path (the storage owns it).
        self._rec = self._storage.record
        # pybreaker's thresholds follow the policy so that its attributes tell the truth
        # to anyone who inspects ``circuit``; it never decides anything itself.
        self._circuit = pybreaker.CircuitBreaker(
            fail_max=policy.failure_threshold,
            reset_timeout=policy.open_for,
            success_threshold=policy.half_open_calls,
            state_storage=self._storage,
            name=endpoint,
        )

    # --- reading ---------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state."""
        return _FROM_STORAGE[self._rec.state]

    @property
    def retry_at(self) -> float | None:
        """Loop time at which an open breaker moves to half-open; None unless open on a timer."""
        rec = self._rec
        return rec.open_until if rec.state == S_OPEN and not rec.isolated else None

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row since the last success (reset when the breaker closes)."""
        return self._rec.consecutive

    @property
    def failure_rate(self) -> float:
        """Failed share of the calls in the window, as of the last recorded call."""
        calls, fails = _window_totals(self._rec)
        return fails / calls if calls else 0.0

    @property
    def isolated(self) -> bool:
        """True while opened by hand (:meth:`isolate`) and not yet :meth:`reset`."""
        return self._rec.isolated

    @property
    def storage(self) -> BreakerStorage:
        """The storage holding the whole state; hand it to the next breaker of this endpoint."""
        return self._storage

    @property
    def circuit(self) -> pybreaker.CircuitBreaker:
        """The pybreaker breaker on the same storage (for listeners and inspection; do not drive it)."""
        return self._circuit

    def statistics(self) -> BreakerStats:
        """The breaker's figures now."""
        rec = self._rec
        calls, fails = _window_totals(rec)
        return BreakerStats(
            state=self.state.value,
            consecutive_failures=rec.consecutive,
            failure_rate=fails / calls if calls else 0.0,
            calls_in_window=calls,
            failures_in_window=fails,
            trips=rec.trips,
            open_for=rec.open_for,
            retry_at=self.retry_at,
            isolated=rec.isolated,
            trial_permits=rec.trial_permits,
            trial_successes=rec.trial_successes,
        )

    def __repr__(self) -> str:
        rec = self._rec
        match self.state:
            case BreakerState.OPEN if rec.isolated:
                where = "open (isolated)"
            case BreakerState.OPEN:
                until = rec.open_until
                where = "open" if until is None else f"open until {until:.3f} ({rec.open_for or 0.0:.1f}s)"
            case BreakerState.HALF_OPEN:
                where = (
                    f"half_open, trials {rec.trial_successes} ok + {rec.trial_permits} out of "
                    f"{self._policy.half_open_calls}"
                )
            case _:
                where = "closed"
        calls, fails = _window_totals(rec)
        return (
            f"<Breaker {self.endpoint!r} [{where} | {rec.consecutive} consecutive failures | "
            f"{fails}/{calls} failed in window | trips {rec.trips}]>"
        )

    # --- the hot path ------------------------------------------------------------------

    def admit(self, now: float) -> bool:
        """May a call go to the endpoint now? In half-open, True takes a trial permit.

        An open breaker whose period has ended moves to half-open here (the actor's timer
        does the same through :meth:`tick`); other calls are refused at once, never queued.
        """
        if self._rec.state == S_CLOSED:  # (EndpointActor.try_admit has this case inline: keep them alike)
            return True
        admitted, moved = self._storage.admit(self._policy, now)
        self._announce(moved)
        return admitted

    def record(self, outcome: Outcome, now: float, *, retry_after: float | None = None) -> None:
        """Record how an admitted call ended.

        ``retry_after`` (seconds), given with a failure, sets the open period if this
        failure trips the breaker (a 503 that says when to come back).
        """
        rec = self._rec
        if rec.state == S_CLOSED and outcome is _SUCCESS and not rec.consecutive:
            # The common case: only the window moves, and within the current bucket it need not
            # slide. (Permit.settle has this case inline for a success: keep them alike.)
            rec.window_calls[rec.window_bucket % WINDOW_BUCKETS if now < rec.window_until else _advance(rec, now, self._policy)] += 1
            return
        self._announce(self._storage.settle(self._policy, outcome, now, retry_after, self._rng.random()))

    # --- commands ----------------------------------------------------------------------

    def tick(self, now: float) -> BreakerState:
        """Let time pass: an open breaker whose period has ended moves to half-open; the state after."""
        self._announce(self._storage.tick(self._policy, now))
        return self.state

    def trip(self, now: float, reason: str, *, retry_after: float | None = None) -> None:
        """Open the breaker now (from closed or half-open), e.g. on an overload signal.

        ``retry_after`` sets the open period (see the class docstring). On an already
        open breaker a ``retry_after`` can only push ``retry_at`` later; no transition.
        """
        self._announce(self._storage.trip(self._policy, now, reason, retry_after, self._rng.random()))

    def isolate(self, now: float) -> None:
        """Open the breaker by hand and keep it open, past any timer, until :meth:`reset`."""
        self._announce(self._storage.isolate())

    def reset(self, now: float) -> None:
        """Close the breaker by hand and forget its history (counters, window, streak)."""
        self._announce(self._storage.reset())

    def probe_succeeded(self, now: float) -> bool:
        """Active recovery: a health probe got through, so an open breaker moves to
        half-open at once instead of waiting out its period. True if it moved.

        An isolated breaker stays open: isolation is a human decision.
        """
        moved = self._storage.probe_succeeded()
        self._announce(moved)
        return moved is not None

    def announce(self, transition: Transition | None) -> None:
        """Announce a transition a shared storage made after its step returned (Redis's answer)."""
        self._announce(transition)

    # --- internals -----------------------------------------------------------------------

    def _announce(self, transition: Transition | None) -> None:
        """One span, one hook call and pybreaker's listeners for a transition a step made."""
        if transition is None:
            return
        frm_s, to_s, reason, figures = transition
        frm, to = _FROM_STORAGE[frm_s], _FROM_STORAGE[to_s]
        # Reading pybreaker's state makes it notice the storage's new state and notify its
        # listeners (its notification also zeroes the counters the step zeroed already).
        self._circuit.state  # noqa: B018
        emit_transition(
            "breaker",
            endpoint=self.endpoint,
            provider=self.provider,
            model=self.model,
            from_state=frm.value,
            to_state=to.value,
            reason=reason,
            **figures,
        )
        if self._on_transition is not None:
            self._on_transition(frm, to, reason, figures)
