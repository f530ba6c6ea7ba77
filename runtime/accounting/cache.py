"""The response cache: exact-match replies for repeated deterministic requests.

A key is a canonical hash (:func:`cache_key`) of the route and everything in the request
that shapes the answer: messages, tools and tool choice, sampling parameters, seed,
``response_format``, ``stop`` and ``max_tokens``. Dict key order does not matter, and
``0`` and ``0.0`` are the same temperature.

Only deterministic requests are cached by default: :func:`cacheable` says yes for
``temperature == 0``, for any request that opts in with ``cache=True``, and never for
``cache=False``.

:class:`ResponseCache` keeps fresh replies in a :class:`CacheStore` (bounded, with a
TTL) and, with ``serve_stale``, the last good reply per key in a second store without
TTL, bounded by the same ``max_entries``; when every endpoint fails, :meth:`ResponseCache.stale`
returns it and the caller marks it ``stale=True``. A cached reply can be replayed as a
stream with :func:`replay_as_stream`.

Storage is behind the :class:`CacheStore` protocol. It is synchronous: the in-memory
:class:`MemoryStore` answers in well under a microsecond, and a sync interface keeps a
hit off the scheduler. A shared backend (Redis, later) implements the same protocol,
keeping a small local near-cache or a synchronous client on a fast link.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import operator
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

from ..policy import CachePolicy
from ..types import ChatRequest, ChatResponse, FrozenStruct, StreamChunk, ToolCallDelta

__all__ = [
    "CacheStatistics",
    "CacheStore",
    "MemoryStore",
    "ResponseCache",
    "cache_key",
    "cacheable",
    "replay_as_stream",
]

_KEY_VERSION = 1  # bump when the canonical form changes, so old shared entries stop matching
_encoder = msgspec.json.Encoder(order="sorted")


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def cache_key(route: str | None, request: ChatRequest) -> str:
    """A canonical hash of ``route`` and the parts of ``request`` that shape the reply.

    Stable across dict key order and int/float spellings of the same number; ``user``
    (an end-user id for abuse tracking) does not take part.
    """
    canonical: tuple[Any, ...] = (
        _KEY_VERSION,
        route,
        request.model,
        request.messages,
        request.tools,
        request.tool_choice,
        _float(request.temperature),
        _float(request.top_p),
        request.seed,
        request.stop,
        request.max_tokens,
        request.response_format,
    )
    shaping = _shaping(request)
    if shaping.count(None) != len(shaping):
        # Appended only when set, so the keys of plain requests stay what they were.
        canonical += (shaping,)
    if request.kind != "chat":  # a text completion of a prompt is not a chat about it
        canonical += (request.kind,)
    return hashlib.blake2b(_encoder.encode(canonical), digest_size=16).hexdigest()


#: The OpenAI parameters beyond the common ones that change the reply (``user`` and
#: ``metadata`` are bookkeeping; ``extra_headers`` do not reach the model).
_SHAPING = (
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "n",
    "parallel_tool_calls", "reasoning_effort", "extra_body",
)
_shaping = operator.attrgetter(*_SHAPING)  # a request's values of them, as a tuple read in C


def cacheable(request: ChatRequest, opt_in: bool | None) -> bool:
    """Whether ``request`` may be served from and stored in the cache.

    ``opt_in`` is the request's ``cache`` argument: False never, True always, None only
    for deterministic requests (``temperature == 0``).
    """
    if opt_in is not None:
        return opt_in
    return request.temperature is not None and request.temperature == 0


@runtime_checkable
class CacheStore(Protocol):
    """Where cached replies live. ``ttl`` is seconds (``math.inf``: until evicted)."""

    def get(self, key: str) -> ChatResponse | None:
        """The reply stored under ``key`` if present and not expired, else None."""
        ...

    def set(self, key: str, value: ChatResponse, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds."""
        ...

    def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...

    def __len__(self) -> int:
        """How many entries are held (expired ones not yet dropped may count)."""
        ...


def _loop_time() -> float:
    """The running event loop's clock; ``time.monotonic`` when no loop runs (sync callers)."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class MemoryStore:
    """An in-process LRU store: at most ``max_entries`` entries, each until its TTL passes.

    A read refreshes an entry's recency; a write past the bound evicts the least recently
    used entry. Expired entries are dropped when read (and pushed out by the bound).
    ``clock`` is a monotonic clock in seconds (default: the running loop's time).
    """

    def __init__(self, max_entries: int, *, clock: Callable[[], float] = _loop_time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, ChatResponse]] = OrderedDict()
        self.evictions = 0
        self.expirations = 0

    def __repr__(self) -> str:
        return f"<MemoryStore [{len(self._entries)}/{self.max_entries} entries | {self.evictions} evicted]>"

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ChatResponse | None:
        """The live entry under ``key``, refreshed as most recently used; None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            self.expirations += 1
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: ChatResponse, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds, evicting the least recently used past the bound."""
        entries = self._entries
        entries[key] = (self._clock() + ttl, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1

    def delete(self, key: str) -> None:
        """Forget ``key``."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()


class CacheStatistics(FrozenStruct, frozen=True):
    """Counters of a :class:`ResponseCache`."""

    hits: int
    misses: int
    entries: int
    stale_entries: int
    stale_served: int
    evictions: int
    expirations: int


def _detached(reply: ChatResponse) -> ChatResponse:
    """A copy that shares nothing mutable with ``reply`` and carries no per-request trail."""
    return msgspec.structs.replace(
        reply,
        usage=msgspec.structs.replace(reply.usage),
        tool_calls=[msgspec.structs.replace(call) for call in reply.tool_calls],
        attempts=[],
        cached=False,
        stale=False,
    )


class ResponseCache:
    """Cached replies under a :class:`~runtime.policy.CachePolicy`.

    ``store`` holds fresh replies (default: a :class:`MemoryStore` of ``max_entries``);
    ``stale_store`` the last good reply per key, without TTL, when ``serve_stale`` is on.
    Replies handed out are the stored objects: copy them (``msgspec.structs.replace``)
    before changing anything.
    """

    def __init__(
        self,
        policy: CachePolicy,
        *,
        store: CacheStore | None = None,
        stale_store: CacheStore | None = None,
        clock: Callable[[], float] = _loop_time,
    ) -> None:
        self.policy = policy
        self.store: CacheStore = store if store is not None else MemoryStore(policy.max_entries, clock=clock)
        self.stale_store: CacheStore | None = None
        if policy.serve_stale:
            self.stale_store = stale_store if stale_store is not None else MemoryStore(policy.max_entries, clock=clock)
        self.hits = 0
        self.misses = 0
        self.stale_served = 0

    def __repr__(self) -> str:
        return f"<ResponseCache [{len(self.store)} entries | {self.hits} hits, {self.misses} misses]>"

    def key(self, route: str | None, request: ChatRequest) -> str:
        """The cache key of ``request`` on ``route`` (see :func:`cache_key`)."""
        return cache_key(route, request)

    def get(self, key: str) -> ChatResponse | None:
        """The fresh reply under ``key``, or None (counted as a hit or a miss)."""
        reply = self.store.get(key)
        if reply is None:
            self.misses += 1
        else:
            self.hits += 1
        return reply

    def set(self, key: str, reply: ChatResponse) -> None:
        """Keep ``reply`` for ``key``: fresh for ``ttl``, and as the last good reply when serving stale.

        Replies that are themselves stale are not stored again.
        """
        if reply.stale:
            return
        stored = _detached(reply)
        self.store.set(key, stored, self.policy.ttl)
        if self.stale_store is not None:
            self.stale_store.set(key, stored, math.inf)

    def stale(self, key: str) -> ChatResponse | None:
        """The last good reply for ``key`` however old (None without ``serve_stale``).

        For a total failure only; the caller marks what it returns ``stale=True``.
        """
        if self.stale_store is None:
            return None
        reply = self.stale_store.get(key)
        if reply is not None:
            self.stale_served += 1
        return reply

    def delete(self, key: str) -> None:
        """Forget ``key``, fresh and stale."""
        self.store.delete(key)
        if self.stale_store is not None:
            self.stale_store.delete(key)

    def clear(self) -> None:
        """Forget everything, fresh and stale."""
        self.store.clear()
        if self.stale_store is not None:
            self.stale_store.clear()

    def statistics(self) -> CacheStatistics:
        """Hits, misses, sizes and what the in-memory stores dropped."""
        stores: list[Any] = [self.store, self.stale_store]
        return CacheStatistics(
            hits=self.hits,
            misses=self.misses,
            entries=len(self.store),
            stale_entries=len(self.stale_store) if self.stale_store is not None else 0,
            stale_served=self.stale_served,
            evictions=sum(getattr(s, "evictions", 0) for s in stores if s is not None),
            expirations=sum(getattr(s, "expirations", 0) for s in stores if s is not None),
        )


def _split_text(text: str, pieces: int) -> list[str]:
    """``text`` in about ``pieces`` parts, cut after spaces where possible; they join back exactly."""
    if not text:
        return []
    size = max(1, math.ceil(len(text) / pieces))
    parts: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            space = text.rfind(" ", start + 1, end + 1)
            if space > start:
                end = space + 1
        parts.append(text[start:end])
        start = end
    return parts


def replay_as_stream(reply: ChatResponse, *, pieces: int = 4) -> list[StreamChunk]:
    """A cached ``reply`` as the chunks a stream of it would have carried.

    Reasoning first, then the text in about ``pieces`` chunks, then one chunk with the
    tool calls; ``finish_reason``, ``usage``, ``model`` and ``id`` ride on the last chunk.
    The chunks' text joins back to ``reply.text`` exactly.
    """
    chunks: list[StreamChunk] = []
    if reply.reasoning:
        chunks.append(StreamChunk(reasoning=reply.reasoning))
    chunks.extend(StreamChunk(text=part) for part in _split_text(reply.text, pieces))
    if reply.tool_calls:
        chunks.append(
            StreamChunk(
                tool_calls=[
                    ToolCallDelta(index=i, id=call.id, name=call.name, arguments=call.arguments)
                    for i, call in enumerate(reply.tool_calls)
                ]
            )
        )
    if not chunks:
        chunks.append(StreamChunk())
    last = chunks[-1]
    last.finish_reason = reply.finish_reason
    last.usage = msgspec.structs.replace(reply.usage)
    last.model = reply.model or None
    last.id = reply.id
    return chunks
