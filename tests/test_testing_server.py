"""The fault-injecting endpoints speak each provider's wire format and misbehave on demand.

The wire shapes are checked against excerpts of recorded provider transcripts and the
providers' documented examples, copied here so the tests stand alone. Excerpts
from Anthropic's live captures have the padding spaces before ``}`` removed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from waiting import until

from runtime.policy import Endpoint
from runtime.testing import Decision, Faults, FaultyEndpoint, LocalEndpoints

pytestmark = pytest.mark.anyio

# --- excerpts of the recorded fixtures ---------------------------------------------------

# openai/chat_completion_object_api_reference.json (the documented current shape)
OPENAI_CHAT = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT", "object": "chat.completion", "created": 1741569952,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!", "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": "fp_44709d6fcb",
}
# openai/chat_stream_text_with_usage.sse: role chunk, a content chunk, finish chunk, usage chunk
OPENAI_STREAM = [
    '{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]}',
    '{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{"content":"I\'m"},"logprobs":null,"finish_reason":null}]}',
    '{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}',
    '{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL","object":"chat.completion.chunk","created":1727346168,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_5050236cbd","choices":[],"usage":{"prompt_tokens":14,"completion_tokens":30,"total_tokens":44,"completion_tokens_details":{"reasoning_tokens":0}}}',
]
# openai/chat_stream_tool_call_single.sse: the first chunk and an arguments fragment
OPENAI_TOOL_STREAM = [
    '{"id":"chatcmpl-ABfwERreu9s99xXsVuOWtIB2UOx62","object":"chat.completion.chunk","created":1727346182,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_143bb8492c","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_4XzlGBLtUe9dy3GVNV4jhq7h","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}]}',
    '{"id":"chatcmpl-ABfwERreu9s99xXsVuOWtIB2UOx62","object":"chat.completion.chunk","created":1727346182,"model":"gpt-4o-2024-08-06","system_fingerprint":"fp_143bb8492c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\""}}]},"logprobs":null,"finish_reason":null}]}',
]
# openai/embeddings_sdk_test_shape.json
OPENAI_EMBEDDINGS = {"data": [{"embedding": [0.125, -2.5, 3.75], "index": 0, "object": "embedding"}],
                     "model": "text-embedding-3-small", "object": "list", "usage": {"prompt_tokens": 1, "total_tokens": 1}}
# anthropic/messages_nonstream_recorded.json
ANTHROPIC_MESSAGE = json.loads(
    '{"model":"claude-sonnet-4-5-20250929","id":"msg_01T4jd6NyD9xGGtTPDC4ogy5","type":"message","role":"assistant","content":[{"type":"text","text":"{}"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":406,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":50,"service_tier":"standard","inference_geo":"not_available"}}'
)
# anthropic/stream_text_recorded_live.sse: the event order (9 text deltas there)
ANTHROPIC_EVENTS = ["message_start", "content_block_start", "ping", *["content_block_delta"] * 9,
                    "content_block_stop", "message_delta", "message_stop"]
ANTHROPIC_MESSAGE_START = json.loads(
    '{"type":"message_start","message":{"model":"claude-haiku-4-5-20251001","id":"msg_016HxyUMAncysqX7dn1kWNRx","type":"message","role":"assistant","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":770,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":8,"service_tier":"standard","inference_geo":"not_available"}}}'
)
ANTHROPIC_MESSAGE_DELTA = json.loads(
    '{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"input_tokens":770,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":38}}'
)
# anthropic/stream_tool_use_recorded_live.sse
ANTHROPIC_TOOL_BLOCK = json.loads(
    '{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_018acGYLtfR52q9yDbWaEdQZ","name":"get_weather","input":{},"caller":{"type":"direct"}}}'
)
# anthropic/error_429_rate_limit_recorded_body.json (message shortened), error_529_overloaded_body.json,
# stream_error_event_docs.sse
ANTHROPIC_429 = {"type": "error", "error": {"type": "rate_limit_error", "message": "..."}, "request_id": "req_011CYK5n67SytMUxm8WMZUWY"}
ANTHROPIC_529 = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
ANTHROPIC_STREAM_ERROR = 'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
# ollama/chat_stream_DERIVED.ndjson (a chunk; the final line with done_reason as in chat_stream_tools_DERIVED.ndjson)
OLLAMA_CHUNK = {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": "The"}, "done": False}
OLLAMA_FINAL = json.loads(
    '{"model":"llama3.2","created_at":"2025-07-07T20:22:19.19314Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":182242375,"load_duration":41295167,"prompt_eval_count":169,"prompt_eval_duration":24573166,"eval_count":15,"eval_duration":115959084}'
)
OLLAMA_TOOL_CHUNK = json.loads(
    '{"model":"llama3.2","created_at":"2025-07-07T20:22:19.184789Z","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"get_weather","arguments":{"city":"Tokyo"}}}]},"done":false}'
)
# ollama/embed_docs.json, tags_docs.json (one model), generate_stream_midstream_error_docs.ndjson (last line)
OLLAMA_EMBED = {"model": "all-minilm", "embeddings": [[0.010071029, -0.0017594862]], "total_duration": 14143917,
                "load_duration": 1019500, "prompt_eval_count": 8}
OLLAMA_TAG = json.loads(
    '{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2025-05-04T17:37:44.706015396-07:00","size":2019393189,"digest":"a80c4f17acd55265feec403c7aef86be0c25983ab279d83f3bcd3abbcb5b8b72","details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],"parameter_size":"3.2B","quantization_level":"Q4_K_M"}}'
)
OLLAMA_STREAM_ERROR = {"error": "an error was encountered while running the model"}

WEATHER_TOOL_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}
CHAT_PATH = {"openai": "/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}


# --- helpers ----------------------------------------------------------------------------


def shape(value: Any) -> Any:
    """A value's structure: dict keys (recursively), list element shape, scalar kind."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    if value is None:
        return None
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) per SSE event."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        events.append((name, "\n".join(data)))
    return events


def body(dialect: str, text: str = "hi there", **extra: Any) -> dict[str, Any]:
    """A minimal chat request of the dialect."""
    req: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if dialect == "anthropic":
        req["max_tokens"] = 100
    if dialect == "ollama":
        req["stream"] = False
    req.update(extra)
    return req


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client."""
    async with aiohttp.ClientSession() as client:
        yield client


async def post(client: aiohttp.ClientSession, ep: FaultyEndpoint, payload: dict[str, Any]) -> tuple[int, Any, Any]:
    """POST a chat request; (status, parsed JSON body, headers)."""
    async with client.post(ep.base_url + CHAT_PATH[ep.dialect], json=payload) as resp:
        return resp.status, json.loads(await resp.read()), resp.headers


async def stream(client: aiohttp.ClientSession, ep: FaultyEndpoint, payload: dict[str, Any]) -> bytes:
    """POST a streaming chat request; the whole raw body."""
    async with client.post(ep.base_url + CHAT_PATH[ep.dialect], json=payload) as resp:
        assert resp.status == 200
        return await resp.read()


# --- OpenAI -----------------------------------------------------------------------------


async def test_openai_chat_json_matches_fixture(session: aiohttp.ClientSession) -> None:
    """An OpenAI completion has the documented shape, the configured text and word counts."""
    async with FaultyEndpoint("openai", name="primary", text="hello big world") as ep:
        status, data, headers = await post(session, ep, body("openai", "one two three four"))
    assert status == 200
    assert shape(data) == shape(OPENAI_CHAT)
    assert data["choices"][0]["message"]["content"] == "hello big world"
    assert data["model"] == "m"
    assert (data["usage"]["prompt_tokens"], data["usage"]["completion_tokens"], data["usage"]["total_tokens"]) == (4, 3, 7)
    assert headers["x-ratelimit-remaining-requests"] == "9999"
    assert ep.base_url.endswith("/v1")


async def test_openai_stream_matches_fixture(session: aiohttp.ClientSession) -> None:
    """An OpenAI stream: role chunk, one delta per word, finish chunk, usage-only chunk, [DONE]."""
    async with FaultyEndpoint("openai", text="hello big world") as ep:
        raw = await stream(session, ep, body("openai", stream=True, stream_options={"include_usage": True}))
        plain = await stream(session, ep, body("openai", stream=True))
    assert raw.endswith(b"data: [DONE]\n\n")
    events = [data for _, data in sse(raw)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    fixture = [json.loads(e) for e in OPENAI_STREAM]
    assert shape(chunks[0]) == shape(fixture[0])
    assert [shape(c) for c in chunks[1:-2]] == [shape(fixture[1])] * 3
    assert shape(chunks[-2]) == shape(fixture[2]) and chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert shape(chunks[-1]) == shape(fixture[3]) and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 0}}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "hello big world"
    plain_chunks = [json.loads(d) for _, d in sse(plain)[:-1]]
    assert all(c["choices"] for c in plain_chunks), "no usage chunk without stream_options.include_usage"


async def test_openai_tool_call_stream_and_json(session: aiohttp.ClientSession) -> None:
    """With tools, OpenAI streams tool_calls fragments (id and name first) and answers tool_calls as JSON."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}}]
    async with FaultyEndpoint("openai") as ep:
        raw = await stream(session, ep, body("openai", "Paris", tools=tools, stream=True))
        _, data, _ = await post(session, ep, body("openai", "Paris", tools=tools))
        answered = [{"role": "user", "content": "Paris"}, {"role": "tool", "tool_call_id": "x", "content": "sunny"}]
        _, after_tool, _ = await post(session, ep, {"model": "m", "messages": answered, "tools": tools})
    chunks = [json.loads(d) for _, d in sse(raw)[:-1]]
    fixture = [json.loads(e) for e in OPENAI_TOOL_STREAM]
    assert shape(chunks[0]) == shape(fixture[0])
    assert all(shape(c) == shape(fixture[1]) for c in chunks[1:-1])
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    arguments = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[:-1])
    assert json.loads(arguments) == {"city": "Paris", "days": 1}
    call = data["choices"][0]["message"]["tool_calls"][0]
    assert data["choices"][0]["finish_reason"] == "tool_calls" and data["choices"][0]["message"]["content"] is None
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 1}
    assert after_tool["choices"][0]["finish_reason"] == "stop", "a tool result gets a text answer"


async def test_openai_embeddings_and_models(session: aiohttp.ClientSession) -> None:
    """OpenAI embeddings are deterministic unit vectors in the SDK's shape (floats or base64); /v1/models lists the model."""
    async with FaultyEndpoint("openai", model="gpt-x", dimensions=4) as ep:
        async with session.post(ep.base_url + "/embeddings", json={"model": "e", "input": ["a b", "c"]}) as resp:
            data = await resp.json()
        async with session.post(ep.base_url + "/embeddings", json={"model": "e", "input": "a b", "encoding_format": "base64"}) as resp:
            b64 = await resp.json()
        async with session.get(ep.base_url + "/models") as resp:
            models = await resp.json()
    assert shape(data) == shape(OPENAI_EMBEDDINGS)
    assert [d["index"] for d in data["data"]] == [0, 1] and data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vector = data["data"][0]["embedding"]
    assert len(vector) == 4 and abs(sum(v * v for v in vector) - 1) < 1e-4
    decoded = struct.unpack("<4f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(vector, abs=1e-6)
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["gpt-x"]
    assert ep.stats.probes == 1 and ep.stats.requests == 2


async def test_azure_and_deepseek_paths(session: aiohttp.ClientSession) -> None:
    """Azure deployment paths and DeepSeek's path without /v1 are served with the OpenAI wire."""
    async with FaultyEndpoint("azure", model="dep") as az, FaultyEndpoint("deepseek") as ds:
        url = az.base_url + "/openai/deployments/dep/chat/completions?api-version=2024-10-21"
        async with session.post(url, json={"messages": [{"role": "user", "content": "x"}]}) as resp:
            azure = await resp.json()
        status, _, _ = await post(session, ds, body("openai"))
    assert azure["model"] == "dep" and azure["object"] == "chat.completion"
    assert status == 200 and ds.base_url == ds.url


async def test_official_openai_sdk_reads_every_answer() -> None:
    """The official openai SDK parses the completion, stream with usage, tool-call stream, embeddings, models and 429."""
    openai = pytest.importorskip("openai")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}}]
    messages = [{"role": "user", "content": "Paris"}]
    async with FaultyEndpoint("openai", text="hello big world") as ep:
        client = openai.AsyncOpenAI(base_url=ep.base_url, api_key="k", max_retries=0, timeout=30)
        try:
            reply = await client.chat.completions.create(model="m", messages=messages)
            assert reply.choices[0].message.content == "hello big world" and reply.usage.completion_tokens == 3
            chunks = [c async for c in await client.chat.completions.create(model="m", messages=messages, stream=True, stream_options={"include_usage": True})]
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello big world"
            assert chunks[-1].usage.total_tokens == 4
            async with client.chat.completions.stream(model="m", messages=messages, tools=tools) as tool_stream:
                final = await tool_stream.get_final_completion()
            assert json.loads(final.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris", "days": 1}
            vectors = await client.embeddings.create(model="e", input=["a", "b"])  # base64 on the wire
            assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8
            assert [m.id async for m in client.models.list()] == ["gpt-4o-mini"]
            ep.faults.fail_next(1, 429)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", messages=messages)
            assert caught.value.response.headers["retry-after"] == "1" and caught.value.code == "rate_limit_exceeded"
        finally:
            await client.close()


# --- Anthropic --------------------------------------------------------------------------


async def test_anthropic_message_json_matches_fixture(session: aiohttp.ClientSession) -> None:
    """An Anthropic message has the recorded shape, end_turn and word counts."""
    async with FaultyEndpoint("anthropic", text="hello big world") as ep:
        status, data, headers = await post(session, ep, body("anthropic", "one two", system="be brief"))
    assert status == 200
    assert shape(data) == shape(ANTHROPIC_MESSAGE)
    assert data["content"][0]["text"] == "hello big world" and data["stop_reason"] == "end_turn"
    assert (data["usage"]["input_tokens"], data["usage"]["output_tokens"]) == (4, 3)
    assert headers["request-id"].startswith("req_")


async def test_anthropic_stream_matches_fixture(session: aiohttp.ClientSession) -> None:
    """An Anthropic stream has the recorded event order and event shapes, ending with message_stop."""
    text = " ".join(f"w{i}" for i in range(9))
    async with FaultyEndpoint("anthropic", text=text) as ep:
        raw = await stream(session, ep, body("anthropic", stream=True))
    events = sse(raw)
    assert [name for name, _ in events] == ANTHROPIC_EVENTS
    datas = [json.loads(d) for _, d in events]
    assert all(d["type"] == name for (name, _), d in zip(events, datas, strict=True))
    assert shape(datas[0]) == shape(ANTHROPIC_MESSAGE_START)
    assert shape(datas[-2]) == shape(ANTHROPIC_MESSAGE_DELTA) and datas[-2]["usage"]["output_tokens"] == 9
    assert "".join(d["delta"]["text"] for d in datas if d["type"] == "content_block_delta") == text


async def test_anthropic_tool_use_stream(session: aiohttp.ClientSession) -> None:
    """With tools, Anthropic streams a tool_use block and input_json_delta fragments, stop_reason tool_use."""
    tools = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER_TOOL_SCHEMA}]
    async with FaultyEndpoint("anthropic") as ep:
        raw = await stream(session, ep, body("anthropic", "Oslo", tools=tools, stream=True))
        _, data, _ = await post(session, ep, body("anthropic", "Oslo", tools=tools))
    datas = [json.loads(d) for _, d in sse(raw)]
    assert shape(datas[1]) == shape(ANTHROPIC_TOOL_BLOCK)
    partial = "".join(d["delta"]["partial_json"] for d in datas if d["type"] == "content_block_delta")
    assert json.loads(partial) == {"city": "Oslo", "days": 1}
    assert datas[-2]["delta"]["stop_reason"] == "tool_use"
    assert data["content"][0] == {"type": "tool_use", "id": data["content"][0]["id"], "name": "get_weather", "input": {"city": "Oslo", "days": 1}}


async def test_anthropic_rejects_missing_max_tokens(session: aiohttp.ClientSession) -> None:
    """Like the real API, Anthropic answers 400 invalid_request_error when max_tokens is missing."""
    async with FaultyEndpoint("anthropic") as ep:
        status, data, _ = await post(session, ep, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert status == 400
    assert shape(data) == shape(ANTHROPIC_429) and data["error"]["type"] == "invalid_request_error"


# --- Ollama -----------------------------------------------------------------------------


async def test_ollama_chat_json_and_ndjson_stream(session: aiohttp.ClientSession) -> None:
    """Ollama answers JSON with stream false and NDJSON by default, ending with done:true and metrics."""
    async with FaultyEndpoint("ollama", text="hello big world") as ep:
        status, data, _ = await post(session, ep, body("ollama", "one two"))
        async with session.post(ep.base_url + "/api/chat", json={"model": "m", "messages": [{"role": "user", "content": "x"}]}) as resp:
            assert resp.headers["Content-Type"] == "application/x-ndjson"
            raw = await resp.read()
    assert status == 200
    expected = {**OLLAMA_FINAL, "message": {"role": "assistant", "content": "..."}}
    assert shape(data) == shape(expected) and data["message"]["content"] == "hello big world"
    assert (data["prompt_eval_count"], data["eval_count"]) == (2, 3)
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert raw.endswith(b"\n")
    assert all(shape(line) == shape(OLLAMA_CHUNK) for line in lines[:-1])
    assert shape(lines[-1]) == shape(OLLAMA_FINAL) and lines[-1]["done"] is True
    assert "".join(line["message"]["content"] for line in lines) == "hello big world"


async def test_ollama_tool_call_embed_and_tags(session: aiohttp.ClientSession) -> None:
    """Ollama sends a whole tool call in one chunk; /api/embed and /api/tags have the documented shapes."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": schema}}]
    async with FaultyEndpoint("ollama") as ep:
        raw = await stream(session, ep, body("ollama", "Rome", tools=tools, stream=True))
        async with session.post(ep.base_url + "/api/embed", json={"model": "e", "input": "why sky blue"}) as resp:
            embed = await resp.json()
        async with session.get(ep.base_url + "/api/tags") as resp:
            tags = await resp.json()
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert shape(lines[0]) == shape(OLLAMA_TOOL_CHUNK) and len(lines) == 2
    assert lines[0]["message"]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}
    assert shape(embed) == shape(OLLAMA_EMBED) and embed["prompt_eval_count"] == 3
    assert shape(tags["models"][0]) == shape(OLLAMA_TAG) and tags["models"][0]["name"] == "llama3.2:latest"


# --- errors -----------------------------------------------------------------------------


async def test_error_bodies_per_dialect(session: aiohttp.ClientSession) -> None:
    """Injected errors use each dialect's envelope; message and code can be chosen."""
    async with (
        FaultyEndpoint("openai") as oa,
        FaultyEndpoint("anthropic") as an,
        FaultyEndpoint("ollama") as ol,
    ):
        oa.faults.fail_next(1, 400, message="maximum context length is 10 tokens", code="context_length_exceeded")
        an.faults.fail_next(1, 500)
        ol.faults.fail_next(1, 404)
        s1, openai_err, _ = await post(session, oa, body("openai"))
        s2, anthropic_err, h2 = await post(session, an, body("anthropic"))
        s3, ollama_err, _ = await post(session, ol, body("ollama", model="llama3"))
    assert s1 == 400 and openai_err == {"error": {"message": "maximum context length is 10 tokens", "type": "invalid_request_error", "param": None, "code": "context_length_exceeded"}}
    assert s2 == 500 and shape(anthropic_err) == shape(ANTHROPIC_429) and anthropic_err["error"]["type"] == "api_error"
    assert anthropic_err["request_id"] == h2["request-id"] and h2["x-should-retry"] == "true"
    assert s3 == 404 and ollama_err == {"error": "model 'llama3' not found"}


async def test_429_carries_retry_after_and_rate_limit_headers(session: aiohttp.ClientSession) -> None:
    """A 429 carries Retry-After and the provider's rate-limit headers."""
    async with FaultyEndpoint("openai") as oa, FaultyEndpoint("anthropic") as an:
        oa.faults.retry_after = 7
        oa.faults.fail_next(1, 429)
        an.faults.fail_next(1, 429, retry_after=3)
        s1, e1, h1 = await post(session, oa, body("openai"))
        s2, e2, h2 = await post(session, an, body("anthropic"))
    assert s1 == 429 and h1["Retry-After"] == "7"
    assert e1["error"]["code"] == "rate_limit_exceeded"
    assert h1["x-ratelimit-remaining-requests"] == "0" and h1["x-ratelimit-reset-requests"] == "7s"
    assert s2 == 429 and h2["retry-after"] == "3" and e2["error"]["type"] == "rate_limit_error"
    assert h2["anthropic-ratelimit-requests-remaining"] == "0" and h2["x-should-retry"] == "true"


async def test_529_overloaded(session: aiohttp.ClientSession) -> None:
    """Anthropic's 529 is an overloaded_error, as the SDK tests show it."""
    async with FaultyEndpoint("anthropic") as ep:
        ep.faults.fail_next(1, 529)
        status, data, _ = await post(session, ep, body("anthropic"))
    assert status == 529
    assert {k: v for k, v in data.items() if k != "request_id"} == ANTHROPIC_529


async def test_error_rate_is_seeded(session: aiohttp.ClientSession) -> None:
    """error_rate fails a seeded, repeatable share of requests with error_status."""
    runs = []
    for _ in range(2):
        async with FaultyEndpoint("openai", seed=42) as ep:
            ep.faults.error_rate, ep.faults.error_status = 0.5, 503
            runs.append([(await post(session, ep, body("openai")))[0] for _ in range(30)])
            assert ep.stats.injected == runs[-1].count(503)
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503} and 5 < runs[0].count(503) < 25


async def test_schedule_runs_in_order_and_skips_probes(session: aiohttp.ClientSession) -> None:
    """Scheduled steps go to the next chat requests in order, then normal answers; probes don't consume them."""
    async with FaultyEndpoint("openai") as ep:
        ep.faults.schedule(429, "ok", 500)
        ep.faults.fail_next(2, 503)
        async with session.get(ep.base_url + "/models") as resp:
            assert resp.status == 200
        statuses = [(await post(session, ep, body("openai")))[0] for _ in range(6)]
        assert ep.faults.scheduled == 0
    assert statuses == [429, 200, 500, 503, 503, 200]


# --- connection faults ------------------------------------------------------------------


async def test_hang_until_client_times_out_counts_disconnect(session: aiohttp.ClientSession) -> None:
    """A hung endpoint never answers; the client's timeout ends it and the disconnect is counted."""
    loop = asyncio.get_running_loop()
    async with FaultyEndpoint("openai") as ep:
        ep.faults.hang = True
        start = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await post_with_timeout(session, ep, 30)
        assert loop.time() - start >= 30
        await until(lambda: ep.stats.disconnects == 1)
        assert ep.stats.in_flight == 0
        ep.faults.hang = False
        assert (await post(session, ep, body("openai")))[0] == 200


async def post_with_timeout(session: aiohttp.ClientSession, ep: FaultyEndpoint, seconds: float) -> None:
    """A chat request with a total timeout."""
    async with session.post(ep.base_url + "/chat/completions", json=body("openai"), timeout=aiohttp.ClientTimeout(total=seconds)) as resp:
        await resp.read()


async def test_hang_also_holds_probes_unless_exempt(session: aiohttp.ClientSession) -> None:
    """Probes hang with the endpoint, but answer when probes_exempt is set."""
    async with FaultyEndpoint("ollama") as ep:
        ep.faults.hang = True
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(ep.url + "/api/tags", timeout=aiohttp.ClientTimeout(total=5)):
                pass
        ep.faults.probes_exempt = True
        async with session.get(ep.url + "/api/tags") as resp:
            assert resp.status == 200
        await until(lambda: ep.stats.disconnects == 1)
        assert ep.stats.probes == 2


async def test_reset_closes_connection_abruptly(session: aiohttp.ClientSession) -> None:
    """reset drops the connection without an answer; it is not counted as a client disconnect."""
    async with FaultyEndpoint("openai") as ep:
        ep.faults.schedule("reset")
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, ep, body("openai"))
        assert (await post(session, ep, body("openai")))[0] == 200
        assert ep.stats.disconnects == 0 and ep.stats.injected == 1


async def test_refuse_and_accept_on_same_port(session: aiohttp.ClientSession) -> None:
    """refuse() closes the port (connections are refused, pooled ones dropped); accept() reopens it."""
    async with FaultyEndpoint("anthropic") as ep:
        port = ep.port
        assert (await post(session, ep, body("anthropic")))[0] == 200  # leaves a pooled connection
        ep.faults.refuse()
        assert ep.faults.refusing
        # The pooled connection was dropped; reusing it before the client noticed fails
        # as a disconnect, like with a crashed server. A new connection is refused.
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, ep, body("anthropic"))
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(session, ep, body("anthropic"))
        ep.faults.accept()
        assert (await post(session, ep, body("anthropic")))[0] == 200
        assert ep.port == port and not ep.faults.refusing


async def test_a_connection_that_missed_the_refusal_is_dropped_on_its_next_request(session: aiohttp.ClientSession) -> None:
    """A connection the kernel accepted just before refuse() but asyncio set up just after
    misses refuse()'s drop; a request on it is reset too (and not counted), or a client's
    pool would be served through the outage. The port is closed here without the drop to
    leave such a connection behind."""
    async with FaultyEndpoint("openai") as ep:
        assert (await post(session, ep, body("openai")))[0] == 200  # leaves a pooled connection
        assert ep._listener is not None
        ep._listener.close()  # what refuse() does, less dropping the open connections
        assert ep.faults.refusing
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, ep, body("openai"))
        assert ep.stats.requests == 1
        ep.faults.accept()
        assert (await post(session, ep, body("openai")))[0] == 200


async def test_client_leaving_mid_stream_counts_disconnect(session: aiohttp.ClientSession) -> None:
    """A client that stops reading a stream and closes it is counted as a disconnect."""
    async with FaultyEndpoint("openai") as ep:
        ep.faults.chunk_delay = 1.0
        async with session.post(ep.base_url + "/chat/completions", json=body("openai", stream=True)) as resp:
            await resp.content.readline()
            resp.close()
        await until(lambda: ep.stats.disconnects == 1)
        assert ep.stats.streams == 1


# --- stream faults ----------------------------------------------------------------------


async def test_slow_stream_and_latency_use_the_loop_clock(session: aiohttp.ClientSession) -> None:
    """Latency, jitter and per-chunk delays pass on the loop's clock, not the wall clock."""
    loop = asyncio.get_running_loop()
    async with FaultyEndpoint("ollama", text="a b c d") as ep:
        ep.faults.latency, ep.faults.jitter, ep.faults.chunk_delay = 10.0, 5.0, 3.0
        real, virtual = time.monotonic(), loop.time()
        raw = await stream(session, ep, body("ollama", stream=True))
        elapsed = loop.time() - virtual
    assert len(raw.splitlines()) == 5
    assert 10 + 4 * 3 <= elapsed < 10 + 5 + 4 * 3 + 1
    assert time.monotonic() - real < 5


async def test_cut_mid_stream(session: aiohttp.ClientSession) -> None:
    """cut_after=K delivers K content chunks, then the connection ends mid-body."""
    async with FaultyEndpoint("anthropic", text="one two three four") as ep:
        ep.faults.cut_after = 2
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.post(ep.base_url + "/v1/messages", json=body("anthropic", stream=True)) as resp:
                async for piece in resp.content.iter_any():
                    received += piece
        assert ep.stats.disconnects == 0
    texts = [json.loads(d)["delta"]["text"] for name, d in sse(received) if name == "content_block_delta"]
    assert texts == ["one", " two"]
    assert b"message_stop" not in received


@pytest.mark.parametrize(
    ("dialect", "terminal"),
    [("openai", b"data: [DONE]"), ("anthropic", b"event: message_stop"), ("ollama", b'"done":true')],
)
async def test_no_terminal_ends_cleanly_without_terminal_event(session: aiohttp.ClientSession, dialect: str, terminal: bytes) -> None:
    """no_terminal ends the stream cleanly (no transport error) but without its terminal event."""
    async with FaultyEndpoint(dialect, text="a b") as ep:
        ep.faults.no_terminal = True
        cut = await stream(session, ep, body(dialect, stream=True))
        ep.faults.no_terminal = False
        whole = await stream(session, ep, body(dialect, stream=True))
    assert terminal not in cut and terminal in whole


async def test_stream_error_events_mid_stream(session: aiohttp.ClientSession) -> None:
    """stream_error_after sends the dialect's in-stream error after K chunks, with HTTP 200."""
    async with FaultyEndpoint("anthropic") as an, FaultyEndpoint("ollama") as ol, FaultyEndpoint("openai") as oa:
        for ep in (an, ol, oa):
            ep.faults.stream_error_after = 1
        a = await stream(session, an, body("anthropic", stream=True))
        o = await stream(session, ol, body("ollama", stream=True))
        p = await stream(session, oa, body("openai", stream=True))
    name, data = sse(a)[-1]
    expected_name, expected_data = ANTHROPIC_STREAM_ERROR.split("\n")
    assert f"event: {name}" == expected_name and json.loads(data) == json.loads(expected_data[6:])
    assert sum(1 for n, _ in sse(a) if n == "content_block_delta") == 1
    lines = o.decode().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1]) == OLLAMA_STREAM_ERROR
    last = json.loads(sse(p)[-1][1])
    assert set(last["error"]) == {"message", "type", "param", "code"} and b"[DONE]" not in p


async def test_malformed_json_body(session: aiohttp.ClientSession) -> None:
    """malformed answers 200 with a truncated JSON body, and a broken frame in streams."""
    async with FaultyEndpoint("openai") as ep:
        ep.faults.malformed = True
        async with session.post(ep.base_url + "/chat/completions", json=body("openai")) as resp:
            assert resp.status == 200 and resp.content_type == "application/json"
            raw = await resp.read()
        broken = await stream(session, ep, body("openai", stream=True))
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    datas = [d for _, d in sse(broken)]
    json.loads(datas[0])  # the role chunk is intact
    with pytest.raises(json.JSONDecodeError):
        json.loads(datas[1])


async def test_outage_window_ends_on_the_loop_clock(session: aiohttp.ClientSession) -> None:
    """An outage fails every request (probes too) from its start to its end on the loop clock."""
    async with FaultyEndpoint("ollama") as ep:
        ep.faults.outage(600, status=503, after=10)
        assert (await post(session, ep, body("ollama")))[0] == 200
        await asyncio.sleep(11)
        status, data, _ = await post(session, ep, body("ollama"))
        assert status == 503 and "server busy" in data["error"]
        async with session.get(ep.url + "/api/tags") as resp:
            assert resp.status == 503
        await asyncio.sleep(600)
        assert (await post(session, ep, body("ollama")))[0] == 200


async def test_outage_can_refuse_connections(session: aiohttp.ClientSession) -> None:
    """An outage with status=None closes the port for the window and reopens it after."""
    async with FaultyEndpoint("openai") as ep:
        ep.faults.outage(60, status=None, after=5)
        assert (await post(session, ep, body("openai")))[0] == 200
        await asyncio.sleep(6)
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(session, ep, body("openai"))
        await asyncio.sleep(60)
        assert (await post(session, ep, body("openai")))[0] == 200


async def test_clear_restores_a_healthy_endpoint(session: aiohttp.ClientSession) -> None:
    """clear() drops every fault: settings, schedule, outages and a refused port."""
    async with FaultyEndpoint("openai") as ep:
        ep.faults.latency, ep.faults.malformed = 5.0, True
        ep.faults.fail_next(3)
        ep.faults.outage(100)
        ep.faults.refuse()
        assert "latency=5.0" in repr(ep.faults)
        ep.faults.clear()
        assert (await post(session, ep, body("openai")))[0] == 200
        assert repr(ep.faults) == "<Faults none>"


# --- counters, auth, limits, helpers ----------------------------------------------------


async def test_counters_and_last_request(session: aiohttp.ClientSession) -> None:
    """Requests, probes and paths are counted; the last request's body and headers are kept."""
    async with FaultyEndpoint("openai", name="p") as ep:
        await post(session, ep, body("openai", "first"))
        async with session.post(ep.base_url + "/chat/completions", json=body("openai", "second"), headers={"x-trace": "t1"}):
            pass
        async with session.get(ep.base_url + "/models"):
            pass
        async with session.get(ep.url + "/nowhere") as resp:
            assert resp.status == 404 and (await resp.json())["error"]["message"] == "Invalid URL (GET /nowhere)"
        stats = ep.stats
        assert (stats.requests, stats.probes, stats.disconnects, stats.in_flight) == (3, 1, 0, 0)
        assert stats.by_path == {"/v1/chat/completions": 2, "/v1/models": 1, "/nowhere": 1}
        assert ep.last_request["messages"][0]["content"] == "second" and ep.last_headers["x-trace"] == "t1"
        assert "requests 3, probes 1" in repr(ep)
        ep.reset_stats()
        assert ep.stats.requests == 0 and ep.last_request is None


async def test_api_key_is_checked_when_set(session: aiohttp.ClientSession) -> None:
    """With api_key set, a request without the key gets the dialect's 401."""
    async with FaultyEndpoint("anthropic", api_key="sk-test") as ep:
        status, data, _ = await post(session, ep, body("anthropic"))
        assert status == 401 and data["error"]["type"] == "authentication_error"
        async with session.post(ep.base_url + "/v1/messages", json=body("anthropic"), headers={"x-api-key": "sk-test"}) as resp:
            assert resp.status == 200


async def test_max_tokens_truncates_with_length_finish(session: aiohttp.ClientSession) -> None:
    """A reply longer than max_tokens stops there with the dialect's length reason."""
    async with FaultyEndpoint("openai", text="a b c d e") as oa, FaultyEndpoint("ollama", text="a b c d e") as ol:
        _, data, _ = await post(session, oa, body("openai", max_tokens=2))
        _, odata, _ = await post(session, ol, body("ollama", options={"num_predict": 3}))
    assert data["choices"][0]["message"]["content"] == "a b" and data["choices"][0]["finish_reason"] == "length"
    assert odata["message"]["content"] == "a b c" and odata["done_reason"] == "length" and odata["eval_count"] == 3


async def test_echo_replies_with_last_user_message(session: aiohttp.ClientSession) -> None:
    """echo=True answers with the last user message."""
    async with FaultyEndpoint("ollama", echo=True) as ep:
        _, data, _ = await post(session, ep, body("ollama", "repeat after me"))
    assert data["message"]["content"] == "repeat after me"


async def test_local_endpoints_start_together_and_build_runtime_endpoints(session: aiohttp.ClientSession) -> None:
    """LocalEndpoints starts several endpoints on their own ports; endpoint() builds runtime Endpoints."""
    fleet = LocalEndpoints(FaultyEndpoint("openai", name="a"), FaultyEndpoint("anthropic", name="b"), FaultyEndpoint("ollama", name="c"))
    async with fleet:
        assert len({ep.port for ep in fleet}) == 3
        for ep in fleet:
            assert (await post(session, ep, body(ep.dialect)))[0] == 200
        endpoints = [ep.endpoint(priority=i) for i, ep in enumerate(fleet, 1)]
    assert all(isinstance(e, Endpoint) for e in endpoints)
    assert [(e.provider, e.priority) for e in endpoints] == [("openai", 1), ("anthropic", 2), ("ollama", 3)]
    assert endpoints[0].base_url == fleet["a"].base_url and endpoints[1].api_key == "test-key"
    with pytest.raises(ValueError, match="unique"):
        LocalEndpoints(FaultyEndpoint(name="x"), FaultyEndpoint(name="x"))
    with pytest.raises(TypeError, match="FaultyEndpoint values, got int at position 1"):
        LocalEndpoints(FaultyEndpoint(name="x"), 2)  # type: ignore[arg-type]


async def test_restart_keeps_the_port_and_a_busy_port_fails_cleanly() -> None:
    """A stopped endpoint starts again on its port; starting on a port in use raises OSError and leaks nothing."""
    ep = FaultyEndpoint("ollama")
    async with ep:
        port = ep.port
        with pytest.raises(OSError):
            await FaultyEndpoint("ollama", port=port).start()
    async with ep:
        assert ep.port == port


async def test_faults_decide_is_plain_and_synchronous() -> None:
    """Faults.decide is a synchronous step on a given time: outage first, then the schedule, then the answer."""
    faults = Faults(seed=1)
    faults.latency = 0.5
    faults.schedule(500, "hang")
    now = asyncio.get_running_loop().time()
    faults.outage(10, status=503, after=100)
    first = faults.decide(now)
    assert (first.action, first.status, first.delay) == ("error", 500, 0.5)
    assert faults.decide(now + 105).status == 503, "the outage wins and consumes no step"
    assert faults.decide(now).action == "hang"
    assert faults.decide(now + 200) == Decision(delay=0.5)
    with pytest.raises(RuntimeError, match="not attached"):
        faults.refuse()
    with pytest.raises(ValueError, match="unknown step"):
        faults.schedule("explode")  # type: ignore[arg-type]


def test_standalone_process_serves_until_terminated() -> None:
    """`python -m runtime.testing.server` prints its base URL and serves until terminated."""
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-m", "runtime.testing.server", "--dialect", "openai", "--port", "0", "--text", "bare reply"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        request = urllib.request.Request(
            base_url + "/chat/completions",
            data=json.dumps(body("openai")).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["choices"][0]["message"]["content"] == "bare reply"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
