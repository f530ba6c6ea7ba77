"""Every injectable fault maps to exactly one documented error class, in every dialect;
and every adapter round-trips chat, stream, tools, usage and embeddings against the
local endpoints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from chunks import text_of, tool_calls_of

from runtime.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    InvalidRequest,
    NotFound,
    Overloaded,
    ProtocolError,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from runtime.providers import make_client
from runtime.providers.base import ProviderClient
from runtime.testing import Faults, FaultyEndpoint
from runtime.types import ChatRequest, EmbeddingRequest, Message, StreamChunk

pytestmark = pytest.mark.anyio

DIALECTS = ["openai", "azure", "deepseek", "anthropic", "ollama"]
REQUEST = ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=50)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
        },
    }
]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """One client session, as a runtime has."""
    async with aiohttp.ClientSession() as s:
        yield s


async def client_for(ep: FaultyEndpoint, session: aiohttp.ClientSession) -> ProviderClient:
    client = make_client(ep.endpoint(), session)
    assert isinstance(client, ProviderClient)
    return client


async def read_stream(client: ProviderClient, request: ChatRequest = REQUEST) -> list[StreamChunk]:
    stream = await client.stream(request, first_chunk_timeout=5, idle_timeout=5)
    try:
        return [chunk async for chunk in stream]
    finally:
        await stream.aclose()


# (fault setter, expected class for a whole reply, expected class for a stream)
FAULTS: dict[str, tuple[Callable[[Faults], None], type[ProviderError], type[ProviderError]]] = {
    "429 with Retry-After": (lambda f: f.fail_next(2, status=429, retry_after=7), RateLimited, RateLimited),
    "503 overload": (lambda f: f.fail_next(2, status=503), Overloaded, Overloaded),
    "529 overload": (lambda f: f.fail_next(2, status=529), Overloaded, Overloaded),
    "500": (lambda f: f.fail_next(2, status=500), ServerError, ServerError),
    "401": (lambda f: f.fail_next(2, status=401), AuthenticationFailed, AuthenticationFailed),
    "403": (lambda f: f.fail_next(2, status=403), AuthenticationFailed, AuthenticationFailed),
    "400": (lambda f: f.fail_next(2, status=400), BadRequest, BadRequest),
    "404": (lambda f: f.fail_next(2, status=404), NotFound, NotFound),
    "hang": (lambda f: setattr(f, "hang", True), Timeout, Timeout),
    "connection reset": (lambda f: setattr(f, "reset", True), ConnectionFailed, ConnectionFailed),
    "refused": (lambda f: f.refuse(), ConnectionFailed, ConnectionFailed),
    "malformed JSON": (lambda f: setattr(f, "malformed", True), ProtocolError, ProtocolError),
    "outage window": (lambda f: f.outage(60, status=503), Overloaded, Overloaded),
}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_fault_maps_to_one_error_class(dialect: str, fault: str, session: aiohttp.ClientSession) -> None:
    """Each fault raises exactly its documented class, for a whole reply and for a stream."""
    setter, chat_class, stream_class = FAULTS[fault]
    async with FaultyEndpoint(dialect, name="ep") as ep:
        setter(ep.faults)
        client = await client_for(ep, session)
        with pytest.raises(ProviderError) as info:
            await client.chat(REQUEST, 2.0)
        assert type(info.value) is chat_class
        assert info.value.endpoint == "ep"
        if fault == "429 with Retry-After":
            assert info.value.retry_after == 7
        with pytest.raises(ProviderError) as info:
            await read_stream(client)
        assert type(info.value) is stream_class


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stream_faults_after_content(dialect: str, session: aiohttp.ClientSession) -> None:
    """Cut mid-stream → ConnectionFailed; a clean end before the finish reason → ProtocolError;
    slow chunks → idle Timeout."""
    async with FaultyEndpoint(dialect, name="ep", text="one two three four") as ep:
        client = await client_for(ep, session)
        ep.faults.cut_after = 2
        with pytest.raises(ConnectionFailed):
            await read_stream(client)
        ep.faults.cut_after = None
        ep.faults.end_after = 2
        with pytest.raises(ProtocolError, match="without"):
            await read_stream(client)
        ep.faults.end_after = None
        ep.faults.chunk_delay = 10.0
        stream = await client.stream(REQUEST, first_chunk_timeout=30, idle_timeout=5)
        with pytest.raises(Timeout, match="next chunk"):
            async for _ in stream:
                pass
        await stream.aclose()


@pytest.mark.parametrize("dialect", ["anthropic", "ollama"])
async def test_error_event_inside_a_200_stream(dialect: str, session: aiohttp.ClientSession) -> None:
    """An error event after content in an HTTP 200 stream raises the mapped class after the text."""
    async with FaultyEndpoint(dialect, name="ep", text="one two three") as ep:
        ep.faults.stream_error_after = 1
        client = await client_for(ep, session)
        stream = await client.stream(REQUEST, first_chunk_timeout=5, idle_timeout=5)
        texts: list[str] = []
        with pytest.raises(ProviderError) as info:
            async for chunk in stream:
                texts.append(chunk.text)
        assert "".join(texts) and type(info.value) in (Overloaded, ServerError)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_chat_and_stream_round_trip_with_usage(dialect: str, session: aiohttp.ClientSession) -> None:
    """A whole reply and a streamed one carry the same text, a finish reason and usage."""
    async with FaultyEndpoint(dialect, name="ep", text="the quick brown fox") as ep:
        client = await client_for(ep, session)
        reply, _ = await client.chat(REQUEST, 5)
        assert reply.text == "the quick brown fox" and reply.finish_reason == "stop"
        assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
        chunks = await read_stream(client)
        assert text_of(chunks) == reply.text
        assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
        usage = [c.usage for c in chunks if c.usage is not None][-1]
        assert usage.output_tokens == reply.usage.output_tokens


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_tool_calls_round_trip(dialect: str, session: aiohttp.ClientSession) -> None:
    """Tool calls come back whole from a reply and as fragments that add up to the same call in a stream."""
    request = ChatRequest(messages=[Message(role="user", content="add 2 and 3")], max_tokens=50, tools=TOOLS)
    async with FaultyEndpoint(dialect, name="ep") as ep:
        client = await client_for(ep, session)
        reply, _ = await client.chat(request, 5)
        assert reply.finish_reason == "tool_calls" and len(reply.tool_calls) == 1
        call = reply.tool_calls[0]
        assert call.name == "add" and isinstance(json.loads(call.arguments), dict)
        calls = tool_calls_of(await read_stream(client, request))
        assert [name for _, name, _ in calls.values()] == ["add"]
        assert json.loads(calls[0][2]) == json.loads(call.arguments)


@pytest.mark.parametrize("dialect", ["openai", "azure", "ollama"])
async def test_embeddings_round_trip(dialect: str, session: aiohttp.ClientSession) -> None:
    """Embeddings come back one vector per input, in order."""
    async with FaultyEndpoint(dialect, name="ep", dimensions=8) as ep:
        client = await client_for(ep, session)
        reply, _ = await client.embed(EmbeddingRequest(inputs=["a", "b"]), 5)
        assert len(reply.vectors) == 2 and all(len(v) == 8 for v in reply.vectors)
        assert reply.vectors[0] != reply.vectors[1]


@pytest.mark.parametrize("dialect", ["anthropic", "deepseek"])
async def test_providers_without_embeddings_refuse_before_sending(dialect: str, session: aiohttp.ClientSession) -> None:
    """Anthropic and DeepSeek have no embeddings API: InvalidRequest, nothing sent."""
    async with FaultyEndpoint(dialect, name="ep") as ep:
        client = await client_for(ep, session)
        with pytest.raises(InvalidRequest, match="embeddings"):
            await client.embed(EmbeddingRequest(inputs=["a"]), 5)
        assert ep.stats.requests == 0


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_probe_is_token_free_and_reports_outages(dialect: str, session: aiohttp.ClientSession) -> None:
    """The probe hits the models/tags path, and fails during an outage."""
    async with FaultyEndpoint(dialect, name="ep") as ep:
        client = await client_for(ep, session)
        await client.probe(5)
        assert ep.stats.probes == 1
        ep.faults.probes_exempt = False
        ep.faults.outage(30, status=503)
        with pytest.raises(Overloaded):
            await client.probe(5)
