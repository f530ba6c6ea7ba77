"""The Anthropic Messages dialect: request translation, the recorded streams and replies
decoded exactly, stream error events, and every error status and body mapped to one class."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from chunks import text_of, tool_calls_of

from runtime.errors import (
    AuthenticationFailed,
    BadRequest,
    ContextWindowExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    ProtocolError,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from runtime.policy import Endpoint
from runtime.providers import AnthropicAdapter, adapter_for
from runtime.providers.anthropic import DEFAULT_MAX_TOKENS
from runtime.types import (
    ChatRequest,
    EmbeddingRequest,
    ImagePart,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

DATA = Path(__file__).parent / "data"
KEY = "sk-ant-test-0123456789"


def anthropic(**kw: Any) -> AnthropicAdapter:
    adapter = adapter_for(Endpoint(name="an", provider="anthropic", model="claude-haiku-4-5", api_key=KEY, **kw))
    assert isinstance(adapter, AnthropicAdapter)
    return adapter


def read(name: str) -> bytes:
    return (DATA / "anthropic" / name).read_bytes()


def decode(data: bytes) -> list[StreamChunk]:
    decoder = anthropic().stream_decoder()
    chunks = decoder.feed(data)
    chunks += decoder.finish()
    assert decoder.done
    return chunks


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: ".encode() + msgspec.json.encode({"type": kind, **payload}) + b"\n\n"


# --- streams ---------------------------------------------------------------------------------


def test_live_text_stream_decodes_exactly() -> None:
    """The recorded live stream (padded JSON, ping, cache counts) gives its text, finish and usage."""
    chunks = decode(read("stream_text_recorded_live.sse"))
    assert text_of(chunks) == (
        "The weather in San Francisco, CA is currently:\n- **Temperature:** 68°F\n- **Condition:** Sunny\n\n"
        "It's a nice sunny day!"
    )
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage == Usage(input_tokens=770, output_tokens=38, total_tokens=808, cached_input_tokens=0)
    assert {(c.id, c.model) for c in chunks} == {("msg_016HxyUMAncysqX7dn1kWNRx", "claude-haiku-4-5-20251001")}
    assert len(chunks) == 10  # nine text deltas and the message_delta


def test_live_tool_use_stream_decodes_exactly() -> None:
    """A tool_use block start and its input_json_delta fragments add up to the call; finish is "tool_calls"."""
    chunks = decode(read("stream_tool_use_recorded_live.sse"))
    assert tool_calls_of(chunks) == {
        0: ("toolu_018acGYLtfR52q9yDbWaEdQZ", "get_weather", '{"location": "San Francisco, CA", "units": "f"}')
    }
    assert chunks[0].tool_calls == [ToolCallDelta(index=0, id="toolu_018acGYLtfR52q9yDbWaEdQZ", name="get_weather")]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage == Usage(input_tokens=656, output_tokens=74, total_tokens=730, cached_input_tokens=0)


def test_text_then_tool_stream_numbers_tools_among_tool_calls() -> None:
    """A tool_use in content block 1 after a text block is tool call 0, and the text is kept."""
    chunks = decode(read("stream_tool_use_sdk_fixture.sse"))
    assert text_of(chunks) == "I'll check the current weather in Paris for you."
    assert tool_calls_of(chunks) == {0: ("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", '{"location": "Paris"}')}
    assert chunks[-1].usage == Usage(input_tokens=377, output_tokens=65, total_tokens=442, cached_input_tokens=0)


def test_stream_ending_without_blank_line_completes() -> None:
    """The SDK fixture's final message_stop without a trailing newline still ends the stream cleanly."""
    data = read("stream_text_sdk_fixture.sse")
    assert not data.endswith(b"\n")
    chunks = decode(data)
    assert text_of(chunks) == "Hello there!"
    assert chunks[-1].usage == Usage(input_tokens=11, output_tokens=6, total_tokens=17)


def test_documented_stream() -> None:
    """The docs' basic stream: message_start output counts are replaced by message_delta's cumulative ones."""
    chunks = decode(read("stream_text_docs.sse"))
    assert text_of(chunks) == "Hello!"
    assert chunks[-1].usage == Usage(input_tokens=25, output_tokens=15, total_tokens=40)


def test_unknown_events_and_pings_are_ignored() -> None:
    """Event types added later, and pings anywhere, change nothing."""
    data = read("stream_text_docs.sse")
    noisy = data.replace(b"event: content_block_stop", event("future_event", {"x": 1}) + event("ping", {}) + b"event: content_block_stop")
    assert decode(noisy) == decode(data)


def test_stream_with_stop_reason_but_without_message_stop_is_complete() -> None:
    """A body that ends cleanly after message_delta's stop_reason is a whole answer without message_stop."""
    data = read("stream_text_docs.sse").replace(b'event: message_stop\ndata: {"type": "message_stop"}\n\n', b"")
    decoder = anthropic().stream_decoder()
    chunks = decoder.feed(data)
    assert decoder.finish() == [] and decoder.done
    assert text_of(chunks) == "Hello!" and chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None


def test_stream_cut_before_message_delta_is_a_protocol_error() -> None:
    """A stream that ends before message_delta's stop_reason raises ProtocolError from finish()."""
    data = read("stream_text_docs.sse").split(b"event: message_delta")[0]
    decoder = anthropic().stream_decoder()
    assert text_of(decoder.feed(data)) == "Hello!"
    with pytest.raises(ProtocolError, match="message_stop"):
        decoder.finish()


@pytest.mark.parametrize("name", ["stream_error_event_docs.sse", "stream_error_event_sdk_test.sse"])
def test_error_event_fixtures_raise_overloaded(name: str) -> None:
    """``event: error`` with overloaded_error raises Overloaded, with or without a trailing blank line."""
    decoder = anthropic().stream_decoder()
    with pytest.raises(Overloaded, match="Overloaded") as info:
        decoder.feed(read(name))
        decoder.finish()
    assert (info.value.endpoint, info.value.code) == ("an", "overloaded_error")


def test_error_event_after_text_delivers_the_text_first() -> None:
    """Text before a mid-stream error event is delivered; the error is raised by the next call."""
    head = read("stream_text_docs.sse").split(b"event: content_block_stop")[0]
    decoder = anthropic().stream_decoder()
    chunks = decoder.feed(head + read("stream_error_event_sdk_test.sse"))
    assert text_of(chunks) == "Hello!"
    with pytest.raises(Overloaded):
        decoder.finish()


@pytest.mark.parametrize(
    ("etype", "message", "cls"),
    [
        ("overloaded_error", "Overloaded", Overloaded),
        ("rate_limit_error", "slow down", RateLimited),
        ("api_error", "Internal server error", ServerError),
        ("timeout_error", "took too long", Timeout),
        ("authentication_error", "bad key", AuthenticationFailed),
        ("permission_error", "no", AuthenticationFailed),
        ("billing_error", "pay up", AuthenticationFailed),
        ("not_found_error", "no such model", NotFound),
        ("invalid_request_error", "bad", BadRequest),
        ("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", ContextWindowExceeded),
        ("something_new", "???", ServerError),
    ],
)
def test_error_event_classes(etype: str, message: str, cls: type[ProviderError]) -> None:
    """Each error type inside a stream maps to its class; unknown types are server errors."""
    with pytest.raises(cls) as info:
        anthropic().stream_decoder().feed(event("error", {"error": {"type": etype, "message": message}}))
    assert type(info.value) is cls


def test_thinking_deltas_become_reasoning() -> None:
    """thinking_delta fragments stream as reasoning, apart from the text."""
    data = (
        event("message_start", {"message": {"id": "m", "model": "c", "usage": {"input_tokens": 3, "output_tokens": 1}}})
        + event("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": ""}})
        + event("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me see."}})
        + event("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "abc"}})
        + event("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}})
        + event("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Yes."}})
        + event("message_delta", {"delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}})
        + event("message_stop", {})
    )
    chunks = decode(data)
    assert [(c.reasoning, c.text) for c in chunks[:2]] == [("Let me see.", ""), ("", "Yes.")]
    assert chunks[-1].finish_reason == "length"


# --- whole replies ---------------------------------------------------------------------------


def test_recorded_reply_decodes_exactly() -> None:
    """The recorded non-stream Message gives its text, id, model, finish and usage."""
    reply = anthropic().parse_chat(read("messages_nonstream_recorded.json"))
    assert reply.text.startswith('{"items":[{"product_name":"Green Tea","price":5.50')
    assert reply.finish_reason == "stop"
    assert (reply.id, reply.model) == ("msg_01T4jd6NyD9xGGtTPDC4ogy5", "claude-sonnet-4-5-20250929")
    assert reply.usage == Usage(input_tokens=406, output_tokens=50, total_tokens=456, cached_input_tokens=0)
    assert reply.provider == "anthropic"


def test_reply_with_tool_use_thinking_and_cache_counts() -> None:
    """tool_use blocks become tool calls (compact JSON), thinking becomes reasoning, cache counts add to input."""
    body = {
        "id": "msg_1",
        "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"location": "Paris"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5, "output_tokens": 7},
    }
    reply = anthropic().parse_chat(msgspec.json.encode(body))
    assert reply.tool_calls == [ToolCall(id="toolu_1", name="get_weather", arguments='{"location":"Paris"}')]
    assert (reply.text, reply.reasoning, reply.finish_reason) == ("Checking.", "hmm", "tool_calls")
    assert reply.usage == Usage(input_tokens=115, output_tokens=7, total_tokens=122, cached_input_tokens=100)


def test_undecodable_reply_is_a_protocol_error() -> None:
    """A body that is not a Message raises ProtocolError."""
    with pytest.raises(ProtocolError):
        anthropic().parse_chat(b"not json")


# --- requests --------------------------------------------------------------------------------


def test_request_url_headers_and_defaults() -> None:
    """POST /v1/messages with x-api-key and anthropic-version; system lifted out; max_tokens defaults to 4096."""
    request = ChatRequest(
        messages=[
            Message(role="system", content="Be brief."),
            Message(role="system", content="Be kind."),
            Message(role="user", content="hi"),
        ],
        stop=["END"],
        temperature=0.2,
        user="u-1",
    )
    http = anthropic(headers={"anthropic-beta": "x"}).chat_request(request, stream=False)
    assert (http.method, http.url) == ("POST", "https://api.anthropic.com/v1/messages")
    assert http.headers == {
        "Content-Type": "application/json",
        "anthropic-version": "2023-06-01",
        "x-api-key": KEY,
        "anthropic-beta": "x",
    }
    assert msgspec.json.decode(http.body or b"") == {
        "model": "claude-haiku-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
        "system": "Be brief.\n\nBe kind.",
        "temperature": 0.2,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }
    assert DEFAULT_MAX_TOKENS == 4096


def test_tool_conversation_matches_the_recorded_request() -> None:
    """OpenAI-style tools, tool calls and tool results translate to the body the SDK sent (recorded cassette)."""
    cassette = msgspec.json.decode(read("cassette_tool_runner_two_streams_recorded.json"))
    recorded = cassette[1]["request"]["body"]
    # The SDK echoes the tool_use block it received, ``caller`` included; that field is
    # response-only metadata and not something a request needs to carry.
    del recorded["messages"][1]["content"][0]["caller"]
    tool = recorded["tools"][0]
    tool_use = recorded["messages"][1]["content"][0]
    result = recorded["messages"][2]["content"][0]
    request = ChatRequest(
        messages=[
            Message(role="user", content=recorded["messages"][0]["content"]),
            Message(
                role="assistant",
                tool_calls=[
                    ToolCall(id=tool_use["id"], name=tool_use["name"], arguments=msgspec.json.encode(tool_use["input"]).decode())
                ],
            ),
            Message(role="tool", tool_call_id=result["tool_use_id"], content=result["content"]),
        ],
        max_tokens=1024,
        tools=[
            {
                "type": "function",
                "function": {"name": tool["name"], "description": tool["description"], "parameters": tool["input_schema"]},
            }
        ],
    )
    http = anthropic().chat_request(request, stream=True)
    assert msgspec.json.decode(http.body or b"") == recorded
    assert http.headers["Accept"] == "text/event-stream"
    assert http.url == cassette[1]["request"]["url"].split("?")[0]


def test_consecutive_tool_results_share_one_user_turn() -> None:
    """Two tool results in a row become two tool_result blocks of one user turn; text and tools share a turn."""
    request = ChatRequest(
        messages=[
            Message(role="user", content="both"),
            Message(
                role="assistant",
                content="Calling two.",
                tool_calls=[ToolCall(id="a", name="f", arguments="{}"), ToolCall(id="b", name="g", arguments='{"x":1}')],
            ),
            Message(role="tool", tool_call_id="a", content="1"),
            Message(role="tool", tool_call_id="b", content="2"),
            Message(role="user", content="thanks"),
        ],
        tool_choice={"type": "function", "function": {"name": "f"}},
    )
    body = msgspec.json.decode(anthropic().chat_request(request, stream=False).body or b"")
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Calling two."},
                {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                {"type": "tool_use", "id": "b", "name": "g", "input": {"x": 1}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "a", "content": "1"},
                {"type": "tool_result", "tool_use_id": "b", "content": "2"},
            ],
        },
        {"role": "user", "content": "thanks"},
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "f"}


@pytest.mark.parametrize(("choice", "wire"), [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})])
def test_tool_choice_words(choice: str, wire: dict[str, str]) -> None:
    """OpenAI's tool_choice words map to Anthropic's."""
    request = ChatRequest(messages=[Message(role="user", content="x")], tool_choice=choice)
    assert msgspec.json.decode(anthropic().chat_request(request, stream=False).body or b"")["tool_choice"] == wire


def test_images_and_json_schema() -> None:
    """data: images become base64 sources, links URL sources; json_schema becomes a forced output tool."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = ChatRequest(
        messages=[
            Message(
                role="user",
                content=[
                    TextPart(text="compare"),
                    ImagePart(url="data:image/jpeg;base64,QUJD"),
                    ImagePart(url="https://example.com/a.png"),
                ],
            )
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    body = msgspec.json.decode(anthropic().chat_request(request, stream=False).body or b"")
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "compare"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
    ]
    assert [(t["name"], t["input_schema"]) for t in body["tools"]] == [("structured_output", schema)]
    assert body["tool_choice"] == {"type": "tool", "name": "structured_output"}
    plain = ChatRequest(messages=[Message(role="user", content="x")], response_format={"type": "json_object"})
    json_mode = msgspec.json.decode(anthropic().chat_request(plain, stream=False).body or b"")
    assert [(t["name"], t["input_schema"]) for t in json_mode["tools"]] == [("structured_output", {"type": "object"})]


def test_bad_tool_arguments_are_refused_before_sending() -> None:
    """Tool-call arguments that are not JSON cannot become tool_use input: InvalidRequest."""
    request = ChatRequest(
        messages=[Message(role="assistant", tool_calls=[ToolCall(id="a", name="f", arguments="{not json")])]
    )
    with pytest.raises(InvalidRequest, match="not JSON"):
        anthropic().chat_request(request, stream=False)


def test_embeddings_are_refused_and_probe_lists_models() -> None:
    """embed_request raises InvalidRequest naming the providers to use; the probe is GET /v1/models."""
    with pytest.raises(InvalidRequest) as info:
        anthropic().embed_request(EmbeddingRequest(inputs=["a"]))
    assert str(info.value) == (
        "anthropic has no embeddings API; route embeddings to an openai, azure, ollama or openai-compatible endpoint"
    )
    probe = anthropic(base_url="https://gateway.example/").probe_request()
    assert (probe.method, probe.url, probe.body) == ("GET", "https://gateway.example/v1/models", None)
    assert probe.headers == {"anthropic-version": "2023-06-01", "x-api-key": KEY}


# --- errors ----------------------------------------------------------------------------------


def recorded(name: str) -> tuple[int, dict[str, str], bytes]:
    doc = msgspec.json.decode(read(name))
    return doc["status_code"], doc["headers"], msgspec.json.encode(doc["body"])


def test_recorded_429_is_rate_limited() -> None:
    """The recorded 429 rate_limit_error (x-should-retry: true) is RateLimited and keeps its message."""
    status, headers, body = recorded("error_429_rate_limit_recorded.json")
    error = anthropic().parse_error(status, headers, body)
    assert type(error) is RateLimited
    assert error.code == "rate_limit_error"
    assert error.message.startswith("This request would exceed your organization's rate limit")
    assert error.status == 429


def test_recorded_400_is_bad_request() -> None:
    """The recorded 400 invalid_request_error is BadRequest, never retried."""
    status, headers, body = recorded("error_400_invalid_request_recorded.json")
    error = anthropic().parse_error(status, headers, body)
    assert type(error) is BadRequest
    assert not error.retryable
    assert error.message.startswith("messages.0.content.1: unexpected `tool_use_id`")


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (529, "error_529_overloaded_body.json", Overloaded),
        (404, "error_shape_docs.json", NotFound),
        (429, "error_429_rate_limit_recorded_body.json", RateLimited),
        (400, "error_400_invalid_request_recorded_body.json", BadRequest),
        (401, b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}', AuthenticationFailed),
        (403, b'{"type":"error","error":{"type":"permission_error","message":"no"}}', AuthenticationFailed),
        (413, b'{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum size"}}', BadRequest),
        (500, b'{"type":"error","error":{"type":"api_error","message":"Internal server error"}}', ServerError),
        (500, b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', Overloaded),
        (400, b'{"type":"error","error":{"type":"billing_error","message":"credit balance too low"}}', AuthenticationFailed),
        (
            400,
            b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}',
            ContextWindowExceeded,
        ),
        (503, b"upstream connect error", Overloaded),
    ],
)
def test_error_mapping(status: int, body: bytes | str, cls: type[ProviderError]) -> None:
    """Each status and body maps to exactly one error class."""
    raw = read(body) if isinstance(body, str) else body
    error = anthropic().parse_error(status, {}, raw)
    assert type(error) is cls
    assert (error.endpoint, error.provider, error.status) == ("an", "anthropic", status)
    assert error.message


def test_rate_limit_headers_with_rfc3339_resets() -> None:
    """anthropic-ratelimit-* headers become a snapshot; RFC 3339 resets become seconds from now."""
    soon = datetime.datetime.fromtimestamp(time.time() + 30, tz=datetime.UTC).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": soon,
        "anthropic-ratelimit-tokens-limit": "40000",
        "anthropic-ratelimit-tokens-remaining": "1234",
        "anthropic-ratelimit-tokens-reset": "2000-01-01T00:00:00Z",
        "retry-after": "30",
    }
    snapshot = anthropic().rate_limit(headers)
    assert snapshot is not None
    assert (snapshot.limit_requests, snapshot.remaining_requests) == (50, 0)
    assert snapshot.reset_requests == pytest.approx(30, abs=2)
    assert (snapshot.limit_tokens, snapshot.remaining_tokens, snapshot.reset_tokens) == (40000, 1234, 0.0)
    error = anthropic().parse_error(429, headers, read("error_429_rate_limit_recorded_body.json"))
    assert error.retry_after == 30.0
    assert error.rate_limit is not None
    assert (error.rate_limit.remaining_requests, error.rate_limit.remaining_tokens) == (0, 1234)
    assert anthropic().rate_limit({}) is None
    input_only = anthropic().rate_limit({"anthropic-ratelimit-input-tokens-remaining": "7"})
    assert input_only is not None and input_only.remaining_tokens == 7


def test_key_is_redacted_from_errors() -> None:
    """A key echoed back in an error message never reaches the error."""
    body = msgspec.json.encode({"type": "error", "error": {"type": "authentication_error", "message": f"bad key {KEY}"}})
    error = anthropic().parse_error(401, {}, body)
    assert KEY not in str(error)
    assert "***" in error.message
