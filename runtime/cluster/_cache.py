"""The response cache shared by every process: a replicated near-cache.

:class:`SharedCacheStore` is a :class:`~runtime.accounting.cache.CacheStore`. Lookups stay in
the process (the protocol is synchronous, and a hit must cost no round trip): each process
keeps a :class:`~runtime.accounting.cache.MemoryStore` of ``max_entries``. Every write, delete
and clear is appended to a capped Redis stream (batched by the writer, off the request path),
and each process's periodic sync replays the entries it has not seen into its own store,
with the time to live they have left on Redis's clock. So a reply cached by one process is
served by all of them from the next sync on (within ``sync_interval``). While Redis is away
each process caches on its own; what it stored meanwhile stays its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import msgspec

from ..accounting.cache import MemoryStore
from ..types import ChatResponse
from ._link import Call

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["SharedCacheStore"]

# JSON rather than msgpack: every reply from Redis is read as text.
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(ChatResponse).decode
# Entries without an expiry (math.inf) live this long on Redis: a year is "until evicted".
_FOREVER = 365 * 86400.0


class SharedCacheStore:
    """A :class:`MemoryStore` per process, kept in step through a Redis stream."""

    def __init__(self, state: SharedState, max_entries: int) -> None:
        self._state = state
        self._local = MemoryStore(max_entries)
        self._max_entries = max_entries
        tag = "{" + f"{state.policy.prefix}:cache" + "}"
        self._stream = f"{tag}:writes"
        self._last = "0"

    def __repr__(self) -> str:
        return f"<SharedCacheStore {self._stream} [{len(self._local)} entries here | read up to {self._last}]>"

    def __len__(self) -> int:
        return len(self._local)

    def get(self, key: str) -> ChatResponse | None:
        """The reply under ``key`` in this process's copy."""
        return self._local.get(key)

    def set(self, key: str, value: ChatResponse, ttl: float) -> None:
        """Store here at once, and for every process."""
        self._local.set(key, value, ttl)
        self._put(key, _encode(value).decode(), _FOREVER if math.isinf(ttl) else ttl)

    def delete(self, key: str) -> None:
        """Forget ``key`` here and everywhere."""
        self._local.delete(key)
        self._put(key, "", 0.0)

    def clear(self) -> None:
        """Forget everything, here and everywhere."""
        self._local.clear()
        self._put("", "", 0.0)

    def _put(self, key: str, value: str, ttl: float) -> None:
        self._state.send(("cache_put", [self._stream], [key, value, ttl, self._max_entries]))

    def sync_call(self) -> Call:
        """The call that reads the writes not replayed here yet."""
        return ("cache_pull", [self._stream], [self._last, self._max_entries])

    def replay(self, reply: list[str]) -> None:
        """Apply the writes ``reply`` (of :meth:`sync_call`) to this process's copy."""
        for i in range(1, len(reply) - 3, 4):
            self._last, key, value, left = reply[i : i + 4]
            if not key:
                self._local.clear()
            elif not value:
                self._local.delete(key)
            elif float(left) > 0:
                self._local.set(key, _decode(value), float(left))
