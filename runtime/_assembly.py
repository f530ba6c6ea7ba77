"""A streamed answer assembled chunk by chunk into the whole reply.

One :class:`PartialReply` per answer: a stream that restarts begins a new one (the old
answer is void), a stream that continues keeps adding to the same one, and ``chat()``
on an endpoint with ``stream_chat`` reads its reply as a stream and assembles it
(:func:`assembled`), so the first-chunk and idle timeouts watch a whole reply too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import msgspec

from .types import ChatRequest, ChatResponse, StreamChunk, ToolCall, Usage

if TYPE_CHECKING:
    from .endpoint.actor import EndpointActor
    from .providers.base import ChunkStream

__all__ = ["MAX_HELD", "PartialReply", "assembled", "first_content", "streamable"]

# Chunks held back before the first one with content: role openers, pings and usage-only
# chunks carry nothing for the caller. Past this many, later ones are folded into the
# last held one, so a server trickling them cannot grow the buffer.
MAX_HELD = 32


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


async def first_content(chunks: ChunkStream) -> list[StreamChunk]:
    """The chunks up to and including the first one with content (text, reasoning or a tool
    call). The chunk stream bounds the wait: its first-chunk timeout holds until content
    comes (chunks without any do not extend it), raising :class:`Timeout`. Until then the
    stream may still fail over."""
    held: list[StreamChunk] = []
    async for chunk in chunks:
        if chunk.text or chunk.reasoning or chunk.tool_calls:
            held.append(chunk)
            break
        if len(held) < MAX_HELD:
            held.append(chunk)
        else:
            held[-1] = _fold(held[-1], chunk)
    return held


def _fold(into: StreamChunk, chunk: StreamChunk) -> StreamChunk:
    """One content-less chunk carrying what two did (the later one's figures win)."""
    return msgspec.structs.replace(
        into,
        usage=chunk.usage or into.usage,
        finish_reason=chunk.finish_reason or into.finish_reason,
        model=chunk.model or into.model,
        id=chunk.id or into.id,
    )


def streamable(request: ChatRequest) -> bool:
    """Whether a whole reply to ``request`` can be read as a stream: one choice, no logprobs
    (stream decoders read choice 0's text, reasoning and tool calls only)."""
    return (request.n is None or request.n == 1) and not request.logprobs


async def assembled(actor: EndpointActor, request: ChatRequest, timeout: float, deadline: float) -> ChatResponse:
    """A whole reply from ``actor``, read as a stream and assembled: the first content must
    come within the endpoint's ``first_chunk_timeout`` (and ``timeout``), each later chunk
    within its ``idle_timeout``, all of it by the request's ``deadline`` (loop time). A
    long answer that keeps coming is not cut by ``timeout``; a stalled one is caught
    after ``idle_timeout`` rather than at the end of one whole-response timeout."""
    loop = asyncio.get_running_loop()
    chunks = await actor.client.stream(
        request, first_chunk_timeout=min(actor.first_chunk_timeout, timeout),
        idle_timeout=actor.endpoint.idle_timeout, deadline=deadline,
    )
    answer = PartialReply()
    try:
        for chunk in await first_content(chunks):
            answer.add(chunk)
        async for chunk in chunks:
            answer.add(chunk)
    finally:
        await chunks.aclose()
    snapshot = chunks.rate_limit
    if snapshot is not None:
        actor.observe_rate_limit(snapshot, loop.time())
    return answer.reply()
