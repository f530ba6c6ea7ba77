"""Test your agent against failures, with ``runtime.testing``.

Copy this file next to your agent and replace ``answer`` with your own code. The
endpoints are real HTTP servers on 127.0.0.1 that speak the OpenAI, Anthropic or Ollama
wire format and misbehave on demand (``faults``: refused connections, 5xx, 429 with
Retry-After, latency, hangs, streams cut short, outage windows). The tests run on
``VirtualClockLoop``: timers fire at once while sockets stay real, so a two-minute
outage takes milliseconds.

Run it with pytest (and the anyio plugin, which ships with anyio)::

    python -m pytest examples/test_your_agent.py
    python examples/test_your_agent.py          # the same
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from runtime import (
    AllEndpointsFailed,
    BreakerPolicy,
    HealthPolicy,
    NoEndpointAvailable,
    Runtime,
    StreamInterrupted,
)
from runtime.testing import FaultyEndpoint, LocalEndpoints, VirtualClockLoop

# --- the agent under test: put yours here ----------------------------------------------

FALLBACK = "Sorry, no model is available right now."


async def answer(rt: Runtime, question: str) -> str:
    """A minimal agent step: ask, and degrade to a fixed answer when no endpoint can reply."""
    try:
        reply = await rt.chat(question, max_tokens=100, timeout=30)
    except (AllEndpointsFailed, NoEndpointAvailable):
        return FALLBACK
    return reply.text


async def answer_streaming(rt: Runtime, question: str) -> str:
    """The streaming variant: what was printed so far is kept when a stream breaks."""
    shown: list[str] = []
    try:
        async with rt.stream(question, max_tokens=100, timeout=30) as stream:
            async for chunk in stream:
                shown.append(chunk.text)
    except StreamInterrupted as exc:
        return exc.partial + " [interrupted]"
    return "".join(shown)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Every async test runs on the fast-forwarding loop."""
    return ("asyncio", {"loop_factory": VirtualClockLoop})


@pytest.fixture
async def fleet() -> AsyncIterator[LocalEndpoints]:
    """Two local endpoints in different dialects, each with a reply of its own."""
    async with LocalEndpoints(
        FaultyEndpoint("openai", name="primary", text="The primary says hello."),
        FaultyEndpoint("anthropic", name="backup", text="The backup says hello."),
    ) as endpoints:
        yield endpoints


def runtime_for(fleet: LocalEndpoints) -> Runtime:
    """The runtime as the agent would configure it, pointed at the local endpoints."""
    return Runtime(
        [
            ep.endpoint(
                priority=i,
                timeout=10.0,
                breaker=BreakerPolicy(failure_threshold=3, open_for=30.0),
                health=HealthPolicy(interval=5.0),
            )
            for i, ep in enumerate(fleet, 1)
        ],
        seed=1,
    )


# --- the tests --------------------------------------------------------------------------------

pytestmark = pytest.mark.anyio


async def test_answers_from_the_backup_while_the_primary_refuses_connections(fleet: LocalEndpoints) -> None:
    """Primary down: every answer comes from the backup, none is the fallback."""
    fleet["primary"].faults.refuse()
    async with runtime_for(fleet) as rt:
        answers = [await answer(rt, f"question {i}") for i in range(10)]
    assert answers == ["The backup says hello."] * 10


async def test_rides_out_a_two_minute_outage_and_returns_to_the_primary(fleet: LocalEndpoints) -> None:
    """A 503 outage of 120 s (virtual): nothing fails, and the primary serves again afterwards."""
    fleet["primary"].faults.outage(120, status=503)
    async with runtime_for(fleet) as rt:
        during = [await answer(rt, "during") for _ in range(5)]
        await anyio.sleep(150)  # takes milliseconds on the virtual clock
        after = [await answer(rt, "after") for _ in range(5)]
    assert during == ["The backup says hello."] * 5
    assert after == ["The primary says hello."] * 5


async def test_a_429_with_retry_after_moves_traffic_without_failing(fleet: LocalEndpoints) -> None:
    """A rate-limited primary (Retry-After 20 s) is skipped, not retried into the ground."""
    fleet["primary"].faults.fail_next(1, status=429, retry_after=20)
    async with runtime_for(fleet) as rt:
        answers = [await answer(rt, "hi") for _ in range(5)]
    assert answers == ["The backup says hello."] * 5
    assert fleet["primary"].stats.requests == 1


async def test_a_slow_primary_times_out_and_the_backup_answers(fleet: LocalEndpoints) -> None:
    """An answer slower than the attempt timeout counts as a failure; the backup answers in time."""
    fleet["primary"].faults.latency = 60.0
    async with runtime_for(fleet) as rt:
        assert await answer(rt, "hi") == "The backup says hello."


async def test_degrades_gracefully_when_every_endpoint_is_down(fleet: LocalEndpoints) -> None:
    """Nothing reachable: the agent's fallback, not an exception."""
    for endpoint in fleet:
        endpoint.faults.refuse()
    async with runtime_for(fleet) as rt:
        assert await answer(rt, "hi") == FALLBACK


async def test_a_stream_cut_after_the_first_words_keeps_what_was_shown(fleet: LocalEndpoints) -> None:
    """A stream that breaks mid-way is reported, never silently short and never spliced."""
    fleet["primary"].faults.cut_after = 2
    async with runtime_for(fleet) as rt:
        text = await answer_streaming(rt, "hi")
    assert text == "The primary [interrupted]"


if __name__ == "__main__":
    # A fresh interpreter: pytest must import the plugins itself to set them up.
    raise SystemExit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]))
