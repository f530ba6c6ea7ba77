"""Typed structured output: the schema each response_format form becomes, each provider's native
mechanism on the wire, reply.parsed from fault-injecting endpoints, the typed error, and repair."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, TypedDict

import msgspec
import pytest

from runtime import Endpoint, InvalidOutput, InvalidRequest, Runtime
from runtime.providers import adapter_for
from runtime.structured import OUTPUT_TOOL, output_schema
from runtime.testing import FaultyEndpoint
from runtime.types import ChatRequest, Message

pytestmark = pytest.mark.anyio


class City(msgspec.Struct):
    name: str


class Person(msgspec.Struct):
    name: str
    age: Annotated[int, msgspec.Meta(ge=0)]
    city: City


@dataclasses.dataclass
class Point:
    x: int
    y: int = 0


class Pair(TypedDict):
    left: str
    right: str


VALID = '{"name": "Ada", "age": 36, "city": {"name": "London"}}'
PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Person",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
        "kind": {"enum": ["human", "robot"]},
        "city": {"$ref": "#/$defs/City"},
    },
    "required": ["name", "age"],
    "$defs": {"City": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
}


def test_struct_becomes_a_strict_inline_schema() -> None:
    """A Struct's schema has its root inline, nested objects in $defs, strict on, no extra keys allowed."""
    out = output_schema(Person)
    assert out is not None
    assert out.wire["type"] == "json_schema"
    spec = out.wire["json_schema"]
    assert (spec["name"], spec["strict"]) == ("Person", True)
    schema = spec["schema"]
    assert schema["type"] == "object" and schema["required"] == ["name", "age", "city"]
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["City"]["additionalProperties"] is False
    assert out.read(VALID)[0] == Person(name="Ada", age=36, city=City(name="London"))


def test_dataclass_with_a_default_is_not_strict_and_typeddict_is() -> None:
    """Strict mode needs every property required: a defaulted field turns it off; a TypedDict decodes to a dict."""
    point = output_schema(Point)
    pair = output_schema(Pair)
    assert point is not None and pair is not None
    assert point.strict is False and "additionalProperties" not in point.schema
    assert point.read('{"x": 1}')[0] == Point(x=1)
    assert pair.strict is True
    assert pair.read('{"left": "a", "right": "b"}')[0] == {"left": "a", "right": "b"}


def test_openai_shaped_values_pass_through_and_other_values_are_refused() -> None:
    """OpenAI-form dicts and None are not typed output; anything else names response_format."""
    assert output_schema(None) is None
    assert output_schema({"type": "json_object"}) is None
    assert output_schema({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}) is None
    for bad in (int, "json", list[Person], Person(name="x", age=1, city=City(name="y"))):
        with pytest.raises(InvalidRequest) as info:
            output_schema(bad)
        assert info.value.field == "response_format"


def test_json_schema_dict_is_checked_through_an_equivalent_type() -> None:
    """A JSON-schema dict: required, bounds, enum, $ref all checked; path of the failure named."""
    out = output_schema(PERSON_SCHEMA)
    assert out is not None and out.name == "Person" and out.strict is False
    assert out.read('{"name": "Ada", "age": 3, "kind": "robot", "city": {"name": "X"}, "extra": 1}')[0] == {
        "name": "Ada", "age": 3, "kind": "robot", "city": {"name": "X"},
    }
    cases = {
        '{"name": "Ada", "age": -1}': "$.age",
        '{"name": "Ada", "age": 1, "tags": ["a", "b", "c"]}': "$.tags",
        '{"name": "Ada", "age": 1, "kind": "cat"}': "$.kind",
        '{"name": "Ada", "age": 1, "city": {}}': "$.city",
    }
    for text, path in cases.items():
        value, failure = out.read(text)
        assert value is None and failure is not None and failure[0] == path


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ({"type": "array", "items": {}}, "response_format.type"),
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}, "response_format.properties.a.oneOf"),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}, "response_format.properties.a.$ref"),
        (
            {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}},
             "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}},
            "response_format.properties.n.$ref.properties.next.$ref",
        ),
        ({"type": "object", "properties": {"a": {"type": "date"}}}, "response_format.properties.a.type"),
    ],
)
def test_schema_keywords_that_cannot_be_checked_are_refused(schema: dict[str, Any], field: str) -> None:
    """A keyword or $ref the runtime cannot check is InvalidRequest naming where it is, not silently unchecked."""
    with pytest.raises(InvalidRequest) as info:
        output_schema(schema)
    assert info.value.field == field


def wire_body(provider: str, request: ChatRequest) -> dict[str, Any]:
    """The JSON body ``provider``'s adapter sends for ``request``."""
    fields: dict[str, Any] = {"name": "ep", "provider": provider, "model": "m", "api_key": "k"}
    if provider in ("azure", "openai-compatible", "ollama"):
        fields["base_url"] = "http://127.0.0.1:9"
    sent = adapter_for(Endpoint(**fields)).chat_request(request, stream=False)
    assert sent.body is not None
    return dict(json.loads(sent.body))


def person_request() -> ChatRequest:
    out = output_schema(Person)
    assert out is not None
    return ChatRequest(messages=[Message(role="user", content="who?")], response_format=out.wire)


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible"])
def test_openai_dialect_sends_json_schema_strict(provider: str) -> None:
    """OpenAI, Azure and compatible servers get response_format json_schema with strict as computed."""
    body = wire_body(provider, person_request())
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["strict"] is True


def test_native_mechanisms_of_the_other_providers() -> None:
    """Anthropic: a forced tool; Ollama: format = the schema; DeepSeek: JSON mode + the schema in a system message."""
    request = person_request()
    schema = output_schema(Person).schema  # type: ignore[union-attr]
    anthropic = wire_body("anthropic", request)
    assert anthropic["tools"] == [{"name": OUTPUT_TOOL, "description": anthropic["tools"][0]["description"], "input_schema": schema}]
    assert anthropic["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}
    assert "output_config" not in anthropic and "response_format" not in anthropic
    assert wire_body("ollama", request)["format"] == schema
    deepseek = wire_body("deepseek", request)
    assert deepseek["response_format"] == {"type": "json_object"}
    system = deepseek["messages"][0]
    assert system["role"] == "system" and "json" in system["content"].split("\n", 1)[0]
    assert json.loads(system["content"].split("\n", 1)[1]) == schema


def test_anthropic_with_callers_tools_must_use_one_of_them_or_the_output_tool() -> None:
    """Caller tools and a schema together: the output tool is added and tool_choice is 'any'."""
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    request = msgspec.structs.replace(person_request(), tools=[tool])
    body = wire_body("anthropic", request)
    assert [t["name"] for t in body["tools"]] == ["lookup", OUTPUT_TOOL]
    assert body["tool_choice"] == {"type": "any"}


def runtime_for(ep: FaultyEndpoint, **overrides: Any) -> Runtime:
    return Runtime([ep.endpoint(**overrides)])


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible", "deepseek", "ollama"])
async def test_valid_reply_is_parsed_per_provider(provider: str) -> None:
    """A reply matching the schema comes back as an instance on reply.parsed."""
    async with FaultyEndpoint(provider, name="p", text=VALID) as ep, runtime_for(ep) as rt:
        reply = await rt.chat("who?", response_format=Person)
    assert reply.parsed == Person(name="Ada", age=36, city=City(name="London"))
    assert reply.text == VALID


async def test_anthropic_forced_tool_reply_is_parsed() -> None:
    """Anthropic answers by calling the output tool; its input is the reply's text and parsed value."""
    async with FaultyEndpoint("anthropic", name="a") as ep, runtime_for(ep) as rt:
        reply = await rt.chat("Ada", response_format=Pair)
        async with rt.stream("Ada", response_format=Pair) as stream:
            streamed = "".join([chunk.text async for chunk in stream])
    assert reply.parsed == {"left": "Ada", "right": "Ada"}
    assert (reply.finish_reason, reply.tool_calls) == ("stop", [])
    assert json.loads(streamed) == {"left": "Ada", "right": "Ada"}
    assert stream.response.finish_reason == "stop" and stream.response.tool_calls == []


@pytest.mark.parametrize("provider", ["openai", "ollama", "deepseek"])
async def test_invalid_reply_is_a_typed_error_naming_the_path(provider: str) -> None:
    """A reply that does not match raises InvalidOutput with the failing path and the raw text."""
    bad = '{"name": "Ada", "age": "old", "city": {"name": "London"}}'
    async with FaultyEndpoint(provider, name="p", text=bad) as ep, runtime_for(ep) as rt:
        with pytest.raises(InvalidOutput) as info:
            await rt.chat("who?", response_format=Person)
        assert ep.stats.requests == 1
    err = info.value
    assert (err.path, err.raw, err.endpoint, err.repairs) == ("$.age", bad, "p", 0)
    assert "does not match Person at $.age" in str(err)


async def test_anthropic_invalid_reply_is_a_typed_error() -> None:
    """Anthropic's tool input can break a constraint the provider does not enforce: InvalidOutput at that path."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}, "required": ["n"]}
    async with FaultyEndpoint("anthropic", name="a") as ep, runtime_for(ep) as rt:
        with pytest.raises(InvalidOutput) as info:
            await rt.chat("count", response_format=schema)
    assert (info.value.path, info.value.raw) == ("$.n", '{"n":1}')


async def test_not_json_is_invalid_at_the_root() -> None:
    """Text that is not JSON at all fails at $."""
    async with FaultyEndpoint("openai", name="p", text="I cannot answer that.") as ep, runtime_for(ep) as rt:
        with pytest.raises(InvalidOutput) as info:
            await rt.chat("who?", response_format=Person)
    assert info.value.path == "$" and "not JSON" in info.value.reason


async def test_fenced_json_is_accepted() -> None:
    """A reply wrapped in a ```json fence (common in JSON mode) is read inside the fence."""
    async with FaultyEndpoint("deepseek", name="d", text=f"```json\n{VALID}\n```") as ep, runtime_for(ep) as rt:
        reply = await rt.chat("who?", response_format=Person)
    assert reply.parsed == Person(name="Ada", age=36, city=City(name="London"))


async def test_repair_sends_the_error_back_to_the_same_endpoint() -> None:
    """repair=2: the invalid reply and its error go back to the endpoint that wrote it; the fixed reply wins.

    The backup (a lower tier) is never asked, usage adds up over both tries, the trail has both attempts."""
    bad = '{"name": "Ada", "age": -3, "city": {"name": "London"}}'
    async with (
        FaultyEndpoint("openai", name="primary", text=VALID) as primary,
        FaultyEndpoint("openai", name="backup", text=VALID) as backup,
    ):
        primary.replies.append(bad)
        async with Runtime([primary.endpoint(priority=1), backup.endpoint(priority=2)]) as rt:
            reply = await rt.chat("who?", response_format=Person, repair=2)
        sent = primary.last_request
        assert (primary.stats.requests, backup.stats.requests) == (2, 0)
    assert reply.parsed == Person(name="Ada", age=36, city=City(name="London"))
    assert [a.endpoint for a in reply.attempts] == ["primary", "primary"]
    assert sent["messages"][-2] == {"role": "assistant", "content": bad}
    assert "at $.age" in sent["messages"][-1]["content"] and sent["messages"][-1]["role"] == "user"
    assert reply.usage.input_tokens > 1 and reply.usage.output_tokens == 2 * len(VALID.split())


async def test_repair_gives_up_after_n_tries() -> None:
    """An endpoint that keeps answering badly: N repairs, then InvalidOutput saying how many were made."""
    async with FaultyEndpoint("ollama", name="o", text='{"name": 1}') as ep, runtime_for(ep) as rt:
        with pytest.raises(InvalidOutput) as info:
            await rt.chat("who?", response_format=Person, repair=2)
        assert ep.stats.requests == 3
    assert info.value.repairs == 2 and "after 2 repair attempts" in str(info.value)


async def test_repair_must_be_a_count() -> None:
    """repair takes an integer >= 0."""
    async with FaultyEndpoint("openai", name="p") as ep, runtime_for(ep) as rt:
        for bad in (-1, True, 1.5):
            with pytest.raises(InvalidRequest) as info:
                await rt.chat("hi", response_format=Person, repair=bad)  # type: ignore[arg-type]
            assert info.value.field == "repair"


async def test_json_object_mode_on_anthropic_is_the_output_tool_with_any_object() -> None:
    """response_format json_object on Anthropic: the forced output tool takes any object; the reply is its JSON."""
    body = wire_body("anthropic", ChatRequest(messages=[Message(role="user", content="x")], response_format={"type": "json_object"}))
    assert [(t["name"], t["input_schema"]) for t in body["tools"]] == [(OUTPUT_TOOL, {"type": "object"})]
    async with FaultyEndpoint("anthropic", name="a") as ep, runtime_for(ep) as rt:
        reply = await rt.chat("x", response_format={"type": "json_object"})
    assert (reply.text, reply.finish_reason, reply.parsed) == ("{}", "stop", None)


@pytest.mark.parametrize("provider", ["openai", "azure", "openai-compatible", "deepseek", "ollama"])
async def test_repair_per_provider(provider: str) -> None:
    """Each dialect: an invalid first reply, repaired on the same endpoint by the second."""
    async with FaultyEndpoint(provider, name="p", text=VALID) as ep, runtime_for(ep) as rt:
        ep.replies.append('{"name": "Ada"}')
        reply = await rt.chat("who?", response_format=Person, repair=1)
        assert ep.stats.requests == 2
    assert reply.parsed == Person(name="Ada", age=36, city=City(name="London"))


async def test_anthropic_repair_sends_the_error_as_the_next_user_turn() -> None:
    """Anthropic: the repair turns (the reply as assistant text, the error as user text) reach the same endpoint."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5}}, "required": ["n"]}
    async with FaultyEndpoint("anthropic", name="a") as ep, runtime_for(ep) as rt:
        with pytest.raises(InvalidOutput) as info:
            await rt.chat("count", response_format=schema, repair=1)
        sent = ep.last_request
        assert ep.stats.requests == 2
    assert info.value.repairs == 1
    assert sent["messages"][-2] == {"role": "assistant", "content": '{"n":1}'}
    assert sent["messages"][-1]["role"] == "user" and "at $.n" in sent["messages"][-1]["content"]
    assert sent["tool_choice"] == {"type": "tool", "name": OUTPUT_TOOL}


async def test_a_typed_stream_is_checked_at_its_end() -> None:
    """A stream with a typed response_format: response.parsed when the text matches; InvalidOutput
    where the stream ends when it does not (the text already delivered stays on response)."""
    async with FaultyEndpoint("ollama", name="o", text=VALID) as ep, runtime_for(ep) as rt:
        async with rt.stream("who?", response_format=Person) as good:
            assert "".join([c.text async for c in good]) == VALID
        ep.replies.append('{"name": "Ada"}')
        async with rt.stream("who?", response_format=Person) as bad:
            with pytest.raises(InvalidOutput) as info:
                async for _ in bad:
                    pass
    assert good.response.parsed == Person(name="Ada", age=36, city=City(name="London"))
    assert (info.value.path, bad.response.text, bad.response.parsed) == ("$", '{"name": "Ada"}', None)


async def test_an_invalid_reply_is_not_cached() -> None:
    """A cacheable typed request: a valid reply is served again from the cache, an invalid one is not kept."""
    from runtime import CachePolicy

    async with FaultyEndpoint("openai", name="p", text=VALID) as ep, Runtime([ep.endpoint()], cache=CachePolicy()) as rt:
        ep.replies.append('{"name": "Ada"}')
        with pytest.raises(InvalidOutput):
            await rt.chat("who?", response_format=Person, cache=True)
        first = await rt.chat("who?", response_format=Person, cache=True)
        again = await rt.chat("who?", response_format=Person, cache=True)
        assert ep.stats.requests == 2
    assert (first.cached, again.cached) == (False, True)
    assert again.parsed == Person(name="Ada", age=36, city=City(name="London"))


def test_conversion_is_done_once_and_leaves_the_callers_schema_alone() -> None:
    """The same type or schema converts once (the request path reuses it); a strict schema's
    additionalProperties go on a copy, never on the caller's dict."""
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}, "required": ["b"]}}, "required": ["a"]}
    before = json.dumps(schema, sort_keys=True)
    first, again = output_schema(schema), output_schema(dict(schema))
    assert first is again and first is not None and first.strict
    assert first.schema["properties"]["a"]["additionalProperties"] is False
    assert json.dumps(schema, sort_keys=True) == before
    assert output_schema(Person) is output_schema(Person)
    with pytest.raises(InvalidRequest) as info:
        output_schema({"type": "object", "properties": {"a": {"type": "string", "default": object()}}})
    assert info.value.field == "response_format"


async def test_a_pydantic_model_is_asked_for_and_validated_by_pydantic() -> None:
    """A pydantic model (recognised by its API; pydantic is not a dependency): its own schema on the
    wire, its own validation of the reply, the failing path in msgspec's notation."""
    pydantic = pytest.importorskip("pydantic")

    class Address(pydantic.BaseModel):
        city: str

    class Customer(pydantic.BaseModel):
        name: str
        addresses: list[Address]

    out = output_schema(Customer)
    assert out is not None and out.strict and out.name == "Customer"
    assert out.schema["$defs"]["Address"]["additionalProperties"] is False
    assert out.read('{"name": "x", "addresses": [{"city": 3}]}')[1] == ("$.addresses[0].city", "Input should be a valid string")
    text = '{"name": "Ada", "addresses": [{"city": "London"}]}'
    async with FaultyEndpoint("openai", name="p", text=text) as ep, runtime_for(ep) as rt:
        reply = await rt.chat("who?", response_format=Customer)
        ep.replies.append("{nope")
        with pytest.raises(InvalidOutput) as info:
            await rt.chat("who?", response_format=Customer)
        assert ep.last_request["response_format"]["json_schema"]["schema"]["title"] == "Customer"
    assert reply.parsed == Customer(name="Ada", addresses=[Address(city="London")])
    assert info.value.path == "$" and info.value.reason.startswith("not JSON")
