"""The OpenAI dialect and its presets (Azure, DeepSeek, openai-compatible): requests, real
recorded answers decoded exactly, and every error status and body mapped to one class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from chunks import body_of, text_of, tool_calls_of

from runtime.errors import (
    AuthenticationFailed,
    BadRequest,
    ConfigError,
    ContentFiltered,
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
from runtime.providers import (
    AzureAdapter,
    DeepSeekAdapter,
    OpenAIAdapter,
    OpenAICompatibleAdapter,
    adapter_for,
)
from runtime.providers.base import Adapter
from runtime.types import (
    ChatRequest,
    EmbeddingRequest,
    ImagePart,
    Message,
    RateLimitSnapshot,
    StreamChunk,
    TextPart,
    ToolCall,
    Usage,
)

DATA = Path(__file__).parent / "data"
KEY = "sk-test-0123456789abcdef"


def openai(**kw: Any) -> OpenAIAdapter:
    adapter = adapter_for(Endpoint(name="oa", provider="openai", model="gpt-4o-mini", api_key=KEY, **kw))
    assert isinstance(adapter, OpenAIAdapter)
    return adapter


def azure(**kw: Any) -> AzureAdapter:
    kw.setdefault("base_url", "https://res.openai.azure.com")
    adapter = adapter_for(Endpoint(name="az", provider="azure", model="my-gpt4o", api_key=KEY, **kw))
    assert isinstance(adapter, AzureAdapter)
    return adapter


def deepseek(**kw: Any) -> DeepSeekAdapter:
    adapter = adapter_for(Endpoint(name="ds", provider="deepseek", model="deepseek-chat", api_key=KEY, **kw))
    assert isinstance(adapter, DeepSeekAdapter)
    return adapter


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def decode(adapter: Adapter, data: bytes) -> list[StreamChunk]:
    decoder = adapter.stream_decoder()
    chunks = decoder.feed(data)
    chunks += decoder.finish()
    assert decoder.done
    return chunks


def compact_sse(*objects: bytes) -> bytes:
    """SSE events from (possibly pretty-printed) JSON documents, ending with [DONE]."""
    events = [b"data: " + msgspec.json.encode(msgspec.json.decode(o)) + b"\n\n" for o in objects]
    return b"".join(events) + b"data: [DONE]\n\n"


# --- streams: the recorded OpenAI fixtures ---------------------------------------------------


def test_text_stream_decodes_text_finish_and_usage() -> None:
    """The recorded text stream gives its exact text, finish "stop" and the trailing usage chunk."""
    chunks = decode(openai(), read("openai/chat_stream_text_with_usage.sse"))
    assert text_of(chunks) == (
        "I'm unable to provide real-time weather updates. To get the current weather in San Francisco, "
        "I recommend checking a reliable weather website or a weather app."
    )
    assert len(chunks) == 32  # 30 text deltas, the finish chunk, the usage chunk; the role opener emits nothing
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].usage == Usage(input_tokens=14, output_tokens=30, total_tokens=44, reasoning_tokens=0)
    assert {c.id for c in chunks} == {"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL"}
    assert {c.model for c in chunks} == {"gpt-4o-2024-08-06"}


def test_tool_call_stream_fragments_add_up_to_the_call() -> None:
    """Tool-call fragments arrive as ToolCallDeltas whose arguments concatenate to the call's JSON."""
    chunks = decode(openai(), read("openai/chat_stream_tool_call_single.sse"))
    assert tool_calls_of(chunks) == {0: ("call_4XzlGBLtUe9dy3GVNV4jhq7h", "get_weather", '{"city":"New York City"}')}
    assert chunks[0].tool_calls is not None and chunks[0].tool_calls[0].arguments == ""
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert chunks[-1].usage == Usage(input_tokens=44, output_tokens=16, total_tokens=60, reasoning_tokens=0)


def test_parallel_tool_calls_stream_keeps_indices_apart() -> None:
    """Two interleaved parallel calls are reassembled by index."""
    chunks = decode(openai(), read("openai/chat_stream_tool_calls_parallel.sse"))
    assert tool_calls_of(chunks) == {
        0: ("call_JMW1whyEaYG438VE1OIflxA2", "GetWeatherArgs", '{"city": "Edinburgh", "country": "GB", "units": "c"}'),
        1: ("call_DNYTawLBoN8fj3KN6qU9N1Ou", "get_stock_price", '{"ticker": "AAPL", "exchange": "NASDAQ"}'),
    }
    assert text_of(chunks) == ""


def test_n3_stream_reads_choice_zero_only() -> None:
    """With n=3 interleaved choices only choice 0's text and finish are emitted; usage covers all."""
    chunks = decode(openai(), read("openai/chat_stream_n3_interleaved_choices.sse"))
    assert text_of(chunks) == '{"city":"San Francisco","temperature":65,"units":"f"}'
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == Usage(input_tokens=79, output_tokens=42, total_tokens=121, reasoning_tokens=0)


def test_length_finish_stream() -> None:
    """A stream cut by max_tokens finishes with "length"."""
    chunks = decode(openai(), read("openai/chat_stream_finish_length.sse"))
    assert text_of(chunks) == '{"'
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]


def test_refusal_stream_is_delivered_as_text() -> None:
    """``delta.refusal`` fragments are the reply's text when there is no content."""
    chunks = decode(openai(), read("openai/chat_stream_refusal.sse"))
    assert text_of(chunks) == "I'm sorry, I can't assist with that request."


def test_logprobs_stream_text() -> None:
    """Logprobs in chunks are tolerated and the text is read."""
    assert text_of(decode(openai(), read("openai/chat_stream_content_logprobs.sse"))) == "Foo!"


def test_stream_with_finish_reason_but_without_done_is_complete() -> None:
    """A body that ends cleanly after the finish chunk and usage is a whole answer without ``[DONE]``."""
    data = read("openai/chat_stream_text_with_usage.sse").replace(b"data: [DONE]\n\n", b"")
    decoder = openai().stream_decoder()
    chunks = decoder.feed(data)
    assert decoder.finish() == [] and decoder.done
    assert chunks[-2].finish_reason == "stop" and chunks[-1].usage is not None


def test_stream_without_finish_reason_is_a_protocol_error() -> None:
    """A stream that ends before any finish reason raises ProtocolError from finish(), after its chunks."""
    events = read("openai/chat_stream_text_with_usage.sse").split(b"\n\n")
    decoder = openai().stream_decoder()
    assert text_of(decoder.feed(b"\n\n".join(events[:3]) + b"\n\n")) == "I'm unable"
    with pytest.raises(ProtocolError, match=r"\[DONE\]") as info:
        decoder.finish()
    assert info.value.endpoint == "oa"


def test_malformed_event_is_a_protocol_error() -> None:
    """An event whose data is not JSON raises ProtocolError naming the endpoint."""
    decoder = openai().stream_decoder()
    with pytest.raises(ProtocolError) as info:
        decoder.feed(b'data: {"id": "x", "choices": [\n\n')
    assert info.value.endpoint == "oa"


def test_error_event_mid_stream_raises_after_earlier_chunks() -> None:
    """An ``{"error":…}`` event after text: the text is delivered, then the mapped error is raised."""
    lines = read("openai/chat_stream_text_with_usage.sse").split(b"\n\n")
    data = b"\n\n".join(lines[:3]) + b'\n\ndata: {"error": {"message": "The server had an error", "type": "server_error"}}\n\n'
    decoder = openai().stream_decoder()
    chunks = decoder.feed(data)
    assert text_of(chunks) == "I'm unable"
    with pytest.raises(ServerError, match="The server had an error"):
        decoder.finish()


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        ({"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}, RateLimited),
        ({"message": "maximum context length is 8192 tokens", "type": "invalid_request_error"}, ContextWindowExceeded),
        ({"message": "bad", "type": "invalid_request_error", "code": None}, BadRequest),
        ({"message": "Overloaded", "type": "overloaded_error"}, Overloaded),
        ({"message": "vLLM says so", "type": "BadRequestError", "code": 400}, BadRequest),
        ({"message": "upstream down", "type": "InternalServerError", "code": 503}, Overloaded),
        ({"message": "filtered", "code": "content_filter"}, ContentFiltered),
    ],
)
def test_error_event_classes(error: dict[str, Any], cls: type[ProviderError]) -> None:
    """An error event with no HTTP status is classified by its code or type."""
    decoder = openai().stream_decoder()
    with pytest.raises(cls):
        decoder.feed(b"data: " + msgspec.json.encode({"error": error}) + b"\n\n")


# --- non-stream replies ----------------------------------------------------------------------


def test_recorded_reply_decodes_exactly() -> None:
    """The SDK-recorded reply gives its text, finish, id, model and usage."""
    reply = openai().parse_chat(read("openai/chat_completion_nonstream_sdk_recorded.json"))
    assert reply.text.startswith("I'm unable to provide real-time weather updates.")
    assert reply.text.endswith("or a local news station.")
    assert reply.finish_reason == "stop"
    assert reply.id == "chatcmpl-ABfvaueLEMLNYbT8YzpJxsmiQ6HSY"
    assert reply.model == "gpt-4o-2024-08-06"
    assert reply.usage == Usage(input_tokens=14, output_tokens=37, total_tokens=51, reasoning_tokens=0)
    assert reply.endpoint == "oa"
    assert reply.provider == "openai"
    assert reply.tool_calls == []
    assert reply.reasoning is None


def test_recorded_parallel_tool_calls_reply() -> None:
    """Whole tool calls of a non-stream reply become ChatResponse.tool_calls, in order."""
    reply = openai().parse_chat(read("openai/chat_completion_nonstream_tool_calls_parallel_sdk_recorded.json"))
    assert reply.tool_calls == [
        ToolCall(
            id="call_fdNz3vOBKYgOIpMdWotB9MjY",
            name="GetWeatherArgs",
            arguments='{"city": "Edinburgh", "country": "GB", "units": "c"}',
        ),
        ToolCall(id="call_h1DWI1POMJLb0KwIyQHWXD4p", name="get_stock_price", arguments='{"ticker": "AAPL", "exchange": "NASDAQ"}'),
    ]
    assert reply.finish_reason == "tool_calls"
    assert reply.text == ""


def test_documented_tool_call_reply() -> None:
    """The API reference's tool-call example decodes to one call with its arguments verbatim."""
    reply = openai().parse_chat(read("openai/chat_completion_nonstream_tool_calls_api_reference.json"))
    assert reply.tool_calls == [
        ToolCall(id="call_abc123", name="get_current_weather", arguments='{\n"location": "Boston, MA"\n}')
    ]


def test_refusal_reply_is_the_text() -> None:
    """A non-stream refusal becomes the text."""
    reply = openai().parse_chat(read("openai/chat_completion_nonstream_refusal_sdk_recorded.json"))
    assert reply.text == "I'm very sorry, but I can't assist with that."


def test_length_reply() -> None:
    """A reply cut by max_tokens keeps finish "length"."""
    reply = openai().parse_chat(read("openai/chat_completion_nonstream_finish_length_sdk_recorded.json"))
    assert (reply.text, reply.finish_reason) == ('{"', "length")


def test_documented_reply_usage_details() -> None:
    """prompt_tokens_details.cached_tokens and completion_tokens_details.reasoning_tokens are mapped."""
    reply = openai().parse_chat(read("openai/chat_completion_nonstream_api_reference.json"))
    assert reply.usage == Usage(
        input_tokens=19, output_tokens=10, total_tokens=29, cached_input_tokens=0, reasoning_tokens=0
    )
    assert reply.model == "gpt-5.4"


def test_cached_tokens_are_mapped() -> None:
    """A non-zero cached_tokens count becomes cached_input_tokens."""
    body = {
        "choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2000, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1920}},
    }
    usage = openai().parse_chat(msgspec.json.encode(body)).usage
    assert usage == Usage(input_tokens=2000, output_tokens=5, total_tokens=2005, cached_input_tokens=1920)


def test_undecodable_or_empty_reply_is_a_protocol_error() -> None:
    """A body that is not a completion, or one without choices, raises ProtocolError."""
    with pytest.raises(ProtocolError):
        openai().parse_chat(b"<html>oops</html>")
    with pytest.raises(ProtocolError, match="no choices"):
        openai().parse_chat(b'{"id": "x", "choices": []}')


def test_error_envelope_under_200_raises_the_error() -> None:
    """A 200 body that is an error envelope raises the mapped error, not an empty reply."""
    with pytest.raises(RateLimited):
        openai().parse_chat(b'{"error": {"message": "slow down", "code": "rate_limit_exceeded"}}')


def test_embeddings_reply_in_input_order() -> None:
    """Embedding vectors come back ordered by ``index``, with usage."""
    reply = openai().parse_embed(read("openai/embeddings_sdk_test_shape.json"))
    assert reply.vectors == [[0.125, -2.5, 3.75]]
    assert reply.model == "text-embedding-3-small"
    assert reply.usage == Usage(input_tokens=1, total_tokens=1)
    shuffled = b'{"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}]}'
    assert openai().parse_embed(shuffled).vectors == [[1.0], [2.0]]


# --- requests --------------------------------------------------------------------------------


def test_openai_chat_request() -> None:
    """URL, headers and the exact body: endpoint model, max_completion_tokens, options passed through."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    request = ChatRequest(
        messages=[Message(role="system", content="be brief"), Message(role="user", content="hi")],
        model="a-route-name",
        max_tokens=50,
        temperature=0.0,
        top_p=0.5,
        stop=["\n"],
        tools=tools,
        tool_choice="auto",
        response_format=fmt,
        seed=7,
        user="u1",
    )
    http = openai(headers={"OpenAI-Organization": "org-1"}).chat_request(request, stream=False)
    assert (http.method, http.url) == ("POST", "https://api.openai.com/v1/chat/completions")
    assert http.headers == {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Organization": "org-1",
    }
    assert body_of(http) == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 50,
        "temperature": 0.0,
        "top_p": 0.5,
        "stop": ["\n"],
        "tools": tools,
        "tool_choice": "auto",
        "response_format": fmt,
        "seed": 7,
        "user": "u1",
    }


def test_openai_stream_request_asks_for_usage() -> None:
    """A stream request sets ``stream`` and ``stream_options.include_usage`` and accepts SSE."""
    http = openai().chat_request(ChatRequest(messages=[Message(role="user", content="hi")]), stream=True)
    body = body_of(http)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert http.headers["Accept"] == "text/event-stream"
    assert "max_completion_tokens" not in body


def test_messages_with_parts_tool_calls_and_tool_results_are_translated() -> None:
    """Image parts, assistant tool calls and tool results take OpenAI's wire shape."""
    messages = [
        Message(role="user", content=[TextPart(text="what is this?"), ImagePart(url="https://x/cat.png", detail="low")]),
        Message(role="assistant", tool_calls=[ToolCall(id="c1", name="look", arguments='{"q":1}')]),
        Message(role="tool", content="a cat", tool_call_id="c1"),
    ]
    body = body_of(openai().chat_request(ChatRequest(messages=messages), stream=False))
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "https://x/cat.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "look", "arguments": '{"q":1}'}}],
        },
        {"role": "tool", "content": "a cat", "tool_call_id": "c1"},
    ]


def test_json_object_response_format_passes_through() -> None:
    """``response_format: json_object`` is sent as given."""
    request = ChatRequest(messages=[Message(role="user", content="hi")], response_format={"type": "json_object"})
    assert body_of(openai().chat_request(request, stream=False))["response_format"] == {"type": "json_object"}


def test_openai_embed_and_probe_requests() -> None:
    """Embeddings ask for float vectors; the probe is an authenticated GET /models."""
    adapter = openai(base_url="https://proxy.example/v1/")
    http = adapter.embed_request(EmbeddingRequest(inputs=["a", "b"], dimensions=256))
    assert http.url == "https://proxy.example/v1/embeddings"
    assert body_of(http) == {"model": "gpt-4o-mini", "input": ["a", "b"], "encoding_format": "float", "dimensions": 256}
    probe = adapter.probe_request()
    assert (probe.method, probe.url, probe.body) == ("GET", "https://proxy.example/v1/models", None)
    assert probe.headers == {"Authorization": f"Bearer {KEY}"}


def test_azure_requests() -> None:
    """Azure puts the deployment and api-version in the URL, the key in ``api-key``, and sends max_tokens."""
    adapter = azure(base_url="https://res.openai.azure.com/")
    http = adapter.chat_request(ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=9), stream=True)
    assert http.url == "https://res.openai.azure.com/openai/deployments/my-gpt4o/chat/completions?api-version=2024-10-21"
    assert http.headers["api-key"] == KEY
    assert "Authorization" not in http.headers
    body = body_of(http)
    assert body["max_tokens"] == 9
    assert body["stream_options"] == {"include_usage": True}
    assert adapter.embed_request(EmbeddingRequest(inputs=["a"])).url == (
        "https://res.openai.azure.com/openai/deployments/my-gpt4o/embeddings?api-version=2024-10-21"
    )
    probe = adapter.probe_request()
    assert probe.url == "https://res.openai.azure.com/openai/models?api-version=2024-10-21"
    assert probe.headers == {"api-key": KEY}


def test_azure_api_version_and_entra_header() -> None:
    """``api_version`` is honoured; an Authorization header in Endpoint.headers replaces the key."""
    ep = Endpoint(
        name="az",
        provider="azure",
        model="dep",
        base_url="https://res.openai.azure.com/openai",
        api_version="2024-06-01",
        headers={"Authorization": "Bearer entra-token"},
    )
    adapter = AzureAdapter(ep, None)
    http = adapter.chat_request(ChatRequest(messages=[Message(role="user", content="hi")]), stream=False)
    assert http.url == "https://res.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-06-01"
    assert http.headers == {"Content-Type": "application/json", "Authorization": "Bearer entra-token"}


def test_deepseek_requests() -> None:
    """DeepSeek defaults to api.deepseek.com, sends max_tokens, probes /models and refuses embeddings."""
    adapter = deepseek()
    http = adapter.chat_request(ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=5), stream=False)
    assert http.url == "https://api.deepseek.com/chat/completions"
    assert http.headers["Authorization"] == f"Bearer {KEY}"
    assert body_of(http)["max_tokens"] == 5
    assert adapter.probe_request().url == "https://api.deepseek.com/models"
    with pytest.raises(InvalidRequest, match="deepseek has no embeddings API"):
        adapter.embed_request(EmbeddingRequest(inputs=["a"]))


def test_openai_compatible_requests() -> None:
    """Any base_url, no key needed (no Authorization then), custom headers on every request."""
    ep = Endpoint(
        name="vllm", provider="openai-compatible", model="qwen", base_url="http://127.0.0.1:8000/v1", headers={"X-Team": "a"}
    )
    adapter = adapter_for(ep)
    assert isinstance(adapter, OpenAICompatibleAdapter)
    http = adapter.chat_request(ChatRequest(messages=[Message(role="user", content="hi")], max_tokens=3), stream=False)
    assert http.url == "http://127.0.0.1:8000/v1/chat/completions"
    assert http.headers == {"Content-Type": "application/json", "X-Team": "a"}
    assert body_of(http)["max_tokens"] == 3
    assert adapter.probe_request().headers == {"X-Team": "a"}


def test_openai_compatible_needs_a_base_url() -> None:
    """An openai-compatible endpoint without base_url is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match="base_url"):
        adapter_for(Endpoint(name="x", provider="openai-compatible", model="m"))


# --- DeepSeek answers ------------------------------------------------------------------------


def test_deepseek_stream_usage_on_the_finish_chunk() -> None:
    """DeepSeek's documented stream: exact text, usage carried by the finish chunk itself."""
    chunks = decode(deepseek(), read("deepseek/chat_stream_docs.sse"))
    assert text_of(chunks) == "Hello! How can I assist you today?"
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(input_tokens=17, output_tokens=9, total_tokens=26)
    assert chunks[-1].id == "1f633d8bfc032625086f14113c411638"


def test_deepseek_keepalive_comments_change_nothing() -> None:
    """``: keep-alive`` comments before and inside the stream leave the chunks unchanged."""
    keepalive = read("deepseek/keepalive_comment_DERIVED.sse")
    stream = read("deepseek/chat_stream_docs.sse")
    with_comments = keepalive + stream.replace(b"\n\n", b"\n\n" + keepalive)
    assert with_comments.count(b": keep-alive") == 12
    assert decode(deepseek(), with_comments) == decode(deepseek(), stream)


def test_deepseek_reasoner_reply() -> None:
    """reasoning_content becomes reasoning, apart from the text; cached and reasoning tokens mapped."""
    reply = deepseek().parse_chat(read("deepseek/reasoner_nonstream_third_party_capture.json"))
    assert reply.text == "Hello! How can I assist you today?"
    assert reply.reasoning is not None and reply.reasoning.startswith('Okay, the user wrote "hello".')
    assert reply.usage == Usage(input_tokens=6, output_tokens=92, total_tokens=98, cached_input_tokens=0, reasoning_tokens=81)


def test_deepseek_reasoner_stream() -> None:
    """Reasoning deltas stream as ``reasoning`` and the final chunk carries usage with reasoning tokens."""
    first = read("deepseek/reasoner_stream_first_chunk_third_party_capture.json")
    thinking = b'{"id": "43a", "choices": [{"index": 0, "delta": {"content": null, "reasoning_content": "Hmm"}}]}'
    answer = b'{"id": "43a", "choices": [{"index": 0, "delta": {"content": "Hi", "reasoning_content": null}}]}'
    last = read("deepseek/reasoner_stream_last_chunk_third_party_capture.json")
    chunks = decode(deepseek(), compact_sse(first, thinking, answer, last))
    assert [(c.reasoning, c.text) for c in chunks[:2]] == [("Hmm", ""), ("", "Hi")]
    assert chunks[-1].usage == Usage(
        input_tokens=6, output_tokens=82, total_tokens=88, cached_input_tokens=0, reasoning_tokens=71
    )


def test_deepseek_cache_hit_tokens_and_keepalive_blank_lines() -> None:
    """prompt_cache_hit_tokens maps to cached_input_tokens; leading keep-alive blank lines are tolerated."""
    reply = deepseek().parse_chat(b"\n\n\n" + read("deepseek/chat_completion_docs_schema_example.json"))
    assert reply.usage.cached_input_tokens == 0
    body = b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 8}}'
    assert deepseek().parse_chat(body).usage.cached_input_tokens == 8
    reply = deepseek().parse_chat(read("deepseek/chat_completion_docs_example.json"))
    assert (reply.text, reply.id) == ("Hello! How can I help you today?", "930c60df-bf64-41c9-a88e-3ec75f81e00e")


# --- Azure answers ---------------------------------------------------------------------------


def test_azure_stream_with_annotations_and_null_usage() -> None:
    """Azure's stream: the choices:[] opener, filter annotations, usage:null and "..." lines emit nothing extra."""
    chunks = decode(azure(), read("azure/stream_async_filter_passes_docs.sse"))
    assert text_of(chunks) == "Color is a"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert all(c.usage is None for c in chunks)


def test_azure_blocked_stream_verbatim_is_a_protocol_error() -> None:
    """The doc's blocked stream as printed has a data line broken in two: that event is malformed JSON."""
    decoder = azure().stream_decoder()
    chunks = decoder.feed(read("azure/stream_async_filter_blocked_docs.sse"))
    assert text_of(chunks) == "Hey Jude,"
    with pytest.raises(ProtocolError, match="could not read the stream event"):
        decoder.finish()


def test_azure_blocked_stream_delivers_chunks_then_raises_content_filtered() -> None:
    """A stream finished by the content filter delivers every chunk, the finish included, then raises ContentFiltered."""
    # The Learn doc breaks one data line in two ("gpt-35- \n\nturbo"); join it as the wire has it.
    data = read("azure/stream_async_filter_blocked_docs.sse").replace(b'"gpt-35- \n\nturbo"', b'"gpt-35-turbo"')
    decoder = azure().stream_decoder()
    chunks = decoder.feed(data)
    assert text_of(chunks) == "Hey Jude, better"
    assert chunks[-1].finish_reason == "content_filter"
    with pytest.raises(ContentFiltered) as info:
        decoder.finish()
    assert info.value.endpoint == "az"


def test_azure_filtered_stream_raises_even_without_done() -> None:
    """A stream ending after a content_filter finish but before [DONE] still raises ContentFiltered."""
    data = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\ndata: {"choices":[{"index":0,"finish_reason":"content_filter"}]}\n\n'
    decoder = azure().stream_decoder()
    assert len(decoder.feed(data)) == 2
    with pytest.raises(ContentFiltered):
        decoder.finish()


def test_azure_replies() -> None:
    """The spec example (no model field) and the annotated reply decode; the model falls back to the deployment."""
    example = msgspec.json.decode(read("azure/spec_example_chat_completions_2024-10-21.json"))
    reply = azure().parse_chat(msgspec.json.encode(example["responses"]["200"]["body"]))
    assert reply.text.startswith("Ahoy matey!")
    assert reply.model == "my-gpt4o"
    assert reply.usage == Usage(input_tokens=33, output_tokens=557, total_tokens=590)
    annotated = azure().parse_chat(read("azure/content_filter_annotations_response_docs.json"))
    assert annotated.text == "Example model response will be returned "


def test_azure_filtered_reply() -> None:
    """finish_reason content_filter with no text raises ContentFiltered; with partial text it is returned."""
    empty = b'{"choices":[{"index":0,"finish_reason":"content_filter","message":{"role":"assistant","content":null}}]}'
    with pytest.raises(ContentFiltered):
        azure().parse_chat(empty)
    partial = b'{"choices":[{"index":0,"finish_reason":"content_filter","message":{"content":"Once upon"}}]}'
    reply = azure().parse_chat(partial)
    assert (reply.text, reply.finish_reason) == ("Once upon", "content_filter")


@pytest.mark.parametrize(
    "name",
    [
        "azure/content_filter_error_400_real_innererror_DERIVED.json",
        "azure/content_filter_error_400_real_no_innererror.json",
        "azure/content_filter_error_400_docs_INVALID_JSON.txt",
    ],
)
def test_azure_prompt_filter_errors(name: str) -> None:
    """Azure's 400 content_filter bodies (with, without innererror, and the doc's invalid JSON) are ContentFiltered."""
    error = azure().parse_error(400, {}, read(name))
    assert type(error) is ContentFiltered
    assert error.code == "content_filter"
    assert error.status == 400
    assert error.message.startswith("The response was filtered due to the prompt triggering Azure")
    assert not error.retryable


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body", "cls", "code"),
    [
        (400, {}, "openai/error_400_context_length_exceeded.json", ContextWindowExceeded, "context_length_exceeded"),
        (401, {}, "openai/error_401_invalid_api_key.json", AuthenticationFailed, "invalid_api_key"),
        (429, {}, "openai/error_429_rate_limit_exceeded.json", RateLimited, "rate_limit_exceeded"),
        (429, {}, "openai/error_429_insufficient_quota.json", AuthenticationFailed, "insufficient_quota"),
        (400, {}, b'{"error": {"message": "bad param", "type": "invalid_request_error", "param": "x", "code": null}}', BadRequest, None),
        (403, {}, b'{"error": {"message": "no access", "type": "invalid_request_error"}}', AuthenticationFailed, None),
        (404, {}, b'{"error": {"message": "The model `gpt-9` does not exist", "code": "model_not_found"}}', NotFound, "model_not_found"),
        (408, {}, b"", Timeout, None),
        (409, {"x-should-retry": "true"}, b'{"error": {"message": "lock timeout"}}', ServerError, None),
        (413, {}, b'{"error": {"message": "too big"}}', BadRequest, None),
        (422, {}, b'{"detail": "Invalid Parameters"}', BadRequest, None),
        (429, {"x-should-retry": "false"}, b'{"error": {"message": "nope"}}', AuthenticationFailed, None),
        (500, {}, b'{"error": {"message": "The server had an error", "type": "server_error"}}', ServerError, None),
        (502, {}, b"<html><body>502 Bad Gateway</body></html>", ServerError, None),
        (503, {}, b'{"error": {"message": "overloaded"}}', Overloaded, None),
        (529, {}, b"", Overloaded, None),
    ],
)
def test_openai_error_mapping(
    status: int, headers: dict[str, str], body: bytes | str, cls: type[ProviderError], code: str | None
) -> None:
    """Each status and body maps to exactly one error class with the endpoint, status and code filled."""
    raw = read(body) if isinstance(body, str) else body
    error = openai().parse_error(status, headers, raw)
    assert type(error) is cls
    assert (error.endpoint, error.provider, error.status, error.code) == ("oa", "openai", status, code)
    assert error.message


def test_non_json_error_body_is_quoted() -> None:
    """An HTML error page is summarised on one line in the message."""
    error = openai().parse_error(502, {}, b"<html>\n<body>502 Bad Gateway</body>\n</html>")
    assert error.message == "<html> <body>502 Bad Gateway</body> </html>"


def test_deepseek_context_error_and_402() -> None:
    """DeepSeek's context-length 400 (code invalid_request_error) is ContextWindowExceeded; 402 balance is misconfiguration."""
    body = (
        b'{"error": {"message": "This model\'s maximum context length is 131072 tokens. However, you requested '
        b'131134 tokens (122942 in the messages, 8192 in the completion). Please reduce the length of the messages '
        b'or completion.", "type": "invalid_request_error", "param": null, "code": "invalid_request_error"}}'
    )
    assert type(deepseek().parse_error(400, {}, body)) is ContextWindowExceeded
    balance = deepseek().parse_error(402, {}, b'{"error": {"message": "Insufficient Balance", "type": "unknown_error"}}')
    assert type(balance) is AuthenticationFailed


def test_retry_after_sources() -> None:
    """retry-after-ms beats retry-after; without headers a 429's "try again in 6ms" is read."""
    body = read("openai/error_429_rate_limit_exceeded.json")
    assert openai().parse_error(429, {}, body).retry_after == pytest.approx(0.006)
    assert openai().parse_error(429, {"retry-after": "20"}, body).retry_after == 20.0
    assert openai().parse_error(429, {"retry-after": "20", "retry-after-ms": "1500"}, body).retry_after == 1.5
    older = b'{"error": {"message": "Rate limit reached ... Please try again in 20s. Contact support", "type": "requests"}}'
    assert openai().parse_error(429, {}, older).retry_after == 20.0


def test_rate_limit_headers_are_read() -> None:
    """x-ratelimit-* headers become a snapshot with Go-duration resets, on errors and on success."""
    headers = {
        "x-ratelimit-limit-requests": "5000",
        "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    expected = RateLimitSnapshot(
        limit_requests=5000,
        remaining_requests=4999,
        reset_requests=0.012,
        limit_tokens=160000,
        remaining_tokens=159976,
        reset_tokens=360.0,
    )
    assert openai().rate_limit(headers) == expected
    assert openai().parse_error(429, headers, read("openai/error_429_rate_limit_exceeded.json")).rate_limit == expected
    assert openai().rate_limit({"content-type": "application/json"}) is None


def test_key_never_appears_in_errors() -> None:
    """A key echoed back in an error body or code is redacted."""
    body = msgspec.json.encode({"error": {"message": f"Incorrect API key provided: {KEY}.", "code": KEY}})
    error = openai().parse_error(401, {}, body)
    assert KEY not in str(error) and KEY not in repr(error) and KEY not in (error.code or "")
    assert "***" in error.message
    event = msgspec.json.encode({"error": {"message": f"bad key {KEY}", "type": "auth"}})
    with pytest.raises(AuthenticationFailed) as info:
        openai().stream_decoder().feed(b"data: " + event + b"\n\n")
    assert KEY not in str(info.value)
    assert KEY not in repr(openai())
