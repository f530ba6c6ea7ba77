"""The endpoint's circuit breaker: pybreaker holds the state, this module decides it.

pybreaker's :class:`~pybreaker.CircuitBreaker` is the state's home: its storage keeps the
state, the consecutive-failure counter, the trial-success counter and when it opened, and
its listeners hear every change, so a supervisor that restarts a crashed endpoint actor
with the same storage object gets the breaker back as it was. What pybreaker lacks, and
would get wrong if we let it decide through ``call`` (it counts every exception, even a
cancellation, as a failure; lets any number of calls through in half-open; opens on
consecutive failures only; fires no-op ``closed -> closed`` notifications; reads the wall
clock), is supplied here and pybreaker is driven explicitly (``open()``, ``half_open()``,
``close()`` and the storage counters):

- outcome classification (:func:`classify`) per the failure classes of DESIGN.md;
- a failure-rate condition over a sliding time window, besides consecutive failures;
- slow calls counted as failures (``BreakerPolicy.slow_call``);
- a timer-driven open → half-open move on the event loop's clock (``now`` is passed in;
  nothing here reads a clock), and active recovery (:meth:`Breaker.probe_succeeded`);
- exactly ``half_open_calls`` trial permits in half-open, the rest refused at once;
- an open period that doubles on each consecutive trip, capped, jittered, or taken from
  a ``Retry-After``;
- manual :meth:`Breaker.isolate` / :meth:`Breaker.reset`;
- exactly one span (and one ``on_transition`` call) per real transition, none for no-ops.

Everything is synchronous and runs to completion on the loop: the endpoint actor owns the
breaker, so there is one writer at a time.
"""

from __future__ import annotations

import asyncio
import enum
import random
import sys
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pybreaker

from ..errors import LLMError, ProviderError, StreamInterrupted
from ..policy import BreakerPolicy
from ..telemetry import emit_transition
from ..types import FrozenStruct

__all__ = ["Breaker", "BreakerState", "BreakerStats", "Outcome", "TransitionHook", "classify"]


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

_TO_STORAGE = {
    _CLOSED: pybreaker.STATE_CLOSED,
    _OPEN: pybreaker.STATE_OPEN,
    _HALF_OPEN: pybreaker.STATE_HALF_OPEN,
}
_FROM_STORAGE = {value: key for key, value in _TO_STORAGE.items()}

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


class _Memo:
    """What pybreaker's storage has no field for: the open period on the loop's clock,
    the trip streak that makes it grow, and manual isolation. Kept beside the storage
    object (see ``_MEMOS``) so it survives an actor restart together with the state."""

    __slots__ = ("isolated", "open_for", "retry_at", "streak", "trips")

    def __init__(self) -> None:
        self.retry_at: float | None = None
        self.open_for: float | None = None
        self.streak = 0  # trips since the breaker last closed; the open period grows with it
        self.trips = 0  # automatic trips over the storage's life
        self.isolated = False


# Keyed by the storage object, weakly: the memo lives exactly as long as the storage the
# supervisor keeps for an endpoint, and no registry grows with endpoints that are gone.
_MEMOS: weakref.WeakKeyDictionary[pybreaker.CircuitBreakerStorage, _Memo] = weakref.WeakKeyDictionary()


def _memo_for(storage: pybreaker.CircuitBreakerStorage) -> tuple[_Memo, bool]:
    """The memo kept for ``storage`` and whether it already existed."""
    try:
        memo = _MEMOS.get(storage)
    except TypeError:  # a storage class that cannot be weakly referenced: no sharing
        return _Memo(), False
    if memo is not None:
        return memo, True
    memo = _MEMOS[storage] = _Memo()
    return memo, False


class Breaker:
    """One endpoint's circuit breaker, on pybreaker, driven by the event loop's clock.

    The endpoint actor calls :meth:`admit` before each attempt (True: go ahead; in
    half-open this takes one of the ``half_open_calls`` trial permits) and, for every
    admitted call, :meth:`record` with the call's :class:`Outcome` once it ended. Every
    admitted call must be recorded exactly once, or a trial permit stays taken.

    Trial policy: the breaker closes once ``half_open_calls`` trials have *all*
    succeeded, and reopens at the first trial that fails. An ignored trial (cancelled,
    429, caller error) gives its permit back without deciding. With the default of one
    trial call this is the usual "first trial decides".

    Open periods: the first trip opens for ``open_for`` seconds; each further trip
    without a close in between doubles it, up to ``max_open_for``; each is jittered
    ±10 % (never above ``max_open_for``). A ``retry_after`` given with the failure that
    trips the breaker (or to :meth:`trip`) sets the period instead: jittered up to +10 %
    only (never sooner than the provider asked), and still capped at ``max_open_for``,
    because a stale or absurd Retry-After should not take an endpoint out for hours when
    one trial call at the cap costs little.

    State lives in pybreaker's storage: pass the same ``storage`` object to the next
    breaker of the same endpoint (after an actor restart) and it resumes in the same
    state, with its counters, open period and trip streak. The storage is read when the
    breaker is built and written on every change, but not read per call: pybreaker's
    Redis storage is synchronous, and a round trip per admission would stall the loop.
    One live breaker per storage object at a time, then.

    Calls that were admitted in one state and end in another are late news: in the open
    state their outcome is dropped; in half-open they are taken for trials only while
    trial permits are out (a breaker cannot tell them apart without a permit token).
    """

    __slots__ = (
        "_bucket",
        "_calls",
        "_circuit",
        "_consecutive",
        "_fails",
        "_memo",
        "_on_transition",
        "_pending_open",
        "_per_bucket",
        "_policy",
        "_rng",
        "_slot",
        "_state",
        "_storage",
        "_threshold",
        "_trial_permits",
        "_trial_successes",
        "_window_calls",
        "_window_fails",
        "endpoint",
        "model",
        "provider",
    )

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        endpoint: str,
        provider: str,
        model: str,
        on_transition: TransitionHook | None = None,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self.endpoint = endpoint
        self.provider = provider
        self.model = model
        self._on_transition = on_transition
        self._rng = rng if rng is not None else _SHARED_RNG
        if storage is None:
            storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self._storage = storage
        # pybreaker's own thresholds mirror the policy so that its attributes tell the
        # truth to anyone who inspects ``circuit``; it never decides anything itself.
        self._circuit = pybreaker.CircuitBreaker(
            fail_max=policy.failure_threshold,
            reset_timeout=policy.open_for,
            success_threshold=policy.half_open_calls,
            state_storage=storage,
            name=endpoint,
        )
        self._threshold = policy.failure_threshold
        self._memo, known = _memo_for(storage)
        self._state = _FROM_STORAGE.get(storage.state, _CLOSED)
        self._consecutive = int(storage.counter)
        self._trial_permits = 0
        self._trial_successes = int(storage.success_counter) if self._state is _HALF_OPEN else 0
        # An open state found in a storage without our memo (e.g. written by another
        # process) has no loop-time deadline: derive the rest of its period from the wall
        # clock pybreaker recorded, and pin it to the loop's clock at the first ``now``.
        self._pending_open: float | None = None
        if self._state is _OPEN and not known:
            self._pending_open = self._remaining_from_storage()
        n = WINDOW_BUCKETS
        self._per_bucket = n / policy.window
        self._calls = [0] * n
        self._fails = [0] * n
        self._slot = 0
        self._bucket = -(2**62)  # no bucket yet: the first call clears the ring
        self._window_calls = 0
        self._window_fails = 0

    def _remaining_from_storage(self) -> float:
        opened_at = self._storage.opened_at
        if opened_at is None:
            return 0.0
        if opened_at.tzinfo is None:
            opened_at = opened_at.replace(tzinfo=UTC)
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return max(0.0, self._policy.open_for - elapsed)

    # --- reading ---------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state."""
        return self._state

    @property
    def retry_at(self) -> float | None:
        """Loop time at which an open breaker moves to half-open; None unless open on a timer.

        The actor schedules a wake-up for it; :meth:`admit` and :meth:`tick` make the move.
        """
        return self._memo.retry_at if self._state is _OPEN else None

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row since the last success (reset when the breaker closes)."""
        return self._consecutive

    @property
    def failure_rate(self) -> float:
        """Failed share of the calls in the window, as of the last recorded call."""
        calls = self._window_calls
        return self._window_fails / calls if calls else 0.0

    @property
    def isolated(self) -> bool:
        """True while opened by hand (:meth:`isolate`) and not yet :meth:`reset`."""
        return self._memo.isolated

    @property
    def storage(self) -> pybreaker.CircuitBreakerStorage:
        """The pybreaker storage holding the state; hand it to the next breaker of this
        endpoint (after an actor restart) to carry the state over."""
        return self._storage

    @property
    def circuit(self) -> pybreaker.CircuitBreaker:
        """The underlying pybreaker breaker (for listeners and inspection; do not drive it)."""
        return self._circuit

    def statistics(self) -> BreakerStats:
        """The breaker's figures now."""
        memo = self._memo
        return BreakerStats(
            state=self._state.value,
            consecutive_failures=self._consecutive,
            failure_rate=self.failure_rate,
            calls_in_window=self._window_calls,
            failures_in_window=self._window_fails,
            trips=memo.trips,
            open_for=memo.open_for,
            retry_at=self.retry_at,
            isolated=memo.isolated,
            trial_permits=self._trial_permits,
            trial_successes=self._trial_successes,
        )

    def __repr__(self) -> str:
        memo = self._memo
        match self._state:
            case BreakerState.OPEN if memo.isolated:
                where = "open (isolated)"
            case BreakerState.OPEN:
                retry_at = memo.retry_at
                where = "open" if retry_at is None else f"open until {retry_at:.3f} ({memo.open_for or 0.0:.1f}s)"
            case BreakerState.HALF_OPEN:
                where = f"half_open, trials {self._trial_successes} ok + {self._trial_permits} out of {self._policy.half_open_calls}"
            case _:
                where = "closed"
        return (
            f"<Breaker {self.endpoint!r} [{where} | {self._consecutive} consecutive failures | "
            f"{self._window_fails}/{self._window_calls} failed in window | trips {memo.trips}]>"
        )

    # --- the hot path ------------------------------------------------------------------

    def admit(self, now: float) -> bool:
        """May a call go to the endpoint now? In half-open, True takes a trial permit.

        An open breaker whose period has ended moves to half-open here (the actor's timer
        does the same through :meth:`tick`); other calls are refused at once, never queued.
        """
        if self._state is _CLOSED:
            return True
        return self._admit_other(now)

    def record(self, outcome: Outcome, now: float, *, retry_after: float | None = None) -> None:
        """Record how an admitted call ended.

        ``retry_after`` (seconds), given with a failure, sets the open period if this
        failure trips the breaker (a 503 that says when to come back).
        """
        if self._state is _CLOSED:
            if outcome is _SUCCESS:
                bucket = int(now * self._per_bucket)
                if bucket != self._bucket:
                    self._advance(bucket)
                self._calls[self._slot] += 1
                self._window_calls += 1
                if self._consecutive:
                    self._consecutive = 0
                    self._storage.reset_counter()
            elif outcome is _FAILURE:
                self._closed_failure(now, retry_after)
            return
        self._record_other(outcome, now, retry_after)

    # --- commands ----------------------------------------------------------------------

    def tick(self, now: float) -> BreakerState:
        """Let time pass: an open breaker whose period has ended moves to half-open.

        Returns the state after. The actor calls it when its wake-up at :attr:`retry_at`
        fires, so the move (and its span) happens on time even with no traffic.
        """
        if self._state is _OPEN:
            self._open_elapsed(now)
        return self._state

    def trip(self, now: float, reason: str, *, retry_after: float | None = None) -> None:
        """Open the breaker now (from closed or half-open), e.g. on an overload signal.

        ``retry_after`` sets the open period (see the class docstring). On an already
        open breaker a ``retry_after`` can only push ``retry_at`` later; no transition.
        """
        if self._state is _OPEN:
            memo = self._memo
            if retry_after is not None and retry_after > 0 and not memo.isolated:
                period = self._open_period(memo.streak or 1, retry_after)
                if memo.retry_at is None or now + period > memo.retry_at:
                    memo.retry_at = now + period
                    memo.open_for = period
                    self._pending_open = None
            return
        self._trip(now, reason, retry_after)

    def isolate(self, now: float) -> None:
        """Open the breaker by hand and keep it open, past any timer, until :meth:`reset`."""
        memo = self._memo
        memo.isolated = True
        memo.retry_at = None
        self._pending_open = None
        self._transition(_OPEN, "isolated by hand", now)

    def reset(self, now: float) -> None:
        """Close the breaker by hand and forget its history (counters, window, streak)."""
        memo = self._memo
        memo.isolated = False
        memo.retry_at = None
        memo.streak = 0
        self._pending_open = None
        if self._state is _CLOSED:
            self._clear_window()
            if self._consecutive:
                self._consecutive = 0
                self._storage.reset_counter()
            return
        self._transition(_CLOSED, "reset by hand", now)

    def probe_succeeded(self, now: float) -> bool:
        """Active recovery: a health probe got through, so an open breaker moves to
        half-open at once instead of waiting out its period. True if it moved.

        An isolated breaker stays open: isolation is a human decision.
        """
        if self._state is not _OPEN or self._memo.isolated:
            return False
        return self._transition(_HALF_OPEN, "probe succeeded", now)

    # --- internals -----------------------------------------------------------------------

    def _admit_other(self, now: float) -> bool:
        match self._state:
            case BreakerState.OPEN:
                if not self._open_elapsed(now):
                    return False
                return self._take_trial()
            case BreakerState.HALF_OPEN:
                return self._take_trial()
            case _:
                return True

    def _take_trial(self) -> bool:
        if self._trial_permits + self._trial_successes < self._policy.half_open_calls:
            self._trial_permits += 1
            return True
        return False

    def _open_elapsed(self, now: float) -> bool:
        """In the open state: move to half-open if the period is over. True if it moved."""
        memo = self._memo
        if memo.isolated:
            return False
        if self._pending_open is not None:
            memo.retry_at = now + self._pending_open
            memo.open_for = memo.open_for or self._policy.open_for
            self._pending_open = None
        retry_at = memo.retry_at
        if retry_at is None or now < retry_at:
            return False
        return self._transition(_HALF_OPEN, "open period elapsed", now)

    def _record_other(self, outcome: Outcome, now: float, retry_after: float | None) -> None:
        match self._state:
            case BreakerState.HALF_OPEN if self._trial_permits > 0:
                self._trial_permits -= 1
                match outcome:
                    case Outcome.SUCCESS:
                        self._trial_successes += 1
                        self._storage.increment_success_counter()
                        if self._trial_successes >= self._policy.half_open_calls:
                            self._transition(_CLOSED, "trial calls succeeded", now)
                    case Outcome.FAILURE:
                        self._consecutive += 1
                        self._storage.increment_counter()
                        self._trip(now, "trial call failed", retry_after)
                    case _:
                        pass  # ignored: the permit is back, nothing is decided
            case _:
                pass  # open, or half-open with no trial out: late news from before the trip

    def _closed_failure(self, now: float, retry_after: float | None) -> None:
        bucket = int(now * self._per_bucket)
        if bucket != self._bucket:
            self._advance(bucket)
        slot = self._slot
        self._calls[slot] += 1
        self._fails[slot] += 1
        calls = self._window_calls = self._window_calls + 1
        fails = self._window_fails = self._window_fails + 1
        self._consecutive += 1
        self._storage.increment_counter()
        policy = self._policy
        if self._consecutive >= self._threshold:
            self._trip(now, f"{self._consecutive} consecutive failures", retry_after)
        elif calls >= policy.min_calls and fails >= policy.failure_rate * calls:
            self._trip(now, f"failure rate {fails}/{calls} over {policy.window:g}s", retry_after)

    def _advance(self, bucket: int) -> None:
        """Slide the window to ``bucket``, forgetting the buckets that fell out of it."""
        steps = bucket - self._bucket
        if steps <= 0:
            return  # the clock went back: keep counting in the current bucket
        calls, fails = self._calls, self._fails
        n = len(calls)
        if steps >= n:
            self._clear_window()
            self._slot = bucket % n
        else:
            slot = self._slot
            for _ in range(steps):
                slot = (slot + 1) % n
                self._window_calls -= calls[slot]
                self._window_fails -= fails[slot]
                calls[slot] = 0
                fails[slot] = 0
            self._slot = slot
        self._bucket = bucket

    def _clear_window(self) -> None:
        n = len(self._calls)
        self._calls[:] = [0] * n
        self._fails[:] = [0] * n
        self._window_calls = 0
        self._window_fails = 0

    def _open_period(self, streak: int, retry_after: float | None) -> float:
        policy = self._policy
        cap = policy.max_open_for
        if retry_after is not None and retry_after > 0:
            return min(cap, retry_after * self._rng.uniform(1.0, 1.0 + OPEN_JITTER))
        base = min(cap, policy.open_for * 2.0 ** min(streak - 1, 62))
        period = base * self._rng.uniform(1.0 - OPEN_JITTER, 1.0 + OPEN_JITTER)
        # Reflect an overshoot below the cap rather than clamping, so periods at the cap
        # stay spread over [0.9, 1.0] × cap instead of piling up on the cap itself.
        return 2.0 * cap - period if period > cap else period

    def _trip(self, now: float, reason: str, retry_after: float | None) -> None:
        memo = self._memo
        streak = memo.streak + 1
        period = self._open_period(streak, retry_after)
        memo.streak = streak
        memo.trips += 1
        memo.open_for = period
        memo.retry_at = now + period
        memo.isolated = False
        self._pending_open = None
        self._transition(_OPEN, reason, now, open_for=period, retry_after=retry_after)

    def _transition(
        self,
        to: BreakerState,
        reason: str,
        now: float,
        *,
        open_for: float | None = None,
        retry_after: float | None = None,
    ) -> bool:
        """Move to ``to``: drive pybreaker, then one span and one hook call. False if a no-op."""
        frm = self._state
        if frm is to:
            return False
        figures: dict[str, Any] = {
            "failure_count": self._consecutive,
            "failure_rate": round(self.failure_rate, 6),
            "open_for": None if open_for is None else round(open_for, 6),
            "retry_after": retry_after,
        }
        circuit = self._circuit
        match to:
            case BreakerState.OPEN:
                circuit.open()
            case BreakerState.HALF_OPEN:
                circuit.half_open()
            case BreakerState.CLOSED:
                circuit.close()  # also zeroes pybreaker's failure and success counters
                self._consecutive = 0
                self._clear_window()
                memo = self._memo
                memo.streak = 0
                memo.retry_at = None
        self._state = to
        self._trial_permits = 0
        self._trial_successes = 0
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
        return True
