"""The Ollama dialect: /api/chat requests and options, the documented NDJSON streams and
replies decoded exactly, errors inside HTTP 200 streams, and the status mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from chunks import body_of

from runtime.errors import (
    BadRequest,
    ContextWindowExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    ProtocolError,
    ProviderError,
    ServerError,
)
from runtime.policy import Endpoint
from runtime.providers import OllamaAdapter, adapter_for
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

DATA = Path(__file__).parent / "data" / "ollama"


def ollama(**kw: Any) -> OllamaAdapter:
    adapter = adapter_for(Endpoint(name="local", provider="ollama", model="llama3.2", **kw))
    assert isinstance(adapter, OllamaAdapter)
    return adapter


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def decode(data: bytes) -> list[StreamChunk]:
    decoder = ollama().stream_decoder()
    chunks = decoder.feed(data)
    chunks += decoder.finish()
    assert decoder.done
    return chunks


# --- streams ---------------------------------------------------------------------------------


def test_chat_stream_decodes_text_and_final_usage() -> None:
    """The documented /api/chat stream: a text chunk, then the done chunk with eval counts as usage."""
    chunks = decode(read("chat_stream_DERIVED.ndjson"))
    assert chunks == [
        StreamChunk(text="The", model="llama3.2"),
        StreamChunk(
            finish_reason="stop",
            usage=Usage(input_tokens=26, output_tokens=282, total_tokens=308),
            model="llama3.2",
        ),
    ]


def test_tool_stream_arguments_object_becomes_json_text() -> None:
    """A streamed tool call (arguments as an object) is one whole delta; finish becomes "tool_calls"."""
    chunks = decode(read("chat_stream_tools_DERIVED.ndjson"))
    assert chunks[0].tool_calls == [ToolCallDelta(index=0, id="call_0", name="get_weather", arguments='{"city":"Tokyo"}')]
    assert chunks[-1].finish_reason == "tool_calls"
    assert chunks[-1].usage == Usage(input_tokens=169, output_tokens=15, total_tokens=184)


def test_stream_split_anywhere_gives_the_same_chunks() -> None:
    """Feeding the stream one byte at a time gives the chunks of feeding it whole."""
    data = read("chat_stream_tools_DERIVED.ndjson")
    decoder = ollama().stream_decoder()
    chunks: list[StreamChunk] = []
    for i in range(len(data)):
        chunks += decoder.feed(data[i : i + 1])
    chunks += decoder.finish()
    assert chunks == decode(data)


def test_last_line_without_newline_still_ends_the_stream() -> None:
    """A done line with no trailing newline is flushed at end of input and completes the stream."""
    assert decode(read("chat_stream_DERIVED.ndjson").rstrip(b"\n")) == decode(read("chat_stream_DERIVED.ndjson"))


def test_stream_without_done_is_a_protocol_error() -> None:
    """A stream that ends before ``done: true`` raises ProtocolError after delivering its text."""
    first_line = read("chat_stream_DERIVED.ndjson").split(b"\n")[0] + b"\n"
    decoder = ollama().stream_decoder()
    assert decoder.feed(first_line)[0].text == "The"
    with pytest.raises(ProtocolError, match="done"):
        decoder.finish()


def test_documented_midstream_error_raises_server_error() -> None:
    """The docs' mid-stream ``{"error": …}`` line under HTTP 200 raises ServerError with its message."""
    decoder = ollama().stream_decoder()
    with pytest.raises(ServerError, match="an error was encountered while running the model") as info:
        decoder.feed(read("generate_stream_midstream_error_docs.ndjson"))
        decoder.finish()
    assert info.value.endpoint == "local"


def test_error_after_text_is_raised_after_the_text() -> None:
    """Text before an error line is delivered first; the error comes on the next call."""
    first_line = read("chat_stream_DERIVED.ndjson").split(b"\n")[0]
    decoder = ollama().stream_decoder()
    chunks = decoder.feed(first_line + b'\n{"error":"model \\"llama3\\" not found, try pulling it first"}\n')
    assert [c.text for c in chunks] == ["The"]
    with pytest.raises(NotFound, match="not found"):
        decoder.finish()


def test_thinking_streams_as_reasoning() -> None:
    """``message.thinking`` becomes reasoning, apart from the text."""
    data = (
        b'{"model":"qwen3","message":{"role":"assistant","content":"","thinking":"Hmm."},"done":false}\n'
        b'{"model":"qwen3","message":{"role":"assistant","content":"Hi"},"done":false}\n'
        b'{"model":"qwen3","message":{"role":"assistant","content":""},"done":true,"done_reason":"length","eval_count":2}\n'
    )
    chunks = decode(data)
    assert [(c.reasoning, c.text) for c in chunks[:2]] == [("Hmm.", ""), ("", "Hi")]
    assert chunks[-1].finish_reason == "length"


def test_malformed_line_is_a_protocol_error() -> None:
    """A line that is not JSON raises ProtocolError."""
    with pytest.raises(ProtocolError):
        ollama().stream_decoder().feed(b"{oops\n")


# --- whole replies ---------------------------------------------------------------------------


def test_reply_decodes_exactly() -> None:
    """The documented non-stream reply: text, finish "stop" (no done_reason given) and usage."""
    reply = ollama().parse_chat(read("chat_nonstream_docs.json"))
    assert (reply.text, reply.finish_reason, reply.model) == ("Hello! How are you today?", "stop", "llama3.2")
    assert reply.usage == Usage(input_tokens=26, output_tokens=298, total_tokens=324)


def test_tool_reply_decodes_exactly() -> None:
    """The documented tool-call reply: the call with compact JSON arguments and finish "tool_calls"."""
    reply = ollama().parse_chat(read("chat_nonstream_tools_docs.json"))
    assert reply.tool_calls == [ToolCall(id="call_0", name="get_weather", arguments='{"city":"Tokyo"}')]
    assert reply.finish_reason == "tool_calls"
    assert reply.usage == Usage(input_tokens=169, output_tokens=18, total_tokens=187)


def test_embeddings_replies() -> None:
    """/api/embed gives one vector per input, in order, with prompt_eval_count as usage when present."""
    one = ollama().parse_embed(read("embed_docs.json"))
    assert len(one.vectors) == 1 and len(one.vectors[0]) == 10
    assert one.vectors[0][:2] == [0.010071029, -0.0017594862]
    assert one.usage == Usage(input_tokens=8, total_tokens=8)
    assert one.model == "all-minilm"
    two = ollama().parse_embed(read("embed_multiple_docs.json"))
    assert [v[0] for v in two.vectors] == [0.010071029, -0.0098027075]


# --- requests --------------------------------------------------------------------------------


def test_chat_request_options_and_format() -> None:
    """max_tokens→num_predict, sampling options under ``options``, json_object→"json", stream always sent."""
    request = ChatRequest(
        messages=[Message(role="system", content="terse"), Message(role="user", content="hi")],
        max_tokens=64,
        temperature=0.1,
        top_p=0.9,
        stop=["\n\n"],
        seed=42,
        response_format={"type": "json_object"},
        tool_choice="auto",
    )
    http = ollama().chat_request(request, stream=False)
    assert (http.method, http.url) == ("POST", "http://127.0.0.1:11434/api/chat")
    assert http.headers == {"Content-Type": "application/json"}
    assert body_of(http) == {
        "model": "llama3.2",
        "messages": [{"role": "system", "content": "terse"}, {"role": "user", "content": "hi"}],
        "stream": False,
        "options": {"num_predict": 64, "temperature": 0.1, "top_p": 0.9, "stop": ["\n\n"], "seed": 42},
        "format": "json",
    }
    assert body_of(ollama().chat_request(ChatRequest(messages=[Message(role="user", content="x")]), stream=True)) == {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
    }


def test_json_schema_format_tools_and_tool_turns() -> None:
    """json_schema sends the schema as ``format``; tool calls go back with object arguments; tool turns name the tool."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    request = ChatRequest(
        messages=[
            Message(role="user", content="weather?"),
            Message(role="assistant", tool_calls=[ToolCall(id="call_0", name="get_weather", arguments='{"city":"Tokyo"}')]),
            Message(role="tool", name="get_weather", tool_call_id="call_0", content="sunny"),
        ],
        tools=tools,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    body = body_of(ollama().chat_request(request, stream=True))
    assert body["format"] == schema
    assert body["tools"] == tools
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_0", "function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}],
        },
        {"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_0"},
    ]


def test_images_must_be_inline() -> None:
    """data: images become base64 ``images``; a link is refused before sending."""
    inline = ChatRequest(
        messages=[Message(role="user", content=[TextPart(text="what?"), ImagePart(url="data:image/png;base64,iVBOR")])]
    )
    assert body_of(ollama().chat_request(inline, stream=False))["messages"] == [
        {"role": "user", "content": "what?", "images": ["iVBOR"]}
    ]
    linked = ChatRequest(messages=[Message(role="user", content=[ImagePart(url="https://x/cat.png")])])
    with pytest.raises(InvalidRequest, match="inline images"):
        ollama().chat_request(linked, stream=False)


def test_embed_and_probe_requests_with_base_url_key_and_headers() -> None:
    """/api/embed takes all inputs at once; the probe is GET /api/tags; a key is sent as Bearer."""
    adapter = ollama(base_url="https://ollama.example.com/", api_key="secret", headers={"X-Trace": "1"})
    http = adapter.embed_request(EmbeddingRequest(inputs=["a", "b"], dimensions=8))
    assert http.url == "https://ollama.example.com/api/embed"
    assert body_of(http) == {"model": "llama3.2", "input": ["a", "b"], "dimensions": 8}
    assert http.headers == {"Content-Type": "application/json", "Authorization": "Bearer secret", "X-Trace": "1"}
    probe = adapter.probe_request()
    assert (probe.method, probe.url) == ("GET", "https://ollama.example.com/api/tags")
    assert probe.headers == {"Authorization": "Bearer secret", "X-Trace": "1"}
    assert ollama().stream_content_types == ("application/x-ndjson",)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (404, "error_404_model_not_found_issue3876.json", NotFound),
        (404, b'{"error":"model \'llama9\' not found"}', NotFound),
        (500, "error_shape_docs.json", ServerError),
        (400, b'{"error":"missing request body"}', BadRequest),
        (400, b'{"error":"input length exceeds the context length"}', ContextWindowExceeded),
        (503, b'{"error":"server busy, please try again.  maximum pending requests exceeded"}', Overloaded),
        (502, b"Bad Gateway", ServerError),
    ],
)
def test_error_mapping(status: int, body: bytes | str, cls: type[ProviderError]) -> None:
    """Each status and ``{"error": …}`` body maps to exactly one error class, keeping the message."""
    raw = read(body) if isinstance(body, str) else body
    error = ollama().parse_error(status, {}, raw)
    assert type(error) is cls
    assert (error.endpoint, error.provider, error.status) == ("local", "ollama", status)
    assert error.message


def test_recorded_not_found_message_is_kept() -> None:
    """The real 404 body's message is the error's message."""
    error = ollama().parse_error(404, {}, read("error_404_model_not_found_issue3876.json"))
    assert error.message == "model 'llama3' not found, try pulling it first"
