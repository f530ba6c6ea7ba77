"""Gateway keys on shared state: a key's budget and limits are one for every gateway on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from waiting import until

from runtime import HealthPolicy, Runtime
from runtime.cluster import SharedPolicy
from runtime.cluster.server import RedisServer
from runtime.gateway import GatewayConfig, GatewayKey
from runtime.gateway.server import Gateway
from runtime.testing import FaultyEndpoint

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]

Post = Callable[[Gateway], Awaitable[tuple[int, str | None]]]


BODY = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
HEADERS = {"Authorization": "Bearer sk"}


@asynccontextmanager
async def two_gateways(redis_server: RedisServer, prefix: str, key: GatewayKey) -> AsyncIterator[tuple[FaultyEndpoint, Post, Gateway, Gateway]]:
    """One upstream, two runtimes on one Redis (``prefix``), a gateway over each with ``key``
    (sent as ``sk``); and ``post(gw)``: a chat request of the key, its status and error message."""
    # A generous timeout: under a loaded test run a slow Redis call would switch a runtime
    # to its local state, and each would admit by itself.
    policy = SharedPolicy(url=redis_server.url, prefix=prefix, sync_interval=0.05, timeout=5.0)
    config = GatewayConfig(port=0, keys=[key])
    async with FaultyEndpoint("openai", name="up") as up:
        endpoint = up.endpoint(health=HealthPolicy(enabled=False))
        async with (
            Runtime([endpoint], shared=policy) as rt_a, Runtime([endpoint], shared=policy) as rt_b,
            Gateway(rt_a, config) as a, Gateway(rt_b, config) as b, aiohttp.ClientSession() as session,
        ):

            async def post(gw: Gateway) -> tuple[int, str | None]:
                async with session.post(gw.base_url + "/v1/chat/completions", json=BODY, headers=HEADERS) as resp:
                    error = (await resp.json()).get("error")
                    return resp.status, error and error.get("code") + ": " + error.get("message")

            yield up, post, a, b


async def test_key_budget_spent_through_one_gateway_is_refused_by_the_other(redis_server: RedisServer) -> None:
    """Two gateways (two runtimes) on one Redis: a key's daily tokens spent through A are refused by B."""
    key = GatewayKey(name="k", key="sk", daily_tokens=60)
    async with two_gateways(redis_server, "t-gateway-key-budget", key) as (_, post, a, b):
        statuses = []
        for _ in range(20):
            statuses.append((await post(a))[0])
            if statuses[-1] == 429:
                break
        spent_a, spent_b = (gw.keys.keys[0].budget for gw in (a, b))
        assert spent_a is not None and spent_b is not None
        await until(lambda: spent_b.remaining() == spent_a.remaining())  # b's periodic sync read the total
        refused = await post(b)
    assert statuses[0] == 200 and statuses[-1] == 429
    assert refused[0] == 429 and (refused[1] or "").startswith("insufficient_quota")


async def test_key_concurrency_is_one_cap_across_gateways(redis_server: RedisServer) -> None:
    """A key's max_concurrency = 1 holds across two gateways on one Redis: while a request of
    the key is in flight through A, B refuses the key with 429; once it ends (here: its client
    leaves), the lease is back and B serves the key."""
    key = GatewayKey(name="k", key="sk", max_concurrency=1)
    async with two_gateways(redis_server, "t-gateway-key-concurrency", key) as (up, post, a, b):
        up.faults.hang = True
        held = asyncio.ensure_future(post(a))
        await until(lambda: a.in_flight > 0 and up.stats.requests > 0)
        refused = await post(b)
        held.cancel()
        up.faults.hang = False
        served: tuple[int, str | None] = (0, None)
        for _ in range(100):  # the lease goes back with the writer's next batch
            served = await post(b)
            if served[0] == 200:
                break
            await asyncio.sleep(0.02)
    assert refused[0] == 429 and "shared_concurrency" in (refused[1] or "")
    assert served[0] == 200
