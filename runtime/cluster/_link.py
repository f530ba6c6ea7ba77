"""The one connection to Redis: scripts, availability, reconnection behind its own breaker.

Every call goes through :meth:`RedisLink.call` (one script, one round trip) or
:meth:`RedisLink.batch` (several scripts pipelined in one round trip). A Redis error or a
call slower than ``timeout`` marks the link *unavailable*: that is said once per outage
(a ``shared`` transition span, a WARNING on the ``runtime.shared`` logger, and
:attr:`RedisLink.cause` for status output), calls fail fast with :class:`Unavailable`
without touching the network, and :meth:`RedisLink.reconnect` retries with a growing,
jittered backoff. When a PING and the script upload succeed the link is available again
and the owner's ``on_restore`` hook resynchronises.

redis-py's own retries are switched off: retrying inside a request would turn a Redis
outage into slow requests, which is worse than the local fallback.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ..telemetry import tracer
from . import _scripts
from .policy import SharedPolicy, masked_url

__all__ = ["PROCESS", "RedisLink", "Unavailable"]

logger = logging.getLogger("runtime.shared")

# Names this process in what it holds on Redis (leases, budget holds), unique across machines.
PROCESS = f"{os.uname().nodename}:{os.getpid()}"

# The first reconnection attempt waits this long; each further one doubles, up to the cap.
RECONNECT_BASE = 0.1

Script = str
"""A script's source; :data:`SCRIPTS` maps a name to it."""

SCRIPTS: dict[str, Script] = {
    "admit": _scripts.ADMIT,
    "release": _scripts.RELEASE,
    "throttle": _scripts.THROTTLE,
    "breaker": _scripts.BREAKER,
    "snapshot": _scripts.SNAPSHOT,
    "spend": _scripts.SPEND,
    "budget_hold": _scripts.BUDGET_HOLD,
    "budget_settle": _scripts.BUDGET_SETTLE,
    "cache_put": _scripts.CACHE_PUT,
    "cache_pull": _scripts.CACHE_PULL,
}

Call = tuple[str, Sequence[str], Sequence[str | int | float]]
"""``(script name, keys, args)`` for :meth:`RedisLink.batch`."""


class Unavailable(Exception):
    """Redis cannot be used now; ``cause`` says why (no URL password in it). Internal: the
    stores turn it into local serving or :class:`~runtime.errors.NoEndpointAvailable`."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class RedisLink:
    """A redis-py asyncio client with availability tracking; one per runtime."""

    def __init__(self, policy: SharedPolicy, *, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.url = masked_url(policy.url)
        self._redis = aioredis.Redis.from_url(
            policy.url,
            socket_timeout=policy.timeout,
            socket_connect_timeout=policy.connect_timeout,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._sha: dict[str, str] = {}
        self._rng = rng or random.Random()
        self.available = False
        self.cause: str | None = "not connected yet"
        self.outages = 0
        self.on_restore: Callable[[], Awaitable[None]] | None = None
        self._said_down = False
        self._down = anyio.Event()

    def __repr__(self) -> str:
        state = "available" if self.available else f"unavailable: {self.cause}"
        return f"<RedisLink {self.url} [{state} | outages {self.outages}]>"

    # --- calls ---------------------------------------------------------------------------

    async def call(self, name: str, keys: Sequence[str], args: Sequence[str | int | float]) -> list[str]:
        """Run one script; its reply as strings. Raises :class:`Unavailable`."""
        if not self.available:
            raise Unavailable(self.cause or "unavailable")
        try:
            with anyio.fail_after(self.policy.timeout):
                try:
                    reply = await self._redis.evalsha(self._sha[name], len(keys), *keys, *args)
                except NoScriptError:  # the server restarted between two calls: upload again
                    await self._load()
                    reply = await self._redis.evalsha(self._sha[name], len(keys), *keys, *args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._lost(exc) from None
        result: list[str] = _decode(reply)
        return result

    async def batch(self, calls: Sequence[Call]) -> list[list[str]]:
        """Run several scripts in one round trip (a pipeline, not a transaction: each script
        is atomic on its own keys). Raises :class:`Unavailable`."""
        if not self.available:
            raise Unavailable(self.cause or "unavailable")
        try:
            with anyio.fail_after(self.policy.timeout):
                try:
                    replies = await self._pipelined(calls)
                except NoScriptError:
                    await self._load()
                    replies = await self._pipelined(calls)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._lost(exc) from None
        result: list[list[str]] = _decode(replies)
        return result

    async def _pipelined(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self._sha[name], len(keys), *keys, *args)
        return await pipe.execute()

    async def _load(self) -> None:
        for name, source in SCRIPTS.items():
            self._sha[name] = await self._redis.script_load(source)

    # --- availability ----------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> Unavailable:
        cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self.available = False
        self.cause = cause.replace(self.policy.url, self.url)
        if not self._said_down:  # once per outage, however many calls fail in it
            self._said_down = True
            self.outages += 1
            self._down.set()
            logger.warning(
                "shared state at %s unavailable (%s); %s until it is back",
                self.url, self.cause,
                "serving on local state" if self.policy.on_unavailable == "local" else "refusing requests",
            )
            _span("unavailable", self.url, self.cause, self.policy.on_unavailable)
        return Unavailable(self.cause)

    async def connect(self) -> bool:
        """One attempt: PING and upload the scripts, then resynchronise (``on_restore``).
        True when the link is available now."""
        try:
            with anyio.fail_after(self.policy.connect_timeout + self.policy.timeout):
                await self._redis.ping()
                await self._load()
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return False
        self.available = True
        self.cause = None
        if self.on_restore is not None:
            try:
                await self.on_restore()
            except Unavailable:
                return False
        if self._said_down:
            self._said_down = False
            self._down = anyio.Event()
            logger.warning("shared state at %s is back; resynchronised", self.url)
            _span("available", self.url, None, self.policy.on_unavailable)
        return True

    async def reconnect(self) -> None:
        """Run for the runtime's life: whenever the link is down, retry with backoff."""
        failures = 0
        while True:
            if self.available:
                failures = 0
                await self._down.wait()
                continue
            delay = min(self.policy.reconnect_max, RECONNECT_BASE * 2.0**failures)
            await anyio.sleep(delay * (0.5 + self._rng.random()))  # jitter: processes do not reconnect in step
            if not await self.connect():
                failures = min(failures + 1, 30)

    async def aclose(self) -> None:
        """Close the connections."""
        with anyio.CancelScope(shield=True):
            try:
                await self._redis.aclose()
            except (RedisError, OSError):
                pass


def _span(to_state: str, url: str, cause: str | None, mode: str) -> None:
    attributes: dict[str, str] = {"url": url, "to_state": to_state, "on_unavailable": mode}
    if cause is not None:
        attributes["cause"] = cause
    tracer().start_span(f"shared {to_state}", attributes=attributes).end()

