"""A streamed reply: a view on its pipeline :class:`~runtime._pipeline.Call`.

The call owns the request's state (deadline, span, budget reservation, attempt trail);
the stream owns what only a stream has: the open chunk stream, the permit of the
endpoint serving it (settled exactly once, on every way out), the reply assembled
from the chunks, and what it does when the answer fails after content reached the
caller (:mod:`runtime._recovery`): raise, restart, or continue the answer elsewhere.
A recovery is another walk of the same call, with the same deadline, trail and span.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import NamedTuple

import msgspec

from ._assembly import PartialReply, first_content
from ._pipeline import Call, ChatOptions, Pipeline
from ._recovery import Mode, Recovery, recoverable
from .accounting import estimate_usage, replay_as_stream
from .dispatch.dispatcher import Outcome
from .endpoint.actor import EndpointActor, Permit
from .errors import InvalidRequest, LLMError, StreamInterrupted, Timeout
from .providers.base import ChunkStream
from .structured import parse_reply
from .types import Attempt, ChatRequest, ChatResponse, StreamChunk

__all__ = ["ReplyStream"]



class _Opened(NamedTuple):
    """What an attempt hands over: the open stream, the chunks up to its first content, how
    it recovered an interrupted answer (None for the first answer) and the request it sent."""

    chunks: ChunkStream
    held: list[StreamChunk]
    mode: Mode | None
    sent: ChatRequest


class ReplyStream:
    """A streamed reply: an async context manager and an async iterator of :class:`StreamChunk`.

    Entering it chooses an endpoint and waits for the first chunk that carries content,
    failing over transparently until then. After that a failure raises
    :class:`StreamInterrupted`, or, with ``on_interrupt`` ``"restart"`` or ``"continue"``,
    is recovered: ``restarts`` and ``continuations`` count how often. Leaving it early
    closes the HTTP response and releases the endpoint's concurrency slot and limiter
    reservation.
    """

    def __init__(self, pipeline: Pipeline, call: Call, options: ChatOptions) -> None:
        self._pipeline = pipeline
        self._call = call
        self._options = options
        self._chunks: ChunkStream | None = None
        self._buffer: list[StreamChunk] = []
        self._actor: EndpointActor | None = None
        self._permit: Permit | None = None
        self._answer = PartialReply()
        self._recovery = Recovery(options.on_interrupt or pipeline.on_interrupt)
        self._trim_lead = False  # drop the continuation's leading whitespace (see _continued)
        self._response: ChatResponse | None = None
        self._ended = False
        self._cache_key: str | None = None
        self._first_at = 0.0
        self._tokens = self._window = 0
        self._sent: ChatRequest = options.request  # what the serving endpoint was sent
        self._served_from = 0  # where the serving endpoint's own text begins in the answer

    def __repr__(self) -> str:
        where = self._actor.name if self._actor else "unopened"
        return f"<ReplyStream [{where} | {'ended' if self._ended else 'open'} | {len(self._answer.text)} chars]>"

    @property
    def restarts(self) -> int:
        """How many times the answer failed after content and a new one began (``on_interrupt="restart"``)."""
        return self._recovery.restarts

    @property
    def attempts(self) -> list[Attempt]:
        """The attempt trail so far: once entered, every try up to the one serving the stream."""
        return list(self._call.trail)

    @property
    def ready(self) -> int:
        """Chunks that have arrived and can be taken now, without waiting for the endpoint:
        a proxy writes them out together (one write, not one per chunk)."""
        chunks = self._chunks
        return len(self._buffer) + (chunks.ready if chunks is not None and not self._ended else 0)

    @property
    def continuations(self) -> int:
        """How many times the answer failed after content and another endpoint continued it."""
        return self._recovery.continuations

    async def __aenter__(self) -> ReplyStream:
        call, request, trim = self._call, self._options.request, self._options.trim
        call.start_span()
        self._cache_key, hit = call.cached(request, self._options.cache)
        if hit is not None:
            self._response = hit
            if self._options.output is not None:
                hit.parsed = parse_reply(hit, self._options.output)
            self._buffer = replay_as_stream(hit)
            self._ended = True
            return self
        pipeline = self._pipeline
        try:
            self._tokens, self._window = call.reserve(request, trim)
            outcome = await call.dispatch(
                self._attempt(None), tokens=self._tokens, window=self._window, settle=False,
                hedge=pipeline.hedge_for(self._options.hedge),
            )
        except BaseException as exc:
            call.fail(exc)
            raise
        self._serve(outcome)
        self._buffer = outcome.value.held
        actor = outcome.actor
        pipeline.metrics.record_ttfc(
            self._first_at - call.started, endpoint=actor.name, provider=actor.provider, model=actor.model
        )
        return self

    def _attempt(self, partial: str | None) -> Callable[[EndpointActor, float], Awaitable[_Opened]]:
        """The attempt the dispatcher runs on each endpoint it picks. ``partial`` is None for
        the first answer; for a recovery it is the text the caller has ("" when it cannot
        be continued), and :class:`Recovery` says what each endpoint is sent."""
        pipeline, request, trim, recovery = self._pipeline, self._options.request, self._options.trim, self._recovery
        deadline = self._call.deadline

        async def attempt(actor: EndpointActor, timeout: float) -> _Opened:
            sent = pipeline.fit(request, actor) if trim else request
            mode: Mode | None = None
            if partial is not None:
                sent, mode = recovery.request_for(actor, sent, partial or None)
            chunks = await actor.client.stream(
                sent, first_chunk_timeout=min(actor.first_chunk_timeout, timeout),
                idle_timeout=actor.endpoint.idle_timeout, deadline=deadline,
            )
            try:
                return _Opened(chunks, await first_content(chunks), mode, sent)
            except BaseException:
                await chunks.aclose()
                raise

        return attempt

    def _serve(self, outcome: Outcome[_Opened]) -> None:
        """Take over the stream an attempt opened, with its endpoint's permit."""
        self._chunks, self._sent = outcome.value.chunks, outcome.value.sent
        self._actor, self._permit = outcome.actor, outcome.permit
        self._first_at = self._pipeline.clock()
        self._served_from = len(self._answer.text) if outcome.value.mode == "continue" else 0

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        while True:
            if self._buffer:
                chunk = self._buffer.pop(0)
                return self._take(chunk) if self._chunks is not None else chunk
            chunks = self._chunks
            if self._ended or chunks is None:
                raise StopAsyncIteration
            try:
                chunk = await chunks.__anext__()  # bounded by the request's deadline too (see _attempt)
            except StopAsyncIteration:
                self._complete()
                raise
            except LLMError as exc:
                if chunks.past_deadline and isinstance(exc, Timeout):
                    raise self._interrupted(self._failed(exc)) from exc  # no time left to recover in
                error = await self._recover(exc)
                if error is not None:
                    raise error from exc
                continue  # the new answer (or the continuation) is in the buffer
            return self._take(chunk)

    def _take(self, chunk: StreamChunk) -> StreamChunk:
        """Add a chunk to the answer on its way to the caller."""
        if self._trim_lead and chunk.text:
            text = chunk.text.lstrip()
            self._trim_lead = not text
            chunk = msgspec.structs.replace(chunk, text=text)
        self._answer.add(chunk)
        return chunk

    def _failed(self, cause: LLMError) -> LLMError:
        """Settle the serving endpoint's permit with ``cause`` and say so in the trail."""
        actor = self._settle(cause)
        if actor is not None:
            self._call.attempt_failed(actor.name, cause, self._pipeline.clock() - self._first_at)
            self._charge(actor)
        return cause

    def _charge(self, actor: EndpointActor) -> None:
        """Charge what the failed answer used: the provider bills it though no usage came."""
        reply = self._answer.reply()
        own = self._served_from
        text = reply.text[own:]
        if not text and not (reply.tool_calls or reply.reasoning):
            return
        usage = estimate_usage(
            self._sent, text, reply.model or actor.model,
            tool_calls=None if own else reply.tool_calls, reasoning=None if own else reply.reasoning,
        )
        self._call.spent(actor, reply.model, usage)

    async def _recover(self, cause: LLMError) -> StreamInterrupted | None:
        """The answer failed after content reached the caller: run the request again as the
        policy says. None when a new answer or the continuation is ready in the buffer;
        else the :class:`StreamInterrupted` to raise."""
        self._failed(cause)
        recovery, call, chunks = self._recovery, self._call, self._chunks
        if not recovery.active or not recoverable(cause) or chunks is None:
            return self._interrupted(cause)
        await chunks.aclose()
        answer = self._answer
        failed_on = self.endpoint
        # A tool call cut half-way cannot be prefilled: only text is continued.
        partial = answer.text if not answer.has_tool_calls else ""
        while True:
            start = len(call.trail)
            recovery.begin()
            try:
                outcome = await call.dispatch(self._attempt(partial), tokens=self._tokens, window=self._window, settle=False)
            except LLMError as exc:
                recovery.label(call.trail, start)
                if recovery.refused_prefill(exc, getattr(exc, "endpoint", None)):
                    continue  # that endpoint gets the request again as a restart
                return self._interrupted(cause, f"; no endpoint could take over: {exc}")
            except BaseException as exc:  # the caller left (a cancel) while the answer was recovered
                self._ended = True
                call.fail(exc)
                raise
            recovery.label(call.trail, start)
            break
        opened = outcome.value
        self._serve(outcome)
        if opened.mode == "continue":
            self._continued(partial, opened.sent)
            self._buffer = opened.held
        else:
            recovery.restarts += 1
            self._answer = PartialReply()
            self._trim_lead = False  # a new answer keeps its own leading whitespace
            # The marker the caller gets before the new answer: everything before it is void.
            self._buffer = [StreamChunk(restart=True), *opened.held]
        self._record(failed_on, opened.mode or "restart", cause)
        return None

    def _record(self, failed_on: str | None, mode: Mode, cause: LLMError) -> None:
        """The request span and the metrics say that the answer from ``failed_on`` was recovered."""
        span, pipeline = self._call.span, self._pipeline
        failed = pipeline.routes.by_name.get(failed_on) if failed_on else None
        if span.is_recording():
            span.add_event(
                "stream.restart",
                {"endpoint": failed_on or "", "error.type": type(cause).__name__, "recovery": mode,
                 "to_endpoint": self.endpoint or ""},
            )
            span.set_attribute("llm_runtime.stream.restarts", self.restarts + self.continuations)
        pipeline.metrics.record_restart(
            mode, endpoint=failed_on, provider=failed.provider if failed else None, model=failed.model if failed else None
        )

    def _continued(self, partial: str, sent: ChatRequest) -> None:
        """Another endpoint continues the answer: the caller's text stays one answer. A
        provider that refused trailing whitespace in the prefill got the partial without
        it; the caller has it already, so the continuation's own leading whitespace goes."""
        self._recovery.continuations += 1
        prefill = sent.messages[-1].text
        self._trim_lead = len(prefill) < len(partial)

    def _interrupted(self, cause: LLMError, why: str = "") -> StreamInterrupted:
        """End the stream with :class:`StreamInterrupted` carrying the text of the answer so far."""
        self._ended = True
        self._failed(cause)
        partial = self._answer.text
        error = StreamInterrupted(
            f"the stream from {self.endpoint!r} failed after {len(partial)} characters: {cause}{why}",
            partial=partial,
            cause=cause,
            endpoint=self.endpoint,
        )
        self._call.fail(error)
        return error

    def _complete(self) -> None:
        self._ended = True
        actor = self._actor
        assert actor is not None
        reply = self._answer.reply()
        usage = reply.usage
        self._settle(None, usage.input_tokens + usage.output_tokens or None)
        self._call.account(reply, actor, self._options.request)
        self._response = reply
        if self._options.output is not None:
            # The text is the caller's already: a mismatch ends the stream with InvalidOutput
            # (and is not cached); ``response`` still holds what came.
            reply.parsed = parse_reply(reply, self._options.output)
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
        try:
            if self._chunks is not None:
                await self._chunks.aclose()
        finally:
            # Leaving early is the caller's choice: it counts as nothing against the endpoint.
            # Settled even when closing failed or was cancelled: the stream owns the permit.
            cancelled = asyncio.CancelledError()
            if self._settle(cancelled) is not None:
                self._call.fail(cancelled)

    def _settle(self, outcome: BaseException | None, tokens: int | None = None) -> EndpointActor | None:
        """Settle the permit this stream owns with ``outcome``, once; the endpoint's live actor
        it was settled on, or None when there was nothing to settle."""
        permit = self._permit
        if permit is None:
            return None
        self._permit = None
        permit.settle(outcome, self._pipeline.clock(), tokens)
        return permit.actor
