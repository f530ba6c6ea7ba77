"""The one check of every argument ``chat``, ``stream`` and ``embed`` take, before a byte is sent.

Each function turns the caller's arguments into the provider-neutral request
(:class:`~runtime.types.ChatRequest`, :class:`~runtime.types.EmbeddingRequest`) or
raises :class:`~runtime.errors.InvalidRequest` whose ``field`` names the argument, with
its index where it has one (``messages[2].content[0].text``, ``tools[0].function.name``,
``stop[1]``). Wrong types, values out of range, NaN and infinities, malformed tools,
tool choices, response formats and message parts are all refused here, so that an
adapter only ever translates well-formed requests and a caller's mistake can never
look like an endpoint's failure.

The rules for HTTP header names and values (:func:`check_header`) live here too: request
``extra_headers`` and the endpoints' configured ``headers`` obey the same ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from .errors import InvalidRequest
from .structured import output_schema
from .types import ChatRequest, EmbeddingRequest, ImagePart, Message, OpenAIParams, ToolCall

__all__ = [
    "MAX_TEMPERATURE",
    "REASONING_EFFORTS",
    "ROLES",
    "call_options",
    "chat_messages",
    "chat_request",
    "check_header",
    "check_response_format",
    "embed_request",
    "header_problem",
]

ROLES = ("system", "user", "assistant", "tool")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
_TOOL_CHOICES = ("auto", "none", "required")
# OpenAI's rule for function names; Anthropic's and Ollama's are the same or looser.
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# RFC 9110 field names are tokens; values are visible characters, spaces and tabs
# (obs-text, bytes >= 0x80, is allowed as the RFC still admits it). CR, LF and NUL
# would split or end the header block.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_INT64 = 2**63


def _bad(field: str, rule: str, value: Any) -> InvalidRequest:
    return InvalidRequest(f"{field} must be {rule}, got {_shown(value)}", field=field)


def _shown(value: Any) -> str:
    # Enough of a bad value to recognise it; a huge one is not copied whole into the error.
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, field: str, low: float, high: float, *, open_low: bool = False) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or not (low < value if open_low else low <= value) or value > high:
        raise _bad(field, f"a number in {'(' if open_low else '['}{low:g}, {high:g}]", value)
    return value  # type: ignore[no-any-return]


def _count(value: Any, field: str, low: int = 1, high: int | None = None) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < low or (high is not None and value > high):
        rule = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise _bad(field, rule, value)
    return value  # type: ignore[no-any-return]


def _text(value: Any, field: str, *, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise _bad(field, "a string" if empty_ok else "a non-empty string", value)
    return value


def _flag(value: Any, field: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise _bad(field, "True or False", value)
    return value


def _list(value: Any, field: str) -> Sequence[Any]:
    # A str or a mapping is a Sequence/iterable too, and would be read letter by letter.
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise _bad(field, "a list", value)
    return value


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(field, "a mapping", value)
    for key in value:
        if not isinstance(key, str):
            raise _bad(f"{field} keys", "strings", key)
    return value


#: The highest ``temperature`` a request may ask for (OpenAI's range, [0, 2]).
MAX_TEMPERATURE = 2.0


# --- messages ---------------------------------------------------------------------------


def chat_messages(messages: Any) -> list[Message]:
    """``messages`` (one prompt, or a list of dicts and :class:`Message`) as the request's messages, checked."""
    if isinstance(messages, str):
        if not messages.strip():
            raise InvalidRequest("messages must not be empty: give the prompt text", field="messages")
        return [Message(role="user", content=messages)]
    items = messages if type(messages) is list else _list(messages, "messages")  # a list: what _list admits
    if not items:
        raise InvalidRequest("messages must be a string or a non-empty list of messages", field="messages")
    # A Message with a role, text content and nothing else (most) is taken as it is, without
    # a call; anything else is checked the long way.
    return [
        m
        if isinstance(m, Message) and m.role in ROLES and type(m.content) is str
        and m.tool_calls is None and m.name is None and m.tool_call_id is None
        else _message(m, i)
        for i, m in enumerate(items)
    ]


def _message(value: Any, index: int) -> Message:
    """``messages[index]``, not a plain text Message: converted and checked (its field name
    spelled only for an error)."""
    field = f"messages[{index}]"
    if isinstance(value, Message):
        try:
            value = msgspec.to_builtins(value)
        except TypeError as exc:
            raise InvalidRequest(f"{field} holds a value that is not JSON: {exc}", field=field) from None
    elif not isinstance(value, Mapping):
        raise _bad(field, "a dict or a Message", value)
    try:
        message = msgspec.convert(value, Message)
    except msgspec.ValidationError as exc:
        raise _converted(exc, field) from None
    _message_rules(message, field)
    return message


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _converted(exc: msgspec.ValidationError, field: str) -> InvalidRequest:
    """msgspec's complaint about one message, with the path spelled the way callers write it."""
    text = str(exc)
    match = _AT.search(text)
    path = match.group("path") if match else ""
    where = f"{field}{path}"
    detail = _AT.sub("", text)
    if "role" in path or (not path and "`role`" in detail):
        detail = f"the role must be one of {', '.join(ROLES)}"
        where = f"{field}.role"
    return InvalidRequest(f"{where}: {detail}", field=where)


def _message_rules(message: Message, field: str) -> None:
    """What the types alone do not say: tool calls carry JSON arguments on assistant turns,
    tool results name the call they answer, parts are not empty."""
    if isinstance(message.content, list):
        for i, part in enumerate(message.content):
            if isinstance(part, ImagePart) and not part.url:
                raise _bad(f"{field}.content[{i}].url", "a non-empty URL", part.url)
            if isinstance(part, ImagePart) and part.detail not in (None, "auto", "low", "high"):
                raise _bad(f"{field}.content[{i}].detail", "one of auto, low, high", part.detail)
    if message.tool_calls:
        if message.role != "assistant":
            raise InvalidRequest(f"{field}: only assistant messages carry tool_calls", field=f"{field}.tool_calls")
        for i, call in enumerate(message.tool_calls):
            _tool_call(call, f"{field}.tool_calls[{i}]")
    if message.role == "tool" and not message.tool_call_id:
        raise InvalidRequest(
            f"{field}: a tool message answers one call: give its tool_call_id", field=f"{field}.tool_call_id"
        )


def _tool_call(call: ToolCall, field: str) -> None:
    _text(call.id, f"{field}.id")
    _text(call.name, f"{field}.name")
    try:
        arguments = msgspec.json.decode(call.arguments or "{}")
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidRequest(f"{field}.arguments must be JSON text: {exc}", field=f"{field}.arguments") from None
    if not isinstance(arguments, dict):
        raise _bad(f"{field}.arguments", "a JSON object", call.arguments)


# --- tools and formats ------------------------------------------------------------------


def _tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    items = _list(tools, "tools")
    return [_tool(t, f"tools[{i}]") for i, t in enumerate(items)] or None


def _tool(value: Any, field: str) -> dict[str, Any]:
    tool = dict(_mapping(value, field))
    if "function" not in tool and (tool.get("type") not in (None, "function") or "input_schema" in tool):
        # A provider-native tool (Anthropic's {name, input_schema}, a server tool) goes as given.
        _text(tool.get("name"), f"{field}.name")
        return tool
    if tool.get("type") != "function":
        raise _bad(f"{field}.type", "'function'", tool.get("type"))
    function = dict(_mapping(tool.get("function"), f"{field}.function"))
    name = function.get("name")
    if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
        raise _bad(f"{field}.function.name", "1 to 64 letters, digits, '_' or '-'", name)
    if function.get("description") is not None:
        _text(function["description"], f"{field}.function.description", empty_ok=True)
    if function.get("parameters") is not None:
        _mapping(function["parameters"], f"{field}.function.parameters")
    _flag(function.get("strict"), f"{field}.function.strict")
    tool["function"] = function
    return tool


def _tool_names(tools: list[dict[str, Any]] | None) -> set[str]:
    names: set[str] = set()
    for tool in tools or ():
        function = tool.get("function")
        names.add(function["name"] if isinstance(function, dict) else tool["name"])
    return names


def _tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> str | dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in _TOOL_CHOICES:
            raise _bad("tool_choice", f"one of {', '.join(_TOOL_CHOICES)} or a function", value)
        if value == "required" and not tools:
            raise InvalidRequest("tool_choice='required' needs tools", field="tool_choice")
        return value
    choice = dict(_mapping(value, "tool_choice"))
    kind = choice.get("type")
    if kind == "function":
        function = _mapping(choice.get("function"), "tool_choice.function")
        name = _text(function.get("name"), "tool_choice.function.name")
    elif kind == "tool":  # Anthropic's own shape
        name = _text(choice.get("name"), "tool_choice.name")
    elif kind in ("auto", "any", "none"):
        return choice
    else:
        raise _bad("tool_choice.type", "'function'", kind)
    if name not in _tool_names(tools):
        raise InvalidRequest(f"tool_choice names {name!r}, which is not among the tools", field="tool_choice")
    return choice


def check_response_format(value: Any) -> dict[str, Any] | None:
    """``response_format`` in OpenAI's shape, from any form it may be given in.

    ``{"type": "text"}`` and ``{"type": "json_object"}`` as they are;
    ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}`` checked;
    a bare JSON-schema dict, a :class:`msgspec.Struct`, a dataclass or a ``TypedDict``
    become the ``json_schema`` format :func:`runtime.structured.output_schema` makes.
    """
    if value is None:
        return None
    output = output_schema(value)
    if output is not None:
        return output.wire
    fmt = dict(_mapping(value, "response_format"))
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return fmt
    if kind == "json_schema":
        spec = dict(_mapping(fmt.get("json_schema"), "response_format.json_schema"))
        _text(spec.get("name"), "response_format.json_schema.name")
        _mapping(spec.get("schema"), "response_format.json_schema.schema")
        fmt["json_schema"] = spec
        return fmt
    raise _bad("response_format", "{'type': 'json_object'}, a json_schema format, a JSON-schema dict or a type", value)


def _stop(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    if isinstance(stop, str):
        return [_text(stop, "stop")]
    items = stop if type(stop) is list else _list(stop, "stop")  # a list: what _list admits
    # A non-empty string passes as it is; the field is spelled only for _text's error.
    return [s if type(s) is str and s else _text(s, f"stop[{i}]") for i, s in enumerate(items)] or None


# --- headers ------------------------------------------------------------------------------


def header_problem(name: Any, value: Any) -> str | None:
    """Why ``name: value`` cannot be an HTTP header, or None when it can."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        return f"header name {_shown(name)} is not an HTTP token (letters, digits and !#$%&'*+.^_`|~-)"
    if not isinstance(value, str):
        return f"header {name!r} must have a string value, got {type(value).__name__}"
    if _BAD_VALUE.search(value):
        return f"header {name!r} has a control character (CR, LF, NUL, ...) in its value"
    return None


def check_header(name: Any, value: Any, field: str) -> None:
    """Raise :class:`InvalidRequest` naming ``field`` when ``name: value`` is no valid header."""
    problem = header_problem(name, value)
    if problem is not None:
        raise InvalidRequest(f"{field}: {problem}", field=field)


# --- the OpenAI parameters --------------------------------------------------------------


def _penalty(value: Any, name: str, params: Mapping[str, Any]) -> None:
    _number(value, name, -2.0, 2.0)


def _logit_bias(value: Any, name: str, params: Mapping[str, Any]) -> None:
    if not isinstance(value, Mapping):
        raise _bad(name, "a mapping of token ids to numbers in [-100, 100]", value)
    for token, weight in value.items():
        if not (_is_int(token) or (isinstance(token, str) and token.isdigit())):
            raise _bad(name, "keyed by token ids", token)
        _number(weight, f"{name}[{token!r}]", -100.0, 100.0)


def _boolean(value: Any, name: str, params: Mapping[str, Any]) -> None:
    _flag(value, name)


def _positive(value: Any, name: str, params: Mapping[str, Any]) -> None:
    _count(value, name)


def _top_logprobs(value: Any, name: str, params: Mapping[str, Any]) -> None:
    _count(value, name, 0, 20)
    if not params.get("logprobs"):
        raise InvalidRequest("top_logprobs needs logprobs=True", field=name)


def _effort(value: Any, name: str, params: Mapping[str, Any]) -> None:
    if value not in REASONING_EFFORTS:
        raise _bad(name, f"one of {', '.join(REASONING_EFFORTS)}", value)


def _user(value: Any, name: str, params: Mapping[str, Any]) -> None:
    _text(value, name)


def _metadata(value: Any, name: str, params: Mapping[str, Any]) -> None:
    for key, text in _mapping(value, name).items():
        _text(text, f"{name}[{key!r}]", empty_ok=True)


def _extra_headers(value: Any, name: str, params: Mapping[str, Any]) -> None:
    for key, text in _mapping(value, name).items():
        check_header(key, text, f"{name}[{key!r}]")


def _extra_body(value: Any, name: str, params: Mapping[str, Any]) -> None:
    _mapping(value, name)


#: Each OpenAI parameter's check (given a value that is not None), in the order they are
#: checked: with several wrong, the one named is always the same.
_PARAM_CHECKS: dict[str, Callable[[Any, str, Mapping[str, Any]], None]] = {
    "presence_penalty": _penalty,
    "frequency_penalty": _penalty,
    "logit_bias": _logit_bias,
    "logprobs": _boolean,
    "parallel_tool_calls": _boolean,
    "drop_unsupported": _boolean,
    "n": _positive,
    "top_logprobs": _top_logprobs,
    "max_completion_tokens": _positive,
    "reasoning_effort": _effort,
    "user": _user,
    "metadata": _metadata,
    "extra_headers": _extra_headers,
    "extra_body": _extra_body,
}
_PARAM_RANK = {name: rank for rank, name in enumerate(_PARAM_CHECKS)}
if _PARAM_CHECKS.keys() != OpenAIParams.__annotations__.keys():  # a parameter added without its check
    raise RuntimeError(f"checks for {sorted(_PARAM_CHECKS)} != OpenAIParams {sorted(OpenAIParams.__annotations__)}")


def _params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The OpenAI parameters beyond the common ones, each checked, Nones dropped."""
    unknown = params.keys() - _PARAM_CHECKS.keys()
    if unknown:
        raise TypeError(f"unexpected keyword argument {min(unknown)!r}")
    # Only the parameters given are checked (a request gives one or two of the fourteen).
    for name in sorted(params, key=_PARAM_RANK.__getitem__) if len(params) > 1 else params:
        value = params[name]
        if value is not None:
            _PARAM_CHECKS[name](value, name, params)
    checked = {name: dict(v) if isinstance(v, Mapping) else v for name, v in params.items() if v is not None}
    if "logit_bias" in checked:
        checked["logit_bias"] = {str(k): float(v) for k, v in checked["logit_bias"].items()}
    return checked


# --- the entry points ---------------------------------------------------------------------


def chat_request(
    # Positional-or-keyword (callers name them): a keyword-only parameter left out costs a
    # dict lookup for its default on every call, a defaulted positional one does not.
    messages: Any,
    system: Any = None,
    model: Any = None,
    max_tokens: Any = None,
    temperature: Any = None,
    top_p: Any = None,
    stop: Any = None,
    tools: Any = None,
    tool_choice: Any = None,
    response_format: Any = None,
    seed: Any = None,
    params: Mapping[str, Any] | None = None,
) -> ChatRequest:
    """The :class:`ChatRequest` for ``chat``/``stream``'s arguments, every one checked.

    (``chat_options`` builds the plainest requests itself, with the same plain-value tests
    as the ones inline here: keep the two alike.)"""
    if type(messages) is str and messages.strip():  # one prompt (most requests): chat_messages() in short
        msgs = [Message(role="user", content=messages)]
    else:
        msgs = chat_messages(messages)
    if system is not None:
        msgs.insert(0, Message(role="system", content=_text(system, "system")))
    if model is not None and (type(model) is not str or not model):  # a plain name passes without _text's call
        _text(model, "model")
    # Each check runs only for an argument given: most requests give few. A plain int
    # (type(): no bool) of 1 or more passes without _count's calls.
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        _count(max_tokens, "max_tokens")
    # A plain float in range passes without _number's two calls.
    if temperature is not None and not (type(temperature) is float and 0.0 <= temperature <= MAX_TEMPERATURE):
        _number(temperature, "temperature", 0.0, MAX_TEMPERATURE)
    if top_p is not None and not (type(top_p) is float and 0.0 < top_p <= 1.0):
        _number(top_p, "top_p", 0.0, 1.0, open_low=True)
    if seed is not None and (not _is_int(seed) or not -_INT64 <= seed < _INT64):
        raise _bad("seed", "a 64-bit integer", seed)
    if not params and tools is None and tool_choice is None and response_format is None and stop is None:
        return ChatRequest(messages=msgs, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    checked_tools = _tools(tools)
    extra = _params(params) if params else {}
    completion = extra.pop("max_completion_tokens", None)
    if completion is not None:
        if max_tokens is not None and max_tokens != completion:
            raise InvalidRequest("give max_tokens or max_completion_tokens, not both", field="max_completion_tokens")
        max_tokens = completion
    return ChatRequest(
        messages=msgs, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=_stop(stop),
        tools=checked_tools, tool_choice=_tool_choice(tool_choice, checked_tools),
        response_format=check_response_format(response_format), seed=seed, **extra,
    )


def embed_request(inputs: Any, *, model: Any = None, dimensions: Any = None) -> EmbeddingRequest:
    """The :class:`EmbeddingRequest` for ``embed``'s arguments, every one checked."""
    if isinstance(inputs, str):
        texts = [_text(inputs, "inputs")]
    else:
        if inputs is None:
            raise _bad("inputs", "a string or a non-empty list of strings", inputs)
        items = _list(inputs, "inputs")
        if not items:
            raise InvalidRequest("inputs must be a string or a non-empty list of strings", field="inputs")
        texts = [_text(t, f"inputs[{i}]") for i, t in enumerate(items)]
    if model is not None:
        _text(model, "model")
    return EmbeddingRequest(inputs=texts, model=model, dimensions=_count(dimensions, "dimensions"))


def call_options(*, timeout: Any = None, endpoint: Any = None, cache: Any = None, hedge: Any = None, trim: Any = False) -> None:
    """Check the per-call knobs: ``timeout`` (seconds, finite, > 0), ``endpoint`` (a name),
    ``cache`` and ``trim`` (flags), ``hedge`` (a flag or a :class:`~runtime.policy.HedgePolicy`)."""
    # Each check runs for a knob given; a plain float or int in range passes without a call.
    if (
        timeout is not None
        and not ((type(timeout) is float or type(timeout) is int) and 0 < timeout < math.inf)
        and (not _is_number(timeout) or timeout <= 0)
    ):
        raise _bad("timeout", "a finite number of seconds > 0", timeout)
    if endpoint is not None and (type(endpoint) is not str or not endpoint):
        _text(endpoint, "endpoint")
    if cache is not None:
        _flag(cache, "cache")
    if trim is not False:
        _flag(trim, "trim")
    if hedge is not None and not isinstance(hedge, bool):
        # Imported only for a policy (policy imports this module for its header rules): an
        # import statement costs microseconds each time it runs, and a timeout is a common knob.
        from .policy import HedgePolicy

        if not isinstance(hedge, HedgePolicy):
            raise _bad("hedge", "True, False or a HedgePolicy", hedge)
