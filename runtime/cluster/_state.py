"""The shared state of one runtime: the Redis link, every endpoint's share, budgets, and the
background work (reconnection, the batched writer, the periodic sync).

:class:`SharedState` is what ``Runtime(shared=...)`` builds. The runtime asks it for each
endpoint's breaker storage and limiter and for budget guards, attaches each endpoint
actor, and runs :meth:`SharedState.run` in its task group.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from ..policy import Budget, Endpoint
from ._budget import SharedBudgetGuard
from ._cache import SharedCacheStore
from ._endpoint import EndpointShare, SharedBreakerStorage, SharedLimiter
from ._key import SharedKeyLimiter
from ._link import Call, RedisLink, Unavailable
from .policy import SharedPolicy

if TYPE_CHECKING:
    from ..endpoint.actor import EndpointActor

__all__ = ["SharedState"]

Done = Callable[[list[str] | None], None]

# How long a queued settle waits for company (an admission to ride along with, or more
# settles to batch with) before the writer sends it alone.
WRITE_DELAY = 0.002


def _deliver(queue: list[tuple[Call, Done | None]], replies: Sequence[list[str] | None]) -> None:
    for (_, done), reply in zip(queue, replies, strict=True):
        if done is not None:
            done(reply)


class SharedState:
    """Everything a runtime shares through one Redis; see :mod:`runtime.cluster`."""

    def __init__(self, policy: SharedPolicy, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.link = RedisLink(policy, rng=rng)
        self.link.on_restore = self._resync
        self._shares: dict[str, EndpointShare] = {}
        self._budgets: list[SharedBudgetGuard] = []
        self._caches: list[SharedCacheStore] = []
        self._queue: list[tuple[Call, Done | None]] = []
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<SharedState {self.link!r} | endpoints {len(self._shares)} | queued {len(self._queue)}>"

    @staticmethod
    def now() -> float:
        """The event loop's clock, which every local deadline is on."""
        return asyncio.get_running_loop().time()

    # --- what the runtime builds with -------------------------------------------------------

    def share(self, endpoint: Endpoint) -> EndpointShare:
        """The endpoint's share; the same one for every (re)start of its actor."""
        share = self._shares.get(endpoint.name)
        if share is None:
            share = self._shares[endpoint.name] = EndpointShare(self, endpoint)
        return share

    def breaker_storage(self, endpoint: Endpoint) -> SharedBreakerStorage:
        """The endpoint's breaker record, mirrored from Redis."""
        return self.share(endpoint).storage

    def limiter(self, endpoint: Endpoint) -> SharedLimiter:
        """A fresh limiter mirror for the endpoint's (re)started actor."""
        return self.share(endpoint).new_limiter()

    def attach(self, actor: EndpointActor) -> None:
        """Bind a (re)started endpoint actor to its share."""
        self.share(actor.endpoint).attach(actor)

    def budget_guard(self, budget: Budget, *, scope: str = "runtime") -> SharedBudgetGuard:
        """A budget guard whose totals are shared (scope: runtime, an endpoint, a gateway key)."""
        guard = SharedBudgetGuard(budget, self, scope=scope)
        self._budgets.append(guard)
        return guard

    def key_limiter(self, scope: str, rpm: int | None, tpm: int | None, max_concurrency: int | None) -> SharedKeyLimiter:
        """Limits shared by every process for ``scope`` (a gateway key), on its own Redis hash."""
        return SharedKeyLimiter(self, scope, rpm, tpm, max_concurrency)

    def cache_store(self, max_entries: int) -> SharedCacheStore:
        """A response-cache store whose writes reach every process (``[shared] cache = true``)."""
        store = SharedCacheStore(self, max_entries)
        self._caches.append(store)
        return store

    def describe(self) -> str:
        """What status output says: ``redis <url>``, or why this process serves locally (or refuses)."""
        if self.link.available:
            return f"redis {self.link.url}"
        mode = "local state" if self.policy.on_unavailable == "local" else "refusing"
        return f"{mode}: redis {self.link.url} unavailable ({self.link.cause})"

    # --- background ---------------------------------------------------------------------------

    def send(self, call: Call, done: Done | None = None) -> None:
        """Queue ``call`` for the writer (``done`` gets the reply, or None if Redis was gone)."""
        if not self.link.available:
            if done is not None:
                done(None)
            return
        self._queue.append((call, done))
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect once (a failure is said and served around), then reconnect, write and sync
        until cancelled."""
        await self.link.connect()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.link.reconnect)
            tg.start_soon(self._writer)
            tg.start_soon(self._syncer)
            task_status.started()

    async def aclose(self) -> None:
        """Send what is queued (if Redis is there), then close the connection."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.policy.timeout):
            await self._flush()
        await self.link.aclose()

    async def call(self, call: Call) -> list[str]:
        """Run ``call`` now, with whatever the writer has queued in the same round trip."""
        queue, self._queue = self._queue, []
        if not queue:
            name, keys, args = call
            return await self.link.call(name, keys, args)
        try:
            replies = await self.link.batch([queued for queued, _ in queue] + [call])
        except Unavailable:
            _deliver(queue, [None] * len(queue))
            raise
        _deliver(queue, replies[:-1])
        return replies[-1]

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            # Wait a moment: the next admission may take the queue along in its own round
            # trip, and meanwhile more settles join the batch.
            await anyio.sleep(WRITE_DELAY)
            self._wake.clear()
            await self._flush()

    async def _flush(self) -> None:
        queue, self._queue = self._queue, []
        if not queue:
            return
        try:
            replies: list[list[str] | None] = list(await self.link.batch([call for call, _ in queue]))
        except Unavailable:
            replies = [None] * len(queue)
        _deliver(queue, replies)

    async def _syncer(self) -> None:
        while True:
            await anyio.sleep(self.policy.sync_interval)
            if self.link.available:
                try:
                    await self._sync()
                except Unavailable:
                    pass  # said by the link; the reconnection takes over

    async def _sync(self) -> None:
        """Read every endpoint's record and throttle, every budget's totals and the cache's new
        writes: one round trip."""
        shares = list(self._shares.values())
        budgets = [(guard, *guard.sync_call()) for guard in self._budgets]
        calls: list[Call] = [("snapshot", share.keys[:1], []) for share in shares]
        calls += [call for _, call, _ in budgets]
        calls += [cache.sync_call() for cache in self._caches]
        if not calls:
            return
        replies = await self.link.batch(calls)
        now = self.now()
        for share, reply in zip(shares, replies, strict=False):
            share.adopt(reply[3:], now)
        for (guard, _, keys), reply in zip(budgets, replies[len(shares):], strict=False):
            guard.merge(keys, reply)
        for cache, reply in zip(self._caches, replies[len(shares) + len(budgets):], strict=True):
            cache.replay(reply)

    async def _resync(self) -> None:
        """Redis is back: replay what this process learnt alone (trips, throttles, spend), then
        read everything back."""
        calls: list[Call] = []
        for share in self._shares.values():
            calls += share.resync()
        spends = [(guard, *entry) for guard in self._budgets for entry in guard.resync()]
        calls += [spend[1] for spend in spends]
        if calls:
            try:
                replies: list[list[str] | None] = list(await self.link.batch(calls))
            except Unavailable:
                replies = [None] * len(calls)
            for (guard, _, keys, tokens, usd), reply in zip(spends, replies[len(calls) - len(spends):], strict=True):
                guard.merge(keys, reply, tokens, usd)
            if replies and replies[0] is None:
                raise Unavailable(self.link.cause or "unavailable")
        await self._sync()
