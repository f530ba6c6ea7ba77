"""Gateway keys on shared state: a key's budget is one total for every gateway on one Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from runtime import HealthPolicy, Runtime
from runtime.cluster import SharedPolicy
from runtime.cluster.server import RedisServer
from runtime.gateway import GatewayConfig, GatewayKey
from runtime.gateway.server import Gateway
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Real time: Redis's clock runs the shared totals, so the loop's clock must not jump."""
    return ("asyncio", {})


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


async def test_key_budget_spent_through_one_gateway_is_refused_by_the_other(server: RedisServer) -> None:
    """Two gateways (two runtimes) on one Redis: a key's daily tokens spent through A are refused by B."""
    policy = SharedPolicy(url=server.url, prefix="t-gateway-key-budget", sync_interval=0.05)
    config = GatewayConfig(port=0, keys=[GatewayKey(name="k", key="sk", daily_tokens=60)])
    body = {"model": "up", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    headers = {"Authorization": "Bearer sk"}
    async with FaultyEndpoint("openai", name="up") as up:
        endpoint = up.endpoint(health=HealthPolicy(enabled=False))
        async with (
            Runtime([endpoint], shared=policy) as rt_a, Runtime([endpoint], shared=policy) as rt_b,
            Gateway(rt_a, config) as a, Gateway(rt_b, config) as b, aiohttp.ClientSession() as session,
        ):
            statuses = []
            for _ in range(20):
                async with session.post(a.base_url + "/v1/chat/completions", json=body, headers=headers) as resp:
                    statuses.append(resp.status)
                if resp.status == 429:
                    break
            await asyncio.sleep(0.3)  # b's periodic sync reads the total
            async with session.post(b.base_url + "/v1/chat/completions", json=body, headers=headers) as resp:
                refused = resp.status, (await resp.json())["error"]["code"]
    assert statuses[0] == 200 and statuses[-1] == 429
    assert refused == (429, "insufficient_quota")
