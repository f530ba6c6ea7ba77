"""The endpoint actor: the single owner of one endpoint's state.

It owns the breaker, the limiter, the latency tracker and the health of one endpoint.
The dispatcher asks it, synchronously and without a mailbox hop, whether it can take a
request now (:meth:`EndpointActor.try_admit`) and tells it how the attempt ended
(:meth:`EndpointActor.finish`); both run to completion on the event loop, so the state
has one writer at a time. What must wait runs in the actor's own tasks: the timer that
moves an open breaker to half-open or ends a throttle, and the health-probe loop.

Endpoint states (``EndpointState``), worst first: ``failed`` (escalated by the
supervisor), ``draining`` (shutting down), ``misconfigured`` (no key, 401/403),
``unhealthy`` (breaker open), ``throttled`` (429 or a spent rate limit), ``degraded``
(half-open, recent failures or a failing probe) and ``healthy``. Each real change emits
one ``endpoint`` transition span.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import anyio
import msgspec

from ..actors.actor import Actor, ActorStopped
from ..errors import AuthenticationFailed, LLMError, ProviderError, RateLimited
from ..policy import Endpoint
from ..providers.base import ProviderClient
from ..telemetry import emit_transition
from ..types import FrozenStruct
from .breaker import (
    S_CLOSED,
    WINDOW_BUCKETS,
    Breaker,
    BreakerState,
    BreakerStats,
    BreakerStorage,
    Outcome,
    classify,
)
from .health import ProbeSchedule, ProbeScheduleStats
from .limiter import Limiter, LimiterStats, Reservation
from .stats import LatencyStats, LatencyTracker

__all__ = ["EndpointActor", "EndpointState", "EndpointStatistics", "EndpointStatus", "Permit"]

# A 429 without Retry-After throttles for this long: long enough to shed the burst,
# short enough that a lone 429 does not take an endpoint out of rotation for long.
DEFAULT_THROTTLE = 1.0


class EndpointState(enum.Enum):
    """An endpoint's health as the dispatcher sees it."""

    HEALTHY = "healthy"  # serving normally
    DEGRADED = "degraded"  # serving, but half-open, failing lately or failing probes
    UNHEALTHY = "unhealthy"  # breaker open: routed around until it recovers
    THROTTLED = "throttled"  # 429 or a spent rate limit: routed around until the reset
    MISCONFIGURED = "misconfigured"  # no key or 401/403: routed around until a probe passes
    FAILED = "failed"  # its actor crashed past the restart intensity: routed around for good
    DRAINING = "draining"  # the runtime is shutting down: takes no new requests


class EndpointStatus(FrozenStruct, frozen=True):
    """One endpoint as ``Runtime.status()`` reports it. Carries no secret."""

    name: str
    provider: str
    model: str
    state: str
    breaker: str
    in_flight: int
    latency_ms: float | None
    last_error: str | None = None
    priority: int = 1
    retry_at: float | None = None
    shared: str | None = None  # with [shared]: "redis <url>", or why this process runs on local state


class EndpointStatistics(FrozenStruct, frozen=True):
    """Everything one endpoint actor knows about itself (``EndpointActor.statistics()``)."""

    state: str
    breaker: BreakerStats
    limiter: LimiterStats
    latency: LatencyStats
    probes: ProbeScheduleStats


class Permit(msgspec.Struct, eq=False, gc=False):
    """One admitted attempt's hold on its endpoint (a concurrency slot, a limiter
    reservation, maybe a half-open trial), settled exactly once.

    Whoever holds the object owns it; handing it over is passing the object. ``with
    permit:`` settles it with the exception that escapes the block (a cancellation
    counts as nothing) unless the holder settled it inside; a block that ends normally
    leaves it to the holder, which settles it or hands it on. Settling twice is a no-op,
    so an owner may settle on every exit path without counting. (A struct: made in C,
    one Python ``__init__`` less per attempt; compared by identity; untracked by the
    collector: nothing it holds, the actor included, refers back to a permit.)
    """

    _actor: EndpointActor
    reservation: Reservation
    started: float
    settled: bool = False

    def __repr__(self) -> str:
        return f"<Permit {self._actor.name!r} {'settled' if self.settled else 'open'}>"

    @property
    def actor(self) -> EndpointActor:
        """The live owner of the endpoint's state: the successor, after an actor restart."""
        actor = self._actor
        while actor._successor is not None:
            actor = actor._successor
        return actor

    def settle(self, error: BaseException | None, now: float | None = None, tokens: int | None = None) -> None:
        """Feed the outcome to the endpoint (breaker, limiter, latency) and give the slot back.

        ``error`` is what the attempt ended with (None: success; a cancellation: nothing
        happened), ``tokens`` the tokens the provider reported (None: unknown).
        """
        if self.settled:
            return
        self.settled = True
        actor = self._actor
        if actor._successor is not None:  # restarted since admitting: the live owner settles
            actor = self.actor
        if now is None:
            now = anyio.current_time()
        if error is not None:
            actor._settle_failure(self, error, now, tokens)
            return
        # A success, straight through (nearly every attempt): breaker, slot, latency, health.
        # The common cases of Breaker.record and Limiter.release are inlined here (the actor's
        # hot-path twins of theirs, keep them alike): a call costs more than either does then.
        elapsed = now - self.started
        slow = actor._slow_call
        rec = actor._record
        if slow is None and rec.state == S_CLOSED and not rec.consecutive and now < rec.window_until:
            rec.window_calls[rec.window_bucket % WINDOW_BUCKETS] += 1  # a success in the window's bucket
        else:
            actor.breaker.record(_SUCCESS if slow is None else classify(None, elapsed, slow), now)
        limiter = actor.limiter
        reservation = self.reservation
        if limiter._free and not reservation.released:  # nothing but counts to give back
            reservation.released = True
            limiter._released += 1
            if tokens is not None:
                limiter._used += tokens
        else:
            limiter.release(reservation, tokens, now)
        if actor._draining and limiter.in_flight == 0:
            actor.drained.set()
        actor.latency.observe(elapsed, now)  # (also when the last success was: the probe loop reads it)
        if actor.health is not _HEALTHY:
            # A real answer is better evidence than the last failed probe.
            actor._probe_failing = False
            actor._refresh(now, "request succeeded")

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None:
            self.settle(exc)


class EndpointActor(Actor):
    """Owns one endpoint's breaker, limiter, latency and health; runs its probe loop."""

    def __init__(
        self,
        endpoint: Endpoint,
        client: ProviderClient | Any,
        *,
        breaker_storage: BreakerStorage | None = None,
        limiter: Limiter | None = None,
        rng: random.Random | None = None,
        predecessor: EndpointActor | None = None,
    ) -> None:
        super().__init__(endpoint.name)
        self.endpoint = endpoint
        self.client = client
        self.provider = endpoint.provider
        self.model = endpoint.model
        self.priority = endpoint.priority
        self.weight = endpoint.weight
        self._rng = rng
        self._slow_call = endpoint.breaker.slow_call
        self._successor: EndpointActor | None = None
        self._failed = False
        self._draining = False
        self._wake = anyio.Event()
        self.drained = anyio.Event()
        self.first_chunk_timeout = endpoint.first_chunk_timeout or endpoint.timeout
        # With shared state ([shared]), the dispatcher awaits this after a local admission:
        # the cluster-wide check (one Redis call at most); False means refused and undone.
        self.confirm: Callable[[Permit], Awaitable[bool]] | None = None
        if predecessor is not None:
            self._take_over(predecessor)
            return
        self.breaker = Breaker(
            endpoint.breaker,
            endpoint=endpoint.name,
            provider=endpoint.provider,
            model=endpoint.model,
            storage=breaker_storage,
            rng=self._rng,
        )
        # The breaker's record (its storage's, never replaced), read by the hot path itself.
        self._record = self.breaker.storage.record
        self.limiter = limiter if limiter is not None else Limiter(endpoint.rpm, endpoint.tpm, endpoint.max_concurrency)
        self.latency = LatencyTracker()
        self._schedule = ProbeSchedule(endpoint.health, self._rng)
        self.health = EndpointState.HEALTHY
        self._misconfigured: str | None = endpoint.key_problem()
        self._probe_failing = False
        self._refresh(anyio.current_time() if _in_loop() else 0.0, "started")

    def _take_over(self, old: EndpointActor) -> None:
        # The endpoint's state outlives the actor that crashed: one breaker, one limiter
        # (whose slots the permits still out hold), one latency record. Only the tasks
        # and the mailbox are new.
        self.breaker = old.breaker
        self._record = old._record
        self.limiter = old.limiter
        self.latency = old.latency
        self._schedule = old._schedule
        self.health = old.health
        self._misconfigured = old._misconfigured
        self._probe_failing = old._probe_failing
        self.confirm = old.confirm
        old._successor = self

    def restarted(self) -> EndpointActor:
        """A fresh actor for this endpoint that takes its state over (see :meth:`_take_over`);
        permits this actor admitted settle on the successor from then on."""
        return EndpointActor(self.endpoint, self.client, rng=self._rng, predecessor=self)

    def __repr__(self) -> str:
        return (
            f"<EndpointActor {self.name!r} [{self.health.value} | breaker {self.breaker.state.value} | "
            f"in-flight {self.limiter.in_flight} | {self.provider}/{self.model}]>"
        )

    # --- the hot path: called by the dispatcher from the caller's task ------------------

    def try_admit(self, tokens: int, now: float) -> Permit | None:
        """Take the request now if breaker, limiter and health allow; None (at once) if not."""
        # Healthy means none of failed, draining, misconfigured (_refresh follows every change
        # of those): the one comparison stands for _blocked() on nearly every request.
        if self.health is not _HEALTHY and self._blocked():
            return None
        # The common cases of Breaker.admit and Limiter.try_acquire inline (twins of theirs,
        # keep them alike): a closed breaker admits, a free limiter only counts.
        if self._record.state != S_CLOSED and not self.breaker.admit(now):
            return None
        limiter = self.limiter
        if limiter._free:
            limiter._admitted += 1
            return Permit(self, Reservation(tokens), now)
        reservation = limiter.try_acquire(tokens, now)
        if reservation is None:
            self.breaker.record(Outcome.IGNORED, now)
            return None
        return Permit(self, reservation, now)

    def finish(self, permit: Permit, error: BaseException | None, now: float, tokens: int | None = None) -> None:
        """Settle ``permit`` (see :meth:`Permit.settle`); a settled permit is left alone."""
        permit.settle(error, now, tokens)

    def _settle_failure(self, permit: Permit, error: BaseException, now: float, tokens: int | None) -> None:
        """Classify a failed (or cancelled) attempt and feed breaker, limiter and latency
        (a success settles in :meth:`Permit.settle`)."""
        # A 503/529 that says when to come back sets the open period, should it open.
        retry_after = error.retry_after if isinstance(error, ProviderError) else None
        self.breaker.record(classify(error, now - permit.started, self._slow_call), now, retry_after=retry_after)
        self.limiter.release(permit.reservation, tokens, now)
        if self._draining and self.limiter.in_flight == 0:
            self.drained.set()
        if isinstance(error, ProviderError):
            self.latency.error(f"{type(error).__name__}: {error}", now, kind=type(error).__name__)
            if error.rate_limit is not None:
                self.limiter.observe(error.rate_limit, now)
            if isinstance(error, RateLimited):
                retry_after = error.retry_after if error.retry_after is not None else DEFAULT_THROTTLE
                self.limiter.throttle(now + retry_after)
                self._refresh(now, "rate limited (429)", retry_after=retry_after)
                self._wake.set()
                return
            if isinstance(error, AuthenticationFailed):
                self._misconfigured = f"authentication failed (HTTP {error.status})"
        self._refresh(now, f"request failed: {type(error).__name__}")
        if self.breaker.state is BreakerState.OPEN:
            self._wake.set()

    def observe_rate_limit(self, snapshot: Any, now: float) -> None:
        """Feed the rate-limit headers of a successful response to the limiter."""
        if snapshot is not None and self.limiter.observe(snapshot, now):
            self._refresh(now, "provider rate limit spent")
            self._wake.set()

    def score(self, now: float) -> float:
        """Lower is better: peak-sensitive latency × (in-flight + 1), divided by weight.

        The latency decays while the endpoint is idle, so one slow spike does not keep
        it out of rotation for good.
        """
        # LatencyTracker.cost and Limiter.in_flight inline (twins of theirs, keep them alike):
        # two endpoints are scored on every pick among two or more, and their calls cost
        # more than the arithmetic.
        latency, limiter = self.latency, self.limiter
        last, cost = latency._last_at, latency._ewma
        if last is not None and now > last:
            cost *= math.exp(-(now - last) / latency._decay)
        return cost * (limiter._admitted - limiter._released + 1) / self.weight

    def available_at(self, tokens: int, now: float) -> float:
        """When this endpoint expects to take a request of ``tokens`` again (``inf``: not by itself)."""
        if self._blocked():
            return math.inf
        when = now
        if self.breaker.state is BreakerState.OPEN:
            when = max(when, self.breaker.retry_at or math.inf)
        return max(when, self.limiter.available_at(tokens, now))

    def _blocked(self) -> bool:
        return self._failed or self._draining or self._misconfigured is not None

    # --- state -------------------------------------------------------------------------

    def _compute(self, now: float) -> EndpointState:
        if self._failed:
            return EndpointState.FAILED
        if self._draining:
            return EndpointState.DRAINING
        if self._misconfigured is not None:
            return EndpointState.MISCONFIGURED
        breaker = self.breaker.state
        if breaker is BreakerState.OPEN:
            return EndpointState.UNHEALTHY
        if self.limiter.throttled_until > now:
            return EndpointState.THROTTLED
        if breaker is BreakerState.HALF_OPEN or self._probe_failing or self.breaker.consecutive_failures > 0:
            return EndpointState.DEGRADED
        return EndpointState.HEALTHY

    def _refresh(self, now: float, reason: str, **figures: float | int | None) -> None:
        new = self._compute(now)
        old = self.health
        if new is old:
            return
        self.health = new
        self.latency.state_changed(now)
        emit_transition(
            "endpoint",
            endpoint=self.name,
            provider=self.provider,
            model=self.model,
            from_state=old.value,
            to_state=new.value,
            reason=reason,
            **figures,
        )

    def notice(self) -> None:
        """State changed outside this actor (another process, through shared state): re-read it."""
        self._wake.set()

    def mark_failed(self, reason: str) -> None:
        """The supervisor gave up on this endpoint's actor: route around it from now on."""
        self._failed = True
        now = anyio.current_time()
        self.latency.error(reason, now, kind=None)
        self._refresh(now, reason)

    def drain(self) -> None:
        """Take no new requests; those in flight finish (``drained`` is set when none is left)."""
        self._draining = True
        if self.limiter.in_flight == 0:
            self.drained.set()
        self._refresh(anyio.current_time(), "runtime shutting down")

    def isolate(self) -> None:
        """Open the breaker by hand and keep it open until :meth:`reset`."""
        now = anyio.current_time()
        self.breaker.isolate(now)
        self._refresh(now, "isolated by hand")

    def reset(self) -> None:
        """Close the breaker, clear throttling and misconfiguration; a fresh start."""
        now = anyio.current_time()
        self.breaker.reset(now)
        self.limiter.unthrottle()
        self._misconfigured = self.endpoint.key_problem()
        self._probe_failing = False
        self._refresh(now, "reset by hand")

    def status(self) -> EndpointStatus:
        """A snapshot for ``Runtime.status()``."""
        ewma = self.latency.ewma
        return EndpointStatus(
            name=self.name,
            provider=self.provider,
            model=self.model,
            state=self.health.value,
            breaker=self.breaker.state.value,
            in_flight=self.limiter.in_flight,
            latency_ms=round(ewma * 1000.0, 3) if ewma > 0 else None,
            last_error=self._misconfigured or self.latency.last_error,
            priority=self.priority,
            retry_at=self.breaker.retry_at if self.breaker.state is BreakerState.OPEN else None,
        )

    def statistics(self) -> EndpointStatistics:
        """Breaker, limiter, latency and probe statistics together, frozen."""
        return EndpointStatistics(
            state=self.health.value,
            breaker=self.breaker.statistics(),
            limiter=self.limiter.statistics(),
            latency=self.latency.statistics(),
            probes=self._schedule.statistics(),
        )

    # --- the actor's own tasks -----------------------------------------------------------

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [self._timers]
        if self.endpoint.health.enabled:
            loops.append(self._probe_loop)
        return loops

    async def handle(self, message: Any) -> Any:
        match message:
            case "isolate":
                self.isolate()
            case "reset":
                self.reset()
            case "probe":
                return await self.probe()
            case "status":
                return self.status()
            case _:
                raise LLMError(f"endpoint actor {self.name!r} got an unknown message {message!r}")
        return None

    async def _timers(self) -> None:
        """Wake when the breaker's open period or a throttle ends, and move the state on."""
        while True:
            now = anyio.current_time()
            self.breaker.tick(now)
            self._refresh(now, "timer")
            deadlines = [t for t in (self.breaker.retry_at, self.limiter.throttled_until) if t is not None and t > now]
            wake = self._wake = anyio.Event()
            with anyio.move_on_after(min(deadlines) - now if deadlines else math.inf):
                await wake.wait()

    async def probe(self) -> bool:
        """Probe once now; True when the endpoint answered. Feeds breaker and state.

        Whatever the endpoint sends, a probe that did not succeed is a failed probe: the
        actor never crashes on a probe's body, so the endpoint can never end up
        ``failed`` for good because of what a server answered.
        """
        timeout = self.endpoint.health.timeout
        try:
            await self.client.probe(timeout)
        except Exception as exc:  # any failure to answer, even a bug decoding it, is a failed probe
            now = anyio.current_time()
            self._probe_failing = True
            self.latency.error(f"probe: {type(exc).__name__}: {exc}"[:300], now, kind="probe_failure")
            if isinstance(exc, AuthenticationFailed):
                self._misconfigured = f"authentication failed (HTTP {exc.status})"
            self._refresh(now, f"probe failed: {type(exc).__name__}")
            return False
        now = anyio.current_time()
        self._probe_failing = False
        if self._misconfigured is not None and self.endpoint.key_problem() is None:
            self._misconfigured = None
        if self.breaker.state is BreakerState.OPEN:
            self.breaker.probe_succeeded(now)
        self._refresh(now, "probe succeeded")
        return True

    async def _probe_loop(self) -> None:
        """Probe on the schedule; skip while real traffic proves the endpoint healthy.

        Each probe is a "probe" message through the mailbox, like one asked for by hand
        (``await actor.ask("probe")``), so two probes of one endpoint never overlap.
        """
        healthy = True
        while True:
            await anyio.sleep(self._schedule.next_delay(healthy))
            if self._failed or self._draining or self.endpoint.key_problem() is not None:
                continue
            now = anyio.current_time()
            last_success = self.latency.last_sample_at
            if (
                self.health is EndpointState.HEALTHY
                and last_success is not None
                and now - last_success < self.endpoint.health.interval
            ):
                healthy = True  # passive health: real traffic succeeded lately
                continue
            try:
                healthy = await self.ask("probe")
            except ActorStopped:
                return  # the mailbox closed under us: the actor is stopping, nothing to probe for


# Read as module globals on the hot path: an enum member through its class costs a lookup more.
_SUCCESS = Outcome.SUCCESS
_HEALTHY = EndpointState.HEALTHY


def _in_loop() -> bool:
    try:
        anyio.current_time()
    except RuntimeError:
        return False
    return True
