"""Helpers the stream and adapter tests share: what a list of chunks adds up to."""

from __future__ import annotations

from typing import Any

import msgspec

from runtime.types import StreamChunk


def text_of(chunks: list[StreamChunk]) -> str:
    """The text of the chunks, joined."""
    return "".join(c.text for c in chunks)


def tool_calls_of(chunks: list[StreamChunk]) -> dict[int, tuple[str, str, str]]:
    """Tool-call fragments added up: index → (id, name, arguments)."""
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        for delta in chunk.tool_calls or ():
            call = calls.setdefault(delta.index, ["", "", ""])
            call[0] = delta.id or call[0]
            call[1] = delta.name or call[1]
            call[2] += delta.arguments
    return {i: (c[0], c[1], c[2]) for i, c in calls.items()}


def body_of(request: Any) -> Any:
    """The JSON body of an adapter's HTTP request, decoded."""
    return msgspec.json.decode(request.body)
