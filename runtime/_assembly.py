"""A streamed answer assembled chunk by chunk into the whole reply.

One :class:`PartialReply` per answer: a stream that restarts begins a new one (the old
answer is void), a stream that continues keeps adding to the same one, and
``chat()`` streaming upstream assembles its reply the same way.
"""

from __future__ import annotations

from .types import ChatResponse, StreamChunk, ToolCall, Usage

__all__ = ["PartialReply"]


class PartialReply:
    """Text, reasoning, tool-call fragments, usage and finish reason gathered from chunks."""

    __slots__ = ("_finish", "_id", "_model", "_reasoning", "_text", "_tool_calls", "_tool_ids", "_usage")

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, list[str]] = {}
        self._tool_ids: dict[int, tuple[str, str]] = {}
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._model: str | None = None
        self._id: str | None = None

    def __repr__(self) -> str:
        return f"<PartialReply [{len(self.text)} chars | {len(self._tool_calls)} tool calls]>"

    @property
    def text(self) -> str:
        """The text so far."""
        return "".join(self._text)

    @property
    def has_tool_calls(self) -> bool:
        """Whether a tool call (or a fragment of one) has arrived."""
        return bool(self._tool_calls)

    def add(self, chunk: StreamChunk) -> None:
        """Take in one chunk."""
        if chunk.text:
            self._text.append(chunk.text)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        if chunk.tool_calls:
            for delta in chunk.tool_calls:
                parts = self._tool_calls.setdefault(delta.index, [])
                if delta.arguments:
                    parts.append(delta.arguments)
                old_id, old_name = self._tool_ids.get(delta.index, ("", ""))
                self._tool_ids[delta.index] = (delta.id or old_id, delta.name or old_name)
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.model:
            self._model = chunk.model
        if chunk.id:
            self._id = chunk.id

    def reply(self) -> ChatResponse:
        """The whole reply the chunks make (who answered and the cost are filled in by accounting)."""
        return ChatResponse(
            text="".join(self._text),
            finish_reason=self._finish,
            usage=self._usage or Usage(),
            model=self._model or "",
            id=self._id,
            tool_calls=[
                ToolCall(id=self._tool_ids[i][0], name=self._tool_ids[i][1], arguments="".join(self._tool_calls[i]) or "{}")
                for i in sorted(self._tool_calls)
            ],
            reasoning="".join(self._reasoning) or None,
        )
