"""Every bad argument of chat, stream and embed is refused before a byte is sent.

One matrix of bad values runs against every dialect: each must raise InvalidRequest
naming the field (with its index), the server must see no request, and however many
bad calls are made the endpoint's breaker stays closed.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import msgspec
import pytest

from runtime import HealthPolicy, Runtime
from runtime.errors import InvalidRequest
from runtime.testing import FaultyEndpoint
from runtime.types import ImagePart, Message, TextPart, ToolCall
from runtime.validation import chat_request, check_header, check_response_format, embed_request

pytestmark = pytest.mark.anyio

QUIET = HealthPolicy(enabled=False)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
NAN = float("nan")
INF = float("inf")

# (keyword arguments of chat/stream, the field the error must name)
BAD_CHAT: list[tuple[dict[str, Any], str]] = [
    ({"messages": ""}, "messages"),
    ({"messages": "   "}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": None}, "messages"),
    ({"messages": 123}, "messages"),
    ({"messages": [None]}, "messages[0]"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [Message(role="wizard", content="x")]}, "messages[0].role"),  # type: ignore[arg-type]
    ({"messages": [{"role": "user", "content": 123}]}, "messages[0].content"),
    ({"messages": [Message(role="user", content=123)]}, "messages[0].content"),  # type: ignore[arg-type]
    ({"messages": [Message(role="user", content=["a"])]}, "messages[0].content[0]"),  # type: ignore[list-item]
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, "messages[0].content[0].type"),
    ({"messages": [Message(role="user", content=[ImagePart(url="")])]}, "messages[0].content[0].url"),
    ({"messages": [Message(role="user", content=[TextPart(text=5)])]}, "messages[0].content[0].text"),  # type: ignore[arg-type]
    ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].tool_call_id"),
    (
        {"messages": [Message(role="assistant", tool_calls=[ToolCall(id="c1", name="f", arguments="{not json")])]},
        "messages[0].tool_calls[0].arguments",
    ),
    (
        {"messages": [Message(role="assistant", tool_calls=[ToolCall(id="c1", name="f", arguments="[1]")])]},
        "messages[0].tool_calls[0].arguments",
    ),
    (
        {"messages": [Message(role="user", tool_calls=[ToolCall(id="c1", name="f")])]},
        "messages[0].tool_calls",
    ),
    ({"system": 123}, "system"),
    ({"system": ["a"]}, "system"),
    ({"model": ["gpt"]}, "model"),
    ({"model": ""}, "model"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": "10"}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"temperature": NAN}, "temperature"),
    ({"temperature": INF}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": [1]}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": NAN}, "top_p"),
    ({"stop": 123}, "stop"),
    ({"stop": [1, 2]}, "stop[0]"),
    ({"stop": ["ok", ""]}, "stop[1]"),
    ({"stop": {"a": 1}}, "stop"),
    ({"seed": "abc"}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"tools": "abc"}, "tools"),
    ({"tools": [None]}, "tools[0]"),
    ({"tools": [{"type": "function"}]}, "tools[0].function"),
    ({"tools": [{"type": "function", "function": {"name": 5}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools[0].function.parameters"),
    ({"tools": [TOOL, {"function": {"name": "g"}}]}, "tools[1].type"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].name"),
    ({"tool_choice": 123}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function"}, "tools": [TOOL]}, "tool_choice.function"),
    ({"tool_choice": {"type": "function", "function": {"name": "other"}}, "tools": [TOOL]}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"response_format": "json"}, "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema.schema"),
    ({"response_format": int}, "response_format"),
    ({"timeout": "1"}, "timeout"),
    ({"timeout": 0}, "timeout"),
    ({"timeout": NAN}, "timeout"),
    ({"endpoint": 5}, "endpoint"),
    ({"cache": "yes"}, "cache"),
    ({"presence_penalty": "1"}, "presence_penalty"),
    ({"frequency_penalty": NAN}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": [1]}, "logit_bias"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"user": 5}, "user"),
    ({"metadata": {"k": 5}}, "metadata['k']"),
    ({"metadata": "k"}, "metadata"),
    ({"extra_headers": {"X-Evil": "a\r\nHost: evil"}}, "extra_headers['X-Evil']"),
    ({"extra_headers": {"bad name": "v"}}, "extra_headers['bad name']"),
    ({"extra_body": "x"}, "extra_body"),
    ({"parallel_tool_calls": 1}, "parallel_tool_calls"),
    ({"drop_unsupported": "yes"}, "drop_unsupported"),
]

BAD_EMBED: list[tuple[dict[str, Any], str]] = [
    ({"inputs": None}, "inputs"),
    ({"inputs": []}, "inputs"),
    ({"inputs": ""}, "inputs"),
    ({"inputs": 5}, "inputs"),
    ({"inputs": ["a", 5]}, "inputs[1]"),
    ({"inputs": ["a", ""]}, "inputs[1]"),
    ({"inputs": {"a": "b"}}, "inputs"),
    ({"inputs": "a", "dimensions": -1}, "dimensions"),
    ({"inputs": "a", "dimensions": 0}, "dimensions"),
    ({"inputs": "a", "dimensions": "8"}, "dimensions"),
    ({"inputs": "a", "model": 3}, "model"),
    ({"inputs": "a", "timeout": -1}, "timeout"),
]


def _chat_args(kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    kwargs = dict(kwargs)
    return kwargs.pop("messages", "hi"), kwargs


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
async def test_bad_arguments_are_refused_before_sending_on_every_dialect(dialect: str) -> None:
    """Each bad value: InvalidRequest naming the field, in chat and in stream; nothing reaches the server."""
    async with FaultyEndpoint(dialect, name="ep") as server:
        async with Runtime([server.endpoint(health=QUIET)]) as rt:
            for kwargs, field in BAD_CHAT:
                messages, rest = _chat_args(kwargs)
                with pytest.raises(InvalidRequest) as info:
                    await rt.chat(messages, **rest)
                assert info.value.field == field, (kwargs, str(info.value))
                with pytest.raises(InvalidRequest) as info:
                    async with rt.stream(messages, **{k: v for k, v in rest.items() if k != "hedge"}) as s:
                        async for _ in s:
                            pass
                assert info.value.field == field, (kwargs, str(info.value))
            for kwargs, field in BAD_EMBED:
                rest = dict(kwargs)
                with pytest.raises(InvalidRequest) as info:
                    await rt.embed(rest.pop("inputs"), **rest)
                assert info.value.field == field, (kwargs, str(info.value))
            status = rt.status()[0]
        assert server.stats.requests == 0
    assert status.breaker == "closed" and status.state == "healthy"


async def test_a_run_of_bad_calls_leaves_the_breaker_closed_and_the_endpoint_serving() -> None:
    """Far more bad calls than the failure threshold: the breaker never counts them; a good call then succeeds."""
    async with FaultyEndpoint("anthropic", name="ep") as server:
        async with Runtime([server.endpoint(health=QUIET)]) as rt:
            for _ in range(20):
                for kwargs in ({"tool_choice": 123}, {"system": ["a"]}, {"messages": [Message(role="user", content=123)]}):  # type: ignore[arg-type]
                    messages, rest = _chat_args(kwargs)
                    with pytest.raises(InvalidRequest):
                        await rt.chat(messages, **rest)
            assert rt.status()[0].breaker == "closed"
            reply = await rt.chat("hi")
        assert reply.text and server.stats.requests == 1


async def test_unknown_keywords_stay_a_type_error() -> None:
    """A keyword chat does not take is a TypeError naming it, as for any Python function."""
    async with FaultyEndpoint("openai", name="ep") as server:
        async with Runtime([server.endpoint(health=QUIET)]) as rt:
            with pytest.raises(TypeError, match="tempreature"):
                await rt.chat("hi", tempreature=0.5)  # type: ignore[call-arg]
        assert server.stats.requests == 0


class _Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class _Pair:
    a: str
    b: float


class _Movie(TypedDict):
    title: str


def test_response_format_takes_every_documented_form() -> None:
    """Formats in OpenAI's shape pass as given; a type or a bare schema becomes a strict json_schema format."""
    assert check_response_format({"type": "json_object"}) == {"type": "json_object"}
    given = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}
    assert check_response_format(given) == given
    for form, name in ((_Point, "_Point"), (_Pair, "_Pair"), (_Movie, "_Movie"), ({"type": "object", "properties": {}}, "response")):
        fmt = check_response_format(form)
        assert fmt is not None and fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == name
        assert isinstance(fmt["json_schema"]["schema"], dict)


def test_valid_requests_pass_unchanged() -> None:
    """The checks refuse nothing a caller may rightly send: parts, tool turns, Anthropic-shaped tools."""
    request = chat_request(
        [
            {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "url": "data:image/png;base64,AA"}]},
            Message(role="assistant", tool_calls=[ToolCall(id="c1", name="get_weather", arguments='{"city": "Oslo"}')]),
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
        system="be brief",
        stop="END",
        seed=-3,
        temperature=0,
        top_p=1,
        tools=[TOOL, {"name": "native", "input_schema": {"type": "object"}}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        params={"logit_bias": {"42": 5}, "extra_headers": {"X-Trace": "abc"}},
    )
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.stop == ["END"] and request.logit_bias == {"42": 5.0}
    assert embed_request("one").inputs == ["one"]
    assert embed_request(("a", "b"), dimensions=8).dimensions == 8


def test_header_rules() -> None:
    """CR, LF and NUL never reach a header; names are HTTP tokens."""
    check_header("X-Ok", "value with spaces\tand tab", "h")
    for name, value in (("X", "a\nb"), ("X", "a\rb"), ("X", "a\0b"), ("bad name", "v"), ("", "v"), ("X", 5)):
        with pytest.raises(InvalidRequest):
            check_header(name, value, "h")


async def test_an_adapter_that_cannot_write_the_request_is_the_requests_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever an adapter raises while building the request is InvalidRequest for that
    endpoint: nothing is sent and the breaker never counts it."""
    from runtime.providers.openai import OpenAIAdapter

    def broken(self: OpenAIAdapter, request: Any, *, stream: bool) -> Any:
        raise AttributeError("'int' object has no attribute 'get'")

    monkeypatch.setattr(OpenAIAdapter, "chat_request", broken)
    async with FaultyEndpoint("openai", name="ep") as server:
        async with Runtime([server.endpoint(health=QUIET)]) as rt:
            for _ in range(10):
                with pytest.raises(InvalidRequest) as info:
                    await rt.chat("hi")
                assert info.value.endpoint == "ep" and isinstance(info.value.__cause__, AttributeError)
            assert rt.status()[0].breaker == "closed"
        assert server.stats.requests == 0
