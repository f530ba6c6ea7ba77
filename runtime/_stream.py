"""A streamed reply: a view on its pipeline :class:`~runtime._pipeline.Call`.

The call owns the request's state (deadline, span, budget reservation, attempt trail);
the stream owns what only a stream has: the open chunk stream, the permit of the
endpoint serving it (settled exactly once, on every way out), and the reply assembled
from the chunks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType

import anyio
import msgspec

from ._pipeline import Call, ChatOptions, Pipeline
from .accounting import replay_as_stream
from .endpoint.actor import EndpointActor, Permit
from .errors import InvalidRequest, LLMError, StreamInterrupted, Timeout
from .providers.base import ChunkStream
from .types import ChatResponse, StreamChunk, ToolCall, Usage

__all__ = ["ReplyStream"]

# Chunks held back before the first one with content: role openers, pings and usage-only
# chunks carry nothing for the caller. Past this many, later ones are folded into the
# last held one, so a server trickling them cannot grow the buffer.
MAX_HELD = 32


class ReplyStream:
    """A streamed reply: an async context manager and an async iterator of :class:`StreamChunk`.

    Entering it chooses an endpoint and waits for the first chunk that carries content,
    failing over transparently until then. Leaving it early closes the HTTP response and
    releases the endpoint's concurrency slot and limiter reservation.
    """

    def __init__(self, pipeline: Pipeline, call: Call, options: ChatOptions) -> None:
        self._pipeline = pipeline
        self._call = call
        self._options = options
        self._chunks: ChunkStream | None = None
        self._buffer: list[StreamChunk] = []
        self._actor: EndpointActor | None = None
        self._permit: Permit | None = None
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, list[str]] = {}
        self._tool_ids: dict[int, tuple[str, str]] = {}
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._response: ChatResponse | None = None
        self._ended = False
        self._cache_key: str | None = None
        self._first_at = 0.0

    def __repr__(self) -> str:
        where = self._actor.name if self._actor else "unopened"
        return f"<ReplyStream [{where} | {'ended' if self._ended else 'open'} | {len(''.join(self._text))} chars]>"

    async def __aenter__(self) -> ReplyStream:
        call, request, trim = self._call, self._options.request, self._options.trim
        call.start_span()
        self._cache_key, hit = call.cached(request, self._options.cache)
        if hit is not None:
            self._response = hit
            self._buffer = replay_as_stream(hit)
            self._ended = True
            return self
        pipeline = self._pipeline

        async def attempt(actor: EndpointActor, timeout: float) -> tuple[ChunkStream, list[StreamChunk]]:
            first = min(actor.first_chunk_timeout, timeout)
            until = asyncio.get_running_loop().time() + first
            chunks = await actor.client.stream(
                pipeline.fit(request, actor) if trim else request,
                first_chunk_timeout=first, idle_timeout=actor.endpoint.idle_timeout,
            )
            try:
                return chunks, await _first_content(chunks, until, first, actor.name)
            except BaseException:
                await chunks.aclose()
                raise

        try:
            tokens, window = call.reserve(request, trim)
            outcome = await call.dispatch(
                attempt, tokens=tokens, window=window, settle=False, hedge=pipeline.hedge_for(self._options.hedge)
            )
        except BaseException as exc:
            call.fail(exc)
            raise
        self._chunks, self._buffer = outcome.value
        self._actor, self._permit = outcome.actor, outcome.permit
        actor = outcome.actor
        self._first_at = anyio.current_time()
        pipeline.metrics.record_ttfc(
            self._first_at - call.started, endpoint=actor.name, provider=actor.provider, model=actor.model
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._buffer:
            chunk = self._buffer.pop(0)
            if self._chunks is not None:
                self._absorb(chunk)
            return chunk
        chunks = self._chunks
        if self._ended or chunks is None:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout_at(self._call.deadline):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            self._complete()
            raise
        except TimeoutError as exc:
            raise self._interrupted(Timeout("the request's deadline passed mid-stream", endpoint=self.endpoint)) from exc
        except LLMError as exc:
            raise self._interrupted(exc) from exc
        self._absorb(chunk)
        return chunk

    def _absorb(self, chunk: StreamChunk) -> None:
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

    def _interrupted(self, cause: LLMError) -> StreamInterrupted:
        self._ended = True
        call = self._call
        actor = self._settle(cause)
        if actor is not None:
            call.attempt_failed(actor.name, cause, anyio.current_time() - self._first_at)
        partial = "".join(self._text)
        error = StreamInterrupted(
            f"the stream from {self.endpoint!r} failed after {len(partial)} characters: {cause}",
            partial=partial,
            cause=cause,
            endpoint=self.endpoint,
        )
        call.fail(error)
        return error

    def _complete(self) -> None:
        self._ended = True
        actor = self._actor
        assert actor is not None
        reply = ChatResponse(
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
        usage = reply.usage
        self._settle(None, usage.input_tokens + usage.output_tokens or None)
        self._call.account(reply, actor, self._options.request)
        self._response = reply
        cache = self._pipeline.cache
        if self._cache_key is not None and cache is not None:
            cache.set(self._cache_key, reply)

    @property
    def response(self) -> ChatResponse:
        """The whole reply (text, tool calls, usage, finish reason, endpoint) once the stream ended."""
        if self._response is None:
            raise InvalidRequest("the stream has not ended yet: read it to the end first", field="response")
        return self._response

    @property
    def endpoint(self) -> str | None:
        """The endpoint serving this stream."""
        if self._actor is not None:
            return self._actor.name
        return self._response.endpoint if self._response else None

    async def aclose(self) -> None:
        """Leave the stream: close the connection and release the endpoint's slot and reservation."""
        self._ended = True
        self._buffer.clear()
        if self._chunks is not None:
            await self._chunks.aclose()
        # Leaving early is the caller's choice: it counts as nothing against the endpoint.
        cancelled = anyio.get_cancelled_exc_class()()
        if self._settle(cancelled) is not None:
            self._call.fail(cancelled)

    def _settle(self, outcome: BaseException | None, tokens: int | None = None) -> EndpointActor | None:
        """Settle the still-open permit with ``outcome``, once; the actor it was settled with,
        or None when there was nothing to settle."""
        actor, permit = self._actor, self._permit
        if actor is None or permit is None:
            return None
        self._permit = None
        actor.finish(permit, outcome, anyio.current_time(), tokens)
        return actor


async def _first_content(chunks: ChunkStream, until: float, timeout: float, endpoint: str) -> list[StreamChunk]:
    """The chunks up to and including the first one with content (text, reasoning or a tool
    call), which must come by loop time ``until`` (``timeout`` after the attempt began):
    chunks without content do not extend it. Until then the stream may still fail over."""
    held: list[StreamChunk] = []
    try:
        async with asyncio.timeout_at(until):
            async for chunk in chunks:
                if chunk.text or chunk.reasoning or chunk.tool_calls:
                    held.append(chunk)
                    break
                if len(held) < MAX_HELD:
                    held.append(chunk)
                else:
                    held[-1] = _fold(held[-1], chunk)
    except TimeoutError:
        raise Timeout(f"no content within {timeout:.3g}s of the request", endpoint=endpoint) from None
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
