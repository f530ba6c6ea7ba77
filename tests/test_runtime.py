"""The Runtime facade: construction, configuration, routing, embeddings, the blocking facade."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import runtime
from runtime import (
    AllEndpointsFailed,
    ConfigError,
    ContextWindowExceeded,
    Endpoint,
    HealthPolicy,
    InvalidRequest,
    Message,
    NoEndpointAvailable,
    Runtime,
)
from runtime.endpoint.health import ProbeSchedule
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

QUIET = HealthPolicy(enabled=False)


@pytest.fixture
async def local() -> AsyncIterator[FaultyEndpoint]:
    """One local OpenAI-dialect endpoint."""
    async with FaultyEndpoint("openai", name="local", text="hello from local") as ep:
        yield ep


async def test_public_surface_is_the_documented_one() -> None:
    """runtime.__all__ is sorted and every name in it exists."""
    assert runtime.__all__ == sorted(runtime.__all__)
    for name in runtime.__all__:
        assert hasattr(runtime, name), name
    for name in ("Runtime", "Endpoint", "BreakerPolicy", "HealthPolicy", "RetryPolicy", "HedgePolicy",
                 "CachePolicy", "Budget", "LLMError", "AllEndpointsFailed", "StreamInterrupted", "EndpointStatus"):
        assert name in runtime.__all__


async def test_requests_outside_async_with_are_refused(local: FaultyEndpoint) -> None:
    """A runtime that is not running says how to start it."""
    rt = Runtime([local.endpoint()])
    with pytest.raises(InvalidRequest, match="async with"):
        await rt.chat("hi")


async def test_duplicate_names_and_empty_lists_are_config_errors() -> None:
    """Two endpoints with one name, or none at all, are refused at construction."""
    ep = Endpoint(name="a", provider="mock")
    with pytest.raises(ConfigError, match="duplicate"):
        Runtime([ep, ep])
    with pytest.raises(ConfigError):
        Runtime([])


async def test_bad_request_arguments_name_the_field(local: FaultyEndpoint) -> None:
    """Invalid arguments raise InvalidRequest naming the field; nothing is sent."""
    async with Runtime([local.endpoint(health=QUIET)]) as rt:
        with pytest.raises(InvalidRequest) as info:
            await rt.chat([{"role": "wizard", "content": "x"}])
        assert info.value.field == "messages[0].role"
        with pytest.raises(InvalidRequest) as info:
            await rt.chat("hi", max_tokens=0)
        assert info.value.field == "max_tokens"
        with pytest.raises(InvalidRequest) as info:
            await rt.chat("hi", model="no-such-model")
        assert info.value.field == "model"
        with pytest.raises(InvalidRequest) as info:
            await rt.chat("hi", endpoint="nope")
        assert info.value.field == "endpoint"
    assert local.stats.requests == 0


async def test_chat_reply_carries_usage_cost_and_attempts(local: FaultyEndpoint) -> None:
    """A reply says who answered, with usage, cost and the attempt trail."""
    async with Runtime([local.endpoint(health=QUIET, model="gpt-4o-mini")]) as rt:
        reply = await rt.chat([Message(role="user", content="hi")], system="be brief", max_tokens=50)
    assert reply.text == "hello from local" and reply.finish_reason == "stop"
    assert reply.endpoint == "local" and reply.provider == "openai"
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0 and not reply.usage.estimated
    assert reply.cost_usd > 0
    assert [a.endpoint for a in reply.attempts] == ["local"] and reply.attempts[0].error is None
    sent = local.last_request
    assert sent is not None and sent["messages"][0] == {"role": "system", "content": "be brief"}


async def test_routing_by_group_and_model(local: FaultyEndpoint) -> None:
    """model= routes by group name or model name; endpoint= pins one."""
    async with FaultyEndpoint("ollama", name="other", text="from other") as other:
        endpoints = [
            local.endpoint(health=QUIET, groups=["fast"], model="gpt-4o-mini"),
            other.endpoint(health=QUIET, groups=["local"], model="llama3.2", priority=1),
        ]
        async with Runtime(endpoints) as rt:
            assert (await rt.chat("hi", model="local")).endpoint == "other"
            assert (await rt.chat("hi", model="gpt-4o-mini")).endpoint == "local"
            assert (await rt.chat("hi", endpoint="other")).endpoint == "other"


async def test_context_window_routing_skips_small_windows(local: FaultyEndpoint) -> None:
    """An endpoint whose window cannot hold the request is skipped; none fitting is a clear error."""
    async with FaultyEndpoint("openai", name="big", text="from big") as big:
        endpoints = [
            local.endpoint(health=QUIET, context_window=100, priority=1),
            big.endpoint(health=QUIET, context_window=100_000, priority=2),
        ]
        long_prompt = "word " * 500
        async with Runtime(endpoints) as rt:
            assert (await rt.chat(long_prompt, max_tokens=10)).endpoint == "big"
            assert (await rt.chat("short", max_tokens=10)).endpoint == "local"
            with pytest.raises(ContextWindowExceeded, match="context window"):
                await rt.chat("word " * 200_000, max_tokens=10)
        assert local.stats.requests == 1


async def test_context_window_error_tries_a_larger_window(local: FaultyEndpoint) -> None:
    """A ContextWindowExceeded from one endpoint moves to one with a larger window, else is raised."""
    async with FaultyEndpoint("openai", name="big", text="from big") as big:
        local.faults.fail_next(2, status=400, code="context_length_exceeded", message="maximum context length is 8192 tokens")
        endpoints = [
            local.endpoint(health=QUIET, context_window=8192, priority=1),
            big.endpoint(health=QUIET, context_window=128_000, priority=2),
        ]
        async with Runtime(endpoints) as rt:
            reply = await rt.chat("hi")
            assert reply.endpoint == "big" and isinstance(reply.attempts[0].error, ContextWindowExceeded)
        async with Runtime([local.endpoint(health=QUIET)]) as rt:
            start = anyio.current_time()
            with pytest.raises(ContextWindowExceeded):
                await rt.chat("hi")
            assert anyio.current_time() - start < 0.05  # raised at once, not after waiting on the same endpoint
        assert local.stats.requests == 2


async def test_trim_fits_a_long_conversation_to_the_window(local: FaultyEndpoint) -> None:
    """With trim=True old turns are dropped to fit the window; system and newest turns are sent."""
    history: list[dict[str, str]] = [{"role": "system", "content": "rules"}]
    for i in range(60):
        history.append({"role": "user", "content": f"question {i} " + "filler " * 20})
        history.append({"role": "assistant", "content": f"answer {i} " + "filler " * 20})
    history.append({"role": "user", "content": "the latest question"})
    async with Runtime([local.endpoint(health=QUIET, context_window=600)]) as rt:
        with pytest.raises(ContextWindowExceeded):
            await rt.chat(history, max_tokens=100)
        reply = await rt.chat(history, max_tokens=100, trim=True)
    assert reply.endpoint == "local"
    sent = local.last_request
    assert sent is not None
    assert sent["messages"][0]["content"] == "rules"
    assert sent["messages"][-1]["content"] == "the latest question"
    assert 2 < len(sent["messages"]) < len(history)


async def test_embeddings_skip_endpoints_without_an_embeddings_api(local: FaultyEndpoint) -> None:
    """embed() goes past Anthropic and DeepSeek endpoints to one that has embeddings, vectors in input order."""
    async with FaultyEndpoint("anthropic", name="claude") as claude, FaultyEndpoint("deepseek", name="ds") as ds:
        endpoints = [
            claude.endpoint(health=QUIET, priority=1),
            ds.endpoint(health=QUIET, priority=1),
            local.endpoint(health=QUIET, priority=2),
        ]
        async with Runtime(endpoints) as rt:
            reply = await rt.embed(["a", "b", "c"])
    assert reply.endpoint == "local" and len(reply.vectors) == 3
    assert claude.stats.requests == 0 and ds.stats.requests == 0


async def test_status_never_shows_the_key(local: FaultyEndpoint) -> None:
    """status(), repr and errors carry no API key."""
    secret = "sk-test-very-secret-key-123"
    local.faults.fail_next(1, status=401, message=f"Incorrect API key provided: {secret}")
    endpoints = [Endpoint(name="a", provider="openai", model="gpt-4o-mini", base_url=local.base_url, api_key=secret, health=QUIET)]
    async with Runtime(endpoints) as rt:
        with pytest.raises(AllEndpointsFailed) as info:
            await rt.chat("hi")
        text = " ".join([repr(rt), repr(rt.status()), str(info.value), repr(info.value.attempts), repr(rt.actor("a"))])
    assert secret not in text
    assert secret not in repr(rt.status()) and secret not in repr(endpoints[0])


async def test_missing_key_marks_endpoint_misconfigured_and_routes_around(local: FaultyEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint whose key variable is unset is misconfigured, named, and never sent to."""
    monkeypatch.delenv("LLMRT_MISSING_KEY", raising=False)
    endpoints = [
        Endpoint(name="keyless", provider="openai", model="m", base_url=local.base_url, api_key_env="LLMRT_MISSING_KEY", health=QUIET),
        local.endpoint(health=QUIET, priority=2),
    ]
    async with Runtime(endpoints) as rt:
        status = rt.status()[0]
        assert status.state == "misconfigured" and "LLMRT_MISSING_KEY" in (status.last_error or "")
        assert (await rt.chat("hi")).endpoint == "local"


async def test_from_config_reads_toml(local: FaultyEndpoint, tmp_path: Path) -> None:
    """Runtime.from_config builds a working runtime from a TOML file."""
    path = tmp_path / "runtime.toml"
    path.write_text(
        f'timeout = 15\n[[endpoints]]\nname = "cfg"\nprovider = "openai-compatible"\nmodel = "m"\n'
        f'base_url = "{local.base_url}"\n[endpoints.health]\nenabled = false\n'
    )
    async with Runtime.from_config(path) as rt:
        assert rt.timeout == 15
        assert (await rt.chat("hi")).text == "hello from local"


async def test_from_env_uses_custom_llm_variables(local: FaultyEndpoint) -> None:
    """Runtime.from_env with LLM_BACKEND=custom talks to CUSTOM_LLM_URL with its headers."""
    env = {
        "LLM_BACKEND": "custom",
        "CUSTOM_LLM_URL": local.base_url,
        "CUSTOM_LLM_MODEL": "m",
        "CUSTOM_LLM_HEADERS": '{"X-Team": "blue"}',
    }
    async with Runtime.from_env(env) as rt:
        assert (await rt.chat("hi")).endpoint == "custom"
    assert local.last_headers is not None and local.last_headers.get("X-Team") == "blue"


async def test_mock_provider_needs_no_network() -> None:
    """The mock provider answers in-process: chat, stream and embed."""
    async with Runtime([Endpoint(name="m", provider="mock", health=QUIET)]) as rt:
        reply = await rt.chat("ping")
        assert reply.text and reply.endpoint == "m"
        async with rt.stream("ping") as stream:
            text = "".join([c.text async for c in stream])
        assert text == reply.text
        assert len((await rt.embed(["x"])).vectors) == 1


async def test_ready_counts_the_chunks_a_stream_can_give_without_waiting() -> None:
    """ReplyStream.ready: the chunks that have arrived and not been taken (a proxy writes them
    out together); a mock stream has its whole answer at hand, and none once it ended."""
    async with Runtime([Endpoint(name="m", provider="mock", health=QUIET)]) as rt:
        async with rt.stream("one two three") as stream:
            ready = [stream.ready]
            async for _ in stream:
                ready.append(stream.ready)
    assert ready[0] >= 2 and ready == list(range(ready[0], -1, -1))
    assert stream.ready == 0


async def test_usage_totals_by_endpoint_and_model(local: FaultyEndpoint) -> None:
    """usage() sums requests, tokens, cost and errors overall and by endpoint and model."""
    async with Runtime([local.endpoint(health=QUIET, model="gpt-4o-mini")]) as rt:
        for _ in range(3):
            await rt.chat("hi")
        local.faults.fail_next(1, status=400)
        with pytest.raises(runtime.BadRequest):
            await rt.chat("hi")
        report = rt.usage()
    assert report.total.requests == 4 and report.total.errors == 1
    assert report.by_endpoint["local"].requests == 3
    assert report.by_model["gpt-4o-mini"].input_tokens > 0


async def test_shutdown_waits_for_requests_in_flight(local: FaultyEndpoint) -> None:
    """Leaving async with lets a request in flight finish within the grace period."""
    local.faults.latency = 2.0
    results: list[str] = []
    async with anyio.create_task_group() as tg:
        rt = Runtime([local.endpoint(health=QUIET)], shutdown_grace=10)

        async def request() -> None:
            results.append((await rt.chat("hi")).text)

        async with rt:
            tg.start_soon(request)
            await anyio.sleep(0.5)
    assert results == ["hello from local"]


def test_blocking_facade_serves_code_that_is_not_async() -> None:
    """Runtime.blocking() offers chat, stream, embed and status to synchronous code."""
    ready = threading.Event()
    stop = threading.Event()
    urls: list[str] = []

    async def serve() -> None:
        async with FaultyEndpoint("openai", name="sync", text="hello sync") as ep:
            urls.append(ep.base_url)
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    server = threading.Thread(target=anyio.run, args=(serve,), daemon=True)
    server.start()
    assert ready.wait(10)
    try:
        endpoint = Endpoint(name="sync", provider="openai-compatible", model="m", base_url=urls[0], health=QUIET)
        with Runtime([endpoint]).blocking() as rt:
            assert rt.chat("hi").text == "hello sync"
            with rt.stream("hi") as stream:
                assert "".join(c.text for c in stream) == "hello sync"
            assert stream.response.endpoint == "sync"
            assert len(rt.embed(["a"]).vectors) == 1
            assert rt.status()[0].state == "healthy"
    finally:
        stop.set()
        server.join(10)


async def test_crashing_endpoint_actor_is_restarted_then_escalated(
    local: FaultyEndpoint, monkeypatch: pytest.MonkeyPatch, span_exporter: InMemorySpanExporter
) -> None:
    """An actor whose probe loop crashes is restarted; past the intensity it is failed and routed around."""

    def broken_schedule(self: ProbeSchedule, healthy: bool) -> float:
        raise RuntimeError("bug in a probe schedule")

    monkeypatch.setattr(ProbeSchedule, "next_delay", broken_schedule)
    endpoints = [
        Endpoint(name="flaky", provider="mock", health=HealthPolicy(interval=1.0), priority=1),
        local.endpoint(health=QUIET, priority=2),
    ]
    async with Runtime(endpoints, max_restarts=2, restart_within=60) as rt:
        assert (await rt.chat("hi")).endpoint == "flaky"
        await anyio.sleep(30)
        assert rt.status()[0].state == "failed"
        assert "bug in a probe schedule" in (rt.status()[0].last_error or "")
        for _ in range(3):
            assert (await rt.chat("hi")).endpoint == "local"
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert names.count("actor crashed") == 3
    assert names.count("supervisor failed") == 1
    assert names.count("endpoint failed") == 1


async def test_rpm_limit_waits_for_capacity_within_the_deadline(local: FaultyEndpoint) -> None:
    """At its rpm limit the only endpoint is waited on when the deadline allows, else refused at once."""
    # rpm=6: a token comes back every 10 s. The loop's clock also runs in real time, and a
    # token every second (rpm=60) could come back while a loaded machine sent the burst.
    async with Runtime([local.endpoint(health=QUIET, rpm=6)]) as rt:
        for _ in range(6):
            await rt.chat("hi")
        start = anyio.current_time()
        with pytest.raises(NoEndpointAvailable):
            await rt.chat("hi", timeout=0.2)
        assert anyio.current_time() - start < 0.2
        reply = await rt.chat("hi", timeout=15)
        assert reply.endpoint == "local" and anyio.current_time() - start <= 10.5
    assert local.stats.requests == 7


async def test_endpoint_budget_spent_routes_to_the_next(local: FaultyEndpoint) -> None:
    """An endpoint whose own daily token budget is spent is routed around; the others keep serving."""
    async with FaultyEndpoint("openai", name="spare", text="from spare") as spare:
        endpoints = [
            local.endpoint(health=QUIET, priority=1, budget=runtime.Budget(daily_tokens=10)),
            spare.endpoint(health=QUIET, priority=2),
        ]
        async with Runtime(endpoints) as rt:
            served = [(await rt.chat("hi")).endpoint for _ in range(6)]
    assert served[0] == "local" and served[-1] == "spare"
    assert spare.stats.requests >= 1 and local.stats.requests < 6


async def test_waiting_for_capacity_spends_no_retry_budget(local: FaultyEndpoint) -> None:
    """With room for one retry, a 429 + Retry-After wait still leaves that retry to be made."""
    local.faults.fail_next(1, status=429, retry_after=3)
    retry = runtime.RetryPolicy(budget_ratio=0.0, budget_floor=0.1)  # one retry per 10 s window
    async with Runtime([local.endpoint(health=QUIET)], retry=retry) as rt:
        reply = await rt.chat("hi", timeout=10)
    assert reply.endpoint == "local" and len(reply.attempts) == 2


async def test_actor_statistics_are_frozen_and_count_errors_by_class(local: FaultyEndpoint) -> None:
    """statistics() is a frozen struct: outcomes by error class, the last error and when the state changed."""
    local.faults.fail_next(1, status=500)
    async with Runtime([local.endpoint(health=QUIET)], retry=runtime.RetryPolicy(max_attempts=1)) as rt:
        with pytest.raises(AllEndpointsFailed):
            await rt.chat("hi")
        stats = rt.actor("local").statistics()
    assert stats.state == "degraded"
    assert stats.latency.counts.get("ServerError") == 1
    assert stats.latency.last_error is not None and "ServerError" in stats.latency.last_error
    assert stats.latency.state_since is not None and stats.breaker.consecutive_failures == 1
    with pytest.raises(AttributeError):
        stats.state = "healthy"  # type: ignore[misc]
