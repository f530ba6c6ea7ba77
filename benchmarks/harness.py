"""The harness's own cost: requests per second it drives on one core, memory per 100,000 requests.

Three systems under a closed loop of 64 callers, on the wall clock, pinned to one core
(the harness, the fake endpoints and the system share it, as they do in a run):

- ``in-process``: answers at once with the endpoint's text, no HTTP: the harness alone
  (load, records, the answer check, the observer hooks);
- ``aiohttp``: the bare client against a fake endpoint: the harness plus real HTTP;
- ``llm-runtime``: the runtime in front of the fakes.

Then 100,000 requests through the in-process system on the fast-forwarding clock, with
tracemalloc: the memory the run's records hold (per request and per 100,000), the size of
the JSON they make, and how long scoring them takes.

    python benchmarks/harness.py [--seconds S] [--requests N]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import time
import tracemalloc
from collections.abc import AsyncIterator

import anyio
import msgspec

from runtime.harness import (
    Answer,
    BareAiohttp,
    Call,
    LLMRuntime,
    Session,
    System,
    Target,
    answer_text,
    run_scenario,
    score,
)
from runtime.harness.scenario import parse_scenario
from runtime.testing import VirtualClockLoop

WORDS = 16


def scenario(load: dict[str, object], duration: float) -> object:
    return parse_scenario(
        {
            "name": "harness-cost",
            "duration": duration,
            "endpoints": [{"name": "primary"}, {"name": "backup", "dialect": "anthropic"}],
            "load": load,
            "requests": {"answer_words": WORDS},
        }
    )


class InProcess(System):
    """Answers every call at once with the primary's whole text: no HTTP at all."""

    name = "in-process"

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        yield _Instant(answer_text(target.endpoints[0].name, WORDS))


class _Instant(Session):
    def __init__(self, text: str) -> None:
        super().__init__()
        self._answer = Answer(text=text, endpoint="primary", attempts=["primary"])

    async def call(self, call: Call) -> Answer:
        await anyio.lowlevel.checkpoint()
        return self._answer


async def throughput(system: System, seconds: float) -> tuple[int, float]:
    s = scenario({"concurrency": 64}, seconds)
    started = time.perf_counter()
    record = await run_scenario(s, system)  # type: ignore[arg-type]
    return len(record.requests), time.perf_counter() - started


async def memory(n: int) -> None:
    rate = 10_000.0
    s = scenario({"rate": rate}, n / rate)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    record = await run_scenario(s, InProcess())  # type: ignore[arg-type]
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    started = time.perf_counter()
    result = score(record)
    scoring = time.perf_counter() - started
    size = len(msgspec.json.encode(result))
    per = held / len(record.requests)
    print(f"memory: {len(record.requests):,} requests recorded hold {held / 2**20:.1f} MiB "
          f"({per:.0f} B per request, {per * 100_000 / 2**20:.1f} MiB per 100,000)")
    print(f"        scoring them: {scoring:.2f} s; their report entry: {size / 2**20:.1f} MiB of JSON "
          f"({size / len(record.requests):.0f} B per request)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per system (default: 5)")
    parser.add_argument("--requests", type=int, default=100_000, help="requests for the memory run (default: 100000)")
    args = parser.parse_args()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the heading says
    print(f"harness cost on one core, closed loop of 64 callers, {args.seconds:g} s each (wall clock)")
    for system in (InProcess(), BareAiohttp(), LLMRuntime()):
        count, took = anyio.run(throughput, system, args.seconds, backend="asyncio")
        print(f"  {system.name:<12} {count / took:>9,.0f} requests/s  ({count:,} in {took:.1f} s)")
    anyio.run(memory, args.requests, backend="asyncio", backend_options={"loop_factory": VirtualClockLoop})


if __name__ == "__main__":
    main()
