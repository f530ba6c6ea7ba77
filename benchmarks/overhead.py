"""Per-request overhead of the runtime over a bare aiohttp call, side by side in one run.

A fast local OpenAI-compatible server runs in its own process
(``python -m runtime.testing.server``). The same requests go through:

  (a) a bare aiohttp call (JSON-encode, POST, read, JSON-decode),
  (b) the runtime with one endpoint,
  (c) the runtime with three endpoints (one tier),
  (d) ``litellm.Router`` when litellm is installed.

At concurrency 1 the modes alternate in blocks of 50 requests, so drift on a shared
machine hits them alike; the report gives median and p99 latency and what each adds over
(a). At concurrency 64 it reports throughput as a ratio of (a)'s. Both report the CPU time
this process spent per request (``time.process_time()`` over the requests; the server's
CPU is in its own process and not counted). Streaming reports the time to first chunk
added over a bare streaming read. Last, an OpenTelemetry SDK tracer and meter are
installed (spans recorded, metrics aggregated in memory) and the runtime is measured
again: what telemetry costs when it is on. Absolute times on shared machines are noisy:
read the ratios and the added microseconds.

    python benchmarks/overhead.py [--requests 3000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import msgspec
from _common import bench_endpoints, install_otel_sdk, pct, samples, start_server, throughput

from runtime import Runtime

# What a bare client sends. It encodes the body on every call, as any real client
# must (the runtime does too), with msgspec, the cheapest encoder there is.
PAYLOAD = {"model": "bench", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
STREAM_PAYLOAD = {**PAYLOAD, "stream": True}
ROUNDS = 7
BLOCK = 50
STREAM_BODY = msgspec.json.encode(
    {"model": "bench", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16, "stream": True}
)


async def main(requests: int, concurrency: int) -> None:
    proc, base_url = start_server()
    try:
        await run(base_url, requests, concurrency)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def run(base_url: str, requests: int, concurrency: int) -> None:
    url = f"{base_url}/chat/completions"
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def bare() -> None:
            async with session.post(url, data=msgspec.json.encode(PAYLOAD), headers=headers) as resp:
                msgspec.json.decode(await resp.read())

        async def bare_stream_first() -> None:
            async with session.post(url, data=msgspec.json.encode(STREAM_PAYLOAD), headers=headers) as resp:
                await resp.content.readline()

        async with Runtime(bench_endpoints(base_url, 1), seed=1) as rt1, Runtime(bench_endpoints(base_url, 3), seed=1) as rt3:

            async def one() -> None:
                await rt1.chat("Say hi", max_tokens=16)

            async def three() -> None:
                await rt3.chat("Say hi", max_tokens=16)

            async def stream_first() -> None:
                async with rt1.stream("Say hi", max_tokens=16) as s:
                    async for _ in s:
                        break

            modes: dict[str, Callable[[], Awaitable[None]]] = {"bare": bare, "runtime-1": one, "runtime-3": three}
            router = litellm_router(base_url)
            if router is not None:

                async def lite() -> None:
                    await router.acompletion(model="bench", messages=[{"role": "user", "content": "Say hi"}], max_tokens=16)

                modes["litellm"] = lite

            for fn in modes.values():  # warm up connections and code paths
                for _ in range(50):
                    await fn()

            print(f"concurrency 1, {requests} requests per mode (alternating blocks of {BLOCK})")
            await latency_table(modes, requests)
            print(f"\nconcurrency {concurrency}, throughput ({ROUNDS} alternating rounds)")
            await throughput_table(modes, requests, concurrency)

            ttfc: dict[str, list[float]] = {"bare": [], "runtime-1": []}
            clock = time.perf_counter
            for _ in range(min(requests, 1000)):
                for name, fn in (("bare", bare_stream_first), ("runtime-1", stream_first)):
                    t0 = clock()
                    await fn()
                    ttfc[name].append(clock() - t0)
            added = statistics.median(ttfc["runtime-1"]) - statistics.median(ttfc["bare"])
            print(
                f"\nstreaming time to first chunk: bare {statistics.median(ttfc['bare']) * 1e6:.0f} µs, "
                f"runtime {statistics.median(ttfc['runtime-1']) * 1e6:.0f} µs, added {added * 1e6:.0f} µs (median)"
            )

            # The global providers can be set once per process: telemetry on comes last.
            install_otel_sdk()
            traced = {"bare": bare, "runtime-1": one}
            for fn in traced.values():
                for _ in range(50):
                    await fn()
            print("\nwith an OpenTelemetry SDK tracer and meter installed")
            await latency_table(traced, requests)
            await throughput_table(traced, requests, concurrency)


async def latency_table(modes: Mapping[str, Callable[[], Awaitable[None]]], requests: int) -> None:
    """Concurrency 1: median, p99 and CPU per request of each mode (alternating in blocks of
    BLOCK requests), and what each adds over bare."""
    cpu: dict[str, float] = {}
    by_mode = await samples(modes, requests, BLOCK, cpu)
    print(f"{'mode':<12}{'median µs':>12}{'p99 µs':>12}{'added p50 µs':>15}{'added p99 µs':>15}{'CPU µs/req':>12}{'added CPU':>11}")
    base_med, base_p99 = statistics.median(by_mode["bare"]), pct(by_mode["bare"], 0.99)
    base_cpu = cpu["bare"] / len(by_mode["bare"])
    for name, s in by_mode.items():
        med, p99, per = statistics.median(s), pct(s, 0.99), cpu[name] / len(s)
        print(
            f"{name:<12}{med * 1e6:>12.1f}{p99 * 1e6:>12.1f}{(med - base_med) * 1e6:>15.1f}"
            f"{(p99 - base_p99) * 1e6:>15.1f}{per * 1e6:>12.1f}{(per - base_cpu) * 1e6:>11.1f}"
        )


async def throughput_table(modes: Mapping[str, Callable[[], Awaitable[None]]], requests: int, concurrency: int) -> None:
    """Throughput at ``concurrency`` as a ratio of bare's, and CPU per request.

    Rounds alternate between modes, so a change in machine load during the run hits every
    mode alike; the ratio is the median of the per-round ratios to bare.
    """
    rates: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, float] = dict.fromkeys(modes, 0.0)
    # A round of the bare client at 64 takes ~0.03 s per 400 requests here: too short to
    # read (a scheduler hiccup swung the ratio 0.7-1.5x); 32 requests a worker gives ~0.2 s.
    per_round = max(concurrency * 32, requests // ROUNDS)
    for _ in range(ROUNDS):
        for name, fn in modes.items():
            c0 = time.process_time()
            rates[name].append(await throughput(fn, per_round, concurrency))
            cpu[name] += time.process_time() - c0
    base_cpu = cpu["bare"] / (per_round * ROUNDS)
    for name, series in rates.items():
        ratios = [r / b for r, b in zip(series, rates["bare"], strict=True)]
        per = cpu[name] / (per_round * ROUNDS)
        print(
            f"{name:<12}{statistics.median(series):>12.0f} req/s   "
            f"{statistics.median(ratios):>6.2f}× bare (rounds {min(ratios):.2f}–{max(ratios):.2f})   "
            f"CPU {per * 1e6:.1f} µs/req (added {(per - base_cpu) * 1e6:.1f})"
        )


def litellm_router(base_url: str) -> Any:
    try:
        import litellm  # type: ignore[import-not-found]
    except ImportError:
        print("litellm is not installed: mode (d) skipped")
        return None
    return litellm.Router(
        model_list=[{"model_name": "bench", "litellm_params": {"model": "openai/bench", "api_base": base_url, "api_key": "x"}}]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.concurrency))
