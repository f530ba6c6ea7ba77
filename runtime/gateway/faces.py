"""The two faces of chat: the OpenAI and the Anthropic dialect, behind one small interface.

A :class:`Face` decodes a body into a :class:`Call` (runtime messages and keywords),
renders a whole reply, and makes the encoder of a stream's events. The server runs the
same steps for both; only these differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec

from ..errors import InvalidRequest
from ..types import ChatResponse, Message, StreamChunk
from . import anthropic_wire, openai_wire
from .dialect import Dialect

__all__ = ["FACES", "Call", "Face", "StreamWriter", "decode"]

T = TypeVar("T")

_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")


def decode(raw: bytes, kind: type[T]) -> T:
    """``raw`` JSON as ``kind``; anything wrong is InvalidRequest naming the field."""
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message = str(exc)
        at = _AT.search(message)
        path = at.group("path") if at else ""
        unknown = _UNKNOWN.search(message)
        if unknown:
            path = f"{path}.{unknown.group('field')}".lstrip(".")
            message = f"unknown field {unknown.group('field')!r}" + (f" at {path}" if "." in path else "")
        else:
            message = _AT.sub("", message) + (f" at {path}" if path else "")
        raise InvalidRequest(message, field=path or None) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", field="body") from None


class Call(NamedTuple):
    """A decoded chat request: where to (``model``), what, and how."""

    model: str
    messages: list[Message]
    options: dict[str, Any]
    stream: bool
    max_tokens: int | None
    include_usage: bool = False
    #: a legacy text completion's prompt (``messages`` then holds it as one user message)
    prompt: str | None = None


class StreamWriter(Protocol):
    """Encodes one stream's events in a dialect."""

    def opening(self) -> bytes: ...
    def chunk(self, chunk: StreamChunk) -> bytes | None: ...
    def closing(self, reply: ChatResponse) -> bytes: ...


class Face(NamedTuple):
    """One dialect of chat."""

    dialect: Dialect
    decode: Callable[[bytes], Call]
    reply: Callable[[ChatResponse, str], bytes]
    writer: Callable[[str, Call], StreamWriter]


def _openai_call(raw: bytes) -> Call:
    body = decode(raw, openai_wire.ChatCompletionBody)
    messages, options = openai_wire.chat_call(body)
    include = body.stream_options is not None and body.stream_options.include_usage
    return Call(body.model, messages, options, body.stream, body.max_tokens or body.max_completion_tokens, include)


def _completion_call(raw: bytes) -> Call:
    body = decode(raw, openai_wire.CompletionBody)
    include = body.stream_options is not None and body.stream_options.include_usage
    messages = [Message(role="user", content=body.prompt)]
    return Call(body.model, messages, openai_wire.completion_call(body), body.stream, body.max_tokens, include, body.prompt)


def _anthropic_call(raw: bytes) -> Call:
    body = decode(raw, anthropic_wire.MessagesBody)
    messages, options = anthropic_wire.messages_call(body)
    return Call(body.model, messages, options, body.stream, body.max_tokens)


# By the route's kind: OpenAI chat, OpenAI legacy completions, Anthropic messages.
FACES: dict[str, Face] = {
    "openai": Face(
        "openai", _openai_call, openai_wire.completion,
        lambda rid, call: openai_wire.ChunkWriter(rid, call.model, call.include_usage),
    ),
    "completion": Face(
        "openai", _completion_call, openai_wire.text_completion,
        lambda rid, call: openai_wire.TextChunkWriter(rid, call.model, call.include_usage),
    ),
    "anthropic": Face(
        "anthropic", _anthropic_call, anthropic_wire.message,
        lambda rid, call: anthropic_wire.MessageWriter(rid, call.model),
    ),
}
