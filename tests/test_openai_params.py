"""The OpenAI parameters beyond the common ones: their wire form per provider, the refusal
and drop rules, n choices and logprobs read back, and the runtime's argument checks."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime import Endpoint, InvalidRequest, Runtime
from runtime.providers import adapter_for
from runtime.testing import FaultyEndpoint
from runtime.types import ChatRequest, Message

FIXTURES = Path(__file__).resolve().parent / "data"
HI = [Message(role="user", content="hi")]

EVERY = {
    "presence_penalty": 0.5, "frequency_penalty": -0.25, "logit_bias": {"50256": -100.0}, "logprobs": True,
    "top_logprobs": 2, "n": 2, "user": "user-42", "parallel_tool_calls": False, "reasoning_effort": "low",
    "metadata": {"team": "red"},
}


def body_of(provider: str, request: ChatRequest, **endpoint: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and headers the adapter of ``provider`` would send for ``request``."""
    fields: dict[str, Any] = {"name": "ep", "provider": provider, "model": "m", "api_key": "k", **endpoint}
    if provider in ("azure", "openai-compatible", "ollama"):
        fields.setdefault("base_url", "http://127.0.0.1:9")
    sent = adapter_for(Endpoint(**fields)).chat_request(request, stream=False)
    assert sent.body is not None
    return json.loads(sent.body), dict(sent.headers)


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible"])
def test_openai_dialect_sends_every_parameter_as_is(provider: str) -> None:
    """OpenAI, Azure and compatible servers get every parameter under its own name."""
    body, _ = body_of(provider, ChatRequest(messages=HI, **EVERY))
    assert {key: body[key] for key in EVERY} == EVERY


def test_deepseek_takes_penalties_and_logprobs_and_refuses_n() -> None:
    """DeepSeek: penalties and logprobs as is; n (and the rest) refused naming parameter and endpoint."""
    request = ChatRequest(messages=HI, presence_penalty=1.0, frequency_penalty=0.5, logprobs=True, top_logprobs=3)
    body, _ = body_of("deepseek", request)
    assert (body["presence_penalty"], body["frequency_penalty"], body["logprobs"], body["top_logprobs"]) == (1.0, 0.5, True, 3)
    with pytest.raises(InvalidRequest, match=r"n is not supported by deepseek \(endpoint 'ep'\)") as info:
        body_of("deepseek", ChatRequest(messages=HI, n=2))
    assert (info.value.field, info.value.endpoint) == ("n", "ep")


def test_anthropic_translations() -> None:
    """Anthropic: user → metadata.user_id, parallel_tool_calls=False → disable_parallel_tool_use, effort → thinking."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    request = ChatRequest(
        messages=HI, user="u-1", parallel_tool_calls=False, reasoning_effort="medium", max_tokens=8000, tools=tools
    )
    body, _ = body_of("anthropic", request)
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    with pytest.raises(InvalidRequest, match="max_tokens must be above it"):
        body_of("anthropic", ChatRequest(messages=HI, reasoning_effort="high", max_tokens=1000))
    for name in ("presence_penalty", "logit_bias", "logprobs", "n", "metadata"):
        with pytest.raises(InvalidRequest, match=f"{name} is not supported by anthropic"):
            body_of("anthropic", ChatRequest(messages=HI, **{name: EVERY[name]}))


def test_ollama_translations() -> None:
    """Ollama: penalties inside options, reasoning_effort → think; logit_bias refused."""
    body, _ = body_of("ollama", ChatRequest(messages=HI, presence_penalty=0.5, frequency_penalty=0.25, reasoning_effort="low"))
    assert body["options"] == {"presence_penalty": 0.5, "frequency_penalty": 0.25} and body["think"] is True
    with pytest.raises(InvalidRequest, match="logit_bias is not supported by ollama"):
        body_of("ollama", ChatRequest(messages=HI, logit_bias={"1": 1.0}))


def test_drop_unsupported_drops_and_says_so_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """drop_unsupported on the request or the endpoint: the parameter is left out and one DEBUG line names it."""
    caplog.set_level(logging.DEBUG, logger="runtime")
    body, _ = body_of("anthropic", ChatRequest(messages=HI, n=3, drop_unsupported=True))
    assert "n" not in body
    body, _ = body_of("ollama", ChatRequest(messages=HI, logprobs=True), drop_unsupported=True)
    assert "logprobs" not in body
    assert [r.getMessage() for r in caplog.records if r.name == "runtime"] == [
        "dropped n: anthropic has no equivalent (endpoint 'ep')",
        "dropped logprobs: ollama has no equivalent (endpoint 'ep')",
    ]


@pytest.mark.parametrize("provider", ["openai", "anthropic", "ollama"])
def test_extra_body_and_extra_headers_reach_every_provider(provider: str) -> None:
    """extra_body is merged into the body last (it wins), extra_headers into the headers."""
    request = ChatRequest(messages=HI, extra_body={"custom": {"a": 1}, "model": "override"}, extra_headers={"X-Trace": "t1"})
    body, headers = body_of(provider, request)
    assert body["custom"] == {"a": 1} and body["model"] == "override" and headers["X-Trace"] == "t1"


def test_n_choices_and_logprobs_are_read_back() -> None:
    """A reply with two choices and logprobs (the streamed fixture's logprobs entry shape): every choice and token."""
    chunk = next(
        json.loads(line[6:]) for line in (FIXTURES / "openai" / "chat_stream_content_logprobs.sse").read_text().splitlines()
        if line.startswith("data: {") and '"token"' in line
    )
    entry = chunk["choices"][0]["logprobs"]["content"][0]
    entry["top_logprobs"] = [{"token": entry["token"], "logprob": entry["logprob"], "bytes": entry["bytes"]}]
    body = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [
            {"index": 1, "message": {"role": "assistant", "content": "Bar"}, "finish_reason": "stop", "logprobs": None},
            {"index": 0, "message": {"role": "assistant", "content": "Foo"}, "finish_reason": "stop",
             "logprobs": {"content": [entry], "refusal": None}},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    adapter = adapter_for(Endpoint(name="ep", provider="openai", model="gpt-4o", api_key="k"))
    reply = adapter.parse_chat(msgspec.json.encode(body))
    assert reply.text == "Foo" and [(c.index, c.text) for c in reply.choices] == [(0, "Foo"), (1, "Bar")]
    assert reply.logprobs is not None and reply.logprobs[0].token == "Foo"
    assert reply.logprobs[0].logprob == entry["logprob"] and reply.logprobs[0].top == [("Foo", entry["logprob"])]


@pytest.mark.anyio
async def test_runtime_passes_parameters_and_checks_them() -> None:
    """rt.chat(..., presence_penalty=..., max_completion_tokens=...) reaches the wire; bad values name the field."""
    async with FaultyEndpoint("openai", name="primary") as local:
        async with Runtime([local.endpoint()]) as rt:
            await rt.chat("hi", presence_penalty=0.5, max_completion_tokens=7, user="u", metadata={"k": "v"})
            sent = local.last_request
            assert sent["presence_penalty"] == 0.5 and sent["max_completion_tokens"] == 7
            assert (sent["user"], sent["metadata"]) == ("u", {"k": "v"})
            cases: list[tuple[dict[str, Any], str]] = [
                ({"presence_penalty": 3}, "presence_penalty"),
                ({"n": 0}, "n"),
                ({"top_logprobs": 2}, "top_logprobs"),
                ({"reasoning_effort": "max"}, "reasoning_effort"),
                ({"logit_bias": {"1": 500}}, "logit_bias['1']"),
                ({"max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens"),
            ]
            with pytest.raises(TypeError, match="frobnicate"):
                await rt.chat("hi", frobnicate=1)  # type: ignore[call-arg]
            for kwargs, field in cases:
                with pytest.raises(InvalidRequest) as info:
                    await rt.chat("hi", **kwargs)
                assert info.value.field == field, kwargs
            with pytest.raises(InvalidRequest, match="n > 1 cannot be streamed"):
                rt.stream("hi", n=2)


@pytest.mark.anyio
async def test_refused_parameter_on_the_only_endpoint_sends_nothing() -> None:
    """An Ollama endpoint and logprobs=True: InvalidRequest naming both, and the server saw no chat request."""
    async with FaultyEndpoint("ollama", name="local") as local:
        async with Runtime([local.endpoint()]) as rt:
            with pytest.raises(InvalidRequest, match=r"logprobs is not supported by ollama \(endpoint 'local'\)"):
                await rt.chat("hi", logprobs=True)
        assert local.stats.requests == 0


def test_parameters_without_an_equivalent_follow_the_refusal_rule() -> None:
    """seed on Anthropic and a forced tool_choice on Ollama are refused (or dropped with drop_unsupported);
    Ollama's tool_choice "none" sends no tools, "auto" is its default."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(InvalidRequest, match=r"seed is not supported by anthropic \(endpoint 'ep'\)") as info:
        body_of("anthropic", ChatRequest(messages=HI, seed=7))
    assert info.value.field == "seed"
    assert "seed" not in body_of("anthropic", ChatRequest(messages=HI, seed=7), drop_unsupported=True)[0]
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        with pytest.raises(InvalidRequest, match="tool_choice is not supported by ollama") as info:
            body_of("ollama", ChatRequest(messages=HI, tools=tools, tool_choice=choice))
        assert info.value.field == "tool_choice"
    dropped, _ = body_of("ollama", ChatRequest(messages=HI, tools=tools, tool_choice="required", drop_unsupported=True))
    assert dropped["tools"] == tools and "tool_choice" not in dropped
    assert "tools" not in body_of("ollama", ChatRequest(messages=HI, tools=tools, tool_choice="none"))[0]
    assert body_of("ollama", ChatRequest(messages=HI, tools=tools, tool_choice="auto"))[0]["tools"] == tools
