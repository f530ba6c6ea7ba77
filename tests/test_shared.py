"""Shared state on a real redis-server, in one process: configuration, the hot path's Redis
calls, the shared limiter, breaker and budget, and Redis failing under a running runtime."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from waiting import until

from runtime import (
    AllEndpointsFailed,
    BreakerPolicy,
    Budget,
    BudgetExceeded,
    CachePolicy,
    ConfigError,
    HealthPolicy,
    NoEndpointAvailable,
    RetryPolicy,
    Runtime,
)
from runtime.cluster import SharedPolicy
from runtime.cluster.server import RedisServer
from runtime.config import parse_config
from runtime.testing import FaultyEndpoint

QUIET = HealthPolicy(enabled=False)

pytestmark = [pytest.mark.anyio, pytest.mark.real_time]


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    return f"t-{request.node.name}"[:60].replace("[", "-").replace("]", "")


@pytest.fixture
async def local() -> AsyncIterator[FaultyEndpoint]:
    """A fault-injecting OpenAI endpoint on 127.0.0.1."""
    async with FaultyEndpoint("openai", name="local") as ep:
        yield ep


def _policy(redis_server: RedisServer, prefix: str, **overrides: Any) -> SharedPolicy:
    # A loaded machine can stall a Redis call past the default timeout (0.25 s), which turns
    # shared state into local state; the tests of that set a short timeout of their own.
    return SharedPolicy(url=redis_server.url, prefix=prefix, **{"sync_interval": 0.05, "timeout": 5.0, **overrides})


def _evalsha_calls(redis_server: RedisServer) -> int:
    stats = redis.Redis.from_url(redis_server.url).info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


# --- configuration ----------------------------------------------------------------------------


def test_shared_table_is_validated_and_names_the_key() -> None:
    """[shared] parses into a SharedPolicy; bad values and unknown keys name the key."""
    base: dict[str, Any] = {"endpoints": [{"name": "a", "provider": "mock"}]}
    config = parse_config({**base, "shared": {"url": "redis://10.0.0.5:6380/2", "on_unavailable": "refuse"}})
    assert config.shared == SharedPolicy(url="redis://10.0.0.5:6380/2", on_unavailable="refuse")
    assert config.runtime_kwargs()["shared"] is config.shared
    assert parse_config(base).shared is None
    for table, key in (
        ({"url": "http://x"}, "shared.url"),
        ({"on_unavailable": "maybe"}, "shared.on_unavailable"),
        ({"timeout": 0}, "shared.timeout"),
        ({"prefix": "a{b}"}, "shared.prefix"),
        ({"bogus": 1}, "shared.bogus"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "shared": table})
        assert info.value.key == key, (table, info.value.key)


@pytest.mark.parametrize(
    ("kwargs", "key", "detail"),
    [
        ({"timeout": "1"}, "shared.timeout", "must be a finite number"),
        ({"cache": "yes"}, "shared.cache", "must be true or false"),
        ({"lease_ttl": float("inf")}, "shared.lease_ttl", "must be a finite number"),
        ({"prefix": 7}, "shared.prefix", "must be a string"),
        ({"on_unavailable": None}, "shared.on_unavailable", "must be one of"),
    ],
)
def test_shared_policy_built_in_python_checks_its_types(kwargs: dict[str, Any], key: str, detail: str) -> None:
    """SharedPolicy(...) in Python is checked by its declared types as a [shared] table is:
    a ConfigError naming the key, never a TypeError from deeper down."""
    with pytest.raises(ConfigError) as info:
        SharedPolicy(**kwargs)
    assert info.value.key == key and info.value.detail.startswith(detail), info.value


def test_password_in_the_url_never_shows() -> None:
    """A password in the Redis URL is masked in the policy's repr and in errors."""
    policy = SharedPolicy(url="redis://user:s3cret@10.0.0.5:6380/0")
    assert "s3cret" not in repr(policy)
    with pytest.raises(ConfigError) as info:
        SharedPolicy(url="http://user:s3cret@host/")
    assert "s3cret" not in str(info.value)


def test_without_shared_no_shared_store_is_loaded() -> None:
    """A runtime without [shared] loads none of the Redis-backed stores and opens no connection.
    (redis-py itself may be in sys.modules: pybreaker imports it whenever it is installed.)"""
    code = (
        "import sys, runtime; "
        "runtime.Runtime([runtime.Endpoint(name='a', provider='mock')]); "
        "print(any(m.startswith('runtime.cluster._') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --- the hot path -------------------------------------------------------------------------------


async def test_no_round_trip_without_limits_one_admission_with(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """An endpoint without limits never calls Redis on a request; one with limits makes one
    admission call per request (plus its batched release, off the request path)."""
    policy = _policy(redis_server, prefix, sync_interval=3600)
    free = local.endpoint(name="free", health=QUIET)
    async with Runtime([free], shared=policy) as rt:
        await rt.chat("warm up")
        before = _evalsha_calls(redis_server)
        for _ in range(20):
            await rt.chat("hi")
        assert _evalsha_calls(redis_server) == before
    limited = local.endpoint(name="limited", health=QUIET, rpm=1000, max_concurrency=10)
    async with Runtime([limited], shared=policy) as rt:
        start = _evalsha_calls(redis_server)
        await rt.chat("warm up")
        await until(lambda: _evalsha_calls(redis_server) - start >= 2)  # its admission and release
        before = _evalsha_calls(redis_server)
        for _ in range(20):
            await rt.chat("hi")
        await until(lambda: _evalsha_calls(redis_server) - before >= 40)  # the writer sends the releases
        assert _evalsha_calls(redis_server) - before == 40
        assert rt.status()[0].shared == f"redis {redis_server.url}"


async def test_rpm_is_one_bucket_for_two_runtimes(redis_server: RedisServer, prefix: str, local: FaultyEndpoint) -> None:
    """Two runtimes on one Redis share one RPM bucket: together they get rpm, not 2 × rpm."""
    endpoint = local.endpoint(name="shared-rpm", health=QUIET, rpm=10)
    policy = _policy(redis_server, prefix)
    async with Runtime([endpoint], shared=policy) as a, Runtime([endpoint], shared=policy) as b:
        results = await asyncio.gather(
            # The next token is 6 s away, past the deadline: a refusal is at once, while 5 s
            # leaves the admitted ones time to be answered on a loaded machine.
            *(rt.chat("hi", timeout=5) for rt in (a, b) for _ in range(10)), return_exceptions=True
        )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, NoEndpointAvailable)]
    assert len(ok) == 10 and len(refused) == 10
    assert local.stats.requests == 10


async def test_redis_down_serves_locally_and_says_so_once(
    local: FaultyEndpoint, caplog: pytest.LogCaptureFixture, span_exporter: Any
) -> None:
    """With Redis unreachable, requests still succeed on local state; one WARNING, one span,
    and status() says why."""
    dead = RedisServer()  # never started: its port refuses connections
    try:
        endpoint = local.endpoint(name="alone", health=QUIET, rpm=100)
        with caplog.at_level(logging.WARNING, logger="runtime"):
            async with Runtime([endpoint], shared=SharedPolicy(url=dead.url, reconnect_max=0.05)) as rt:
                for _ in range(5):
                    assert (await rt.chat("hi")).text
                await asyncio.sleep(0.2)  # several reconnection attempts fail meanwhile
                shared = rt.status()[0].shared
        assert shared is not None and shared.startswith("local state: redis") and "unavailable" in shared
        warnings = [r for r in caplog.records if r.name == "runtime.shared" and r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        spans = [s for s in span_exporter.get_finished_spans() if s.name == "shared unavailable"]
        assert len(spans) == 1
    finally:
        dead.close()


async def test_refuse_mode_names_the_cause(local: FaultyEndpoint) -> None:
    """on_unavailable = "refuse": a request gets NoEndpointAvailable naming Redis, and nothing is sent."""
    dead = RedisServer()
    try:
        policy = SharedPolicy(url=dead.url, on_unavailable="refuse")
        async with Runtime([local.endpoint(name="r", health=QUIET, rpm=100)], shared=policy) as rt:
            with pytest.raises(NoEndpointAvailable, match=r"shared state at redis://127\.0\.0\.1:\d+/0 is unavailable"):
                await rt.chat("hi")
        assert local.stats.requests == 0
    finally:
        dead.close()


async def test_budget_spent_in_one_runtime_is_refused_in_the_other(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """A daily token budget is one total for every runtime on the Redis."""
    endpoint = local.endpoint(name="b", health=QUIET)
    policy = _policy(redis_server, prefix)
    budget = Budget(daily_tokens=60)
    async with Runtime([endpoint], shared=policy, budget=budget) as a, Runtime(
        [endpoint], shared=policy, budget=budget
    ) as b:
        with pytest.raises(BudgetExceeded):
            for _ in range(20):
                await a.chat("hi", max_tokens=5)
        with pytest.raises(BudgetExceeded):  # b's hold asks Redis: no sync needed
            await b.chat("hi", max_tokens=5)


async def test_a_request_in_flight_in_one_runtime_holds_its_estimate_for_all(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """Runtime a's request, in flight, holds its estimate on Redis: b is refused at once, with
    nothing settled yet and before any sync; when a's request ends the hold is freed (its
    usage counted instead) and b's next request fits again."""
    endpoint = local.endpoint(name="b", health=QUIET)
    policy = _policy(redis_server, prefix, sync_interval=3600)
    budget = Budget(daily_tokens=60)  # one estimate (prompt + max_tokens 30) fits, two do not
    local.faults.latency = 0.3
    async with Runtime([endpoint], shared=policy, budget=budget) as a, Runtime(
        [endpoint], shared=policy, budget=budget
    ) as b:
        first = asyncio.ensure_future(a.chat("hi", max_tokens=30))
        await until(lambda: local.stats.in_flight > 0)
        with pytest.raises(BudgetExceeded) as info:
            await b.chat("hi", max_tokens=30)
        assert info.value.kind == "daily_tokens" and info.value.used > 30 and local.stats.requests == 1
        reply = await first
        local.faults.latency = 0.0
        client = redis.Redis.from_url(redis_server.url)
        held = f"{{{prefix}:budget:runtime}}:held"
        await until(lambda: client.hgetall(held) == {b"tokens": b"0", b"usd": b"0"})  # a's settle, in the writer's batch
        assert reply.usage.input_tokens + reply.usage.output_tokens < 30
        await b.chat("hi", max_tokens=30)


async def test_a_cancelled_request_frees_its_hold(redis_server: RedisServer, prefix: str, local: FaultyEndpoint) -> None:
    """A request cancelled while in flight gives its hold back: the other runtime is not
    refused for a request that ended."""
    endpoint = local.endpoint(name="b", health=QUIET)
    policy = _policy(redis_server, prefix, sync_interval=3600)
    budget = Budget(daily_tokens=60)
    local.faults.hang = True
    async with Runtime([endpoint], shared=policy, budget=budget) as a, Runtime(
        [endpoint], shared=policy, budget=budget
    ) as b:
        first = asyncio.ensure_future(a.chat("hi", max_tokens=30))
        await until(lambda: local.stats.in_flight > 0)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        local.faults.hang = False
        client = redis.Redis.from_url(redis_server.url)
        await until(lambda: client.hget(f"{{{prefix}:budget:runtime}}:held", "tokens") == b"0")
        await b.chat("hi", max_tokens=30)


async def test_a_hold_whose_request_ended_while_redis_was_away_is_freed_when_it_is_back(local: FaultyEndpoint) -> None:
    """Redis stops answering (paused, its data kept) while a request is held; the request ends
    on local state. When Redis answers again, the hold is freed and the usage added."""
    with RedisServer() as srv:
        policy = SharedPolicy(url=srv.url, prefix="holds", sync_interval=0.05, reconnect_max=0.05, timeout=0.5)
        client = redis.Redis.from_url(srv.url)
        local.faults.latency = 0.3
        async with Runtime([local.endpoint(name="away", health=QUIET)], shared=policy,
                           budget=Budget(daily_tokens=1000)) as rt:
            first = asyncio.ensure_future(rt.chat("hi", max_tokens=30))
            await until(lambda: local.stats.in_flight > 0)
            assert int(client.hget("{holds:budget:runtime}:held", "tokens") or 0) > 30
            client.client_pause(1500)  # longer than the timeout: Redis counts as unavailable
            reply = await first
            await until(lambda: (rt.status()[0].shared or "").startswith("local state"))  # its settle timed out
            await until(lambda: client.hget("{holds:budget:runtime}:held", "tokens") == b"0")  # the resync
            day = next(k for k in client.keys("{holds:budget:runtime}:d:*"))
            assert int(client.hget(day, "tokens") or 0) == reply.usage.input_tokens + reply.usage.output_tokens


async def test_a_shared_trip_emits_one_span_in_the_runtime_that_made_it(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint, span_exporter: Any
) -> None:
    """Runtime a trips the shared breaker: one "breaker open" span (a's), while b, which only
    learns of it, emits none and refuses at once."""
    endpoint = local.endpoint(name="trip", health=QUIET, breaker=BreakerPolicy(failure_threshold=2, open_for=30))
    policy = _policy(redis_server, prefix)
    once = RetryPolicy(max_attempts=1)
    async with Runtime([endpoint], shared=policy, retry=once) as a, Runtime([endpoint], shared=policy) as b:
        local.faults.fail_next(2, 500)
        for _ in range(2):
            with pytest.raises(AllEndpointsFailed):
                await a.chat("hi")
        await until(lambda: b.status()[0].breaker == "open")  # b's next sync
        with pytest.raises(NoEndpointAvailable):
            await b.chat("hi", timeout=0.2)
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "breaker open"]
    assert len(spans) == 1
    assert spans[0].attributes is not None and spans[0].attributes["reason"] == "2 consecutive failures"
    assert local.stats.requests == 2


async def test_a_slow_redis_counts_as_unavailable_and_is_rejoined(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """Redis stalls (CLIENT PAUSE) past `timeout`: the request in that call succeeds on local
    state, later ones too, and once Redis answers again the process is back on shared state."""
    policy = _policy(redis_server, prefix, timeout=0.1, reconnect_max=0.1)
    async with Runtime([local.endpoint(name="slow", health=QUIET, rpm=1000)], shared=policy) as rt:
        await rt.chat("warm up")
        redis.Redis.from_url(redis_server.url).client_pause(600)
        assert (await rt.chat("hi")).text
        # That call waited out the timeout and marked Redis unavailable: the next ones do not
        # ask it (nor wait) until the reconnection succeeds.
        assert rt.status()[0].shared is not None and rt.status()[0].shared.startswith("local state")
        replies = [await rt.chat("hi") for _ in range(4)]
        assert all(r.text for r in replies)
        await until(lambda: rt.status()[0].shared == f"redis {redis_server.url}")
        assert (await rt.chat("hi")).text


async def test_a_trial_refused_by_redis_gives_back_no_permit(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """Half-open with its one trial out (runtime a): runtime b's admission is refused by Redis,
    and settling b's refused permit as nothing leaves a's trial permit taken."""
    breaker = BreakerPolicy(failure_threshold=1, open_for=0.2, half_open_calls=1)
    endpoint = local.endpoint(name="trial", health=QUIET, breaker=breaker, rpm=1000)  # rpm: b asks Redis
    policy = _policy(redis_server, prefix, sync_interval=3600)  # b learns only from its own calls
    state_key = f"{{{prefix}:trial}}:state"
    client = redis.Redis.from_url(redis_server.url)
    async with Runtime([endpoint], shared=policy, retry=RetryPolicy(max_attempts=1)) as a, Runtime(
        [endpoint], shared=policy
    ) as b:
        local.faults.fail_next(1, 500)
        with pytest.raises(AllEndpointsFailed):
            await a.chat("hi")
        await asyncio.sleep(0.3)
        now = asyncio.get_running_loop().time()
        actor_a, actor_b = a.actor("trial"), b.actor("trial")
        trial = actor_a.try_admit(10, now)
        assert trial is not None and actor_a.confirm is not None and await actor_a.confirm(trial)
        assert client.hget(state_key, "b_permits") == b"1"
        refused = actor_b.try_admit(10, now)
        assert refused is not None and actor_b.confirm is not None and not await actor_b.confirm(refused)
        actor_b.finish(refused, asyncio.CancelledError(), now)  # sent nothing: counts as nothing
        await asyncio.sleep(0.05)
        assert client.hget(state_key, "b_permits") == b"1"
        assert actor_b.breaker.state.value == "half_open"
        actor_a.finish(trial, None, now, 10)
        await until(lambda: client.hget(state_key, "b_state") == b"closed")


async def test_a_trip_made_while_redis_was_away_is_shared_when_it_is_back(local: FaultyEndpoint) -> None:
    """Redis down: runtime a trips its breaker locally (and says so). Redis back: a replays the
    trip, and runtime b, which never saw a failure, honours it."""
    with RedisServer() as srv:
        policy = SharedPolicy(url=srv.url, prefix="resync", sync_interval=0.05, reconnect_max=0.05, timeout=5.0)
        breaker = BreakerPolicy(failure_threshold=1, open_for=30)
        endpoint = local.endpoint(name="away", health=QUIET, breaker=breaker)
        async with Runtime([endpoint], shared=policy, retry=RetryPolicy(max_attempts=1)) as a, Runtime(
            [endpoint], shared=policy
        ) as b:
            srv.stop()
            local.faults.fail_next(1, 500)
            with pytest.raises(AllEndpointsFailed):
                await a.chat("hi")
            assert a.status()[0].breaker == "open" and b.status()[0].breaker == "closed"
            srv.start()
            await until(lambda: b.status()[0].breaker == "open")
            assert a.status()[0].shared == b.status()[0].shared == f"redis {srv.url}"


async def test_isolate_and_reset_by_hand_hold_for_every_runtime(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """isolate() in one runtime opens the endpoint's breaker everywhere; reset() closes it and
    ends a shared throttle everywhere."""
    endpoint = local.endpoint(name="hand", health=QUIET)
    policy = _policy(redis_server, prefix)
    async with Runtime([endpoint], shared=policy) as a, Runtime([endpoint], shared=policy) as b:
        a.actor("hand").isolate()
        await until(lambda: b.status()[0].breaker == "open" and b.actor("hand").breaker.isolated)
        a.actor("hand").reset()
        await until(lambda: b.status()[0].breaker == "closed")
        local.faults.fail_next(1, 429, retry_after=30.0)
        with pytest.raises(AllEndpointsFailed):
            await b.chat("hi", timeout=1)
        await until(lambda: a.status()[0].state == "throttled")
        b.actor("hand").reset()
        await until(lambda: a.status()[0].state == "healthy")
        assert [s.breaker for s in (*a.status(), *b.status())] == ["closed", "closed"]
        assert (await a.chat("hi")).text


async def test_a_reply_cached_by_one_runtime_is_served_by_the_other(
    redis_server: RedisServer, prefix: str, local: FaultyEndpoint
) -> None:
    """[shared] cache = true: b serves from cache what a cached, from b's next sync on; a
    clear in b empties a's cache too."""
    endpoint = local.endpoint(name="cached", health=QUIET)
    policy = _policy(redis_server, prefix, cache=True)
    cache = CachePolicy(ttl=60)
    async with Runtime([endpoint], shared=policy, cache=cache) as a, Runtime([endpoint], shared=policy, cache=cache) as b:
        assert a.cache is not None and b.cache is not None
        first = await a.chat("what is 2+2?", temperature=0)
        assert not first.cached
        # b's sync replays a's write (every 0.05 s; however long a loaded machine makes that).
        await until(lambda: b.cache is not None and b.cache.statistics().entries == 1)
        second = await b.chat("what is 2+2?", temperature=0)
        assert second.cached and second.text == first.text
        assert local.stats.requests == 1
        b.cache.clear()
        await until(lambda: a.cache is not None and a.cache.statistics().entries == 0)
        assert not (await a.chat("what is 2+2?", temperature=0)).cached
        assert local.stats.requests == 2
