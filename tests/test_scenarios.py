"""Failover scenarios end to end: a Runtime against fault-injecting local endpoints.

Every test runs on the fast-forwarding loop, so outages of minutes take milliseconds,
while the HTTP traffic between the runtime and the endpoints is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import (
    AllEndpointsFailed,
    AuthenticationFailed,
    BadRequest,
    BreakerPolicy,
    ConnectionFailed,
    HealthPolicy,
    HedgePolicy,
    NoEndpointAvailable,
    ProtocolError,
    RateLimited,
    RetryPolicy,
    Runtime,
    StreamInterrupted,
    Timeout,
)
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

DIALECTS = ["openai", "anthropic", "ollama"]
QUIET = HealthPolicy(enabled=False)


@pytest.fixture
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[FaultyEndpoint, FaultyEndpoint]]:
    """A primary in the test's dialect and an OpenAI backup, both local."""
    dialect = getattr(request, "param", "openai")
    async with (
        FaultyEndpoint(dialect, name="primary", text="answer from primary") as primary,
        FaultyEndpoint("openai", name="backup", text="answer from backup") as backup,
    ):
        yield primary, backup


def runtime_for(*eps: FaultyEndpoint, **kwargs: Any) -> Runtime:
    endpoint_kwargs = kwargs.pop("endpoint_kwargs", {})
    endpoints = [
        ep.endpoint(priority=i + 1, timeout=endpoint_kwargs.get("timeout", 2.0), **{
            "health": QUIET, **{k: v for k, v in endpoint_kwargs.items() if k != "timeout"}
        })
        for i, ep in enumerate(eps)
    ]
    return Runtime(endpoints, seed=7, **kwargs)


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_refused_primary_every_request_answered_by_backup(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A primary refusing connections: every request is answered by the backup, none fails."""
    primary, backup = pair
    primary.faults.refuse()
    async with runtime_for(primary, backup) as rt:
        for _ in range(20):
            reply = await rt.chat("hi", max_tokens=20)
            assert reply.endpoint == "backup" and reply.text == "answer from backup"
    assert backup.stats.requests == 20


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_failing_primary_opens_breaker_and_probe_brings_traffic_back(
    pair: tuple[FaultyEndpoint, FaultyEndpoint], span_exporter: InMemorySpanExporter
) -> None:
    """500s open the primary's breaker, traffic moves, a probe recovers it, traffic returns by priority."""
    primary, backup = pair
    primary.faults.error_rate, primary.faults.error_status = 1.0, 500
    primary.faults.probes_exempt = False
    rt = runtime_for(
        primary, backup,
        endpoint_kwargs={"breaker": BreakerPolicy(failure_threshold=3, open_for=30), "health": HealthPolicy(interval=2)},
    )
    async with rt:
        for _ in range(10):
            assert (await rt.chat("hi")).endpoint == "backup"
        assert rt.status()[0].breaker == "open" and rt.status()[0].state == "unhealthy"
        assert primary.stats.requests - primary.stats.probes == 3  # then routed around
        primary.faults.error_rate = 0.0
        await anyio.sleep(20)  # the probe loop notices before open_for runs out
        assert rt.status()[0].breaker in ("half_open", "closed")
        replies = [await rt.chat("hi") for _ in range(5)]
        assert [r.endpoint for r in replies] == ["primary"] * 5
        assert rt.status()[0].breaker == "closed" and rt.status()[0].state == "healthy"
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert "breaker open" in names and "breaker half_open" in names and "breaker closed" in names


async def test_429_with_retry_after_skips_endpoint_for_that_long(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """429 + Retry-After: 7 → the primary is hit once, skipped for 7 s, then used again."""
    primary, backup = pair
    primary.faults.fail_next(1, status=429, retry_after=7)
    async with runtime_for(primary, backup) as rt:
        first = await rt.chat("hi")
        assert first.endpoint == "backup"
        assert isinstance(first.attempts[0].error, RateLimited)
        assert rt.status()[0].state == "throttled"
        for _ in range(5):
            await anyio.sleep(1)
            assert (await rt.chat("hi")).endpoint == "backup"
        assert primary.stats.requests == 1
        await anyio.sleep(2.5)  # 7.5 s after the 429
        assert (await rt.chat("hi")).endpoint == "primary"
        assert rt.status()[0].state == "healthy"


async def test_retry_after_beyond_deadline_is_not_waited_on(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """The only endpoint throttled past the deadline: refused at once, not waited on."""
    primary, _ = pair
    primary.faults.fail_next(1, status=429, retry_after=600)
    async with runtime_for(primary) as rt:
        with pytest.raises(AllEndpointsFailed):
            await rt.chat("hi", timeout=10)
        start = anyio.current_time()
        with pytest.raises(NoEndpointAvailable) as info:
            await rt.chat("hi", timeout=10)
        assert anyio.current_time() - start < 0.5
        assert info.value.retry_after is not None and info.value.retry_after > 500


async def test_short_retry_after_is_waited_on_within_the_deadline(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """The only endpoint throttled for 3 s of a 10 s deadline: the request waits and succeeds."""
    primary, _ = pair
    primary.faults.fail_next(1, status=429, retry_after=3)
    async with runtime_for(primary) as rt:
        reply = await rt.chat("hi", timeout=10)
        assert reply.endpoint == "primary" and len(reply.attempts) == 2


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_hang_times_out_once_then_fails_over_inside_deadline(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A hanging primary costs one attempt timeout, then the backup answers, inside the deadline."""
    primary, backup = pair
    primary.faults.hang = True
    async with runtime_for(primary, backup) as rt:
        start = anyio.current_time()
        reply = await rt.chat("hi", timeout=10)
        elapsed = anyio.current_time() - start
        assert reply.endpoint == "backup"
        assert isinstance(reply.attempts[0].error, Timeout)
        assert 2.0 <= elapsed < 10
    await anyio.sleep(0.1)
    assert primary.stats.disconnects == 1


async def test_everything_hanging_raises_a_typed_error_at_the_deadline(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """All endpoints hang: a typed error arrives at the deadline, not later."""
    primary, backup = pair
    primary.faults.hang = backup.faults.hang = True
    async with runtime_for(primary, backup, endpoint_kwargs={"timeout": 30.0}) as rt:
        start = anyio.current_time()
        with pytest.raises(AllEndpointsFailed) as info:
            await rt.chat("hi", timeout=5)
        assert 5 <= anyio.current_time() - start < 5.5
        assert all(isinstance(a.error, Timeout) for a in info.value.attempts)


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_stream_cut_before_first_chunk_fails_over_transparently(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A stream cut before any content reached the caller is retried on the backup unseen."""
    primary, _ = pair
    primary.faults.cut_after = 0
    async with runtime_for(*pair) as rt:
        async with rt.stream("hi") as stream:
            text = "".join([c.text async for c in stream])
        assert text == "answer from backup"
        assert stream.response.endpoint == "backup"
        assert isinstance(stream.response.attempts[0].error, (ConnectionFailed, ProtocolError))


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_stream_cut_after_first_chunk_raises_stream_interrupted(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """After content reached the caller a cut raises StreamInterrupted with the partial text, no splice."""
    primary, backup = pair
    primary.faults.cut_after = 2
    async with runtime_for(primary, backup) as rt:
        received: list[str] = []
        with pytest.raises(StreamInterrupted) as info:
            async with rt.stream("hi") as stream:
                async for chunk in stream:
                    received.append(chunk.text)
        assert info.value.partial == "".join(received)
        assert info.value.partial and "answer from primary".startswith(info.value.partial)
        assert backup.stats.requests == 0
        assert rt.status()[0].in_flight == 0


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_stream_without_terminal_event_is_an_error(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A stream that ends before its finish reason never passes for a short success."""
    primary, _ = pair
    primary.faults.end_after = 1
    async with runtime_for(primary) as rt:
        with pytest.raises(StreamInterrupted) as info:
            async with rt.stream("hi") as stream:
                async for _ in stream:
                    pass
        assert isinstance(info.value.cause, ProtocolError)


@pytest.mark.parametrize("pair", ["anthropic", "ollama"], indirect=True)
async def test_error_event_inside_200_stream_is_an_error(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """An error event in an HTTP 200 stream after content raises StreamInterrupted with the mapped cause."""
    primary, _ = pair
    primary.faults.stream_error_after = 1
    async with runtime_for(primary) as rt:
        with pytest.raises(StreamInterrupted) as info:
            async with rt.stream("hi") as stream:
                async for _ in stream:
                    pass
        assert info.value.partial
        assert info.value.cause.__class__.__name__ in ("Overloaded", "ServerError")


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_bad_request_is_raised_once_without_retry_or_failover(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A 400 is the caller's: raised as itself, one request, no failover."""
    primary, backup = pair
    primary.faults.fail_next(1, status=400, message="messages: bad role")
    async with runtime_for(primary, backup) as rt:
        with pytest.raises(BadRequest):
            await rt.chat("hi")
        assert primary.stats.requests == 1 and backup.stats.requests == 0
        assert rt.status()[0].breaker == "closed"


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_401_moves_to_next_endpoint_and_reports_misconfigured(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A 401 fails over and marks the first endpoint misconfigured; it is not tried again."""
    primary, backup = pair
    primary.faults.fail_next(1, status=401, message="invalid x-api-key")
    async with runtime_for(primary, backup) as rt:
        reply = await rt.chat("hi")
        assert reply.endpoint == "backup" and isinstance(reply.attempts[0].error, AuthenticationFailed)
        status = rt.status()[0]
        assert status.state == "misconfigured" and status.last_error
        await rt.chat("hi")
        assert primary.stats.requests == 1


async def test_retry_budget_caps_attempts_during_full_outage(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """With every endpoint failing, attempts stay within R × min(E, M) + ratio × R + floor × 10 s
    (failover to each endpoint is free, retries spend the budget), and no endpoint sees more
    than one attempt per request plus the budget."""
    primary, backup = pair
    for ep in pair:
        ep.faults.error_rate, ep.faults.error_status = 1.0, 503
    retry = RetryPolicy(max_attempts=5, budget_ratio=0.1, budget_floor=0.5, backoff_base=0.0)
    never_open = BreakerPolicy(failure_threshold=10_000, min_calls=10_000)
    async with runtime_for(primary, backup, retry=retry, endpoint_kwargs={"breaker": never_open}) as rt:
        async def one() -> None:
            with pytest.raises(AllEndpointsFailed):
                await rt.chat("hi", timeout=5)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
    budget = 0.1 * 100 + 0.5 * 10
    attempts = primary.stats.requests + backup.stats.requests
    assert 200 <= attempts <= 100 * min(2, 5) + budget
    assert primary.stats.requests <= 100 + budget and backup.stats.requests <= 100 + budget


async def test_hedging_returns_the_faster_answer_and_cancels_the_other(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """A slow primary is hedged after 0.5 s; the backup's answer wins and the primary is cancelled."""
    primary, backup = pair
    primary.faults.latency = 5.0
    async with runtime_for(primary, backup, hedge=HedgePolicy(after=0.5, budget_ratio=1.0)) as rt:
        start = anyio.current_time()
        reply = await rt.chat("hi", timeout=20)
        assert reply.endpoint == "backup"
        assert anyio.current_time() - start < 1.0
        cancelled = [a for a in reply.attempts if a.cancelled]
        assert [a.endpoint for a in cancelled] == ["primary"]
        await anyio.sleep(0.1)
        assert primary.stats.disconnects == 1
        status = {s.name: s for s in rt.status()}
        assert status["primary"].breaker == "closed" and status["primary"].in_flight == 0
        assert status["primary"].state == "healthy"


@pytest.mark.parametrize("pair", DIALECTS, indirect=True)
async def test_leaving_a_stream_early_disconnects_and_frees_the_slot(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """Breaking out of a stream closes the connection (the server sees it) and in-flight returns to 0."""
    primary, _ = pair
    primary.faults.chunk_delay = 1.0
    async with runtime_for(primary) as rt:
        async with rt.stream("hi") as stream:
            async for _ in stream:
                break
        await anyio.sleep(0.1)
        assert primary.stats.disconnects == 1
        assert rt.status()[0].in_flight == 0 and rt.status()[0].breaker == "closed"


async def test_concurrent_requests_while_primary_flaps_all_succeed(pair: tuple[FaultyEndpoint, FaultyEndpoint]) -> None:
    """200 concurrent requests while the primary flaps between up and down: every one succeeds."""
    primary, backup = pair
    failures: list[BaseException] = []
    endpoints: list[str] = []

    async def flap() -> None:
        for _ in range(10):
            await anyio.sleep(0.3)
            primary.faults.refuse()
            await anyio.sleep(0.3)
            primary.faults.accept()

    async def one(i: int) -> None:
        await anyio.sleep(i * 0.02)
        try:
            endpoints.append((await rt.chat("hi", timeout=10)).endpoint)
        except Exception as exc:  # collected, asserted below
            failures.append(exc)

    async with runtime_for(primary, backup) as rt:
        async with anyio.create_task_group() as tg:
            tg.start_soon(flap)
            for i in range(200):
                tg.start_soon(one, i)
    assert failures == []
    assert len(endpoints) == 200 and {"primary", "backup"} <= set(endpoints)


async def test_request_and_attempt_spans_carry_genai_attributes(
    pair: tuple[FaultyEndpoint, FaultyEndpoint], span_exporter: InMemorySpanExporter
) -> None:
    """One span per request with GenAI attributes, one child span per attempt."""
    primary, backup = pair
    primary.faults.fail_next(1, status=500)
    async with runtime_for(primary, backup) as rt:
        await rt.chat("hi", max_tokens=30)
    spans = span_exporter.get_finished_spans()
    request = next(s for s in spans if s.name.startswith("chat "))
    attempts = [s for s in spans if s.name.startswith("attempt ")]
    assert len(attempts) == 2
    assert all(a.parent is not None and a.parent.span_id == request.context.span_id for a in attempts)
    attrs = dict(request.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert [dict(a.attributes or {})["outcome"] for a in attempts] == ["ServerError", "ok"]
