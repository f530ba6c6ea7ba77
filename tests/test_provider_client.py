"""ProviderClient and ChunkStream against a real aiohttp server on 127.0.0.1: every HTTP,
connection, timeout and stream failure arrives as exactly one runtime error."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runtime.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    NotFound,
    Overloaded,
    ProtocolError,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from runtime.policy import Endpoint, Provider
from runtime.providers import MockClient, ProviderClient, make_client
from runtime.types import ChatRequest, EmbeddingRequest, Message, RateLimitSnapshot, StreamChunk, Usage

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data"
TEXT_STREAM = (DATA / "openai/chat_stream_text_with_usage.sse").read_bytes()
TEXT_REPLY = (DATA / "openai/chat_completion_nonstream_sdk_recorded.json").read_bytes()
EVENTS = [e + b"\n\n" for e in TEXT_STREAM.split(b"\n\n") if e]
REQUEST = ChatRequest(messages=[Message(role="user", content="weather in SF?")])
LIMITS = {
    "x-ratelimit-limit-requests": "60",
    "x-ratelimit-remaining-requests": "59",
    "x-ratelimit-reset-requests": "1s",
}


class FakeProvider:
    """An OpenAI-, Anthropic- and Ollama-speaking server whose behaviour is picked by the
    first path segment (the endpoint's base_url), e.g. ``/slow/chat/completions``."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()
        self.release = asyncio.Event()  # set at teardown so parked handlers return
        self.requests: list[tuple[str, dict[str, str], bytes]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{scenario}/chat/completions", self.chat)
        app.router.add_post("/{scenario}/embeddings", self.embeddings)
        app.router.add_get("/{scenario}/models", self.models)
        app.router.add_post("/{scenario}/v1/messages", self.anthropic)
        app.router.add_post("/{scenario}/api/chat", self.ollama)
        return app

    async def park(self) -> None:
        """Wait far longer than any client timeout (virtual time), until teardown."""
        try:
            async with asyncio.timeout(3600):
                await self.release.wait()
        except TimeoutError:
            pass

    async def sse(
        self, request: web.Request, events: list[bytes], *, gap: float = 0.0, headers: dict[str, str] | None = None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **(headers or {})})
        await response.prepare(request)
        for event in events:
            await response.write(event)
            if gap:
                await asyncio.sleep(gap)
        return response

    async def chat(self, request: web.Request) -> web.StreamResponse:
        scenario = request.match_info["scenario"]
        body = await request.read()
        self.requests.append((request.path, dict(request.headers), body))
        stream = b'"stream":true' in body
        match scenario:
            case "ok" if stream:
                # split events across writes at odd places, as a network would
                raw = b"".join(EVENTS)
                pieces = [raw[i : i + 97] for i in range(0, len(raw), 97)]
                return await self.sse(request, pieces, headers=LIMITS)
            case "ok":
                return web.Response(body=TEXT_REPLY, content_type="application/json", headers=LIMITS)
            case "html":
                return web.Response(text="<html>hello</html>", content_type="text/html")
            case "garbage":
                return web.Response(body=b"{not json", content_type="application/json")
            case "json-error-under-200":
                return web.json_response({"error": {"message": "model crashed", "type": "server_error"}})
            case "slow":
                await self.park()
                return web.Response(body=TEXT_REPLY, content_type="application/json")
            case "slow-first-chunk":
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                await self.park()
                return response
            case "idle":
                response = await self.sse(request, EVENTS[:3])
                await self.park()
                return response
            case "keepalive":
                response = await self.sse(request, EVENTS[:3])
                for _ in range(100):
                    await response.write(b": keep-alive\n\n")
                    await asyncio.sleep(1.0)
                return response
            case "cut":
                return await self.sse(request, EVENTS[:5])
            case "abort":
                response = await self.sse(request, EVENTS[:5])
                assert request.transport is not None
                request.transport.abort()
                return response
            case "endless":
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await response.prepare(request)
                try:
                    while True:
                        await response.write(EVENTS[1])
                        await asyncio.sleep(0.05)
                except ConnectionResetError:
                    self.disconnected.set()
                return response
            case _:
                status = int(scenario)
                headers = {"retry-after": "7"} if status == 429 else {}
                return web.json_response(
                    {"error": {"message": f"failed with {status}", "type": "x", "code": None}}, status=status, headers=headers
                )

    async def embeddings(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"index": 0, "embedding": [0.5, 0.25]}], "model": "emb", "usage": {"prompt_tokens": 2}})

    async def models(self, request: web.Request) -> web.Response:
        if request.match_info["scenario"] == "401":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        return web.json_response({"object": "list", "data": []})

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        await response.write((DATA / "anthropic/stream_text_recorded_live.sse").read_bytes())
        return response

    async def ollama(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        lines = (DATA / "ollama/chat_stream_DERIVED.ndjson").read_bytes().split(b"\n")
        if request.match_info["scenario"] == "midstream-error":
            lines = [lines[0], b'{"error":"an error was encountered while running the model"}', b""]
        for line in lines:
            if line:
                await response.write(line + b"\n")
                await asyncio.sleep(0.01)
        return response


@pytest.fixture
async def provider() -> AsyncIterator[tuple[FakeProvider, str]]:
    fake = FakeProvider()
    runner = web.AppRunner(fake.app(), shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield fake, f"http://{host}:{port}"
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def client(
    session: aiohttp.ClientSession, base: str, scenario: str, provider: Provider = "openai-compatible"
) -> ProviderClient:
    extra: dict[str, Any] = {"api_key": "sk-secret-key-123"} if provider != "ollama" else {}
    endpoint = Endpoint(name=scenario, provider=provider, model="m", base_url=f"{base}/{scenario}", **extra)
    made = make_client(endpoint, session)
    assert isinstance(made, ProviderClient)
    return made


async def collect(stream: Any) -> list[StreamChunk]:
    return [chunk async for chunk in stream]


# --- whole replies ---------------------------------------------------------------------------


async def test_chat_returns_reply_and_rate_limit(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """A 200 JSON reply is decoded and its rate-limit headers returned; the request went out as built."""
    fake, base = provider
    reply, snapshot = await client(session, base, "ok").chat(REQUEST, timeout=10)
    assert reply.text.startswith("I'm unable to provide real-time weather updates.")
    assert reply.usage == Usage(input_tokens=14, output_tokens=37, total_tokens=51, reasoning_tokens=0)
    assert snapshot == RateLimitSnapshot(limit_requests=60, remaining_requests=59, reset_requests=1.0)
    path, headers, body = fake.requests[-1]
    assert path == "/ok/chat/completions"
    assert headers["Authorization"] == "Bearer sk-secret-key-123"
    assert b'"messages":[{"role":"user","content":"weather in SF?"}]' in body


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (404, NotFound),
        (422, BadRequest),
        (429, RateLimited),
        (500, ServerError),
        (502, ServerError),
        (503, Overloaded),
        (529, Overloaded),
    ],
)
async def test_error_statuses(
    provider: tuple[FakeProvider, str], session: aiohttp.ClientSession, status: int, cls: type[ProviderError]
) -> None:
    """Each error status raises its class, for chat and for stream, with the body's message."""
    _, base = provider
    with pytest.raises(cls) as info:
        await client(session, base, str(status)).chat(REQUEST, timeout=10)
    assert type(info.value) is cls
    assert info.value.status == status
    assert info.value.message == f"failed with {status}"
    if status == 429:
        assert info.value.retry_after == 7.0
    with pytest.raises(cls):
        await client(session, base, str(status)).stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)


async def test_wrong_content_type_is_a_protocol_error(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """An HTML page under 200 is a ProtocolError for a reply and for a stream."""
    _, base = provider
    with pytest.raises(ProtocolError, match="text/html"):
        await client(session, base, "html").chat(REQUEST, timeout=10)
    with pytest.raises(ProtocolError, match="text/html"):
        await client(session, base, "html").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)


async def test_undecodable_json_is_a_protocol_error(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """A 200 application/json body that is not JSON is a ProtocolError."""
    _, base = provider
    with pytest.raises(ProtocolError):
        await client(session, base, "garbage").chat(REQUEST, timeout=10)


async def test_json_error_instead_of_a_stream(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """A JSON error body under 200 where a stream was expected raises the error it describes."""
    _, base = provider
    with pytest.raises(ServerError, match="model crashed"):
        await client(session, base, "json-error-under-200").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    """Nothing listening: ConnectionFailed for chat, probe and stream."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with pytest.raises(ConnectionFailed):
        await client(session, base, "ok").chat(REQUEST, timeout=10)
    with pytest.raises(ConnectionFailed):
        await client(session, base, "ok").probe(timeout=10)
    with pytest.raises(ConnectionFailed):
        await client(session, base, "ok").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)


async def test_slow_reply_times_out(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """No answer within the attempt's timeout: Timeout, on the loop's clock."""
    _, base = provider
    with pytest.raises(Timeout, match="no reply within 5s"):
        await client(session, base, "slow").chat(REQUEST, timeout=5)
    with pytest.raises(Timeout, match="first chunk"):
        await client(session, base, "slow").stream(REQUEST, first_chunk_timeout=5, idle_timeout=5)


async def test_probe_and_embed(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """The probe passes on 200 and raises the mapped error otherwise; embeddings decode."""
    _, base = provider
    await client(session, base, "ok").probe(timeout=5)
    with pytest.raises(AuthenticationFailed):
        await client(session, base, "401").probe(timeout=5)
    reply, _ = await client(session, base, "ok").embed(EmbeddingRequest(inputs=["hi"]), timeout=5)
    assert reply.vectors == [[0.5, 0.25]]


# --- streams ---------------------------------------------------------------------------------


async def test_stream_delivers_every_chunk(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """A stream split at odd byte offsets yields the fixture's chunks, then ends and closes."""
    _, base = provider
    stream = await client(session, base, "ok").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)
    assert stream.rate_limit == RateLimitSnapshot(limit_requests=60, remaining_requests=59, reset_requests=1.0)
    chunks = await collect(stream)
    assert "".join(c.text for c in chunks).endswith("a reliable weather website or a weather app.")
    assert chunks[-1].usage == Usage(input_tokens=14, output_tokens=30, total_tokens=44, reasoning_tokens=0)
    assert len(chunks) == 32


async def test_first_chunk_timeout(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """Headers came but no event within first_chunk_timeout: Timeout naming the first chunk."""
    _, base = provider
    stream = await client(session, base, "slow-first-chunk").stream(REQUEST, first_chunk_timeout=5, idle_timeout=30)
    with pytest.raises(Timeout, match="no first chunk within 5s"):
        await collect(stream)


async def test_idle_timeout(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """After some chunks, silence longer than idle_timeout: Timeout naming the next chunk."""
    _, base = provider
    stream = await client(session, base, "idle").stream(REQUEST, first_chunk_timeout=30, idle_timeout=5)
    received: list[StreamChunk] = []
    with pytest.raises(Timeout, match="no next chunk within 5s"):
        async for chunk in stream:
            received.append(chunk)
    assert "".join(c.text for c in received) == "I'm unable"


async def test_keepalives_do_not_reset_the_idle_timer(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """A server sending only ``: keep-alive`` comments after some text still times out on idle."""
    _, base = provider
    stream = await client(session, base, "keepalive").stream(REQUEST, first_chunk_timeout=30, idle_timeout=10)
    with pytest.raises(Timeout, match="next chunk"):
        await collect(stream)


async def test_stream_cut_without_done_is_a_protocol_error(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """A stream that ends cleanly but without ``[DONE]`` raises ProtocolError after its chunks."""
    _, base = provider
    stream = await client(session, base, "cut").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)
    received: list[StreamChunk] = []
    with pytest.raises(ProtocolError, match=r"\[DONE\]") as info:
        async for chunk in stream:
            received.append(chunk)
    assert "".join(c.text for c in received) == "I'm unable to provide"
    assert info.value.endpoint == "cut"


async def test_connection_lost_mid_stream(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """The server dropping the connection mid-stream is ConnectionFailed, never a short success."""
    _, base = provider
    stream = await client(session, base, "abort").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)
    with pytest.raises(ConnectionFailed, match="the stream was cut after 21 characters"):
        await collect(stream)


async def test_early_aclose_disconnects(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """Leaving a stream early with aclose() closes the connection: the server sees the client leave."""
    fake, base = provider
    stream = await client(session, base, "endless").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)
    assert (await stream.__anext__()).text == "I'm"
    await stream.aclose()
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    async with asyncio.timeout(10):
        await fake.disconnected.wait()


async def test_anthropic_stream_with_charset(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """``text/event-stream; charset=utf-8`` (Anthropic's header) is accepted and the stream decoded."""
    _, base = provider
    stream = await client(session, base, "ok", provider="anthropic").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)
    chunks = await collect(stream)
    assert chunks[-1].usage == Usage(input_tokens=770, output_tokens=38, total_tokens=808, cached_input_tokens=0)


async def test_ollama_ndjson_stream_and_midstream_error(provider: tuple[FakeProvider, str], session: aiohttp.ClientSession) -> None:
    """Ollama's NDJSON streams end at done; an error line under HTTP 200 raises after the text."""
    _, base = provider
    stream = await client(session, base, "ok", provider="ollama").stream(REQUEST, first_chunk_timeout=10, idle_timeout=10)
    chunks = await collect(stream)
    assert [c.text for c in chunks] == ["The", ""]
    stream = await client(session, base, "midstream-error", provider="ollama").stream(
        REQUEST, first_chunk_timeout=10, idle_timeout=10
    )
    received: list[StreamChunk] = []
    with pytest.raises(ServerError, match="an error was encountered"):
        async for chunk in stream:
            received.append(chunk)
    assert [c.text for c in received] == ["The"]


async def test_key_stays_out_of_connection_errors(session: aiohttp.ClientSession) -> None:
    """Errors built from library exceptions never carry the key, even when it is in the URL."""
    endpoint = Endpoint(
        name="leaky", provider="openai-compatible", model="m", base_url="http://127.0.0.1:1/sk-secret-key-123", api_key="sk-secret-key-123"
    )
    made = make_client(endpoint, session)
    assert isinstance(made, ProviderClient)
    with pytest.raises(ConnectionFailed) as info:
        await made.chat(REQUEST, timeout=5)
    assert "sk-secret-key-123" not in str(info.value)


# --- the mock provider -----------------------------------------------------------------------


async def test_mock_client_is_deterministic(session: aiohttp.ClientSession) -> None:
    """Provider mock answers in-process, word by word, with word-count usage and hash embeddings."""
    mock = make_client(Endpoint(name="m", provider="mock"), session)
    assert isinstance(mock, MockClient)
    reply, snapshot = await mock.chat(REQUEST, timeout=1)
    assert reply.text == "mock reply to: weather in SF?"
    assert reply.usage == Usage(input_tokens=3, output_tokens=6, total_tokens=9)
    assert snapshot is None
    stream = await mock.stream(REQUEST, first_chunk_timeout=1, idle_timeout=1)
    assert stream.rate_limit is None
    chunks = await collect(stream)
    assert [c.text for c in chunks] == ["mock", " reply", " to:", " weather", " in", " SF?", ""]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == reply.usage
    short, _ = await mock.chat(ChatRequest(messages=REQUEST.messages, max_tokens=2), timeout=1)
    assert (short.text, short.finish_reason) == ("mock reply", "length")
    first, _ = await mock.embed(EmbeddingRequest(inputs=["a", "b", "a"], dimensions=4), timeout=1)
    assert first.vectors[0] == first.vectors[2] != first.vectors[1]
    assert len(first.vectors[0]) == 4
    assert sum(x * x for x in first.vectors[0]) == pytest.approx(1.0)
    await mock.probe(timeout=1)
    early = await mock.stream(REQUEST, first_chunk_timeout=1, idle_timeout=1)
    await early.aclose()
    assert await collect(early) == []
