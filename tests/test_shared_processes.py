"""Four processes sharing one real Redis against one fault-injecting endpoint.

Each worker (``tests/shared_worker.py``) is a separate Python process with its own Runtime,
as N gateways behind a load balancer would be. The endpoint runs in a thread of this
process so the tests can change its faults and read what it saw. These tests run on real
time (Redis's clock runs the shared buckets), each in a few seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from runtime.cluster.server import RedisServer
from runtime.testing import FaultyEndpoint

T = TypeVar("T")
WORKER = Path(__file__).with_name("shared_worker.py")
PROCESSES = 4


class EndpointThread:
    """A FaultyEndpoint on an event loop in a thread; ``call`` runs a function on that loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.endpoint: FaultyEndpoint = self._run(self._start())

    async def _start(self) -> FaultyEndpoint:
        endpoint = FaultyEndpoint("openai", name="shared")
        await endpoint.start()
        return endpoint

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def call(self, fn: Callable[[], T]) -> T:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return future.result(10)

    def requests(self) -> int:
        return self.call(lambda: self.endpoint.stats.requests)

    def close(self) -> None:
        self._run(self.endpoint.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Worker:
    """One worker process; ``ask`` sends a command and waits for its answer."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def send(self, **cmd: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"worker {self.process.pid} died (exit {self.process.poll()})"
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.answer()

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self.process.stdin.closed:
            try:
                self.process.stdin.close()  # end of input: the worker leaves its runtime and exits
            except BrokenPipeError:
                pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


class Cluster:
    """The Redis, the endpoint and the worker processes of this module."""

    def __init__(self) -> None:
        self.redis = RedisServer()
        self.redis.start()
        self.server = EndpointThread()
        self.workers = [Worker() for _ in range(PROCESSES)]

    def all(self, workers: list[Worker] | None = None, **cmd: Any) -> list[dict[str, Any]]:
        """Send ``cmd`` to every worker at once, then collect the answers."""
        workers = self.workers if workers is None else workers
        for worker in workers:
            worker.send(**cmd)
        return [worker.answer() for worker in workers]

    def start(self, prefix: str, workers: list[Worker] | None = None, *, budget: dict[str, Any] | None = None,
              **endpoint: Any) -> None:
        # timeout: a loaded machine can stall a Redis call past the default 0.25 s, which would
        # turn a process to local state (these tests stop Redis instead: refused at once).
        shared = {"url": self.redis.url, "prefix": prefix, "sync_interval": 0.1, "reconnect_max": 0.2, "lease_ttl": 1.0,
                  "timeout": 5.0}
        spec = {"name": "shared", "provider": "openai", "model": self.server.endpoint.model,
                "base_url": self.server.endpoint.base_url, "api_key": "k", **endpoint}
        assert all(a == {"ok": True} for a in self.all(workers, op="start", shared=shared, endpoint=spec,
                                                       budget=budget))
        self.server.call(self.server.endpoint.reset_stats)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.server.close()
        self.redis.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Redis, one endpoint and four worker processes, for the whole module."""
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fresh(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of this test's own; the endpoint healthy again; the workers stopped after."""
    cluster.server.call(cluster.server.endpoint.faults.clear)
    if not cluster.redis.running:
        cluster.redis.start()
    yield f"p-{request.node.name}"
    cluster.all(op="stop")


def _total(answers: list[dict[str, Any]], outcome: str) -> int:
    return sum(a["outcomes"].get(outcome, 0) for a in answers)


def test_rpm_holds_across_processes(cluster: Cluster, fresh: str) -> None:
    """rpm = 20 shared by 4 processes sending 60: the endpoint sees 20 (+1 of refill), not 80."""
    cluster.start(fresh, rpm=20)
    answers = cluster.all(op="load", requests=15, concurrency=5, timeout=0.5)
    seen = cluster.server.requests()
    assert 20 <= seen <= 21, seen
    assert _total(answers, "ok") == seen
    assert _total(answers, "NoEndpointAvailable") == 60 - seen


def test_tpm_reserves_the_estimate_cluster_wide_and_refunds(cluster: Cluster, fresh: str) -> None:
    """tpm = 500 with ~130-token estimates: at most 3 requests in flight across all processes
    (12 with per-process buckets). Each uses ~8 tokens: without the refund of the rest, those 3
    would be all for a minute; reconciled, wave after wave gets through."""
    cluster.server.call(lambda: setattr(cluster.server.endpoint.faults, "latency", 0.2))
    cluster.start(fresh, tpm=500)
    for worker in cluster.workers:
        worker.send(op="load", duration=1.5, concurrency=3, timeout=2.0, max_tokens=120)
    time.sleep(0.15)  # the first wave is in flight, none answered yet
    first_wave = cluster.server.requests()
    answers = [worker.answer() for worker in cluster.workers]
    assert 1 <= first_wave <= 3, (first_wave, answers)
    assert _total(answers, "ok") >= 2 * first_wave, answers


def test_a_429_in_one_process_throttles_all(cluster: Cluster, fresh: str) -> None:
    """One process's 429 with Retry-After: 2 keeps every other process off the endpoint."""
    cluster.start(fresh)
    cluster.server.call(lambda: cluster.server.endpoint.faults.fail_next(1, 429, retry_after=2.0))
    first, *others = cluster.workers
    assert first.ask(op="load", requests=1, concurrency=1, timeout=1)["outcomes"] == {"RateLimited": 1}
    time.sleep(0.3)  # one sync interval and then some
    answers = cluster.all(others, op="load", requests=3, concurrency=1, timeout=0.2)
    assert _total(answers, "NoEndpointAvailable") == 9
    assert cluster.server.requests() == 1
    assert all(w.ask(op="status")["state"] == "throttled" for w in others)


def test_a_breaker_opened_by_one_process_is_honoured_by_all_within_a_second(cluster: Cluster, fresh: str) -> None:
    """Two 500s in one process open the shared breaker; every process sees it open within 1 s."""
    cluster.start(fresh, breaker={"failure_threshold": 2, "open_for": 30.0})
    cluster.server.call(lambda: cluster.server.endpoint.faults.fail_next(2, 500))
    first, *others = cluster.workers
    assert first.ask(op="load", requests=2, concurrency=1, timeout=1)["outcomes"] == {"ServerError": 2}
    deadline = time.monotonic() + 1.0
    while True:
        states = [w.ask(op="status") for w in others]
        if all(s["breaker"] == "open" for s in states) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [s["breaker"] for s in states] == ["open"] * 3
    assert {s["trips"] for s in states} == {1}  # one record: the trip is the same trip
    answers = cluster.all(others, op="load", requests=2, concurrency=1, timeout=0.2)
    assert _total(answers, "NoEndpointAvailable") == 6 and cluster.server.requests() == 2


def test_half_open_admits_exactly_half_open_calls_across_processes(cluster: Cluster, fresh: str) -> None:
    """After the open period, 12 callers in 4 processes race: exactly half_open_calls (2) trials
    are admitted and hold the half-open breaker until the callers stop; nothing else goes out."""
    breaker = {"failure_threshold": 1, "open_for": 0.6, "half_open_calls": 2, "max_open_for": 10.0}
    cluster.start(fresh, breaker=breaker)
    cluster.server.call(lambda: cluster.server.endpoint.faults.fail_next(1, 500))
    assert cluster.workers[0].ask(op="load", requests=1, concurrency=1, timeout=1)["outcomes"] == {"ServerError": 1}
    cluster.server.call(lambda: setattr(cluster.server.endpoint.faults, "hang", True))
    time.sleep(0.25)  # every process has synced the open record (sync_interval 0.1 s)
    # Half-open from ~0.6 s: the trials hang until their callers' deadline (2 s), past the end
    # of the load (~2.25 s), so however slowly a loaded machine runs the callers, the two
    # permits stay out and no third trial can be admitted.
    answers = cluster.all(op="load", duration=2.0, concurrency=3, timeout=2.0, pause=0.02)
    # Every trial times out (the endpoint never answers): the Timeouts are the trials admitted.
    # (A trial admitted at the very end of its caller's deadline may time out before it is sent.)
    assert _total(answers, "Timeout") == 2, answers
    assert set().union(*(a["outcomes"] for a in answers)) == {"Timeout", "NoEndpointAvailable"}
    assert cluster.server.requests() <= 1 + 2


def test_a_budget_spent_across_processes_is_refused_everywhere(cluster: Cluster, fresh: str) -> None:
    """daily_tokens = 400 for the fleet: together the processes spend about 400, not 4 × 400,
    never more (each request holds its estimate on Redis before it is sent, and uses less),
    and then every one of them refuses."""
    cluster.start(fresh, budget={"daily_tokens": 400})
    answers = cluster.all(op="load", requests=60, concurrency=1, timeout=1, max_tokens=10)
    spent = sum(a["tokens"] for a in answers)
    assert 300 <= spent <= 400, spent
    assert all(a["outcomes"].get("BudgetExceeded", 0) > 0 for a in answers)
    time.sleep(0.2)
    after = cluster.all(op="load", requests=1, concurrency=1, timeout=1, max_tokens=10)
    assert _total(after, "BudgetExceeded") == PROCESSES


def test_redis_stopped_mid_run_fails_no_caller_and_resyncs(cluster: Cluster, fresh: str) -> None:
    """Redis goes away for 0.7 s under load: every request still succeeds (local state), and
    when Redis is back every process is on shared state again and its keys are rebuilt."""
    cluster.start(fresh, rpm=100_000, max_concurrency=50)
    for worker in cluster.workers:
        worker.send(op="load", duration=2.0, concurrency=2, timeout=2)
    time.sleep(0.5)
    cluster.redis.stop()
    time.sleep(0.7)
    cluster.redis.start()
    answers = [worker.answer() for worker in cluster.workers]
    assert set().union(*(a["outcomes"] for a in answers)) == {"ok"}
    time.sleep(0.5)
    statuses = [w.ask(op="status") for w in cluster.workers]
    assert all(s["shared"] == f"redis {cluster.redis.url}" for s in statuses), statuses
    cluster.all(op="load", requests=1, concurrency=1, timeout=1)
    assert redis.Redis.from_url(cluster.redis.url).keys(f"{{{fresh}:*")


def test_leases_of_a_killed_process_expire(cluster: Cluster, fresh: str) -> None:
    """max_concurrency = 2, both slots held by a process that is then killed: the others are
    refused until the leases expire (lease_ttl), then served."""
    doomed = Worker()
    try:
        cluster.start(fresh, [doomed, *cluster.workers[:1]], max_concurrency=2)
        cluster.server.call(lambda: setattr(cluster.server.endpoint.faults, "hang", True))
        doomed.send(op="load", requests=2, concurrency=2, timeout=30)
        deadline = time.monotonic() + 5
        while cluster.server.call(lambda: cluster.server.endpoint.stats.in_flight) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        doomed.process.kill()
        doomed.process.wait()
        cluster.server.call(lambda: setattr(cluster.server.endpoint.faults, "hang", False))
        survivor = cluster.workers[0]
        assert survivor.ask(op="load", requests=1, concurrency=1, timeout=0.3)["outcomes"] == {
            "NoEndpointAvailable": 1
        }
        # lease_ttl is 1 s in these tests: the dead process's slots come back by then.
        assert survivor.ask(op="load", requests=1, concurrency=1, timeout=3)["outcomes"] == {"ok": 1}
    finally:
        doomed.close()
