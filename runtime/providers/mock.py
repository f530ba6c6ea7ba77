"""Provider ``mock``: an in-process endpoint with no HTTP, for unit tests and examples.

:class:`MockClient` has the public methods and return types of
:class:`~runtime.providers.base.ProviderClient`, and answers deterministically:

- chat replies ``"mock reply to: <the last user message's text>"``; a stream delivers it
  word by word (each word with the space before it) and then a finish chunk with usage;
- ``max_tokens`` cuts the reply to that many words, with finish reason ``"length"``;
- usage counts whitespace-separated words: the prompt's for input, the reply's for output;
- embeddings are unit vectors derived from a hash of each text (``dimensions`` long,
  16 by default), so equal texts get equal vectors and different texts different ones;
- the probe always passes.

Every call passes through the event loop once per step, so cancellation and timeouts
behave as they do with a real endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from typing import TYPE_CHECKING

from ..types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    RateLimitSnapshot,
    StreamChunk,
    Usage,
)
from .registry import PROVIDERS

if TYPE_CHECKING:  # policy reads the provider registry in this package
    from ..policy import Endpoint

__all__ = ["DEFAULT_DIMENSIONS", "MockClient", "MockStream"]

#: The length of a mock embedding when the request names no ``dimensions``.
DEFAULT_DIMENSIONS = 16

# Split before each run of whitespace that follows a word: the pieces join back exactly.
_WORDS = re.compile(r"(?<=\S)(?=\s)")


class MockClient:
    """A deterministic in-process endpoint with :class:`ProviderClient`'s interface."""

    __slots__ = ("_model", "_name", "endpoint")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._name = endpoint.name
        self._model = endpoint.model or "mock"

    #: the mock answers embeddings and text-completion requests too (the registry's "mock")
    embeddings = PROVIDERS["mock"].embeddings
    completions = PROVIDERS["mock"].completions

    def __repr__(self) -> str:
        return f"<MockClient endpoint={self._name!r} model={self._model!r}>"

    def _reply(self, request: ChatRequest) -> tuple[list[str], str, Usage]:
        last = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        words = [w for w in _WORDS.split(f"mock reply to: {last}") if w]
        finish = "stop"
        if request.max_tokens is not None and len(words) > request.max_tokens:
            words = words[: request.max_tokens]
            finish = "length"
        prompt = sum(len(m.text.split()) for m in request.messages)
        output = len("".join(words).split())
        return words, finish, Usage(input_tokens=prompt, output_tokens=output, total_tokens=prompt + output)

    async def chat(self, request: ChatRequest, timeout: float) -> tuple[ChatResponse, RateLimitSnapshot | None]:
        """The whole mock reply; ``timeout`` is accepted for interface parity (answers are instant)."""
        await asyncio.sleep(0)
        words, finish, usage = self._reply(request)
        return (
            ChatResponse(
                text="".join(words),
                finish_reason=finish,
                usage=usage,
                model=self._model,
                endpoint=self._name,
                provider="mock",
            ),
            None,
        )

    async def embed(self, request: EmbeddingRequest, timeout: float) -> tuple[EmbeddingResponse, RateLimitSnapshot | None]:
        """One hash-derived unit vector per input."""
        await asyncio.sleep(0)
        size = request.dimensions or DEFAULT_DIMENSIONS
        tokens = sum(len(text.split()) for text in request.inputs)
        return (
            EmbeddingResponse(
                vectors=[_vector(text, size) for text in request.inputs],
                model=self._model,
                endpoint=self._name,
                provider="mock",
                usage=Usage(input_tokens=tokens, total_tokens=tokens),
            ),
            None,
        )

    async def probe(self, timeout: float) -> None:
        """Always healthy."""
        await asyncio.sleep(0)

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest | None:
        """None: a canned answer cannot continue anything, so a recovered stream restarts."""
        return None

    async def stream(
        self, request: ChatRequest, *, first_chunk_timeout: float, idle_timeout: float, deadline: float = math.inf
    ) -> MockStream:
        """The mock reply as a stream of word chunks, then a finish chunk with usage. It
        never waits for a chunk, so no timeout or deadline can pass in a read."""
        await asyncio.sleep(0)
        words, finish, usage = self._reply(request)
        chunks = [StreamChunk(text=word, model=self._model) for word in words]
        chunks.append(StreamChunk(finish_reason=finish, usage=usage, model=self._model))
        return MockStream(chunks)


class MockStream:
    """A mock reply being streamed: an async iterator of :class:`StreamChunk`, like :class:`ChunkStream`."""

    __slots__ = ("_chunks", "_next")

    def __init__(self, chunks: list[StreamChunk]) -> None:
        self._chunks = chunks
        self._next = 0

    def __repr__(self) -> str:
        return f"<MockStream [{self._next}/{len(self._chunks)} chunks]>"

    @property
    def rate_limit(self) -> RateLimitSnapshot | None:
        """Mock endpoints send no rate-limit headers."""
        return None

    @property
    def ready(self) -> int:
        """Every chunk not yet read: none of them waits."""
        return len(self._chunks) - self._next

    @property
    def past_deadline(self) -> bool:
        """Never: a read does not wait (see :meth:`MockClient.stream`)."""
        return False

    def __aiter__(self) -> MockStream:
        return self

    async def __anext__(self) -> StreamChunk:
        await asyncio.sleep(0)
        if self._next >= len(self._chunks):
            raise StopAsyncIteration
        chunk = self._chunks[self._next]
        self._next += 1
        return chunk

    async def aclose(self) -> None:
        """End the stream now."""
        self._next = len(self._chunks)


def _vector(text: str, size: int) -> list[float]:
    digest = hashlib.shake_256(text.encode()).digest(2 * size)
    raw = [int.from_bytes(digest[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, 2 * size, 2)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
