"""Text completion: rt.complete / rt.stream_complete on the OpenAI-dialect /completions and Ollama
/api/generate, with usage, streaming and chat's resilience; refused where a provider has no such API."""

from __future__ import annotations

import inspect
from typing import Any

import anyio
import pytest

from runtime import CachePolicy, InvalidRequest, Runtime
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

TEXT = "and they lived happily ever after."


@pytest.mark.parametrize(
    ("provider", "path"),
    [("openai-compatible", "/v1/completions"), ("openai", "/v1/completions"), ("ollama", "/api/generate")],
)
async def test_complete_uses_the_text_completion_api(provider: str, path: str) -> None:
    """complete() sends the prompt to the provider's completion API and reads text, finish reason and usage."""
    async with FaultyEndpoint(provider, name="c", text=TEXT) as ep, Runtime([ep.endpoint()]) as rt:
        reply = await rt.complete("Once upon a time", max_tokens=50, temperature=0.5, stop=["\n\n"])
        sent = ep.last_request
        by_path = ep.stats.by_path
    assert (reply.text, reply.finish_reason, reply.endpoint) == (TEXT, "stop", "c")
    assert (reply.usage.input_tokens, reply.usage.output_tokens, reply.usage.estimated) == (4, len(TEXT.split()), False)
    assert by_path == {path: 1}
    assert sent["prompt"] == "Once upon a time" and "messages" not in sent
    if provider == "ollama":
        assert (sent["stream"], sent["options"]) == (False, {"num_predict": 50, "temperature": 0.5, "stop": ["\n\n"]})
    else:
        assert (sent["max_tokens"], sent["temperature"], sent["stop"]) == (50, 0.5, ["\n\n"])


async def test_length_limit_is_the_finish_reason() -> None:
    """A completion cut by max_tokens finishes with 'length', as a chat reply does."""
    async with FaultyEndpoint("ollama", name="o", text=TEXT) as ep, Runtime([ep.endpoint()]) as rt:
        reply = await rt.complete("Once", max_tokens=2)
    assert (reply.text, reply.finish_reason) == ("and they", "length")


async def test_azure_deployment_completions_path() -> None:
    """Azure: the completions path sits beside chat/completions under the deployment, api-version kept."""
    async with FaultyEndpoint("azure", name="az", text=TEXT) as ep, Runtime([ep.endpoint()]) as rt:
        reply = await rt.complete("Once")
        assert ep.stats.by_path == {f"/openai/deployments/{ep.model}/completions": 1}
    assert reply.text == TEXT


@pytest.mark.parametrize(("provider", "path"), [("openai-compatible", "/v1/completions"), ("ollama", "/api/generate")])
async def test_stream_complete_streams_text_and_usage(provider: str, path: str) -> None:
    """stream_complete() yields the text piece by piece; the whole reply with usage comes at the end."""
    async with FaultyEndpoint(provider, name="s", text=TEXT) as ep, Runtime([ep.endpoint()]) as rt:
        async with rt.stream_complete("Once upon a time") as stream:
            pieces = [chunk.text async for chunk in stream]
        assert ep.stats.by_path == {path: 1} and ep.stats.streams == 1
        sent = ep.last_request
    assert "".join(pieces) == TEXT and len([p for p in pieces if p]) == len(TEXT.split())
    assert stream.response.usage.output_tokens == len(TEXT.split()) and stream.response.finish_reason == "stop"
    assert sent["stream"] is True
    if provider != "ollama":
        assert sent["stream_options"] == {"include_usage": True}


async def test_refused_where_no_endpoint_has_a_completion_api() -> None:
    """Anthropic and DeepSeek have no completion API: InvalidRequest naming them, nothing sent."""
    async with (
        FaultyEndpoint("anthropic", name="claude") as claude,
        FaultyEndpoint("deepseek", name="ds") as ds,
        Runtime([claude.endpoint(priority=1), ds.endpoint(priority=2)]) as rt,
    ):
        with pytest.raises(InvalidRequest, match=r"no text-completion API on 'claude' \(anthropic\), 'ds' \(deepseek\)") as info:
            await rt.complete("Once")
        assert info.value.field == "model"
        with pytest.raises(InvalidRequest) as pinned:
            rt.stream_complete("Once", endpoint="claude")
        assert pinned.value.field == "endpoint"
        assert claude.stats.requests == ds.stats.requests == 0


async def test_only_endpoints_with_a_completion_api_are_tried() -> None:
    """A route mixing providers: complete() skips the Anthropic primary, chat() still uses it."""
    async with (
        FaultyEndpoint("anthropic", name="claude") as claude,
        FaultyEndpoint("ollama", name="local", text=TEXT) as local,
        Runtime([claude.endpoint(priority=1), local.endpoint(priority=2)]) as rt,
    ):
        completed = await rt.complete("Once")
        chatted = await rt.chat("Once")
        assert (claude.stats.requests, local.stats.requests) == (1, 1)
    assert (completed.endpoint, chatted.endpoint) == ("local", "claude")


async def test_completion_fails_over_like_chat() -> None:
    """The primary answers 503 twice: the completion fails over to the backup; the trail shows it."""
    async with (
        FaultyEndpoint("openai-compatible", name="primary", text=TEXT) as primary,
        FaultyEndpoint("ollama", name="backup", text=TEXT) as backup,
        Runtime([primary.endpoint(priority=1), backup.endpoint(priority=2)]) as rt,
    ):
        primary.faults.fail_next(2, status=503)
        reply = await rt.complete("Once")
        primary.faults.cut_after = 0  # the stream breaks before its first piece: still failover
        async with rt.stream_complete("Once") as stream:
            streamed = "".join([chunk.text async for chunk in stream])
    assert reply.endpoint == "backup" and [a.endpoint for a in reply.attempts][-1] == "backup"
    assert any(a.endpoint == "primary" and a.error is not None for a in reply.attempts)
    assert (stream.endpoint, streamed) == ("backup", TEXT)


async def test_completion_deadline_holds() -> None:
    """A hanging endpoint: the completion ends by its timeout with a typed error, never hangs."""
    async with FaultyEndpoint("ollama", name="slow") as ep, Runtime([ep.endpoint()]) as rt:
        ep.faults.schedule("hang", "hang", "hang")
        with anyio.fail_after(60), pytest.raises(Exception) as info:
            await rt.complete("Once", timeout=5)
    assert type(info.value).__module__ == "runtime.errors"


async def test_parameters_of_the_completion_api() -> None:
    """Penalties, logit_bias and user go as is; logprobs (a count there) is refused, or dropped when asked."""
    async with FaultyEndpoint("openai-compatible", name="c", text=TEXT) as ep, Runtime([ep.endpoint()]) as rt:
        await rt.complete("Once", presence_penalty=0.5, logit_bias={"50256": -100.0}, user="u-1")
        sent = ep.last_request
        assert (sent["presence_penalty"], sent["logit_bias"], sent["user"]) == (0.5, {"50256": -100.0}, "u-1")
        with pytest.raises(InvalidRequest, match="logprobs is not supported by openai-compatible") as info:
            await rt.complete("Once", logprobs=True)
        assert info.value.field == "logprobs"
        await rt.complete("Once", logprobs=True, drop_unsupported=True)
        assert "logprobs" not in ep.last_request


async def test_prompt_must_be_a_non_empty_string() -> None:
    """complete() takes one prompt string; anything else names the prompt."""
    async with FaultyEndpoint("ollama", name="o") as ep, Runtime([ep.endpoint()]) as rt:
        for bad in ("", ["Once"], None):
            with pytest.raises(InvalidRequest) as info:
                await rt.complete(bad)  # type: ignore[arg-type]
            assert info.value.field == "prompt"
        assert ep.stats.requests == 0


async def test_a_completion_is_cached_apart_from_a_chat_with_the_same_text() -> None:
    """The cache tells a completion of a prompt from a chat about it."""
    async with FaultyEndpoint("ollama", name="o", text=TEXT) as ep, Runtime([ep.endpoint()], cache=CachePolicy()) as rt:
        first = await rt.complete("Once", cache=True)
        again = await rt.complete("Once", cache=True)
        chat = await rt.chat("Once", cache=True)
        assert ep.stats.requests == 2
    assert (first.cached, again.cached, chat.cached) == (False, True, False)


def test_blocking_complete_and_stream_complete() -> None:
    """The blocking facade completes and streams a completion from a thread."""
    from anyio.from_thread import start_blocking_portal

    from runtime.testing import LocalEndpoints

    endpoints = LocalEndpoints(FaultyEndpoint("ollama", name="o", text=TEXT))
    with start_blocking_portal() as portal:
        portal.call(endpoints.start)
        try:
            with Runtime([endpoints["o"].endpoint()]).blocking() as brt:
                assert brt.complete("Once").text == TEXT
                with brt.stream_complete("Once") as stream:
                    assert "".join(chunk.text for chunk in stream) == TEXT
                assert stream.response.usage.output_tokens == len(TEXT.split())
        finally:
            portal.call(endpoints.aclose)


def test_blocking_complete_has_the_same_signature() -> None:
    """BlockingRuntime.complete and stream_complete take exactly Runtime's parameters."""
    from runtime._runtime import BlockingRuntime

    def params(fn: Any) -> list[str]:
        return list(inspect.signature(fn).parameters)

    assert params(BlockingRuntime.complete) == params(Runtime.complete)
    assert params(BlockingRuntime.stream_complete) == params(Runtime.stream_complete) == params(Runtime.complete)
    assert "prompt" in params(Runtime.complete) and "repair" not in params(Runtime.complete)


@pytest.mark.parametrize("provider", ["openai-compatible", "ollama"])
async def test_a_cut_completion_stream_is_continued_as_one_text(provider: str) -> None:
    """on_interrupt="continue": a completion cut after content is continued by the backup from the
    prompt plus the partial text, so the caller's text is one completion, not a repeat."""
    async with (
        FaultyEndpoint(provider, name="primary", text=TEXT) as primary,
        FaultyEndpoint(provider, name="backup", text=TEXT) as backup,
        Runtime([primary.endpoint(priority=1), backup.endpoint(priority=2)]) as rt,
    ):
        primary.faults.cut_after = 2
        async with rt.stream_complete("Once upon a time, ", on_interrupt="continue") as stream:
            text = "".join([chunk.text async for chunk in stream])
        sent = backup.last_request
    assert text == TEXT == stream.response.text
    assert sent["prompt"] == "Once upon a time, and they"
    assert [a.recovery for a in stream.response.attempts] == [None, "continue"]
