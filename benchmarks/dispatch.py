"""The dispatcher's choice cost as the fleet grows, and memory over many requests.

1. Choice: ``Dispatcher.choose`` + ``EndpointActor.finish`` for one priority tier of
   2, 10, 100 and 1,000 endpoints (every endpoint healthy, so this is the common case:
   power of two choices, constant work). Also the worst case at 1,000: every endpoint
   but one refuses (all breakers open), so a whole tier is scanned before it spills.
   The target: choosing among 1,000 costs at most 2× choosing among 2.
2. Memory: 100,000 chat requests through a Runtime with two in-process ``mock``
   endpoints; tracemalloc's current size after 10k, 50k and 100k requests. Flat means
   the per-request path keeps nothing (the usage ledger is O(endpoints × models × days)).

    python benchmarks/dispatch.py [--requests 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc

from runtime import Endpoint, HealthPolicy, Runtime
from runtime.dispatch.dispatcher import Dispatcher, RouteTable
from runtime.endpoint.actor import EndpointActor
from runtime.policy import RetryPolicy
from runtime.providers.mock import MockClient

QUIET = HealthPolicy(enabled=False)


def fleet(n: int) -> list[EndpointActor]:
    actors = []
    for i in range(n):
        endpoint = Endpoint(name=f"e{i}", provider="mock", health=QUIET)
        actors.append(EndpointActor(endpoint, MockClient(endpoint)))
    return actors


def choice_cost(n: int, iterations: int, *, all_but_one_open: bool = False) -> tuple[float, float]:
    """Median and p99 (µs) of one choose + finish among ``n`` endpoints of one tier."""
    actors = fleet(n)
    if all_but_one_open:
        for actor in actors[:-1]:
            actor.breaker.isolate(0.0)
    dispatcher = Dispatcher(RouteTable(actors), retry=RetryPolicy())
    tiers = dispatcher.routes.tiers(None)
    clock = time.perf_counter_ns
    samples = []
    now = 1.0
    for _ in range(iterations):
        t0 = clock()
        picked = dispatcher.choose(tiers, 100, now)
        assert picked is not None
        actor, permit = picked
        actor.finish(permit, None, now + 0.001, 100)
        samples.append(clock() - t0)
        now += 0.001
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


async def choices(iterations: int) -> None:
    print("choose + finish, one tier (µs)")
    print(f"{'endpoints':>10}{'median':>10}{'p99':>10}{'× n=2':>8}")
    base = 0.0
    for n in (2, 10, 100, 1000):
        med, p99 = choice_cost(n, iterations)
        base = base or med
        print(f"{n:>10}{med:>10.2f}{p99:>10.2f}{med / base:>8.2f}")
    med, p99 = choice_cost(1000, max(1000, iterations // 20), all_but_one_open=True)
    print(f"{'1000*':>10}{med:>10.2f}{p99:>10.2f}{med / base:>8.2f}   * all but one refusing: the whole tier is scanned")


async def memory(requests: int) -> None:
    endpoints = [Endpoint(name=f"m{i}", provider="mock", health=QUIET, priority=i + 1) for i in range(2)]
    async with Runtime(endpoints, seed=1) as rt:
        for _ in range(1000):
            await rt.chat("warm up", max_tokens=8)
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        print(f"\nmemory over {requests} requests (tracemalloc, KiB above the start)")
        marks = {requests // 10, requests // 2, requests}
        for i in range(1, requests + 1):
            await rt.chat("hello there", max_tokens=8)
            if i in marks:
                gc.collect()
                print(f"{i:>10} requests: {(tracemalloc.get_traced_memory()[0] - base) / 1024:8.1f} KiB")
        tracemalloc.stop()


async def main(iterations: int, requests: int) -> None:
    await choices(iterations)
    await memory(requests)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    asyncio.run(main(args.iterations, args.requests))
