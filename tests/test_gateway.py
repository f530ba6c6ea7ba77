"""The gateway as a real server, spoken to by the official openai and anthropic clients.

Upstreams are :class:`~runtime.testing.FaultyEndpoint` s on 127.0.0.1; the runtime, the
gateway and the async clients share the fast-forwarding loop, so upstream latency and
deadlines cost no real time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from runtime import Endpoint, HealthPolicy, RetryPolicy, Runtime
from runtime.gateway import GatewayConfig, GatewayKey
from runtime.gateway.server import Gateway
from runtime.testing import FaultyEndpoint

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

pytestmark = pytest.mark.anyio

NO_PROBES = HealthPolicy(enabled=False)
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
HI = [{"role": "user", "content": "hi"}]


def endpoint(ep: FaultyEndpoint, **overrides: Any) -> Endpoint:
    """A runtime endpoint for a faulty upstream, without probes (they would only add timers)."""
    return ep.endpoint(health=NO_PROBES, **overrides)


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds (a few hundred turns at most)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


@asynccontextmanager
async def serving(endpoints: Sequence[Endpoint], config: GatewayConfig | None = None, **runtime: Any) -> AsyncIterator[Gateway]:
    """A runtime over ``endpoints`` behind a gateway on a free port."""
    config = config or GatewayConfig(port=0)
    async with Runtime(endpoints, **runtime) as rt, Gateway(rt, config) as gw:
        yield gw


@asynccontextmanager
async def openai_client(gw: Gateway, key: str = "none") -> AsyncIterator[Any]:
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0, timeout=300)
    try:
        yield client
    finally:
        await client.close()


@asynccontextmanager
async def anthropic_client(gw: Gateway, key: str = "none") -> AsyncIterator[Any]:
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=key, max_retries=0, timeout=300)
    try:
        yield client
    finally:
        await client.close()


# --- the OpenAI face ------------------------------------------------------------------------


async def test_openai_chat_stream_models_embeddings() -> None:
    """Chat, a stream with usage, models and embeddings through the gateway parse in the openai client."""
    async with FaultyEndpoint("openai", name="up", text="hello big world") as up:
        async with serving([endpoint(up, groups=["fast"])]) as gw, openai_client(gw) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="fast", messages=HI, extra_headers={"x-request-id": "req-123"}
            )
            reply = raw.parse()
            stream = await client.chat.completions.create(
                model="fast", messages=HI, stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            models = [m.id async for m in client.models.list()]
            one = await client.models.retrieve("up")
            vectors = await client.embeddings.create(model="up", input=["a b", "c"])
    assert reply.choices[0].message.content == "hello big world" and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == 3 and reply.usage.prompt_tokens == 1
    assert raw.headers["x-request-id"] == "req-123" and raw.headers["x-llm-endpoint"] == "up"
    assert raw.headers["x-llm-attempts"] == "1" and float(raw.headers["x-llm-cost-usd"]) >= 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello big world"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 4
    assert models == ["fast", "gpt-4o-mini", "up"] and one.id == "up"
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 8 and vectors.usage.prompt_tokens > 0


async def test_cost_on_whole_replies_and_on_streams_usage() -> None:
    """The cost is the x-llm-cost-usd header of a whole reply and, since a stream's headers
    go before its answer, the usage's cost_usd field of the usage chunk (OpenAI) and of
    message_delta (Anthropic); an endpoint without a known price says neither."""
    from runtime.policy import Price

    price = Price(input=1_000_000.0, output=2_000_000.0)  # $1 a prompt token, $2 an output token
    async with FaultyEndpoint("openai", name="up", text="hello big world") as up, FaultyEndpoint("openai", name="free") as free:
        eps = [endpoint(up, price=price), endpoint(free, model="unpriced-model")]
        async with serving(eps) as gw, openai_client(gw) as client, anthropic_client(gw) as claude:
            raw = await client.chat.completions.with_raw_response.create(model="up", messages=HI)
            stream = await client.chat.completions.create(
                model="up", messages=HI, stream=True, stream_options={"include_usage": True}
            )
            usage = [c async for c in stream][-1].usage
            async with claude.messages.stream(model="up", max_tokens=64, messages=HI) as s:
                (delta,) = [e async for e in s if e.type == "message_delta"]
            unpriced = await client.chat.completions.with_raw_response.create(model="free", messages=HI)
            unpriced_stream = await client.chat.completions.create(
                model="free", messages=HI, stream=True, stream_options={"include_usage": True}
            )
            unpriced_usage = [c async for c in unpriced_stream][-1].usage
    assert float(raw.headers["x-llm-cost-usd"]) == raw.parse().usage.model_extra["cost_usd"] == 1 + 3 * 2
    assert usage.completion_tokens == 3 and usage.model_extra["cost_usd"] == 7
    assert delta.usage.output_tokens == 3 and delta.usage.model_extra["cost_usd"] == 7
    assert "x-llm-cost-usd" not in unpriced.headers and "cost_usd" not in unpriced_usage.model_extra


async def test_legacy_completions_whole_and_streamed() -> None:
    """POST /v1/completions in OpenAI's legacy dialect: a whole completion, a stream with
    usage, the parameters reaching the upstream's /completions, and what the runtime's
    completions do not take refused naming it."""
    async with FaultyEndpoint("openai", name="up", text="sat on the mat") as up:
        async with serving([endpoint(up, groups=["fast"])]) as gw, openai_client(gw) as client:
            whole = await client.completions.create(model="fast", prompt="The cat", max_tokens=8, temperature=0.5, stop=["."])
            sent = up.last_request
            stream = await client.completions.create(
                model="fast", prompt="The cat", stream=True, stream_options={"include_usage": True}
            )
            chunks = [c async for c in stream]
            with pytest.raises(openai.BadRequestError) as refused:
                await client.completions.create(model="fast", prompt="The cat", echo=True)
            with pytest.raises(openai.NotFoundError):
                await client.completions.create(model="nope", prompt="The cat")
    assert whole.object == "text_completion" and whole.choices[0].text == "sat on the mat"
    assert whole.choices[0].finish_reason == "stop" and whole.usage.completion_tokens == 4
    assert sent["prompt"] == "The cat" and sent["max_tokens"] == 8 and sent["temperature"] == 0.5 and sent["stop"] == ["."]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "sat on the mat"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert refused.value.body["param"] == "echo"


async def test_openai_tools_and_response_format_pass_through() -> None:
    """Tool calls come back whole and streamed; response_format and the OpenAI parameters reach the upstream."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
    messages = [{"role": "user", "content": "Paris"}]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up)]) as gw, openai_client(gw) as client:
            reply = await client.chat.completions.create(model="up", messages=messages, tools=tools, tool_choice="auto")
            async with client.chat.completions.stream(model="up", messages=messages, tools=tools) as stream:
                final = await stream.get_final_completion()
            await client.chat.completions.create(
                model="up", messages=HI, response_format=schema, seed=7, presence_penalty=0.5, user="u1", max_completion_tokens=9
            )
            sent = up.last_request
    call = reply.choices[0].message.tool_calls[0]
    assert reply.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 1}
    streamed = final.choices[0].message.tool_calls[0]
    assert json.loads(streamed.function.arguments) == {"city": "Paris", "days": 1} and streamed.function.name == "get_weather"
    assert sent["response_format"] == schema and sent["seed"] == 7 and sent["presence_penalty"] == 0.5
    assert sent["user"] == "u1"


async def test_tool_results_round_trip() -> None:
    """An assistant tool call and its tool result in the history reach the upstream in the OpenAI shape."""
    history = [
        {"role": "user", "content": "Paris"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    async with FaultyEndpoint("openai", name="up", text="It is sunny.") as up:
        async with serving([endpoint(up)]) as gw, openai_client(gw) as client:
            reply = await client.chat.completions.create(model="up", messages=history)
            sent = up.last_request["messages"]
    assert reply.choices[0].message.content == "It is sunny."
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}


async def test_openai_error_classes() -> None:
    """400 names the field, 401 bad key, 404 unknown route, 429 key limit, 502 upstream down, 504 deadline."""
    keys = [GatewayKey(name="k", key="sk-good", rpm=1)]
    async with FaultyEndpoint("openai", name="up") as up:
        eps = [endpoint(up, timeout=5.0)]
        async with serving(eps, GatewayConfig(port=0, keys=keys), retry=RetryPolicy(max_attempts=1), timeout=5.0) as gw:
            async with openai_client(gw, "sk-good") as good, openai_client(gw, "sk-bad") as bad:
                with pytest.raises(openai.AuthenticationError):
                    await bad.chat.completions.create(model="up", messages=HI)
                with pytest.raises(openai.BadRequestError) as bad_field:
                    await good.chat.completions.create(model="up", messages=HI, temperature="hot")  # type: ignore[arg-type]
                with pytest.raises(openai.NotFoundError) as unknown:
                    await good.chat.completions.create(model="nope", messages=HI)
                up.faults.fail_next(3, 500)
                with pytest.raises(openai.InternalServerError) as upstream:
                    await good.chat.completions.create(model="up", messages=HI)
                with pytest.raises(openai.RateLimitError) as limited:
                    await good.chat.completions.create(model="up", messages=HI)
    assert bad_field.value.status_code == 400 and bad_field.value.body["param"] == "temperature"
    assert unknown.value.status_code == 404 and unknown.value.code == "model_not_found"
    assert upstream.value.status_code == 502 and upstream.value.code == "upstream_failed"
    assert limited.value.status_code == 429 and int(limited.value.response.headers["retry-after"]) >= 1
    assert limited.value.response.headers["x-ratelimit-limit-requests"] == "1"


async def test_deadline_is_504_and_context_length_is_400() -> None:
    """An upstream that never answers within the deadline is 504; a prompt the upstream finds too long is 400."""
    async with FaultyEndpoint("openai", name="up") as up:
        eps = [endpoint(up, timeout=2.0)]
        async with serving(eps, retry=RetryPolicy(max_attempts=1), timeout=2.0) as gw, openai_client(gw) as client:
            up.faults.hang = True
            with pytest.raises(openai.APIStatusError) as deadline:
                await client.chat.completions.create(model="up", messages=HI)
            up.faults.hang = False
            up.faults.fail_next(1, 400, code="context_length_exceeded", message="maximum context length is 50 tokens")
            with pytest.raises(openai.BadRequestError) as too_long:
                await client.chat.completions.create(model="up", messages=HI)
    assert deadline.value.status_code == 504 and deadline.value.code == "timeout"
    assert too_long.value.code == "context_length_exceeded"


async def test_prompt_over_every_configured_window_is_400_unsent() -> None:
    """A prompt no configured context_window holds is the client's 400 context_length_exceeded, not a 429."""
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up, context_window=50)]) as gw, openai_client(gw) as client:
            with pytest.raises(openai.BadRequestError) as too_long:
                await client.chat.completions.create(model="up", messages=[{"role": "user", "content": "word " * 200}])
    assert too_long.value.status_code == 400 and too_long.value.code == "context_length_exceeded"
    assert up.stats.requests == 0


def test_sync_openai_client() -> None:
    """The blocking openai client: chat and a stream with usage (the gateway serves from a background loop)."""
    import anyio.from_thread

    with anyio.from_thread.start_blocking_portal() as portal:
        up = FaultyEndpoint("openai", name="up", text="sync works")
        portal.call(up.start)
        try:
            rt = Runtime([endpoint(up)])
            with portal.wrap_async_context_manager(rt):
                gw = Gateway(rt, GatewayConfig(port=0))
                portal.call(gw.start)
                try:
                    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=30)
                    reply = client.chat.completions.create(model="up", messages=HI)
                    stream = client.chat.completions.create(
                        model="up", messages=HI, stream=True, stream_options={"include_usage": True}
                    )
                    chunks = list(stream)
                    client.close()
                finally:
                    portal.call(gw.drain)
        finally:
            portal.call(up.aclose)
    assert reply.choices[0].message.content == "sync works"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "sync works"
    assert chunks[-1].usage.completion_tokens == 2


# --- failover and streams that fail ---------------------------------------------------------------


@pytest.mark.parametrize("fault", ["refuse", "500", "cut"])
async def test_failover_through_the_gateway(fault: str) -> None:
    """The backup answers when the primary refuses connections, 500s, or cuts a stream before its first
    chunk (tier_wait=0: straight to the backup tier, two attempts)."""
    async with FaultyEndpoint("openai", name="primary") as p, FaultyEndpoint("openai", name="backup", text="from backup") as b:
        eps = [endpoint(p, priority=1, groups=["g"]), endpoint(b, priority=2, groups=["g"])]
        async with serving(eps, retry=RetryPolicy(tier_wait=0.0)) as gw, openai_client(gw) as client:
            if fault == "refuse":
                p.faults.refuse()
            elif fault == "500":
                p.faults.fail_next(1, 500)
            else:
                p.faults.cut_after = 0
            raw = await client.chat.completions.with_raw_response.create(model="g", messages=HI, stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    assert text == "from backup" and raw.headers["x-llm-endpoint"] == "backup" and raw.headers["x-llm-attempts"] == "2"


async def test_error_event_after_content_never_done() -> None:
    """A stream cut after content ends with the dialect's error event, never [DONE] or message_stop."""
    async with FaultyEndpoint("openai", name="up", text="one two three four") as up:
        async with serving([endpoint(up)]) as gw, aiohttp.ClientSession() as session:
            up.faults.cut_after = 2
            body = {"model": "up", "messages": HI, "stream": True}
            openai_text = await _read_cut(session, gw.base_url + "/v1/chat/completions", body)
            anthropic_body = {"model": "up", "max_tokens": 20, "messages": HI, "stream": True}
            anthropic_text = await _read_cut(session, gw.base_url + "/v1/messages", anthropic_body)
            async with openai_client(gw) as client:
                stream = await client.chat.completions.create(model="up", messages=HI, stream=True)
                got: list[str] = []
                with pytest.raises(openai.APIError):
                    async for chunk in stream:
                        got.append(chunk.choices[0].delta.content or "")
    assert '"content":"one"' in openai_text and "[DONE]" not in openai_text
    last = openai_text.strip().split("\n\n")[-1]
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "upstream_failed"
    assert "event: error" in anthropic_text and "message_stop" not in anthropic_text
    assert "".join(got) == "one two"


@pytest.mark.parametrize("prefill", [True, False])
async def test_on_interrupt_continue_gives_one_whole_answer(prefill: bool) -> None:
    """With on_interrupt="continue" a prefill-capable backup continues the cut answer and the client sees it whole;
    where the backup can only restart, the client gets the error event, never a spliced or doubled answer."""
    text = "alpha beta gamma delta epsilon"
    async with FaultyEndpoint("openai", name="primary", text=text) as p, FaultyEndpoint("openai", name="backup", text=text) as b:
        eps = [endpoint(p, priority=1, groups=["g"]), endpoint(b, priority=2, groups=["g"], prefill=prefill)]
        p.faults.cut_after = 2
        async with serving(eps, on_interrupt="continue") as gw, aiohttp.ClientSession() as session:
            body = {"model": "g", "messages": HI, "stream": True}
            if prefill:
                async with openai_client(gw) as client:
                    stream = await client.chat.completions.create(model="g", messages=HI, stream=True)
                    got = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                sent = b.last_request["messages"][-1]
            else:
                cut = await _read_cut(session, gw.base_url + "/v1/chat/completions", body)
            async with session.post(gw.base_url + "/v1/chat/completions", json=body, headers={"x-llm-on-interrupt": "restart"}) as bad:
                refused = bad.status, (await bad.json())["error"]["param"]
    if prefill:
        assert got == text and sent == {"role": "assistant", "content": "alpha beta"}
    else:
        assert "[DONE]" not in cut and '"content":"alpha"' in cut and "could only be restarted" in cut
    assert refused == (400, "x-llm-on-interrupt")


async def _read_cut(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    """The text of a stream that must end in a cut: the transport fails after the last byte."""
    got = b""
    async with session.post(url, json=body) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            async for data in resp.content.iter_any():
                got += data
    return got.decode()


async def test_client_disconnect_cancels_upstream() -> None:
    """A client leaving mid-stream closes the upstream stream and frees the endpoint's and the key's slots."""
    keys = [GatewayKey(name="k", key="sk", max_concurrency=1)]
    async with FaultyEndpoint("openai", name="up", text="a b c d e f g h") as up:
        up.faults.chunk_delay = 5.0
        async with serving([endpoint(up)], GatewayConfig(port=0, keys=keys)) as gw, aiohttp.ClientSession() as session:
            body = {"model": "up", "messages": HI, "stream": True}
            headers = {"Authorization": "Bearer sk"}
            async with session.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers) as resp:
                first = await resp.content.readuntil(b"\n\n")
                resp.close()  # the client leaves
            await until(lambda: bool(up.stats.disconnects) and gw.rt.status()[0].in_flight == 0 and gw.in_flight == 0)
            status, key = gw.rt.status()[0], gw.keys.keys[0]
            async with session.post(gw.base_url + "/v1/chat/completions", json={**body, "stream": False}, headers=headers) as again:
                again_status = again.status
    assert b'"content":"a"' in first
    assert up.stats.disconnects == 1 and status.in_flight == 0 and key.limiter.in_flight == 0
    assert again_status == 200


async def test_a_gateway_bug_is_a_500_in_the_dialect(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """An exception that is no LLMError is logged with the request id and answered 500 in the client's dialect."""
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up)]) as gw, openai_client(gw) as client, anthropic_client(gw) as claude:

            async def broken(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("a bug")

            monkeypatch.setattr(gw.rt, "chat", broken)
            with pytest.raises(openai.InternalServerError) as oai:
                await client.chat.completions.create(model="up", messages=HI, extra_headers={"x-request-id": "r-1"})
            with pytest.raises(anthropic.InternalServerError) as ant:
                await claude.messages.create(model="up", max_tokens=5, messages=HI)
    assert oai.value.status_code == 500 and oai.value.code == "internal_error" and "r-1" in oai.value.message
    assert ant.value.body["error"]["type"] == "api_error"
    assert any("r-1" in r.getMessage() for r in caplog.records)


# --- the Anthropic face --------------------------------------------------------------------------


async def test_anthropic_client_message_and_stream() -> None:
    """The anthropic client gets a message and a stream from /v1/messages in front of an OpenAI upstream."""
    async with FaultyEndpoint("openai", name="up", text="hello from openai") as up:
        async with serving([endpoint(up)]) as gw, anthropic_client(gw) as client:
            message = await client.messages.create(
                model="up", max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hi"}]
            )
            sent = up.last_request
            async with client.messages.stream(model="up", max_tokens=64, messages=[{"role": "user", "content": "hi"}]) as s:
                text = "".join([t async for t in s.text_stream])
                final = await s.get_final_message()
    assert message.content[0].text == "hello from openai" and message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent.get("max_completion_tokens", sent.get("max_tokens")) == 64
    assert text == "hello from openai" and final.stop_reason == "end_turn" and final.usage.output_tokens == 3


async def test_anthropic_tools_and_errors() -> None:
    """Anthropic tools become tool_use blocks (whole and streamed); errors come in Anthropic's shape."""
    tools = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]
    messages = [{"role": "user", "content": "Paris"}]
    async with FaultyEndpoint("anthropic", name="claude") as up:
        async with serving([endpoint(up)]) as gw, anthropic_client(gw) as client:
            message = await client.messages.create(model="claude", max_tokens=64, tools=tools, messages=messages)
            async with client.messages.stream(model="claude", max_tokens=64, tools=tools, messages=messages) as s:
                final = await s.get_final_message()
            listed = [m.id async for m in client.models.list()]
            counted = await client.messages.count_tokens(model="claude", tools=tools, messages=messages)
            plain = await client.messages.count_tokens(model="claude", messages=messages)
            with pytest.raises(anthropic.NotFoundError) as unknown:
                await client.messages.create(model="nope", max_tokens=8, messages=messages)
            with pytest.raises(anthropic.BadRequestError) as bad:
                await client.messages.create(model="claude", max_tokens=8, messages=messages, extra_body={"top_k": 3})
    use = message.content[0]
    assert message.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"city": "Paris", "days": 1}
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Paris", "days": 1}
    assert unknown.value.body["error"]["type"] == "not_found_error" and listed == ["claude-3-5-haiku-latest", "claude"]
    assert counted.input_tokens > plain.input_tokens > 0
    assert "top_k" in bad.value.body["error"]["message"]


# --- keys ----------------------------------------------------------------------------------------------


async def test_key_rpm_and_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key's rpm refuses with 429 and Retry-After until its bucket refills; a spent budget is 429 insufficient_quota."""
    import hashlib

    monkeypatch.setenv("GW_KEY_B", "sk-b")
    keys = [
        GatewayKey(name="a", key_sha256=hashlib.sha256(b"sk-a").hexdigest(), rpm=2),
        GatewayKey(name="b", key_env="GW_KEY_B", daily_tokens=30, models=["up"]),
    ]
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up, groups=["g"])], GatewayConfig(port=0, keys=keys)) as gw:
            async with openai_client(gw, "sk-a") as a, openai_client(gw, "sk-b") as b:
                first = await a.chat.completions.with_raw_response.create(model="up", messages=HI)
                await a.chat.completions.create(model="up", messages=HI)
                with pytest.raises(openai.RateLimitError) as limited:
                    await a.chat.completions.create(model="up", messages=HI)
                await asyncio.sleep(30)
                await a.chat.completions.create(model="up", messages=HI)  # half a minute refills one request
                with pytest.raises(openai.PermissionDeniedError):
                    await b.chat.completions.create(model="g", messages=HI)
                await b.chat.completions.create(model="up", messages=HI, max_tokens=5)
                with pytest.raises(openai.RateLimitError) as spent:
                    await b.chat.completions.create(model="up", messages=HI, max_tokens=25)
                models_b = [m.id async for m in b.models.list()]
                async with aiohttp.ClientSession() as session:
                    async with session.get(gw.base_url + "/metrics", headers={"Authorization": "Bearer sk-b"}) as resp:
                        metrics = await resp.text()
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert int(limited.value.response.headers["retry-after"]) >= 1 and "rpm" in limited.value.message
    assert spent.value.code == "insufficient_quota" and int(spent.value.response.headers["retry-after"]) >= 1
    assert models_b == ["up"]
    assert 'llm_runtime_gateway_key_budget_remaining{key="b",kind="daily_tokens"}' in metrics


async def test_key_slots_are_returned_on_every_path() -> None:
    """A key with max_concurrency 1 keeps working after refusals, upstream failures and embeddings."""
    keys = [GatewayKey(name="k", key="sk", max_concurrency=1, daily_tokens=10_000)]
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up)], GatewayConfig(port=0, keys=keys), retry=RetryPolicy(max_attempts=1)) as gw:
            async with openai_client(gw, "sk") as client, aiohttp.ClientSession() as session:
                body = {"model": "up", "messages": HI, "stream": True}
                headers = {"Authorization": "Bearer sk", "x-llm-on-interrupt": "sometimes"}
                async with session.post(gw.base_url + "/v1/chat/completions", json=body, headers=headers) as resp:
                    bad_header = resp.status
                up.faults.fail_next(1, 500)
                with pytest.raises(openai.InternalServerError):
                    await client.chat.completions.create(model="up", messages=HI)
                await client.embeddings.create(model="up", input="a")
                await client.embeddings.create(model="up", input="b")
                reply = await client.chat.completions.create(model="up", messages=HI)
            key = gw.keys.keys[0]
    assert bad_header == 400 and reply.choices[0].message.content
    assert key.limiter.in_flight == 0 and key.budget is not None and key.budget.statistics().in_flight == 0


# --- operations ----------------------------------------------------------------------------------------


async def test_health_status_metrics_carry_no_key() -> None:
    """live, ready, /status (rt.status() as JSON) and Prometheus /metrics; no upstream key anywhere."""
    async with FaultyEndpoint("openai", name="up", api_key="sk-upstream-secret") as up:
        async with serving([endpoint(up)]) as gw, aiohttp.ClientSession() as session, openai_client(gw) as client:
            await client.chat.completions.create(model="up", messages=HI)
            answers = {}
            for path in ("/health/live", "/health/ready", "/status", "/metrics"):
                async with session.get(gw.base_url + path) as resp:
                    answers[path] = (resp.status, await resp.text())
    assert answers["/health/live"][0] == 200 and answers["/health/ready"][0] == 200
    status = json.loads(answers["/status"][1])
    assert status["endpoints"][0]["name"] == "up" and status["endpoints"][0]["state"] == "healthy"
    metrics = answers["/metrics"][1]
    assert 'llm_runtime_gateway_requests_total{route="/v1/chat/completions",status="200"} 1' in metrics
    assert 'llm_runtime_requests_total{endpoint="up"} 1' in metrics and "# TYPE llm_runtime_endpoint_up gauge" in metrics
    assert all("sk-upstream-secret" not in text for _, text in answers.values())


async def test_drain_finishes_in_flight_and_refuses_new() -> None:
    """Draining turns ready false and closes the port first; the request in flight still gets its answer."""
    async with FaultyEndpoint("openai", name="up", text="late but whole") as up:
        up.faults.latency = 5.0
        async with Runtime([endpoint(up)], shutdown_grace=30.0) as rt:
            gw = Gateway(rt, GatewayConfig(port=0))
            await gw.start()
            async with openai_client(gw) as client:
                pending = asyncio.ensure_future(client.chat.completions.create(model="up", messages=HI))
                await until(lambda: gw.in_flight > 0)
                drained = asyncio.ensure_future(gw.drain())
                await asyncio.sleep(0)
                ready = gw.ready()
                reply = await pending
                await drained
                with pytest.raises(openai.APIConnectionError):
                    await client.chat.completions.create(model="up", messages=HI)
    assert ready is False and gw.draining
    assert reply.choices[0].message.content == "late but whole"


# --- the edge ------------------------------------------------------------------------------------------


async def test_edge_limits() -> None:
    """413 past the body limit, 400 naming an unknown field or bad JSON, 503 past the process cap, 408 slow body."""
    config = GatewayConfig(port=0, max_body_bytes=2048, max_concurrency=1, body_timeout=5.0)
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up)], config) as gw, aiohttp.ClientSession() as session:
            url = gw.base_url + "/v1/chat/completions"

            async def post(data: bytes) -> tuple[int, dict[str, Any], str | None]:
                async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as resp:
                    return resp.status, await resp.json(), resp.headers.get("Retry-After")

            big = await post(json.dumps({"model": "up", "messages": [{"role": "user", "content": "x" * 4096}]}).encode())
            unknown = await post(json.dumps({"model": "up", "messages": HI, "frobnicate": 1}).encode())
            broken = await post(b'{"model": "up", "messages": [')
            up.faults.hang = True
            hung = asyncio.ensure_future(post(json.dumps({"model": "up", "messages": HI}).encode()))
            await until(lambda: gw.in_flight > 0)
            capped = await post(json.dumps({"model": "up", "messages": HI}).encode())
            hung.cancel()
            up.faults.hang = False
            await until(lambda: gw.in_flight == 0)
            slow = await _slow_body(gw)
            late = await _late_body(gw, 4096)
    assert big[0] == 413 and big[1]["error"]["code"] == "request_too_large"
    assert late == 413  # a body read as it arrives is held to the limit as well as one that came with the head
    assert unknown[0] == 400 and unknown[1]["error"]["param"] == "frobnicate"
    assert broken[0] == 400 and broken[1]["error"]["param"] == "body"
    assert capped[0] == 503 and capped[2] == "1"
    assert slow == 408


async def test_unknown_paths_methods_and_expect_continue() -> None:
    """An unknown path is 404 and a wrong method 405, in the path's dialect, each with a
    request id; a client that sends ``Expect: 100-continue`` (curl, for larger bodies) is
    told to go on and then answered."""
    async with FaultyEndpoint("openai", name="up", text="hi there") as up:
        async with serving([endpoint(up)]) as gw, aiohttp.ClientSession() as session:
            async with session.post(gw.base_url + "/v1/nothing", json={}) as resp:
                unknown = resp.status, (await resp.json())["error"]["code"], resp.headers.get("x-request-id")
            async with session.get(gw.base_url + "/v1/messages") as resp:
                wrong = resp.status, (await resp.json())["error"]["type"]
            async with session.get(gw.base_url + "/v1/models/up") as resp:
                one = (await resp.json())["id"]
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            body = json.dumps({"model": "up", "messages": HI}).encode()
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
            )
            await writer.drain()
            interim = await reader.readuntil(b"\r\n\r\n")
            writer.write(body)
            final = await reader.readline()
            writer.close()
    assert unknown[:2] == (404, "not_found") and unknown[2]
    assert wrong == (405, "invalid_request_error") and one == "up"
    assert interim.startswith(b"HTTP/1.1 100 Continue") and final.startswith(b"HTTP/1.1 200")


async def _slow_body(gw: Gateway) -> int:
    """Send a request head promising a body that never comes; the answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


async def _late_body(gw: Gateway, size: int) -> int:
    """Send a request head and the body's first byte, the rest of ``size`` bytes only once the
    gateway is reading it; the answer's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    writer.write(head.encode() + b"{")
    await writer.drain()
    await until(lambda: gw.in_flight > 0)  # its handler waits for the body now
    writer.write(b" " * (size - 1))
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return int(line.split()[1])


async def test_slow_request_head_is_dropped() -> None:
    """A connection that never finishes its request head is closed after header_timeout (no slow loris)."""
    async with FaultyEndpoint("openai", name="up") as up:
        async with serving([endpoint(up)], GatewayConfig(port=0, header_timeout=10.0)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            started = asyncio.get_running_loop().time()
            rest = await reader.read()
            waited = asyncio.get_running_loop().time() - started
            writer.close()
    assert rest == b"" and 9.0 <= waited <= 20.0
