"""Failover under load and cancellation: the failover/retry rule, the preferred tier's
wait, per-request hedging, permits settled on every exit, actor restarts that hand the
endpoint's state over, and probes that cannot crash an actor.

All on the fast-forwarding loop against fault-injecting local endpoints.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import (
    AllEndpointsFailed,
    BreakerPolicy,
    Endpoint,
    HealthPolicy,
    HedgePolicy,
    LLMError,
    NoEndpointAvailable,
    RetryPolicy,
    Runtime,
    ServerError,
)
from runtime.endpoint.actor import EndpointActor
from runtime.providers.mock import MockClient
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

QUIET = HealthPolicy(enabled=False)


def tiered(*eps: FaultyEndpoint, **endpoint_kwargs: Any) -> list[Any]:
    """One priority tier per endpoint, in order, without probes."""
    return [ep.endpoint(priority=i + 1, health=QUIET, **endpoint_kwargs) for i, ep in enumerate(eps)]


async def burst(
    rt: Runtime, n: int, timeout: float | None = None, every: float = 0.008
) -> tuple[list[str], list[BaseException]]:
    """``n`` concurrent chats, started ``every`` seconds apart (8 ms: all in flight together on
    a slow endpoint, while a real listen queue drops a few hundred simultaneous SYNs): the
    endpoints that answered and the errors callers saw."""
    answered: list[str] = []
    failures: list[BaseException] = []

    async def one(i: int) -> None:
        await anyio.sleep(i * every)
        try:
            answered.append((await rt.chat("hi", timeout=timeout)).endpoint)
        except LLMError as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return answered, failures


# --- failover is not a retry storm ---------------------------------------------------------


@pytest.mark.parametrize("tier_wait", [1.0, 0.0])
async def test_burst_on_a_dying_primary_fails_over_whole(pair: tuple[FaultyEndpoint, FaultyEndpoint], tier_wait: float) -> None:
    """500 requests in flight on a primary (5 s latency) that fails them all: every caller gets the backup's answer."""
    primary, backup = pair
    primary.faults.latency = 5.0
    primary.faults.error_rate, primary.faults.error_status = 1.0, 500
    async with Runtime(tiered(primary, backup), retry=RetryPolicy(tier_wait=tier_wait), seed=3) as rt:
        answered, failures = await burst(rt, 500, timeout=30)
        assert failures == [], [getattr(f, "attempts", None) for f in failures[:3]]
        assert answered == ["backup"] * 500
        assert all(s.in_flight == 0 for s in rt.status())
    # One attempt per request on each endpoint, plus at most the retry budget.
    assert backup.stats.requests == 500
    assert primary.stats.requests <= 500 + 0.2 * 500 + 10 * 10


async def test_total_outage_attempts_stay_within_the_stated_bound(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """Everything failing: attempts <= R x min(E, M) + ratio x R + floor x 10 s, and each endpoint
    sees at most one attempt per request plus the budget; no caller waits past the deadline."""
    primary, backup = pair
    for ep in pair:
        ep.faults.latency = 1.0
        ep.faults.error_rate, ep.faults.error_status = 1.0, 500
    retry = RetryPolicy(max_attempts=3, budget_ratio=0.2, budget_floor=10.0)
    requests = 500
    async with Runtime(tiered(primary, backup), retry=retry, seed=5) as rt:
        start = anyio.current_time()
        answered, failures = await burst(rt, requests, timeout=8)
        assert anyio.current_time() - start <= requests * 0.008 + 8.0 + 0.01
    assert answered == [] and len(failures) == requests
    # Once both breakers are open, requests are refused before any attempt.
    assert all(isinstance(f, (AllEndpointsFailed, NoEndpointAvailable)) for f in failures)
    budget = 0.2 * requests + 10.0 * 10
    attempts = primary.stats.requests + backup.stats.requests
    assert attempts <= requests * min(2, 3) + budget
    assert attempts < 3 * requests
    assert primary.stats.requests <= requests + budget and backup.stats.requests <= requests + budget


async def test_retry_budget_spent_still_fails_over_to_an_untried_endpoint(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """With no retry budget at all, a failed primary still hands every request to the backup."""
    primary, backup = pair
    primary.faults.error_rate, primary.faults.error_status = 1.0, 503
    never_open = BreakerPolicy(failure_threshold=10_000, min_calls=10_000)
    retry = RetryPolicy(budget_ratio=0.0, budget_floor=0.0)
    async with Runtime(tiered(primary, backup, breaker=never_open), retry=retry, seed=1) as rt:
        answered, failures = await burst(rt, 50, timeout=10)
    assert failures == [] and answered == ["backup"] * 50
    assert primary.stats.requests == 50


# --- the preferred tier first --------------------------------------------------------------


async def test_transient_500_is_retried_once_on_the_preferred_tier(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """Default tier_wait: a 500 is retried on the primary after its backoff instead of dropping a tier."""
    primary, backup = pair
    primary.faults.fail_next(1, status=500)
    async with Runtime(tiered(primary, backup), seed=2) as rt:
        reply = await rt.chat("hi")
    assert reply.endpoint == "primary"
    assert [(a.endpoint, type(a.error).__name__) for a in reply.attempts] == [
        ("primary", "ServerError"),
        ("primary", "NoneType"),
    ]
    assert backup.stats.requests == 0


async def test_the_preferred_tier_is_retried_only_once(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """Two 500s in a row: one retry on the primary, then the backup tier."""
    primary, backup = pair
    primary.faults.fail_next(2, status=500)
    async with Runtime(tiered(primary, backup), retry=RetryPolicy(max_attempts=5), seed=2) as rt:
        reply = await rt.chat("hi")
    assert [a.endpoint for a in reply.attempts] == ["primary", "primary", "backup"]


async def test_tier_wait_zero_drops_a_tier_at_once(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """tier_wait=0: the first failure of the primary sends the request to the backup."""
    primary, backup = pair
    primary.faults.fail_next(1, status=500)
    async with Runtime(tiered(primary, backup), retry=RetryPolicy(tier_wait=0.0), seed=2) as rt:
        reply = await rt.chat("hi")
    assert [a.endpoint for a in reply.attempts] == ["primary", "backup"]


@pytest.mark.parametrize(("tier_wait", "expected"), [(1.0, "primary"), (0.0, "backup")])
async def test_short_retry_after_is_waited_out_within_tier_wait(
    pair: tuple[FaultyEndpoint, FaultyEndpoint], tier_wait: float, expected: str
) -> None:
    """A 429 with Retry-After 0.5 s: waited out at the default, the backup at 0."""
    primary, _ = pair
    primary.faults.fail_next(1, status=429, retry_after=0.5)
    async with Runtime(tiered(primary, pair[1]), retry=RetryPolicy(tier_wait=tier_wait), seed=2) as rt:
        start = anyio.current_time()
        reply = await rt.chat("hi")
        elapsed = anyio.current_time() - start
    assert reply.endpoint == expected
    assert (elapsed >= 0.5) == (expected == "primary")


async def test_long_retry_after_or_short_deadline_drops_the_tier(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A Retry-After beyond tier_wait, or beyond the deadline, is not waited for."""
    primary, backup = pair
    async with Runtime(tiered(primary, backup), seed=2) as rt:
        primary.faults.fail_next(1, status=429, retry_after=5.0)
        start = anyio.current_time()
        assert (await rt.chat("hi")).endpoint == "backup"
        assert anyio.current_time() - start < 0.5
        await anyio.sleep(6)
        primary.faults.fail_next(1, status=429, retry_after=0.5)
        assert (await rt.chat("hi", timeout=0.4)).endpoint == "backup"


async def test_requests_waiting_out_a_throttle_send_one_trial_not_a_stampede(
    pair: tuple[FaultyEndpoint, FaultyEndpoint],
) -> None:
    """Five requests wait out the primary's Retry-After 0.5 on the preferred tier; it still
    answers 429 when the throttle lifts: one trial meets that 429, the other four go to the
    backup at once instead of meeting it too."""
    primary, backup = pair
    primary.faults.error_rate, primary.faults.error_status, primary.faults.retry_after = 1.0, 429, 0.5
    async with Runtime(tiered(primary, backup), seed=2) as rt:
        answered, failures = await burst(rt, 5, every=0.1)
    assert failures == [] and answered == ["backup"] * 5
    assert primary.stats.requests == 2  # the first 429, then the trial at the lift
    assert backup.stats.requests == 5


async def test_the_trial_after_a_throttle_releases_the_others_when_it_succeeds(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """One endpoint, throttled with requests waiting: at the lift one request goes alone;
    when it has answered, the others go."""
    primary, _ = pair
    primary.faults.latency = 0.2
    primary.faults.fail_next(1, status=429, retry_after=0.5)
    in_flight: list[int] = []
    answered: list[str] = []

    async def first() -> None:
        answered.append((await rt.chat("hi")).endpoint)

    async def look() -> None:
        await anyio.sleep(0.8)  # the 429 came at 0.2 s: after the lift at 0.7 s, before the trial answers at 0.9 s
        in_flight.append(primary.stats.in_flight)

    async with Runtime(tiered(primary), seed=2) as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(look)
            await anyio.sleep(0.3)  # the throttle is known: the next four wait for it
            more, failures = await burst(rt, 4, every=0.05)
    assert failures == [] and answered + more == ["primary"] * 5
    assert in_flight == [1]
    assert primary.stats.requests == 6


async def test_timeout_is_not_waited_for_again(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A timed-out attempt already cost a whole timeout: the next tier at once."""
    primary, backup = pair
    primary.faults.schedule("hang")
    async with Runtime(tiered(primary, backup, timeout=2.0), seed=2) as rt:
        reply = await rt.chat("hi")
    assert [a.endpoint for a in reply.attempts] == ["primary", "backup"]


# --- per-request hedging -------------------------------------------------------------------


async def test_per_request_hedge_works_on_a_runtime_without_a_hedge_policy(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """hedge=HedgePolicy(...) on a runtime built without one races the backup, as on one with it."""
    primary, backup = pair
    primary.faults.latency = 3.0
    async with Runtime(tiered(primary, backup), seed=2) as rt:
        start = anyio.current_time()
        reply = await rt.chat("hi", hedge=HedgePolicy(after=0.1, budget_ratio=1.0), timeout=10)
        assert anyio.current_time() - start < 0.5
        assert reply.endpoint == "backup"
        assert [(a.endpoint, a.hedge, a.cancelled) for a in reply.attempts] == [
            ("primary", False, True),
            ("backup", True, False),
        ]
        await anyio.sleep(0.1)
        assert all(s.in_flight == 0 for s in rt.status())


@pytest.mark.parametrize("hedge", [None, HedgePolicy(after=0.1, budget_ratio=1.0)])
async def test_a_bug_in_an_attempt_surfaces_as_itself_hedged_or_not(
    monkeypatch: pytest.MonkeyPatch, hedge: HedgePolicy | None
) -> None:
    """A programming error in an adapter (a TypeError) reaches the caller as that TypeError,
    from a hedged race (its racers in a task group) as from a single attempt, never wrapped
    in an ExceptionGroup; both slots are given back."""
    async def chat(self: MockClient, request: Any, timeout: float) -> Any:
        await anyio.sleep(0.5)  # after the hedge delay: both racers are out
        raise TypeError("an adapter's bug")

    monkeypatch.setattr(MockClient, "chat", chat)
    endpoints = [Endpoint(name=n, provider="mock", priority=1, health=QUIET) for n in ("a", "b")]
    async with Runtime(endpoints, seed=2) as rt:
        with pytest.raises(TypeError, match="an adapter's bug") as info:
            await rt.chat("hi", hedge=hedge if hedge is not None else False)
        assert type(info.value) is TypeError
        assert [s.in_flight for s in rt.status()] == [0, 0]


async def test_a_hedged_race_lost_by_every_racer_raises_the_library_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every racer failing with a provider error: the caller gets AllEndpointsFailed (an
    LLMError) with each racer's attempt, not a group."""
    async def chat(self: MockClient, request: Any, timeout: float) -> Any:
        await anyio.sleep(0.5)
        raise ServerError("upstream broke", status=500)

    monkeypatch.setattr(MockClient, "chat", chat)
    endpoints = [Endpoint(name=n, provider="mock", priority=1, health=QUIET) for n in ("a", "b")]
    async with Runtime(endpoints, retry=RetryPolicy(max_attempts=2), seed=2) as rt:
        with pytest.raises(AllEndpointsFailed) as info:
            await rt.chat("hi", hedge=HedgePolicy(after=0.1, budget_ratio=1.0))
    assert {type(a.error) for a in info.value.attempts} == {ServerError}
    assert any(a.hedge for a in info.value.attempts)


# --- permits are settled on every exit -----------------------------------------------------


async def test_cancelling_a_hedged_request_settles_every_racer(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """Cancelled while both racers run: both slots come back and a max_concurrency=1 endpoint serves again."""
    primary, backup = pair
    for ep in pair:
        ep.faults.latency = 5.0
    hedge = HedgePolicy(after=0.5, budget_ratio=1.0)
    async with Runtime(tiered(primary, backup, max_concurrency=1), hedge=hedge, shutdown_grace=1, seed=2) as rt:
        with anyio.move_on_after(1.0):
            await rt.chat("hi", timeout=20)
        assert [s.in_flight for s in rt.status()] == [0, 0]
        for ep in pair:
            ep.faults.latency = 0.0
        assert (await rt.chat("hi", endpoint="backup")).endpoint == "backup"


async def test_five_hundred_random_cancellations_leak_nothing(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """Cancellation before connect, in headers, mid-stream, in backoff or during a hedge: in_flight 0,
    no limiter reservation left, and both max_concurrency=1 endpoints still serve."""
    primary, backup = pair
    primary.faults.latency, primary.faults.jitter = 0.3, 0.4
    primary.faults.error_rate, primary.faults.error_status = 0.3, 500
    primary.faults.chunk_delay = 0.2
    backup.faults.latency, backup.faults.jitter = 0.2, 0.3
    backup.faults.chunk_delay = 0.1
    rng = random.Random(11)
    settings = tiered(primary, backup, max_concurrency=1, tpm=1_000_000, timeout=5.0)
    hedge = HedgePolicy(after=0.25, budget_ratio=1.0)
    async with Runtime(settings, seed=4, hedge=hedge, retry=RetryPolicy(budget_floor=100.0)) as rt:

        async def one(kind: str, start: float, cancel_after: float) -> None:
            await anyio.sleep(start)
            with anyio.move_on_after(cancel_after):
                try:
                    if kind == "stream":
                        async with rt.stream("tell me", timeout=20) as stream:
                            async for _ in stream:
                                pass
                    else:
                        await rt.chat("hi", timeout=20, hedge=kind == "hedged")
                except LLMError:
                    pass  # a failure is fine here; only leaks matter

        async with anyio.create_task_group() as tg:
            for _ in range(500):
                kind = rng.choice(["chat", "hedged", "stream"])
                tg.start_soon(one, kind, rng.uniform(0, 30), rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 3)]))
        for name in ("primary", "backup"):
            actor = rt.actor(name)
            assert actor.limiter.in_flight == 0, name
            assert actor.limiter.statistics().tokens_reserved == 0, name
        for ep in pair:
            ep.faults.clear()
        await anyio.sleep(120)  # any breaker opened by the errors closes again
        for name in ("primary", "backup"):
            assert (await rt.chat("hi", endpoint=name, timeout=5)).endpoint == name
            async with rt.stream("hi", endpoint=name) as stream:
                assert "".join([c.text async for c in stream])
        assert [s.in_flight for s in rt.status()] == [0, 0]


# --- actor restarts hand the endpoint's state over -----------------------------------------


async def test_restart_hands_breaker_limiter_and_permits_out_over(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A crash while a request is in flight: the successor has the same breaker and limiter, the
    request's permit settles on it, and the max_concurrency=1 endpoint serves again."""
    primary, _ = pair
    primary.faults.latency = 2.0
    async with Runtime(tiered(primary, max_concurrency=1), seed=2) as rt:
        old = rt.actor("primary")
        async with anyio.create_task_group() as tg:
            tg.start_soon(rt.chat, "hi")
            await anyio.sleep(0.5)
            assert old.limiter.in_flight == 1
            old.tell("no such message")  # crashes the actor: the supervisor restarts it
            await anyio.sleep(0.1)
            new = rt.actor("primary")
            assert new is not old
            assert new.breaker is old.breaker and new.limiter is old.limiter
            assert new.limiter.in_flight == 1
        assert new.limiter.in_flight == 0 and new.drained is not old.drained
        assert new.latency.ewma > 0  # the late success was recorded on the successor
        primary.faults.latency = 0.0
        assert (await rt.chat("hi")).endpoint == "primary"


# --- probes ---------------------------------------------------------------------------------


async def test_a_hostile_probe_body_is_a_failed_probe_never_a_crash(
    monkeypatch: pytest.MonkeyPatch, span_exporter: InMemorySpanExporter
) -> None:
    """A probe that raises anything (a body nested too deep, bad bytes) fails the probe, never
    the actor: no restart, no escalation, and the endpoint recovers once probes pass."""
    hostile = True

    async def probe(self: MockClient, timeout: float) -> None:
        if hostile:
            raise RecursionError("maximum recursion depth exceeded while decoding")

    monkeypatch.setattr(MockClient, "probe", probe)
    endpoint = Endpoint(name="m", provider="mock", health=HealthPolicy(interval=1.0))
    async with Runtime([endpoint], max_restarts=1, restart_within=600) as rt:
        await anyio.sleep(60)
        status = rt.status()[0]
        assert status.state == "degraded"
        assert "RecursionError" in (status.last_error or "")
        assert rt.actor("m") is not None and rt.actor("m").statistics().probes.consecutive_failures > 2
        hostile = False
        await anyio.sleep(300)
        assert rt.status()[0].state == "healthy"
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert "actor crashed" not in names and "supervisor failed" not in names


async def test_probe_asked_by_hand_goes_through_the_mailbox(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """ask("probe") answers True for a healthy endpoint and False for a refusing one."""
    primary, _ = pair
    async with Runtime(tiered(primary), seed=2) as rt:
        actor = rt.actor("primary")
        assert await actor.ask("probe") is True
        primary.faults.refuse()
        assert await actor.ask("probe") is False
        assert rt.status()[0].state == "degraded"


async def test_probe_loop_ends_quietly_when_the_mailbox_closes() -> None:
    """A probe due just as the actor stops finds the mailbox closed: the loop ends, no crash."""
    actor = EndpointActor(Endpoint(name="m", provider="mock", health=HealthPolicy(interval=1.0)), None)
    actor.stop()
    try:
        with anyio.fail_after(10):
            await actor._probe_loop()
    finally:
        actor._receive.close()  # what run() does on its way out
