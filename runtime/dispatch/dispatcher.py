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

A retryable failure moves on to another endpoint; the same endpoint is tried again only
after a jittered backoff. Extra attempts are rationed by a :class:`RetryBudget`. The
request's deadline bounds everything: waiting for capacity, each attempt (the smaller
of the endpoint's ``timeout`` and the time left), backoff. An endpoint that will not
take requests again before the deadline (a long Retry-After) is skipped, not waited on.
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

from .._logging import log_attempt
from ..endpoint.actor import EndpointActor, Permit
from ..errors import (
    AllEndpointsFailed,
    ContextWindowExceeded,
    InvalidRequest,
    LLMError,
    NoEndpointAvailable,
)
from ..policy import HedgePolicy, RetryPolicy
from ..telemetry import request_span, tracing_enabled
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
        self._routes = {route: self._tiers(group) for route, group in members.items()}

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
        for tiers in self._routes.values():
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
        tiers = self._routes.get(route)
        if tiers is None:
            known = sorted(k for k in self._routes if k)
            raise InvalidRequest(f"no endpoint serves model or group {route!r}; known: {', '.join(known)}", field="model")
        return tiers


class Outcome(Generic[T]):
    """A successful attempt: its value, the actor and permit, and the attempt trail."""

    __slots__ = ("actor", "attempts", "permit", "value")

    def __init__(self, value: T, actor: EndpointActor, permit: Permit, attempts: list[Attempt]) -> None:
        self.value = value
        self.actor = actor
        self.permit = permit
        self.attempts = attempts


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
        self.hedge_budget = RetryBudget(hedge.budget_ratio, 0.0) if hedge else None

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
        if n == 1:
            order: Sequence[EndpointActor] = actors
        else:
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
            order = (a, b) if a.score(now) <= b.score(now) else (b, a)
        for actor in order:
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
        if not _eligible(actor, exclude, min_window, accept):
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
        trail: list[Attempt] | None = None,
    ) -> Outcome[T]:
        """Run ``attempt(actor, timeout)`` on chosen endpoints until one succeeds.

        ``tokens`` is what the limiter reserves (prompt + max_tokens) and ``prompt_tokens``
        what must fit an endpoint's context window together with the reply. With
        ``settle`` false the winning permit stays open for the caller to settle (streams).
        Attempts are appended to ``trail`` when given, so the caller sees them however
        the run ends.
        """
        clock = asyncio.get_running_loop().time
        now = clock()
        attempts: list[Attempt] = [] if trail is None else trail
        # A trail that already holds attempts is a request walking on (a stream restarting
        # after its answer failed): those attempts count against max_attempts and the retry
        # budget, their endpoints are tried again only after backoff, and it is no new request.
        failed: dict[str, int] = {}
        for earlier in attempts:
            if earlier.error is not None and getattr(earlier.error, "retryable", False):
                failed[earlier.endpoint] = failed.get(earlier.endpoint, 0) + 1
        if not attempts:
            self.retry_budget.record_request(now)
            if self.hedge_budget is not None:
                self.hedge_budget.record_request(now)
        min_window = prompt_tokens
        raise_if_none: LLMError | None = None
        retry = self.retry
        retry_same = False
        # Endpoints whose window proved too small: never again within this request.
        too_small: set[str] = set()
        while True:
            now = clock()
            if now >= deadline:
                break
            if len(attempts) >= retry.max_attempts:
                break
            picked = self.choose(
                tiers, tokens, now, too_small if retry_same else failed.keys() | too_small, min_window, accept
            )
            if picked is None and failed and not retry_same:
                # Every untried endpoint is unavailable: back off, then the same ones again.
                wait = backoff_delay(max(failed.values()), retry.backoff_base, retry.backoff_max, self._rng)
                if now + wait >= deadline:
                    break
                await anyio.sleep(wait)
                retry_same = True
                continue
            retry_same = False
            if picked is None:
                wait_until = self._available_at(tiers, tokens, now, too_small, min_window, accept)
                if wait_until >= deadline:
                    if raise_if_none is not None:
                        raise raise_if_none
                    if not attempts:
                        raise NoEndpointAvailable(
                            self._why_none(tiers, min_window, now, deadline),
                            route=route,
                            retry_after=None if math.isinf(wait_until) else wait_until - now,
                        )
                    break
                await anyio.sleep(max(MIN_CAPACITY_WAIT, wait_until - now))
                continue
            actor, permit = picked
            if actor.confirm is not None and not await actor.confirm(permit):
                continue  # shared state refused it (and undid the permit): choose again
            # Only an attempt that is about to go out spends the retry budget; waiting for
            # capacity or backing off spends nothing.
            if attempts and not self.retry_budget.try_spend(now):
                actor.finish(permit, anyio.get_cancelled_exc_class()(), now)  # sent nothing: counts as nothing
                break
            timeout = min(actor.endpoint.timeout, deadline - now)
            started = now
            try:
                if hedge is not None and self.hedge_budget is not None:
                    value, actor, permit, extra = await self._hedged(
                        tiers, attempt, actor, permit, timeout, tokens, deadline, failed, min_window, accept, hedge
                    )
                    attempts.extend(extra)
                elif tracing_enabled():
                    with request_span(
                        f"attempt {actor.name}",
                        {"endpoint": actor.name, "attempt": len(attempts) + 1, "gen_ai.provider.name": actor.provider},
                    ) as span:
                        try:
                            value = await attempt(actor, timeout)
                        except LLMError as exc:
                            span.set_attribute("outcome", type(exc).__name__)
                            raise
                        span.set_attribute("outcome", "ok")
                else:
                    value = await attempt(actor, timeout)
            except LLMError as exc:
                end = clock()
                actor.finish(permit, exc, end)
                attempts.append(Attempt(endpoint=actor.name, error=exc, elapsed=end - started))
                log_attempt(attempts)
                if isinstance(exc, ContextWindowExceeded):
                    # Only an endpoint with a larger window can help.
                    window = actor.endpoint.context_window
                    if window is not None:
                        min_window = max(min_window, window + 1)
                    too_small.add(actor.name)
                    raise_if_none = exc
                    continue
                if not getattr(exc, "retryable", False):
                    raise
                failed[actor.name] = failed.get(actor.name, 0) + 1
                continue
            except BaseException as exc:
                actor.finish(permit, exc, clock())
                raise
            end = clock()
            attempts.append(Attempt(endpoint=actor.name, elapsed=end - started))
            log_attempt(attempts)
            if settle:
                actor.finish(permit, None, end, usage_tokens(value) if usage_tokens else None)
            return Outcome(value, actor, permit, attempts)
        if raise_if_none is not None:
            raise raise_if_none
        deadline_hit = clock() >= deadline
        if not attempts:
            raise NoEndpointAvailable(f"deadline reached before any endpoint could take the request (route {route!r})", route=route)
        reason = "deadline reached" if deadline_hit else (
            "retry budget spent" if len(attempts) < retry.max_attempts else f"{len(attempts)} attempts failed"
        )
        tried = {a.endpoint for a in attempts}
        untried = [_describe(a) for tier in tiers for a in tier.actors if a.name not in tried]
        if untried:
            reason += f"; not tried: {', '.join(untried)}"
        raise AllEndpointsFailed(f"every attempt failed: {reason}", attempts=attempts)

    def _available_at(
        self,
        tiers: list[Tier],
        tokens: int,
        now: float,
        exclude: AbstractSet[str],
        min_window: int,
        accept: Callable[[EndpointActor], bool] | None,
    ) -> float:
        """The soonest loop time any eligible endpoint expects to take the request (``inf``: none will)."""
        return min(
            (
                actor.available_at(tokens, now)
                for tier in tiers
                for actor in tier.actors
                if _eligible(actor, exclude, min_window, accept)
            ),
            default=math.inf,
        )

    def _why_none(self, tiers: list[Tier], min_window: int, now: float, deadline: float) -> str:
        states = ", ".join(_describe(a) for tier in tiers for a in tier.actors)
        if min_window and all((a.endpoint.context_window or math.inf) < min_window for t in tiers for a in t.actors):
            return f"no endpoint has a context window of {min_window} tokens"
        return f"no endpoint can take the request within {deadline - now:.3g}s ({states})"

    async def _hedged(
        self,
        tiers: list[Tier],
        attempt: Callable[[EndpointActor, float], Awaitable[T]],
        actor: EndpointActor,
        permit: Permit,
        timeout: float,
        tokens: int,
        deadline: float,
        failed: dict[str, int],
        min_window: int,
        accept: Callable[[EndpointActor], bool] | None,
        hedge: HedgePolicy,
    ) -> tuple[T, EndpointActor, Permit, list[Attempt]]:
        """Run an attempt; if it has not answered after the hedge delay, race another endpoint.

        The first answer wins and the other attempt is cancelled (a cancellation counts as
        nothing against its endpoint). Errors: once every racer failed, the first error.
        """
        after = hedge.after
        if after == "p95":
            p95 = actor.latency.p95
            delay = p95 if p95 is not None else math.inf
        else:
            delay = float(after)
        racers: list[tuple[EndpointActor, Permit, float]] = [(actor, permit, anyio.current_time())]
        errors: dict[int, LLMError] = {}
        winner: list[tuple[int, T]] = []
        done = anyio.Event()

        async def race(index: int, racer: EndpointActor, racer_timeout: float) -> None:
            try:
                value = await attempt(racer, racer_timeout)
            except LLMError as exc:
                errors[index] = exc
                if len(errors) == len(racers):
                    done.set()
                return
            winner.append((index, value))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(race, 0, actor, timeout)
            launched = 0
            while not done.is_set():
                with anyio.move_on_after(delay if launched < hedge.max_extra else math.inf):
                    await done.wait()
                if done.is_set():
                    break
                launched += 1
                now = anyio.current_time()
                assert self.hedge_budget is not None
                if not self.hedge_budget.try_spend(now):
                    continue
                exclude = {r[0].name for r in racers} | failed.keys()
                picked = self.choose(tiers, tokens, now, exclude, min_window, accept)
                if picked is None or (picked[0].confirm is not None and not await picked[0].confirm(picked[1])):
                    continue
                racers.append((picked[0], picked[1], now))
                tg.start_soon(race, len(racers) - 1, picked[0], min(picked[0].endpoint.timeout, deadline - now))
            tg.cancel_scope.cancel()
        end = anyio.current_time()
        won = winner[0][0] if winner else None
        extra: list[Attempt] = []
        for index, (racer, racer_permit, started) in enumerate(racers):
            if index == won or (won is None and index == 0):
                continue  # the caller settles the winner, or the first racer's error
            error = errors.get(index)
            if error is None:  # still running when the winner answered: cancelled, counts as nothing
                racer.finish(racer_permit, anyio.get_cancelled_exc_class()(), end)
            else:
                racer.finish(racer_permit, error, end)
                failed[racer.name] = failed.get(racer.name, 0) + 1
            extra.append(
                Attempt(endpoint=racer.name, error=error, elapsed=end - started, hedge=index > 0, cancelled=error is None)
            )
        if won is None:
            raise errors[0]
        racer, racer_permit, _ = racers[won]
        return winner[0][1], racer, racer_permit, extra


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
