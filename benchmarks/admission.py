"""The cost of one admission decision plus one outcome record, and memory per endpoint.

One "admission" is what the hot path does per attempt in the closed state:
``breaker.admit(now)`` + ``limiter.try_acquire(tokens, now)``, then, when the attempt
ends, ``breaker.record(outcome, now)`` + ``limiter.release(reservation, tokens, now)``.
It is measured with and without RPM/TPM limits (the limited case never refuses: the
limits are set far above the rate here, so every iteration does the full reserve), and
for the breaker and the limiter alone.

Each iteration is timed on its own with ``perf_counter_ns`` (the timer's own median
cost, measured the same way, is subtracted), so the p99 is a p99 of single operations,
not of batch averages; the batch mean is printed beside it as a cross-check. Memory is
what tracemalloc sees allocated for 1,000 Breaker + Limiter + LatencyTracker triples,
each used once so that lazily built state exists.

    python benchmarks/admission.py [--iterations 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable

from runtime.endpoint.actor import EndpointActor
from runtime.endpoint.breaker import Breaker, Outcome
from runtime.endpoint.limiter import Limiter
from runtime.endpoint.stats import LatencyTracker
from runtime.policy import BreakerPolicy, Endpoint, HealthPolicy

TOKENS = 1200
SUCCESS = Outcome.SUCCESS


def measure(step: Callable[[], None], iterations: int) -> tuple[float, float, float]:
    """Median and p99 of single calls (µs, timer cost removed) and the batch mean (µs)."""
    clock = time.perf_counter_ns
    for _ in range(min(iterations, 10_000)):  # warm up caches and the specialising interpreter
        step()
    empty = []
    for _ in range(min(iterations, 50_000)):
        t0 = clock()
        empty.append(clock() - t0)
    overhead = statistics.median(empty)
    samples = []
    gc.disable()
    try:
        for _ in range(iterations):
            t0 = clock()
            step()
            samples.append(clock() - t0 - overhead)
        t0 = clock()
        for _ in range(iterations):
            step()
        mean = (clock() - t0) / iterations / 1000
    finally:
        gc.enable()
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000, mean


def breaker_of(name: str) -> Breaker:
    # No ``rng``: breakers share one jitter stream by default (a private random.Random
    # would add 2.5 KiB of Mersenne Twister state per endpoint; see the memory figure).
    return Breaker(BreakerPolicy(), endpoint=name, provider="openai", model="m")


async def run(iterations: int) -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()  # the actor passes the loop's time; a fixed instant keeps the closed state

    breaker = breaker_of("bench")
    plain = Limiter()
    # Far above what the loop can offer: every try_acquire reserves for real, none refuses.
    limited = Limiter(rpm=10**12, tpm=10**15, max_concurrency=10**6)

    def admission(limiter: Limiter) -> Callable[[], None]:
        admit, record = breaker.admit, breaker.record
        acquire, release = limiter.try_acquire, limiter.release

        def step() -> None:
            if admit(now):
                reservation = acquire(TOKENS, now)
                if reservation is not None:
                    release(reservation, 800, now)
                record(SUCCESS, now)

        return step

    def breaker_only() -> None:
        breaker.admit(now)
        breaker.record(SUCCESS, now)

    def limiter_only(limiter: Limiter) -> Callable[[], None]:
        def step() -> None:
            reservation = limiter.try_acquire(TOKENS, now)
            if reservation is not None:
                limiter.release(reservation, 800, now)

        return step

    # The whole endpoint actor as the dispatcher calls it: try_admit (health, breaker,
    # limiter) and finish (classification, breaker, limiter, latency, state refresh).
    def actor_path(actor: EndpointActor) -> Callable[[], None]:
        try_admit, finish = actor.try_admit, actor.finish

        def step() -> None:
            permit = try_admit(TOKENS, now)
            if permit is not None:
                finish(permit, None, now + 0.25, 800)

        return step

    quiet = HealthPolicy(enabled=False)
    plain_actor = EndpointActor(Endpoint(name="a", provider="mock", health=quiet), None)
    limited_actor = EndpointActor(
        Endpoint(name="b", provider="mock", health=quiet, rpm=10**9, tpm=10**12, max_concurrency=10**6), None
    )

    cases = [
        ("EndpointActor try_admit + finish", actor_path(plain_actor)),
        ("  same, rpm + tpm + concurrency", actor_path(limited_actor)),
        ("admission, no rpm/tpm limits", admission(plain)),
        ("admission, rpm + tpm + concurrency", admission(limited)),
        ("  breaker admit + record", breaker_only),
        ("  limiter, no limits", limiter_only(plain)),
        ("  limiter, rpm + tpm + concurrency", limiter_only(limited)),
    ]
    print(f"one admission decision + outcome record, closed state, {iterations:,} iterations")
    print(f"{'':38} {'median µs':>10} {'p99 µs':>8} {'mean µs':>8}")
    for name, step in cases:
        median, p99, mean = measure(step, iterations)
        print(f"{name:38} {median:10.2f} {p99:8.2f} {mean:8.2f}")

    count = 1000

    def triple(i: int) -> object:
        b, lim, lat = breaker_of(f"endpoint-{i}"), Limiter(rpm=500, tpm=200_000, max_concurrency=64), LatencyTracker()
        b.admit(now)
        b.record(SUCCESS, now)
        reservation = lim.try_acquire(TOKENS, now)
        assert reservation is not None
        lim.release(reservation, 800, now)
        lat.observe(0.25, now)
        return b, lim, lat

    def actor(i: int) -> object:
        endpoint = Endpoint(name=f"actor-{i}", provider="mock", health=quiet, rpm=500, tpm=200_000, max_concurrency=64)
        built = EndpointActor(endpoint, None)
        permit = built.try_admit(TOKENS, now)
        assert permit is not None
        built.finish(permit, None, now + 0.25, 800)
        return built

    total = _allocated(triple, count)
    print(f"\nmemory: {count:,} Breaker + Limiter + LatencyTracker triples (rpm, tpm, concurrency set)")
    print(f"  {total / 1024:,.0f} KiB in all, {total / count / 1024:.2f} KiB per endpoint")
    total = _allocated(actor, count)
    print(f"memory: {count:,} whole EndpointActors (config, mailbox, breaker, limiter, latency, probe schedule)")
    print(f"  {total / 1024:,.0f} KiB in all, {total / count / 1024:.2f} KiB per endpoint")


def _allocated(build: Callable[[int], object], count: int) -> int:
    """Bytes held by ``count`` objects ``build(i)`` makes, all kept alive until measured."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = [build(i) for i in range(count)]
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    del kept
    return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=200_000)
    args = parser.parse_args()
    asyncio.run(run(args.iterations))


if __name__ == "__main__":
    main()
