"""Typed structured output: ``response_format=`` a type or a JSON schema, ``reply.parsed`` an instance.

``chat(..., response_format=Person)`` takes a msgspec ``Struct``, a dataclass or a
``TypedDict`` (its schema comes from :func:`msgspec.json.schema`), a pydantic model
(its own schema and validation; pydantic is not imported here), or a JSON-schema dict
(``{"type": "object", "properties": ...}``). :func:`output_schema` turns either into an
:class:`OutputSchema`: the OpenAI wire form every adapter translates into its provider's
native mechanism, and a msgspec decoder that checks the reply.

The reply is checked here, not trusted to the provider: a model can still answer with
JSON that misses a field, and some mechanisms (DeepSeek's JSON mode) only promise JSON.
A reply that does not match raises :class:`~runtime.errors.InvalidOutput` naming the path
that failed (``$.age``) and carrying the raw text. With ``repair=N`` the runtime first
sends the reply and the validation error back to the same endpoint, up to N times.

A JSON-schema dict is checked through an equivalent msgspec type built from it. The
keywords understood are those of the providers' strict modes: ``type`` (one or a list),
``properties``/``required``, ``additionalProperties`` (a schema, for maps), ``items``,
``enum``, ``const``, ``anyOf``, ``$ref`` into ``$defs``, and the bounds ``minimum``,
``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``, ``multipleOf``, ``minLength``,
``maxLength``, ``pattern``, ``minItems``, ``maxItems``. Annotations (``title``,
``description``, ``default``, ``examples``, ``format``) are sent and not checked. Any
other keyword (``oneOf``, ``allOf``, ``not``, …) is refused with
:class:`~runtime.errors.InvalidRequest` naming where it is, rather than silently not
checked; so is a recursive ``$ref``. Keys an object's schema does not list are dropped
from ``parsed``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, NotRequired, Required

import msgspec

from .errors import InvalidOutput, InvalidRequest
from .types import ChatResponse, Message

__all__ = ["OUTPUT_TOOL", "OutputSchema", "output_schema", "parse_reply", "repair_messages"]

#: The tool an Anthropic endpoint is made to call when a reply must follow a schema:
#: the tool's input is the reply. Adapters turn its call back into the reply's text.
OUTPUT_TOOL = "structured_output"

# What OpenAI and Anthropic allow as a schema's name.
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_PATH = re.compile(r" - at `(\$[^`]*)`$")
_canonical = msgspec.json.Encoder(order="sorted").encode
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(.*?)\n?```\s*$", re.DOTALL)

_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "format", "$schema", "$id", "$comment"})
_NUMBER_BOUNDS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt", "multipleOf": "multiple_of"}
_STRING_BOUNDS = {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}
_ARRAY_BOUNDS = {"minItems": "min_length", "maxItems": "max_length"}
_SCALARS: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool, "null": None}
_SCHEMA_MARKS = frozenset({"properties", "$schema", "$ref", "$defs"})
_KNOWN = (
    _ANNOTATIONS
    | _NUMBER_BOUNDS.keys()
    | _STRING_BOUNDS.keys()
    | _ARRAY_BOUNDS.keys()
    | {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf", "$ref", "$defs", "definitions"}
)


#: Reads a reply's text: ``(value, None)``, or ``(None, (path, reason))`` when it does not match.
Reader = Callable[[str], tuple[Any, tuple[str, str] | None]]


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class OutputSchema:
    """What a reply must be: a schema, its wire form, and the reader that checks a reply against it.

    ``strict`` is true when the schema meets OpenAI's strict mode (every property
    required); it is sent as such, and the provider then guarantees the shape.
    """

    name: str
    schema: dict[str, Any]
    strict: bool
    reader: Reader

    @property
    def wire(self) -> dict[str, Any]:
        """The OpenAI ``response_format`` value that asks for this schema."""
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": self.strict}}

    def matches(self, text: str) -> bool:
        """Whether ``text`` reads as this schema."""
        return self.read(text)[1] is None

    def read(self, text: str) -> tuple[Any, tuple[str, str] | None]:
        """The reply's text as an instance, or where and why it does not match (a ```json fence is looked inside)."""
        match = _FENCE.match(text)
        return self.reader(match.group(1) if match else text)


def output_schema(value: Any) -> OutputSchema | None:
    """The schema a ``response_format`` value asks for; None for None and OpenAI-shaped dicts.

    A type must be a msgspec ``Struct``, a dataclass, a ``TypedDict`` or a pydantic model; a dict is a JSON
    schema when its ``type`` is a JSON type or it has ``properties``, ``$defs``, ``$ref``
    or ``$schema`` (other dicts are OpenAI ``response_format`` values, checked by
    :mod:`runtime.validation`). Raises :class:`InvalidRequest` for anything else, or for
    a schema that cannot be checked.
    """
    if value is None:
        return None
    if isinstance(value, type) and _is_model(value):
        return _from_type(value)
    if isinstance(value, type) and _is_pydantic(value):
        return _from_pydantic(value)
    if isinstance(value, Mapping):
        if not _is_json_schema(value):
            return None
        try:
            canonical = _canonical(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidRequest(f"response_format: a JSON schema holds only JSON values ({exc})", field="response_format") from None
        return _from_json(canonical)
    raise InvalidRequest(
        "response_format must be a msgspec Struct, dataclass, TypedDict or pydantic model type, a "
        f"JSON-schema dict, or an OpenAI response_format dict; got {value!r}",
        field="response_format",
    )


def _is_json_schema(value: Mapping[str, Any]) -> bool:
    """A JSON schema rather than an OpenAI ``response_format`` value (``{"type": "json_object"}``, ...)."""
    return value.get("type") in _SCALARS.keys() | {"object", "array"} or not value.keys().isdisjoint(_SCHEMA_MARKS)


def _is_model(cls: type) -> bool:
    return issubclass(cls, msgspec.Struct) or dataclasses.is_dataclass(cls) or typing.is_typeddict(cls)


def _is_pydantic(cls: type) -> bool:
    # Recognised by its API, so pydantic is never imported (nor required) here.
    return callable(getattr(cls, "model_json_schema", None)) and callable(getattr(cls, "model_validate_json", None))


# One conversion per distinct type or schema: building a schema and its decoder costs tens
# of microseconds, far more than the request path should pay each time.
@functools.lru_cache(maxsize=256)
def _from_type(cls: type) -> OutputSchema:
    try:
        schema = msgspec.json.schema(cls)
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(cls)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"response_format {cls.__name__}: {exc}", field="response_format") from exc
    # msgspec puts every object in $defs with a $ref at the root; providers want the root inline.
    defs = schema.pop("$defs", {})
    root = defs.pop(schema["$ref"].rsplit("/", 1)[-1])
    if defs:
        root["$defs"] = defs
    return _finish(cls.__name__, root, _msgspec_reader(decoder))


@functools.lru_cache(maxsize=256)
def _from_pydantic(cls: type) -> OutputSchema:
    """A pydantic model: its own JSON schema, and its own validation of the reply."""
    schema: dict[str, Any] = cls.model_json_schema()  # type: ignore[attr-defined]
    validate: Callable[[str], Any] = cls.model_validate_json  # type: ignore[attr-defined]

    def read(text: str) -> tuple[Any, tuple[str, str] | None]:
        try:
            return validate(text), None
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = exc.errors() if callable(getattr(exc, "errors", None)) else []  # type: ignore[attr-defined]
            if not errors:
                return None, ("$", str(exc))
            first = errors[0]
            if first.get("type") == "json_invalid":
                return None, ("$", f"not JSON ({first.get('msg')})")
            path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.get("loc", ()))
            return None, (path, str(first.get("msg", "invalid")))

    return _finish(cls.__name__, schema, read)


def _msgspec_reader(decoder: msgspec.json.Decoder[Any]) -> Reader:
    def read(text: str) -> tuple[Any, tuple[str, str] | None]:
        try:
            return decoder.decode(text), None
        except msgspec.ValidationError as exc:
            message = str(exc)
            match = _PATH.search(message)
            return None, (match.group(1), message[: match.start()]) if match else ("$", message)
        except msgspec.DecodeError as exc:
            return None, ("$", f"not JSON ({exc})")

    return read


@functools.lru_cache(maxsize=256)
def _from_json(canonical: bytes) -> OutputSchema:
    """The schema from its canonical JSON: a fresh copy, so the caller's dict is never changed."""
    schema: dict[str, Any] = msgspec.json.decode(canonical)
    if schema.get("type") != "object":
        raise InvalidRequest(
            "response_format: a JSON schema's root must be {\"type\": \"object\", ...} "
            "(the providers' structured-output modes require an object)",
            field="response_format.type",
        )
    defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
    target = _Converter(defs).convert(schema, "response_format", ())
    return _finish(str(schema.get("title") or "response"), schema, _msgspec_reader(msgspec.json.Decoder(target)))


def _finish(name: str, schema: dict[str, Any], reader: Reader) -> OutputSchema:
    objects = list(_objects(schema))
    strict = all(set(o.get("properties", {})) <= set(o.get("required", ())) for o in objects)
    if strict:
        for obj in objects:
            obj.setdefault("additionalProperties", False)
    return OutputSchema(name=_NAME_CHARS.sub("_", name)[:64] or "response", schema=schema, strict=strict, reader=reader)


def _objects(schema: Any) -> typing.Iterator[dict[str, Any]]:
    """Every object schema inside ``schema`` (itself included)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema:
            yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _objects(item)


class _Converter:
    """Builds the msgspec type equivalent to a JSON schema (the subset the module docstring names)."""

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self._defs = defs
        self._serial = 0

    def convert(self, schema: Any, path: str, seen: tuple[str, ...]) -> Any:
        if schema is True or schema == {}:
            return Any
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{path}: a schema must be an object, got {schema!r}", field=path)
        unknown = sorted(schema.keys() - _KNOWN)
        if unknown:
            raise InvalidRequest(
                f"{path}: JSON-schema keyword {unknown[0]!r} cannot be checked; use the keywords of the "
                "providers' strict modes, or pass a msgspec Struct type",
                field=f"{path}.{unknown[0]}",
            )
        if "$ref" in schema:
            return self._ref(schema["$ref"], path, seen)
        if "const" in schema:
            return Literal[schema["const"]]
        if "enum" in schema:
            return self._enum(schema["enum"], path)
        if "anyOf" in schema:
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise InvalidRequest(f"{path}.anyOf must be a non-empty list", field=f"{path}.anyOf")
            return self._union([self.convert(s, f"{path}.anyOf[{i}]", seen) for i, s in enumerate(options)], path)
        kinds = schema.get("type")
        if kinds is None:
            return Any
        names = kinds if isinstance(kinds, list) else [kinds]
        return self._union([self._typed(schema, k, path, seen) for k in names], path)

    def _ref(self, ref: Any, path: str, seen: tuple[str, ...]) -> Any:
        name = ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None
        if name is None or name not in self._defs or not ref.startswith(("#/$defs/", "#/definitions/")):
            raise InvalidRequest(f"{path}: $ref {ref!r} names no entry of $defs", field=f"{path}.$ref")
        if name in seen:
            raise InvalidRequest(
                f"{path}: $ref {ref!r} is recursive, which cannot be checked; pass a msgspec Struct type instead",
                field=f"{path}.$ref",
            )
        return self.convert(self._defs[name], f"{path}.$ref", (*seen, name))

    def _typed(self, schema: dict[str, Any], kind: Any, path: str, seen: tuple[str, ...]) -> Any:
        if kind == "object":
            return self._object(schema, path, seen)
        if kind == "array":
            items = self.convert(schema.get("items", True), f"{path}.items", seen)
            return self._bounded(list[items], schema, _ARRAY_BOUNDS, path)  # type: ignore[valid-type]
        if kind not in _SCALARS:
            raise InvalidRequest(f"{path}.type: unknown type {kind!r}", field=f"{path}.type")
        base = _SCALARS[kind]
        if kind in ("integer", "number"):
            return self._bounded(base, schema, _NUMBER_BOUNDS, path)
        if kind == "string":
            return self._bounded(base, schema, _STRING_BOUNDS, path)
        return base

    def _object(self, schema: dict[str, Any], path: str, seen: tuple[str, ...]) -> Any:
        props = schema.get("properties")
        if props is None:
            extra = schema.get("additionalProperties", True)
            value = self.convert(True if extra is False else extra, f"{path}.additionalProperties", seen)
            return dict[str, value]  # type: ignore[valid-type]
        if not isinstance(props, dict):
            raise InvalidRequest(f"{path}.properties must be an object", field=f"{path}.properties")
        required = schema.get("required", [])
        if not isinstance(required, list):
            raise InvalidRequest(f"{path}.required must be a list of names", field=f"{path}.required")
        fields: dict[str, Any] = {}
        for key, sub in props.items():
            inner = self.convert(sub, f"{path}.properties.{key}", seen)
            fields[key] = Required[inner] if key in required else NotRequired[inner]
        self._serial += 1
        return typing.TypedDict(f"Object{self._serial}", fields, total=False)  # type: ignore[operator]

    def _enum(self, values: Any, path: str) -> Any:
        if not isinstance(values, list) or not values or not all(v is None or isinstance(v, str | int) for v in values):
            raise InvalidRequest(f"{path}.enum must be a non-empty list of strings, integers or null", field=f"{path}.enum")
        return Literal[tuple(values)]

    @staticmethod
    def _bounded(base: Any, schema: dict[str, Any], bounds: Mapping[str, str], path: str) -> Any:
        meta = {arg: schema[key] for key, arg in bounds.items() if key in schema}
        if not meta:
            return base
        try:
            return Annotated[base, msgspec.Meta(**meta)]
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"{path}: {exc}", field=path) from exc

    @staticmethod
    def _union(options: list[Any], path: str) -> Any:
        if len(options) == 1:
            return options[0]
        union: Any = typing.Union.__getitem__(tuple(options))  # built from a runtime list
        try:
            msgspec.json.Decoder(union)
        except TypeError as exc:
            raise InvalidRequest(
                f"{path}: this union cannot be checked ({exc}); pass a msgspec tagged-union type instead",
                field=path,
            ) from exc
        return union


def parse_reply(reply: ChatResponse, output: OutputSchema, *, repairs: int = 0) -> Any:
    """``reply``'s text as an instance of ``output``; raises :class:`InvalidOutput` when it does not match."""
    value, failure = output.read(reply.text)
    if failure is None:
        return value
    path, reason = failure
    raise InvalidOutput(
        f"the reply from endpoint {reply.endpoint!r} does not match {output.name} at {path}: {reason}"
        + (f" (after {repairs} repair attempt{'s' if repairs != 1 else ''})" if repairs else ""),
        path=path,
        reason=reason,
        raw=reply.text,
        endpoint=reply.endpoint,
        repairs=repairs,
    )


def repair_messages(messages: list[Message], reply: ChatResponse, error: InvalidOutput) -> list[Message]:
    """The conversation of a repair attempt: what was asked, the reply, and what was wrong with it."""
    return [
        *messages,
        Message(role="assistant", content=reply.text),
        Message(
            role="user",
            content=(
                f"That reply does not match the required JSON schema: at {error.path}: {error.reason}. "
                "Answer again with only the corrected JSON."
            ),
        ),
    ]


#: How the runtime sends one repair attempt: the conversation, pinned to an endpoint.
Resend = Callable[[list[Message], str], typing.Awaitable[ChatResponse]]


async def finish(reply: ChatResponse, output: OutputSchema, messages: list[Message], repair: int, resend: Resend) -> ChatResponse:
    """``reply`` with ``parsed`` set, after up to ``repair`` repair attempts on the same endpoint.

    Each repair is a whole request through the runtime (accounted and limited like any
    other); the returned reply is the last one, carrying every attempt and the usage and
    cost of them all.
    """
    tries = 0
    first = reply
    while True:
        try:
            reply.parsed = parse_reply(reply, output, repairs=tries)
        except InvalidOutput as exc:
            if tries >= repair:
                raise
            messages = repair_messages(messages, reply, exc)
            tries += 1
            previous = reply
            reply = await resend(messages, first.endpoint)
            _carry(previous, reply)
            continue
        return reply


def _carry(previous: ChatResponse, reply: ChatResponse) -> None:
    """Add the previous tries' attempts, usage and cost to ``reply``."""
    reply.attempts = [*previous.attempts, *reply.attempts]
    reply.cost_usd += previous.cost_usd
    usage, before = reply.usage, previous.usage
    reply.usage = msgspec.structs.replace(
        usage,
        input_tokens=usage.input_tokens + before.input_tokens,
        output_tokens=usage.output_tokens + before.output_tokens,
        total_tokens=usage.total_tokens + before.total_tokens,
    )
