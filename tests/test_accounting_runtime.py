"""Accounting through the Runtime, against fault-injecting local endpoints."""

from __future__ import annotations

import anyio
import pytest

from runtime import AllEndpointsFailed, Budget, BudgetExceeded, CachePolicy, HealthPolicy, RetryPolicy, Runtime
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

NO_PROBES = HealthPolicy(enabled=False)


async def test_budget_refusal_sends_nothing() -> None:
    """A request past the budget raises BudgetExceeded and the endpoint never sees it."""
    async with FaultyEndpoint("openai", name="primary") as ep:
        rt = Runtime(endpoints=[ep.endpoint(health=NO_PROBES)], budget=Budget(daily_tokens=50))
        async with rt:
            with pytest.raises(BudgetExceeded) as info:
                await rt.chat("Tell me everything about the history of Rome.", max_tokens=500)
        assert info.value.kind == "daily_tokens"
        assert ep.stats.requests == 0


async def test_cache_hit_sends_nothing_and_streams_the_same_text() -> None:
    """A repeated deterministic request is answered from the cache, as a reply and as a stream."""
    async with FaultyEndpoint("openai", name="primary", text="Python is a programming language.") as ep:
        rt = Runtime(endpoints=[ep.endpoint(health=NO_PROBES)], cache=CachePolicy())
        async with rt:
            first = await rt.chat("What is Python?", temperature=0)
            second = await rt.chat("What is Python?", temperature=0)
            async with rt.stream("What is Python?", temperature=0) as stream:
                streamed = "".join([chunk.text async for chunk in stream])
            usage = rt.usage()
        assert ep.stats.requests == 1
        assert not first.cached and second.cached and second.text == first.text
        assert streamed == first.text and stream.response.cached
        assert usage.total.cache_hits == 2
        assert usage.by_endpoint["primary"].input_tokens == first.usage.input_tokens


async def test_stale_reply_on_total_failure_is_marked() -> None:
    """With serve_stale, when every endpoint fails the last good reply comes back marked stale."""
    async with FaultyEndpoint("openai", name="primary", text="Paris.") as ep:
        rt = Runtime(
            endpoints=[ep.endpoint(health=NO_PROBES)],
            cache=CachePolicy(ttl=1, serve_stale=True),
            retry=RetryPolicy(max_attempts=1),
        )
        async with rt:
            good = await rt.chat("Capital of France?", temperature=0)
            ep.faults.refuse()
            await anyio.sleep(2)  # the fresh entry expires (virtual clock); the stale copy stays
            stale = await rt.chat("Capital of France?", temperature=0)
            with pytest.raises(AllEndpointsFailed):
                await rt.chat("Another question?", temperature=0)
        assert stale.text == good.text and stale.stale and stale.cached
