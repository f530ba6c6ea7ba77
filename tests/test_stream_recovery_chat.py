"""chat() on an endpoint with ``stream_chat``: the reply is read as a stream and assembled.

On the virtual clock against the local endpoints: the same whole reply as a plain chat()
in every dialect; a provider stalled mid-answer is left after ``idle_timeout`` and the
request fails over unseen (nothing reached the caller yet); an honest answer longer than
``timeout`` completes; requests a stream cannot carry (n > 1, logprobs) go whole.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from runtime import AllEndpointsFailed, HealthPolicy, RetryPolicy, Runtime, Timeout
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

DIALECTS = ["openai", "anthropic", "ollama"]
QUIET = HealthPolicy(enabled=False)
TEXT = "one two three four five six"
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}}}}}]


def runtime_for(*eps: FaultyEndpoint, stream_chat: bool = True, **kwargs: Any) -> Runtime:
    endpoint_kwargs = kwargs.pop("endpoint_kwargs", {})
    return Runtime(
        [ep.endpoint(priority=i + 1, health=QUIET, stream_chat=stream_chat, **endpoint_kwargs) for i, ep in enumerate(eps)],
        seed=5, **kwargs,
    )


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("tools", [None, TOOLS])
async def test_streamed_chat_gives_the_same_reply_as_a_whole_one(dialect: str, tools: Any) -> None:
    """Text, finish reason, usage and tool calls are what the whole reply carries."""
    async with FaultyEndpoint(dialect, name="ep", text=TEXT) as ep:
        async with runtime_for(ep) as rt:
            streamed = await rt.chat("hi there", tools=tools)
        async with runtime_for(ep, stream_chat=False) as rt:
            whole = await rt.chat("hi there", tools=tools)
    assert ep.stats.streams == 1
    assert (streamed.text, streamed.finish_reason, streamed.endpoint) == (whole.text, whole.finish_reason, whole.endpoint)
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (whole.usage.input_tokens, whole.usage.output_tokens)
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_stall_mid_answer_fails_over_after_the_idle_timeout(dialect: str) -> None:
    """A primary that stalls after two words: left after idle_timeout (not timeout), the backup answers."""
    async with (
        FaultyEndpoint(dialect, name="primary", text=TEXT) as primary,
        FaultyEndpoint(dialect, name="backup", text="backup answer") as backup,
    ):
        primary.faults.stall_after = 2
        async with runtime_for(primary, backup, endpoint_kwargs={"timeout": 60.0, "idle_timeout": 5.0}) as rt:
            start = anyio.current_time()
            reply = await rt.chat("hi")
            elapsed = anyio.current_time() - start
    assert reply.text == "backup answer" and reply.endpoint == "backup"
    assert 5.0 <= elapsed < 6.0
    assert isinstance(reply.attempts[0].error, Timeout) and "next chunk" in str(reply.attempts[0].error)


async def test_an_honest_answer_longer_than_timeout_completes() -> None:
    """Thirty words a second apart with timeout=10: whole, a Timeout; streamed, the whole answer."""
    text = " ".join(f"w{i}" for i in range(30))
    async with FaultyEndpoint("openai", name="slow", text=text) as ep:
        ep.faults.chunk_delay = 1.0
        async with runtime_for(ep, endpoint_kwargs={"timeout": 10.0}) as rt:
            reply = await rt.chat("hi", timeout=120)
        ep.faults.chunk_delay, ep.faults.latency = 0.0, 30.0  # the same generation, as a whole reply
        async with runtime_for(ep, stream_chat=False, endpoint_kwargs={"timeout": 10.0},
                               retry=RetryPolicy(max_attempts=1)) as rt:
            with pytest.raises(AllEndpointsFailed) as info:
                await rt.chat("hi", timeout=120)
    assert reply.text == text
    assert isinstance(info.value.attempts[0].error, Timeout)


async def test_requests_a_stream_cannot_carry_go_whole() -> None:
    """n > 1 and logprobs are not streamed: every choice and the logprobs come back."""
    async with FaultyEndpoint("openai", name="ep", text=TEXT) as ep:
        async with runtime_for(ep) as rt:
            await rt.chat("hi", n=2)
            await rt.chat("hi", logprobs=True)
    assert ep.stats.streams == 0 and ep.stats.requests == 2
