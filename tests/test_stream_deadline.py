"""A stream resolves by its deadline whatever the server sends, on the virtual clock.

A server that trickles content-less chunks (role openers, usage-only chunks, pings,
message_delta without a stop reason, empty Ollama messages) must not keep a stream alive:
the first-chunk timeout counts to the first chunk with content, and the request's
deadline bounds everything after it.
"""

from __future__ import annotations

from typing import TypeVar

import aiohttp
import anyio
import pytest

from runtime import AllEndpointsFailed, HealthPolicy, Runtime, StreamInterrupted, Timeout
from runtime.providers import make_client
from runtime.testing import FaultyEndpoint
from runtime.types import ChatRequest, Message

pytestmark = pytest.mark.anyio

QUIET = HealthPolicy(enabled=False)
REQUEST = ChatRequest(messages=[Message(role="user", content="hi")])
DIALECTS = ["openai", "anthropic", "ollama"]
# The virtual clock jumps over sleeps, but socket I/O still takes real milliseconds.
SLACK = 0.05
E = TypeVar("E", bound=BaseException)


async def read_until_it_fails(rt: Runtime, timeout: float, error: type[E]) -> E:
    """Read a whole stream that must fail with ``error`` by its ``timeout``, leaving no slot held."""
    start = anyio.current_time()
    with pytest.raises(error) as info:
        async with rt.stream("hi", timeout=timeout) as stream:
            async for _ in stream:
                pass
    assert anyio.current_time() - start < timeout + SLACK
    assert rt.status()[0].in_flight == 0
    return info.value


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_contentless_trickle_ends_by_the_deadline_with_timeout(dialect: str) -> None:
    """Content-less chunks every 0.3 s: the stream fails with Timeout attempts by its 1.5 s deadline."""
    async with FaultyEndpoint(dialect, name="trickle") as ep:
        ep.faults.trickle = 0.3
        async with Runtime([ep.endpoint(health=QUIET)]) as rt:
            failed = await read_until_it_fails(rt, 1.5, AllEndpointsFailed)
    assert failed.attempts and all(isinstance(a.error, Timeout) for a in failed.attempts)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_chunk_stream_waits_for_content_by_its_first_chunk_timeout(dialect: str) -> None:
    """On the provider client's own chunk stream: content-less frames every 0.1 s do not
    extend the first-chunk timeout; it ends at 0.5 s with a Timeout saying no content came
    (no first chunk at all where the dialect's idle frames decode to none, as Ollama's do)."""
    async with FaultyEndpoint(dialect, name="trickle") as ep, aiohttp.ClientSession() as session:
        ep.faults.trickle = 0.1
        client = make_client(ep.endpoint(health=QUIET), session)
        start = anyio.current_time()
        chunks = await client.stream(REQUEST, first_chunk_timeout=0.5, idle_timeout=30)
        with pytest.raises(Timeout, match=r"no (content|first chunk) within 0\.5s"):
            async for _ in chunks:
                pass
        assert 0.5 <= anyio.current_time() - start < 0.5 + SLACK


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_contentless_trickle_fails_over_after_the_first_chunk_timeout(dialect: str) -> None:
    """The trickling primary is abandoned at its first-chunk timeout; the backup serves the stream."""
    async with FaultyEndpoint(dialect, name="primary") as primary, FaultyEndpoint(dialect, name="backup") as backup:
        primary.faults.trickle = 0.1
        endpoints = [
            primary.endpoint(health=QUIET, priority=1, first_chunk_timeout=0.5),
            backup.endpoint(health=QUIET, priority=2),
        ]
        async with Runtime(endpoints) as rt:
            start = anyio.current_time()
            async with rt.stream("hi", timeout=5) as stream:
                text = "".join([chunk.text async for chunk in stream])
            assert 0.5 <= anyio.current_time() - start < 1.0
    assert text and stream.response.endpoint == "backup"
    assert [type(a.error).__name__ for a in stream.response.attempts] == ["Timeout", "NoneType"]


async def test_slow_chunks_after_content_cannot_outlive_the_deadline() -> None:
    """Content arriving slower than the deadline allows: each chunk resets the idle timer, yet the
    stream ends at its deadline with StreamInterrupted carrying the partial text and a Timeout."""
    async with FaultyEndpoint("openai", name="slow", text=" ".join(["word"] * 50)) as ep:
        ep.faults.chunk_delay = 0.3
        async with Runtime([ep.endpoint(health=QUIET, idle_timeout=1.0)]) as rt:
            cut = await read_until_it_fails(rt, 2.0, StreamInterrupted)
    assert cut.partial and isinstance(cut.cause, Timeout)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_cancelling_a_stream_anywhere_settles_its_permit(dialect: str) -> None:
    """Cancelled while choosing, before the first content, mid-stream or while leaving: the
    stream's permit is settled every time, so a max_concurrency=1 endpoint keeps serving and
    no budget stays reserved."""
    from runtime import Budget

    async with FaultyEndpoint(dialect, name="one", text=" ".join(["word"] * 20)) as ep:
        ep.faults.chunk_delay = 0.05
        async with Runtime([ep.endpoint(health=QUIET, max_concurrency=1)], budget=Budget(daily_tokens=10**9)) as rt:
            for cancel_after in (0.0, 0.01, 0.03, 0.07, 0.2, 0.5, 0.9):
                with anyio.move_on_after(cancel_after):
                    async with rt.stream("hi", timeout=5) as stream:
                        async for _ in stream:
                            pass
                assert rt.status()[0].in_flight == 0, cancel_after
                guard = rt.budget_guard
                assert guard is not None and guard.statistics().in_flight == 0, cancel_after
            async with rt.stream("hi", timeout=5) as stream:
                text = "".join([chunk.text async for chunk in stream])
    assert text.split() == ["word"] * 20
