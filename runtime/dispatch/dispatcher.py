"""The dispatcher: choose an endpoint, retry, fail over, hedge, keep the deadline.

Choosing runs in the caller's task and asks the endpoint actors synchronously: the
actors own their state, and on one event loop a synchronous question cannot interleave
with another writer, so a mailbox hop per request would buy nothing but latency.

For a route (a group or model name; every endpoint when none is given) the endpoints
are kept in priority tiers, lowest number first. Within a tier two endpoints are drawn
at random (by weight) and the one with the lower latency EWMA × (in-flight + 1) is asked
first: power of two choices, constant cost however many endpoints a tier has. The next
tier is tried only when no endpoint of a tier can take the request now (breaker open,
throttled, misconfigured, at its concurrency cap or over its rate limit).

A tier is a preference: a lower one is tried only when no endpoint of the tiers above
can take the request now, or within ``RetryPolicy.tier_wait`` (once per tier and request).

Failing over is not retrying. The first attempt of a request on each endpoint that
admits it with its breaker closed is free; a repeated attempt on an endpoint (after a
jittered backoff) or one on a half-open endpoint spends the :class:`RetryBudget`, and
once the budget refuses, only endpoints not tried yet are left. So a burst of requests
on a dying endpoint moves to a healthy one whole, while an outage of everything costs at
most one attempt per request and endpoint plus the budget. The request's deadline bounds
everything: waiting for capacity, each attempt (the smaller of the endpoint's
``timeout`` and the time left), backoff. An endpoint that will not take requests again
before the deadline (a long Retry-After) is skipped, not waited on.

Every permit has one owner that settles it on every exit: the attempt while it runs
(on any error or cancellation), each hedge racer's task for its own, and the caller for the
winner's when ``settle`` is false.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from typing import Generic, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup

from .._logging import log_attempt
from ..endpoint.actor import EndpointActor, Permit
from ..endpoint.breaker import BreakerState
from ..errors import (
    AllEndpointsFailed,
    ContextWindowExceeded,
    InvalidRequest,
    LLMError,
    NoEndpointAvailable,
    Timeout,
)
from ..policy import HedgePolicy, RetryPolicy
from ..telemetry import attempt_span
from ..types import Attempt
from .retry import RetryBudget, backoff_delay

__all__ = ["Dispatcher", "Outcome", "RouteTable"]

T = TypeVar("T")

# Never wait less than this for capacity: an endpoint whose half-open trial is in
# flight says "available now" yet refuses, and a zero wait would spin.
MIN_CAPACITY_WAIT = 0.01


class Tier:
    """Endpoints of one priority, with cumulative weights for weighted draws."""

    __slots__ = ("actors", "cum_weights", "priority", "uniform")

    def __init__(self, priority: int, actors: list[EndpointActor]) -> None:
        self.priority = priority
        self.actors = actors
        self.uniform = len({a.weight for a in actors}) == 1
        self.cum_weights = list(itertools.accumulate(a.weight for a in actors))


class RouteTable:
    """Routes (``None``, group names, model names, endpoint names) → priority tiers."""

    def __init__(self, actors: Sequence[EndpointActor]) -> None:
        self.actors = list(actors)
        self.by_name = {a.name: a for a in actors}
        members: dict[str | None, list[EndpointActor]] = {None: list(actors)}
        for actor in actors:
            for key in {*actor.endpoint.groups, actor.model}:
                if key:
                    members.setdefault(key, []).append(actor)
        #: route -> its tiers (what :meth:`tiers` answers for a route when no endpoint is pinned)
        self.by_route = {route: self._tiers(group) for route, group in members.items()}

    @staticmethod
    def _tiers(actors: list[EndpointActor]) -> list[Tier]:
        by_priority: dict[int, list[EndpointActor]] = {}
        for actor in actors:
            by_priority.setdefault(actor.priority, []).append(actor)
        return [Tier(p, by_priority[p]) for p in sorted(by_priority)]

    def replace(self, old: EndpointActor, new: EndpointActor) -> None:
        """Route to a restarted actor instead of the one it replaces."""
        self.by_name[new.name] = new
        self.actors = [new if a is old else a for a in self.actors]
        for tiers in self.by_route.values():
            for tier in tiers:
                tier.actors = [new if a is old else a for a in tier.actors]

    def tiers(self, route: str | None, endpoint: str | None = None) -> list[Tier]:
        """The tiers that serve a route, or the one pinned endpoint."""
        if endpoint is not None:
            actor = self.by_name.get(endpoint)
            if actor is None:
                raise InvalidRequest(
                    f"no endpoint named {endpoint!r}; configured: {', '.join(self.by_name)}", field="endpoint"
                )
            return [Tier(actor.priority, [actor])]
        tiers = self.by_route.get(route)
        if tiers is None:
            known = sorted(k for k in self.by_route if k)
            raise InvalidRequest(f"no endpoint serves model or group {route!r}; known: {', '.join(known)}", field="model")
        return tiers


class Outcome(msgspec.Struct, Generic[T]):
    """A successful attempt: its value, the actor and permit, and the attempt trail.
    (A struct: built in C, one Python ``__init__`` call less per request.)"""

    value: T
    actor: EndpointActor
    permit: Permit
    attempts: list[Attempt]


class Dispatcher:
    """Chooses endpoints and runs attempts until one succeeds, the policy gives up or time runs out."""

    def __init__(
        self,
        routes: RouteTable,
        *,
        retry: RetryPolicy,
        hedge: HedgePolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.routes = routes
        self.retry = retry
        self.hedge = hedge
        self._rng = rng or random.Random()
        self._random = self._rng.random
        self.retry_budget = RetryBudget(retry.budget_ratio, retry.budget_floor)
        # Always kept, so that a per-request hedge policy on a runtime without one is
        # rationed against the same count of requests.
        self.hedge_budget = RetryBudget((hedge or HedgePolicy()).budget_ratio, 0.0)

    def __repr__(self) -> str:
        return f"<Dispatcher [endpoints: {len(self.routes.actors)} | {self.retry_budget!r}]>"

    # --- choosing ------------------------------------------------------------------------

    def choose(
        self,
        tiers: list[Tier],
        tokens: int,
        now: float,
        exclude: AbstractSet[str] = frozenset(),
        min_window: int = 0,
        accept: Callable[[EndpointActor], bool] | None = None,
    ) -> tuple[EndpointActor, Permit] | None:
        """The first tier's best endpoint that takes the request now, with its permit."""
        for tier in tiers:
            picked = self._choose_in(tier, tokens, now, exclude, min_window, accept)
            if picked is not None:
                return picked
        return None

    def _choose_in(
        self,
        tier: Tier,
        tokens: int,
        now: float,
        exclude: AbstractSet[str],
        min_window: int,
        accept: Callable[[EndpointActor], bool] | None,
    ) -> tuple[EndpointActor, Permit] | None:
        actors = tier.actors
        n = len(actors)
        if n == 1:  # nothing to draw: ask the one endpoint (what _admit does, a call less)
            actor = actors[0]
            if (exclude or min_window or accept is not None) and not _eligible(actor, exclude, min_window, accept):
                return None
            permit = actor.try_admit(tokens, now)
            return None if permit is None else (actor, permit)
        rnd = self._random
        if tier.uniform:
            i = int(rnd() * n)
            j = int(rnd() * (n - 1))
            j += j >= i
        else:
            cum = tier.cum_weights
            total = cum[-1]
            i = bisect.bisect(cum, rnd() * total)
            j = bisect.bisect(cum, rnd() * total)
            if j == i:
                j = (i + 1) % n
        a, b = actors[i], actors[j]
        if a.score(now) > b.score(now):
            a, b = b, a
        if not (exclude or min_window or accept is not None):
            # Nearly every pick: no exclusion, window or filter, so each is asked straight away.
            permit = a.try_admit(tokens, now)
            if permit is not None:
                return a, permit
            permit = b.try_admit(tokens, now)
            if permit is not None:
                return b, permit
        else:
            for actor in (a, b):
                permit = self._admit(actor, tokens, now, exclude, min_window, accept)
                if permit is not None:
                    return actor, permit
        if n <= 2:
            return None
        # Both draws refused: look at the whole tier before spilling to the next one.
        start = int(self._random() * n)
        for k in range(n):
            actor = actors[(start + k) % n]
            permit = self._admit(actor, tokens, now, exclude, min_window, accept)
            if permit is not None:
                return actor, permit
        return None

    @staticmethod
    def _admit(
        actor: EndpointActor,
        tokens: int,
        now: float,
        exclude: AbstractSet[str],
        min_window: int,
        accept: Callable[[EndpointActor], bool] | None,
    ) -> Permit | None:
        # Nearly every first pick has no exclusion, window or filter: nothing to check.
        if (exclude or min_window or accept is not None) and not _eligible(actor, exclude, min_window, accept):
            return None
        return actor.try_admit(tokens, now)

    # --- running attempts ------------------------------------------------------------------

    async def run(
        self,
        tiers: list[Tier],
        attempt: Callable[[EndpointActor, float], Awaitable[T]],
        *,
        tokens: int,
        deadline: float,
        prompt_tokens: int = 0,
        route: str | None = None,
        settle: bool = True,
        usage_tokens: Callable[[T], int | None] | None = None,
        accept: Callable[[EndpointActor], bool] | None = None,
        hedge: HedgePolicy | None = None,
        trail: list[Attempt],
        now: float | None = None,
        traced: bool = False,
    ) -> Outcome[T]:
        """Run ``attempt(actor, timeout)`` on chosen endpoints until one succeeds.

        ``tokens`` is what the limiter reserves (prompt + max_tokens), ``prompt_tokens`` what
        must fit a context window with the reply. With ``settle`` false the winning permit
        stays open for the caller to settle (streams). ``hedge`` hedges every attempt. Each
        attempt is appended to ``trail`` (the caller's list; ``Outcome.attempts``) however
        the run ends; one that holds attempts already is a request walking on (a stream
        restarting: :meth:`_Walk.resume`). ``now``: the loop time, if the caller just read it.
        With ``traced`` (the caller's request has a span) each attempt gets a span of its own.
        """
        clock = asyncio.get_running_loop().time
        if now is None:
            now = clock()
        if trail:
            walk = _Walk(tiers, tokens, deadline, prompt_tokens, accept, trail, clock)
            walk.resume(now, self.retry, self._rng)
            return await self._walk_on(walk, attempt, None, route, settle, usage_tokens, hedge, traced)
        self.retry_budget.record_request(now)
        if hedge is not None or self.hedge is not None:
            self.hedge_budget.record_request(now)
        # The common case, decided without a wait: an endpoint of the first tier takes it now ...
        picked = self._choose_in(tiers[0], tokens, now, _NONE, prompt_tokens, accept) if tiers and now < deadline else None
        if picked is None or hedge is not None or picked[0].confirm is not None:
            walk = _Walk(tiers, tokens, deadline, prompt_tokens, accept, trail, clock)
            return await self._walk_on(walk, attempt, picked, route, settle, usage_tokens, hedge, traced)
        # ... and answers: no walk is built until an attempt fails, and no frame of the
        # dispatcher's own stands between this one and the attempt's (see _single).
        actor, permit = picked
        timeout = actor.endpoint.timeout
        if deadline - now < timeout:  # min(), a call less
            timeout = deadline - now
        try:
            value = await (_traced(attempt, actor, timeout, 1) if traced else attempt(actor, timeout))
        except BaseException as exc:
            _lost(trail, clock, actor, permit, exc, now)
            if not isinstance(exc, LLMError):
                raise
            walk = _Walk(tiers, tokens, deadline, prompt_tokens, accept, trail, clock)
            if not walk.failed_on(actor, exc, clock(), self.retry, self._rng):
                raise
        else:
            return _answered(trail, clock(), actor, permit, now, value, settle, usage_tokens)
        return await self._walk_on(walk, attempt, None, route, settle, usage_tokens, hedge, traced)

    async def _walk_on(
        self,
        walk: _Walk,
        attempt: Callable[[EndpointActor, float], Awaitable[T]],
        picked: tuple[EndpointActor, Permit] | None,
        route: str | None,
        settle: bool,
        usage_tokens: Callable[[T], int | None] | None,
        hedge: HedgePolicy | None,
        traced: bool,
    ) -> Outcome[T]:
        """Attempts after the first (or with hedging or shared state), starting with ``picked``
        when one is admitted already, until one succeeds or the rules give up."""
        clock = walk.clock
        while picked is not None or (picked := await self._next(walk, route)) is not None:
            actor, permit = picked
            picked = None
            timeout = min(actor.endpoint.timeout, walk.deadline - clock())
            if actor.confirm is not None and not await _confirmed(actor, permit):
                continue  # shared state refused it (and undid the permit): choose again
            now = clock()
            try:
                if hedge is None:
                    return await self._single(
                        walk.attempts, clock, attempt, actor, permit, timeout, now, settle, usage_tokens, traced
                    )
                value, actor, permit = await self._hedged(walk, attempt, actor, permit, timeout, hedge)
            except LLMError as exc:
                if walk.failed_on(actor, exc, clock(), self.retry, self._rng):
                    continue
                raise
            if settle:
                permit.settle(None, clock(), usage_tokens(value) if usage_tokens else None)
            return Outcome(value, actor, permit, walk.attempts)
        raise walk.give_up(route, clock() >= walk.deadline, self.retry.max_attempts)

    async def _next(self, walk: _Walk, route: str | None) -> tuple[EndpointActor, Permit] | None:
        """The next endpoint to try and its permit, after whatever wait the rules allow.

        A fresh endpoint (not tried by this request) that takes the request now goes
        first, unless a better tier can take it within ``tier_wait``. With no fresh one,
        wait for the soonest endpoint that can: one backing off, throttled or out of
        capacity. None when nothing can before the deadline or the attempts are used up.
        """
        while True:
            now = walk.clock()
            if now >= walk.deadline or len(walk.attempts) >= self.retry.max_attempts:
                return None
            fresh = self._choose_ranked(walk.tiers, walk, now)
            if fresh is not None:
                rank, actor, permit = fresh
                better = self._tier_wait(walk, rank, now)
                if better is None:
                    if self._spend(walk, actor, permit, now):
                        return actor, permit
                    continue
                permit.settle(_nothing(), now)  # sent nothing: counts as nothing
                index, until = better
                walk.waited.add(index)
                tiers = [walk.tiers[index]]
            else:
                until = walk.soonest(now)
                if until >= walk.deadline:
                    walk.none_left(route, now, until, self._why_none)
                    return None
                tiers = walk.tiers
            await anyio.sleep(max(MIN_CAPACITY_WAIT, until - now))
            now = walk.clock()
            if now >= walk.deadline:
                return None
            again = self.choose(tiers, walk.tokens, now, walk.repeat_excluded(now), walk.min_window, walk.accept)
            if again is not None and self._spend(walk, *again, now):
                return again

    def _choose_ranked(self, tiers: list[Tier], walk: _Walk, now: float) -> tuple[int, EndpointActor, Permit] | None:
        """Like :meth:`choose` over the endpoints not tried yet, with the index of the tier chosen from."""
        exclude = walk.fresh_excluded()
        for index, tier in enumerate(tiers):
            picked = self._choose_in(tier, walk.tokens, now, exclude, walk.min_window, walk.accept)
            if picked is not None:
                return index, picked[0], picked[1]
        return None

    def _tier_wait(self, walk: _Walk, rank: int, now: float) -> tuple[int, float] | None:
        """A tier better than ``rank`` worth waiting for, and until when: the first one not
        waited for yet whose soonest endpoint is ready within ``tier_wait`` and the deadline
        (an endpoint already tried only while the retry budget would pay for another try)."""
        retry = self.retry
        patience = retry.tier_wait
        # Waiting must leave an attempt for the lower tier, or it could cost the answer.
        if rank == 0 or patience <= 0.0 or len(walk.attempts) + 2 > retry.max_attempts:
            return None
        limit = min(now + patience, walk.deadline)
        repeat = not walk.budget_spent and self.retry_budget.can_spend(now)
        for index in range(rank):
            if index in walk.waited:
                continue
            until = walk.soonest(now, walk.tiers[index : index + 1], repeat=repeat, patient=True)
            if until <= limit and until < walk.deadline:
                return index, until
        return None

    def _spend(self, walk: _Walk, actor: EndpointActor, permit: Permit, now: float) -> bool:
        """Whether the attempt may go out: failover is free, a retry spends the budget.

        The request's first attempt, and its first on an endpoint whose breaker is
        closed, are free; anything else (a repeat, a half-open trial) is a retry. When
        the budget refuses, the permit is given back and no endpoint is tried again.
        """
        if not walk.attempts or (actor.name not in walk.failed and actor.breaker.state is BreakerState.CLOSED):
            return True
        if self.retry_budget.try_spend(now):
            return True
        permit.settle(_nothing(), now)  # sent nothing: counts as nothing
        walk.refused.add(actor.name)
        walk.budget_spent = True
        return False

    @staticmethod
    async def _single(
        trail: list[Attempt],
        clock: Callable[[], float],
        attempt: Callable[[EndpointActor, float], Awaitable[T]],
        actor: EndpointActor,
        permit: Permit,
        timeout: float,
        started: float,
        settle: bool,
        usage_tokens: Callable[[T], int | None] | None,
        traced: bool,
    ) -> Outcome[T]:
        """One attempt (in a span of its own when ``traced``), recorded in ``trail``; the permit
        is settled here on any error or cancellation, and on success unless ``settle`` is false. (:meth:`run` takes a
        request's first attempt the same way, in its own frame.)"""
        try:
            if traced:
                value = await _traced(attempt, actor, timeout, len(trail) + 1)
            else:
                value = await attempt(actor, timeout)
        except BaseException as exc:
            _lost(trail, clock, actor, permit, exc, started)
            raise
        return _answered(trail, clock(), actor, permit, started, value, settle, usage_tokens)

    def _why_none(self, tiers: list[Tier], now: float, deadline: float) -> str:
        states = ", ".join(_describe(a) for tier in tiers for a in tier.actors)
        return f"no endpoint can take the request within {deadline - now:.3g}s ({states})"

    # --- hedging -----------------------------------------------------------------------

    async def _hedged(
        self,
        walk: _Walk,
        attempt: Callable[[EndpointActor, float], Awaitable[T]],
        actor: EndpointActor,
        permit: Permit,
        timeout: float,
        hedge: HedgePolicy,
    ) -> tuple[T, EndpointActor, Permit]:
        """Run an attempt; if it has not answered after the hedge delay, race other endpoints.

        The first answer wins and the others are cancelled (a cancellation counts as
        nothing against its endpoint). Every racer's permit is settled here on every
        exit but the winner's, which passes to the caller. Errors: once every racer
        failed, the first racer's error.
        """
        race: _Race[T] = _Race(attempt)
        try:
            async with anyio.create_task_group() as tg:
                race.start(tg, actor, permit, timeout, walk.clock())
                await self._launch_hedges(tg, race, walk, hedge, _hedge_delay(actor, hedge))
                tg.cancel_scope.cancel()
        except BaseException as exc:
            race.abandon()
            if isinstance(exc, BaseExceptionGroup):
                # A racer's bug (each racer keeps its LLMError) leaves the task group wrapped:
                # the caller gets it as itself, as from an attempt that was not hedged.
                raise exc.exceptions[0] from None
            raise
        return race.settle(walk, walk.clock(), self.retry, self._rng)

    async def _launch_hedges(self, tg: TaskGroup, race: _Race[T], walk: _Walk, hedge: HedgePolicy, delay: float) -> None:
        """Start up to ``max_extra`` hedges, one per ``delay`` without an answer, until the race is decided."""
        launched = 0
        while not race.done.is_set():
            with anyio.move_on_after(delay if launched < hedge.max_extra else math.inf):
                await race.done.wait()
            if race.done.is_set():
                return
            launched += 1
            now = walk.clock()
            exclude = race.names() | walk.fresh_excluded()
            picked = self.choose(walk.tiers, walk.tokens, now, exclude, walk.min_window, walk.accept)
            if picked is None or (picked[0].confirm is not None and not await _confirmed(*picked)):
                continue
            racer, permit = picked
            if not self.hedge_budget.try_spend(now, hedge.budget_ratio):
                permit.settle(_nothing(), now)  # sent nothing: counts as nothing
                continue
            race.start(tg, racer, permit, min(racer.endpoint.timeout, walk.deadline - now), now)


class _Walk:
    """One request's way through the endpoints: what it tried, what failed, what is left."""

    __slots__ = (
        "accept",
        "attempts",
        "budget_spent",
        "clock",
        "deadline",
        "failed",
        "min_window",
        "raise_if_none",
        "ready_at",
        "refused",
        "tiers",
        "timed_out",
        "tokens",
        "too_small",
        "waited",
    )

    def __init__(
        self,
        tiers: list[Tier],
        tokens: int,
        deadline: float,
        min_window: int,
        accept: Callable[[EndpointActor], bool] | None,
        trail: list[Attempt],
        clock: Callable[[], float],
    ) -> None:
        self.clock = clock
        self.tiers = tiers
        self.tokens = tokens
        self.deadline = deadline
        self.min_window = min_window
        self.accept = accept
        self.attempts = trail
        self.failed: dict[str, int] = {}  # endpoint -> retryable failures in this request
        self.ready_at: dict[str, float] = {}  # endpoint -> when its backoff ends
        self.too_small: set[str] = set()  # its context window proved too small: never again
        self.refused: set[str] = set()  # the retry budget refused it: not again
        self.timed_out: set[str] = set()  # not waited for by tier_wait
        self.waited: set[int] = set()  # tiers waited for once (tier_wait)
        self.raise_if_none: LLMError | None = None
        self.budget_spent = False  # no endpoint is tried a second time from then on

    def resume(self, now: float, retry: RetryPolicy, rng: random.Random) -> None:
        """Walk on from the attempts already in the trail: they count against
        ``max_attempts``, the endpoints that failed them are repeats (tried again only
        after backoff, on the retry budget), and the request is not counted again. Their
        tiers are not waited for: the answer they cut already cost the caller its wait."""
        for earlier in self.attempts:
            if earlier.error is not None and getattr(earlier.error, "retryable", False):
                name = earlier.endpoint
                failures = self.failed[name] = self.failed.get(name, 0) + 1
                self.ready_at[name] = now + backoff_delay(failures, retry.backoff_base, retry.backoff_max, rng)
                self.waited.update(i for i, tier in enumerate(self.tiers) if any(a.name == name for a in tier.actors))

    def fresh_excluded(self) -> AbstractSet[str]:
        """Endpoints a failover may not go to: every one tried or refused already."""
        if not (self.failed or self.too_small or self.refused):
            return _NONE  # the first pick of nearly every request: build no set
        return self.failed.keys() | self.too_small | self.refused

    def closed(self) -> AbstractSet[str]:
        """Endpoints this request will not try again: too small, refused, or every one
        tried already once the budget is spent."""
        if self.budget_spent:
            return self.fresh_excluded()
        return self.too_small | self.refused

    def repeat_excluded(self, now: float) -> AbstractSet[str]:
        """Endpoints a retry may not go to now: closed ones and those still backing off."""
        return self.closed() | {name for name, at in self.ready_at.items() if at > now}

    def soonest(self, now: float, tiers: list[Tier] | None = None, *, repeat: bool = True, patient: bool = False) -> float:
        """The soonest loop time an endpoint of ``tiers`` (default: all) could take this
        request's next attempt (``inf``: none will); ``repeat`` false leaves tried ones out,
        ``patient`` those that timed out (another wait for them costs a whole timeout)."""
        exclude = self.closed() if repeat else self.fresh_excluded()
        if patient and self.timed_out:
            exclude = exclude | self.timed_out
        return min(
            (
                max(actor.available_at(self.tokens, now), self.ready_at.get(actor.name, now))
                for tier in (self.tiers if tiers is None else tiers)
                for actor in tier.actors
                if _eligible(actor, exclude, self.min_window, self.accept)
            ),
            default=math.inf,
        )

    def record(self, attempt: Attempt) -> None:
        _record(self.attempts, attempt)

    def failed_on(self, actor: EndpointActor, exc: LLMError, end: float, retry: RetryPolicy, rng: random.Random) -> bool:
        """Note a failed attempt; False when the error must reach the caller as it is."""
        if isinstance(exc, ContextWindowExceeded):
            # Only an endpoint with a larger window can help.
            window = actor.endpoint.context_window
            if window is not None:
                self.min_window = max(self.min_window, window + 1)
            self.too_small.add(actor.name)
            self.raise_if_none = exc
            return True
        if not getattr(exc, "retryable", False):
            return False
        failures = self.failed[actor.name] = self.failed.get(actor.name, 0) + 1
        if isinstance(exc, Timeout):
            self.timed_out.add(actor.name)
        self.ready_at[actor.name] = end + backoff_delay(failures, retry.backoff_base, retry.backoff_max, rng)
        return True

    def none_left(
        self, route: str | None, now: float, until: float, why: Callable[[list[Tier], float, float], str]
    ) -> None:
        """Nothing can take the request before the deadline: raise what says so best, or
        return None to let the run give up with its attempt trail."""
        if self.raise_if_none is not None:
            raise self.raise_if_none
        if not self.attempts:
            if self.min_window and all(
                (a.endpoint.context_window or math.inf) < self.min_window for t in self.tiers for a in t.actors
            ):
                # The prompt's fault, not the endpoints': no wait or retry can help, so it is the
                # request error an endpoint would answer (a gateway maps it to a 400).
                raise ContextWindowExceeded(
                    f"the prompt needs a context window of {self.min_window} tokens; no endpoint has one",
                    code="context_length_exceeded",
                )
            raise NoEndpointAvailable(
                why(self.tiers, now, self.deadline),
                route=route,
                retry_after=None if math.isinf(until) else until - now,
            )

    def give_up(self, route: str | None, deadline_hit: bool, max_attempts: int) -> LLMError:
        """The error that ends a run without an answer."""
        if self.raise_if_none is not None:
            return self.raise_if_none
        attempts = self.attempts
        if not attempts:
            return NoEndpointAvailable(
                f"deadline reached before any endpoint could take the request (route {route!r})", route=route
            )
        if deadline_hit:
            reason = "deadline reached"
        elif len(attempts) >= max_attempts:
            reason = f"{len(attempts)} attempts failed"
        elif self.budget_spent:
            reason = "retry budget spent"
        else:
            reason = "no endpoint can take another attempt before the deadline"
        tried = {a.endpoint for a in attempts}
        untried = [_describe(a) for tier in self.tiers for a in tier.actors if a.name not in tried]
        if untried:
            reason += f"; not tried: {', '.join(untried)}"
        return AllEndpointsFailed(f"every attempt failed: {reason}", attempts=attempts)


class _Race(Generic[T]):
    """The racers of one hedged attempt.

    Each racer's task owns its permit until the task ends (``with permit:`` settles it
    on an error or cancellation); the winner's passes to whoever takes the result.
    """

    __slots__ = ("attempt", "done", "errors", "racers", "winner")

    def __init__(self, attempt: Callable[[EndpointActor, float], Awaitable[T]]) -> None:
        self.attempt = attempt
        self.racers: list[tuple[EndpointActor, Permit, float]] = []
        self.errors: dict[int, LLMError] = {}
        self.winner: tuple[int, T] | None = None
        self.done = anyio.Event()

    def names(self) -> set[str]:
        return {racer.name for racer, _, _ in self.racers}

    def start(self, tg: TaskGroup, actor: EndpointActor, permit: Permit, timeout: float, now: float) -> None:
        self.racers.append((actor, permit, now))
        tg.start_soon(self._run, len(self.racers) - 1, actor, permit, timeout)

    async def _run(self, index: int, actor: EndpointActor, permit: Permit, timeout: float) -> None:
        try:
            with permit:
                value = await self.attempt(actor, timeout)
        except LLMError as exc:
            self.errors[index] = exc
            if len(self.errors) == len(self.racers):
                self.done.set()
            return
        if self.winner is None:
            self.winner = (index, value)
        else:
            permit.settle(None)  # answered too, a moment late: a success all the same
        self.done.set()

    def abandon(self) -> None:
        """The race was cancelled or broke: settle every permit, the winner's included
        (nobody took its answer), as nothing."""
        for _, permit, _ in self.racers:
            permit.settle(_nothing())

    def settle(self, walk: _Walk, end: float, retry: RetryPolicy, rng: random.Random) -> tuple[T, EndpointActor, Permit]:
        """Record every racer's attempt and settle the losers; the winner, or the first racer's error."""
        won = self.winner[0] if self.winner is not None else None
        for index, (racer, permit, started) in enumerate(self.racers):
            error = self.errors.get(index)
            if index != won:
                permit.settle(_nothing(), end)  # a loser still running counts as nothing (settled already on its error)
                if error is not None and index > 0:
                    walk.failed_on(racer, error, end, retry, rng)
            walk.record(
                Attempt(endpoint=racer.name, error=error, elapsed=end - started, hedge=index > 0, cancelled=error is None and index != won)
            )
        if self.winner is None:
            raise self.errors[0]
        racer, permit, _ = self.racers[self.winner[0]]
        return self.winner[1], racer, permit


async def _confirmed(actor: EndpointActor, permit: Permit) -> bool:
    """Whether shared state ([shared]; ``actor.confirm`` is set) takes the admitted permit
    too. A refusal is undone by the confirmation itself (the shared record never counted
    it); an error or a cancellation while asking settles the permit here."""
    assert actor.confirm is not None
    with permit:
        return await actor.confirm(permit)


_NONE: frozenset[str] = frozenset()


def _record(trail: list[Attempt], attempt: Attempt) -> None:
    trail.append(attempt)
    log_attempt(trail)


def _answered(
    trail: list[Attempt],
    end: float,
    actor: EndpointActor,
    permit: Permit,
    started: float,
    value: T,
    settle: bool,
    usage_tokens: Callable[[T], int | None] | None,
) -> Outcome[T]:
    """An attempt that answered at loop time ``end``: recorded (one clock reading ends it)
    and its permit settled, unless ``settle`` is false (the caller then owns it)."""
    trail.append(Attempt(endpoint=actor.name, elapsed=end - started))
    log_attempt(trail)
    if settle:
        permit.settle(None, end, usage_tokens(value) if usage_tokens else None)
    return Outcome(value, actor, permit, trail)


def _lost(
    trail: list[Attempt], clock: Callable[[], float], actor: EndpointActor, permit: Permit, exc: BaseException, started: float
) -> None:
    """An attempt that raised: its permit settled with the error (what ``with permit:`` does,
    without its two calls per attempt) and, for an LLMError, recorded in ``trail``."""
    permit.settle(exc)
    if isinstance(exc, LLMError):
        _record(trail, Attempt(endpoint=actor.name, error=exc, elapsed=clock() - started))


def _nothing() -> BaseException:
    """The outcome of a permit that sent nothing or lost a race: a cancellation counts as nothing."""
    return anyio.get_cancelled_exc_class()()


def _hedge_delay(actor: EndpointActor, hedge: HedgePolicy) -> float:
    """Seconds without an answer after which a hedge goes out (``inf``: no p95 known yet)."""
    if hedge.after == "p95":
        p95 = actor.latency.p95
        return p95 if p95 is not None else math.inf
    return float(hedge.after)


async def _traced(attempt: Callable[[EndpointActor, float], Awaitable[T]], actor: EndpointActor, timeout: float, number: int) -> T:
    """An attempt inside its own span, which records how it ended."""
    with attempt_span(
        f"attempt {actor.name}", {"endpoint": actor.name, "attempt": number, "gen_ai.provider.name": actor.provider}
    ):
        return await attempt(actor, timeout)


def _describe(actor: EndpointActor) -> str:
    """An endpoint's name and state for an error message, with the reason when it is misconfigured."""
    state = actor.health.value
    if state == "misconfigured":
        return f"{actor.name}: {state} ({actor.status().last_error})"
    return f"{actor.name}: {state}"


def _eligible(
    actor: EndpointActor,
    exclude: AbstractSet[str],
    min_window: int,
    accept: Callable[[EndpointActor], bool] | None,
) -> bool:
    """Whether the request may go to ``actor`` at all: not excluded, its context window
    (when known) big enough, and accepted by the caller's filter (budgets)."""
    if exclude and actor.name in exclude:
        return False
    if min_window:
        window = actor.endpoint.context_window
        if window is not None and window < min_window:
            return False
    return accept is None or accept(actor)
