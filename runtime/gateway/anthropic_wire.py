"""Anthropic's Messages format at the gateway's edge, in front of any provider.

``POST /v1/messages`` bodies decode into the structs below and translate into the
runtime's OpenAI-shaped messages: ``system`` becomes a system message, ``tool_use``
blocks an assistant turn's ``tool_calls``, ``tool_result`` blocks ``tool`` turns, images
data or https URLs, tools ``{name, description, input_schema}`` function tools,
``tool_choice`` ``auto``/``any``/``none``/``tool`` the OpenAI words. Replies translate
back: text and ``tool_use`` content blocks, ``stop_reason`` (``stop`` → ``end_turn``,
``length`` → ``max_tokens``, ``tool_calls`` → ``tool_use``), usage. Streams are the
Messages event sequence: ``message_start``, content blocks (``text_delta`` and
``input_json_delta``), ``message_delta`` with the stop reason and usage, ``message_stop``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..types import ChatResponse, ImagePart, Message, StreamChunk, TextPart, ToolCall
from .dialect import cost_of

__all__ = ["CountTokensBody", "MessageWriter", "MessagesBody", "conversation", "function_tools", "message", "messages_call"]

_encode = msgspec.json.encode


class _Wire(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Base of the request structs: unknown fields are refused, naming them."""


class _CacheControl(_Wire):
    type: str = "ephemeral"
    ttl: str | None = None


class _Text(_Wire, tag="text", tag_field="type"):
    text: str
    cache_control: _CacheControl | None = None


class _Source(_Wire):
    type: Literal["base64", "url"]
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class _Image(_Wire, tag="image", tag_field="type"):
    source: _Source
    cache_control: _CacheControl | None = None


class _ToolUse(_Wire, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: _CacheControl | None = None


class _ToolResult(_Wire, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[_Text] = ""
    is_error: bool = False
    cache_control: _CacheControl | None = None


_Block = _Text | _Image | _ToolUse | _ToolResult


class _Message(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[_Block]


class _Tool(_Wire):
    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    cache_control: _CacheControl | None = None


class _ToolChoice(_Wire):
    type: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class _Metadata(_Wire):
    user_id: str | None = None


class CountTokensBody(_Wire):
    """``POST /v1/messages/count_tokens``: the conversation whose prompt is counted."""

    model: str
    messages: list[_Message]
    system: str | list[_Text] | None = None
    tools: list[_Tool] | None = None
    tool_choice: _ToolChoice | None = None


class MessagesBody(CountTokensBody, kw_only=True):
    """``POST /v1/messages``: the parameters the runtime passes through."""

    max_tokens: int
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    stop_sequences: list[str] | None = None
    metadata: _Metadata | None = None


def conversation(body: CountTokensBody) -> list[Message]:
    """The runtime messages of a body: the system prompt first, then every turn."""
    out: list[Message] = []
    if body.system:
        system = body.system if isinstance(body.system, str) else "\n\n".join(b.text for b in body.system)
        out.append(Message(role="system", content=system))
    for m in body.messages:
        out.extend(_turn(m))
    return out


def function_tools(tools: list[_Tool] | None) -> list[dict[str, Any]] | None:
    """Anthropic tools as the runtime's (OpenAI-shaped) function tools."""
    if not tools:
        return None
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema}}
        for t in tools
    ]


def messages_call(body: MessagesBody) -> tuple[list[Message], dict[str, Any]]:
    """The runtime messages and the ``chat``/``stream`` keywords of a Messages body."""
    out = conversation(body)
    options: dict[str, Any] = {"max_tokens": body.max_tokens}
    if body.temperature is not None:
        options["temperature"] = body.temperature
    if body.top_p is not None:
        options["top_p"] = body.top_p
    if body.stop_sequences:
        options["stop"] = body.stop_sequences
    tools = function_tools(body.tools)
    if tools:
        options["tools"] = tools
    choice = body.tool_choice
    if choice is not None:
        options["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name or ""}}
            if choice.type == "tool"
            else {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        )
        if choice.disable_parallel_tool_use:
            options["parallel_tool_calls"] = False
    if body.metadata is not None and body.metadata.user_id:
        options["user"] = body.metadata.user_id
    return out, options


def _turn(m: _Message) -> list[Message]:
    if isinstance(m.content, str):
        return [Message(role=m.role, content=m.content)]
    if m.role == "assistant":
        text = "".join(b.text for b in m.content if isinstance(b, _Text))
        calls = [ToolCall(id=b.id, name=b.name, arguments=_encode(b.input).decode()) for b in m.content if isinstance(b, _ToolUse)]
        return [Message(role="assistant", content=text or None, tool_calls=calls or None)]
    # A user turn: its tool results answer the calls first, then what the user adds.
    out = [
        Message(role="tool", tool_call_id=b.tool_use_id, content=b.content if isinstance(b.content, str) else "".join(t.text for t in b.content))
        for b in m.content
        if isinstance(b, _ToolResult)
    ]
    parts: list[TextPart | ImagePart] = []
    for b in m.content:
        if isinstance(b, _Text):
            parts.append(TextPart(text=b.text))
        elif isinstance(b, _Image):
            src = b.source
            parts.append(ImagePart(url=src.url or "" if src.type == "url" else f"data:{src.media_type};base64,{src.data}"))
    if parts:
        out.append(Message(role="user", content=parts[0].text if len(parts) == 1 and isinstance(parts[0], TextPart) else parts))
    return out


_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _stop_reason(finish: str | None) -> str:
    return _STOP.get(finish or "stop", finish or "end_turn")


def _input(arguments: str) -> Any:
    try:
        return msgspec.json.decode(arguments or "{}")
    except msgspec.DecodeError:
        return {}


def message(reply: ChatResponse, request_id: str) -> bytes:
    """A whole ``message`` document."""
    content: list[dict[str, Any]] = []
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)})
    return _encode(
        {
            "id": f"msg_{request_id}",
            "type": "message",
            "role": "assistant",
            "model": reply.model,
            "content": content,
            "stop_reason": _stop_reason(reply.finish_reason),
            "stop_sequence": None,
            "usage": _usage(reply),
        }
    )


def _usage(reply: ChatResponse) -> dict[str, Any]:
    usage: dict[str, Any] = {"input_tokens": reply.usage.input_tokens, "output_tokens": reply.usage.output_tokens}
    cost = cost_of(reply)
    if cost is not None:
        # An extension field, as on the OpenAI routes: a stream's cost cannot be a header.
        usage["cost_usd"] = cost
    return usage


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode({"type": name, **data}) + b"\n\n"


class MessageWriter:
    """Encodes one stream as the Messages event sequence.

    Text and each tool call are content blocks; a block is opened when its first delta
    arrives and closed when the next one opens or the message ends.
    """

    __slots__ = ("_block", "_index", "_model", "_rid")

    def __init__(self, request_id: str, model: str) -> None:
        self._rid = request_id
        self._model = model
        self._index = -1
        self._block: tuple[str, int] | None = None  # ("text", 0) or ("tool", tool-call index)

    def opening(self) -> bytes:
        """``message_start`` (usage arrives with ``message_delta``)."""
        start: dict[str, Any] = {
            "id": f"msg_{self._rid}", "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": start})

    def _open(self, block: tuple[str, int], content: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._block = block
        return out + _event("content_block_start", {"index": self._index, "content_block": content})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return _event("content_block_stop", {"index": self._index})

    def chunk(self, chunk: StreamChunk) -> bytes | None:
        """The events for one runtime chunk, or None when it carries nothing for the client."""
        out = b""
        if chunk.text:
            if self._block != ("text", 0):
                out += self._open(("text", 0), {"type": "text", "text": ""})
            out += _event("content_block_delta", {"index": self._index, "delta": {"type": "text_delta", "text": chunk.text}})
        for delta in chunk.tool_calls or ():
            if self._block != ("tool", delta.index):
                out += self._open(("tool", delta.index), {"type": "tool_use", "id": delta.id or "", "name": delta.name or "", "input": {}})
            if delta.arguments:
                partial = {"type": "input_json_delta", "partial_json": delta.arguments}
                out += _event("content_block_delta", {"index": self._index, "delta": partial})
        return out or None

    def closing(self, reply: ChatResponse) -> bytes:
        """The last block's stop, ``message_delta`` with the stop reason and usage, ``message_stop``."""
        usage = _usage(reply)
        stop = {"stop_reason": _stop_reason(reply.finish_reason), "stop_sequence": None}
        return self._close() + _event("message_delta", {"delta": stop, "usage": usage}) + _event("message_stop", {})
