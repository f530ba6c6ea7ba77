"""Shared state on Redis: what it adds per request, and how well a global limit holds.

A fast local OpenAI-compatible server and a redis-server each run in their own process.

1. Added latency, concurrency 1, modes alternating in blocks of 50 requests:
   (a) a bare aiohttp call; (b) the runtime with in-process state, on an endpoint with RPM,
   TPM and concurrency limits (set high: nothing is refused); (c) the same runtime and
   endpoint with ``[shared]`` state on Redis: one admission script per request (the
   release is batched off the request path); (d) shared state on an endpoint without limits,
   which needs no Redis call at all. Median and p99, and what (c) and (d) add over (b).
2. Global limit accuracy: 4 processes share one endpoint with ``rpm = R`` and send as fast
   as they can for D seconds. What the endpoint received, against what the limit allows
   (R at once, then R/60 per second), with shared state and with in-process state (each
   process has its own bucket: up to 4 × the limit).

    python benchmarks/shared.py [--requests 2000] [--rpm 120] [--duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from _common import pct, samples, start_server

from runtime import Endpoint, HealthPolicy, LLMError, Runtime
from runtime.cluster import SharedPolicy
from runtime.cluster.server import RedisServer

PAYLOAD = {"model": "bench", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
BLOCK = 50
PROCESSES = 4


def endpoint(base_url: str, name: str, **limits: Any) -> Endpoint:
    return Endpoint(
        name=name, provider="openai-compatible", model="bench", base_url=base_url,
        health=HealthPolicy(enabled=False), timeout=30, **limits,
    )


async def latency(base_url: str, redis_url: str, requests: int) -> None:
    url = f"{base_url}/chat/completions"
    headers = {"content-type": "application/json"}
    limits = {"rpm": 10_000_000, "tpm": 10_000_000_000, "max_concurrency": 1000}
    policy = SharedPolicy(url=redis_url, prefix="bench-latency")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, Runtime(
        [endpoint(base_url, "limited", **limits)]
    ) as local, Runtime([endpoint(base_url, "limited", **limits)], shared=policy) as shared, Runtime(
        [endpoint(base_url, "free")], shared=policy
    ) as free:

        async def bare() -> None:
            async with session.post(url, data=msgspec.json.encode(PAYLOAD), headers=headers) as resp:
                msgspec.json.decode(await resp.read())

        modes: dict[str, Callable[[], Awaitable[object]]] = {
            "bare aiohttp": bare,
            "local state, limits": lambda: local.chat("Say hi", max_tokens=16),
            "shared state, limits": lambda: shared.chat("Say hi", max_tokens=16),
            "shared state, no limits": lambda: free.chat("Say hi", max_tokens=16),
        }
        for fn in modes.values():  # warm up connections and code paths
            for _ in range(50):
                await fn()
        seconds = await samples(modes, requests, BLOCK)
    base_med = statistics.median(seconds["local state, limits"])
    base_p99 = pct(seconds["local state, limits"], 0.99)
    print(f"1. added latency, concurrency 1, {len(seconds['bare aiohttp'])} requests per mode")
    print(f"   {'mode':<26} {'median µs':>10} {'p99 µs':>10} {'median +µs vs local':>20} {'p99 +µs':>9}")
    for name, values in seconds.items():
        med, p99 = statistics.median(values), pct(values, 0.99)
        added = "" if name == "bare aiohttp" else f"{(med - base_med) * 1e6:+20.0f} {(p99 - base_p99) * 1e6:+9.0f}"
        print(f"   {name:<26} {med * 1e6:10.0f} {p99 * 1e6:10.0f} {added}")


def accuracy(base_url: str, redis_url: str, rpm: int, duration: float) -> None:
    allowed = rpm + rpm / 60.0 * duration
    print(f"\n2. global limit: {PROCESSES} processes, rpm = {rpm}, {duration:g} s flat out; the limit allows {allowed:.0f}")
    print(f"   {'state':<10} {'received':>9} {'allowed':>8} {'received/allowed':>17}")
    for mode in ("shared", "local"):
        start_at = time.time() + 3.0  # every worker starts at once, after its imports
        procs = [
            subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--base-url", base_url,
                 "--redis-url", redis_url, "--rpm", str(rpm), "--duration", str(duration), "--start-at", str(start_at),
                 "--prefix", f"bench-accuracy-{start_at}"],
                stdout=subprocess.PIPE, text=True,
            )
            for _ in range(PROCESSES)
        ]
        received = 0
        for proc in procs:
            out, _ = proc.communicate(timeout=duration + 60)
            received += json.loads(out)["ok"]
        print(f"   {mode:<10} {received:9d} {allowed:8.0f} {received / allowed:17.2f}")


async def worker(mode: str, base_url: str, redis_url: str, rpm: int, duration: float, start_at: float,
                 prefix: str) -> None:
    shared = SharedPolicy(url=redis_url, prefix=prefix) if mode == "shared" else None
    ok = 0
    async with Runtime([endpoint(base_url, "limited", rpm=rpm)], shared=shared) as rt:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + duration

        async def caller() -> None:
            nonlocal ok
            while time.monotonic() < end:
                try:
                    await rt.chat("Say hi", max_tokens=16, timeout=max(0.01, end - time.monotonic()))
                    ok += 1
                except LLMError:  # refused by the limit, or cut by the end of the run
                    pass

        await asyncio.gather(*(caller() for _ in range(8)))
    print(json.dumps({"ok": ok}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rpm", type=int, default=120)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--worker", choices=("shared", "local"))
    parser.add_argument("--base-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--prefix", default="bench")
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker, args.base_url, args.redis_url, args.rpm, args.duration, args.start_at,
                           args.prefix))
        return
    proc, base_url = start_server()
    try:
        with RedisServer() as redis_server:
            asyncio.run(latency(base_url, redis_server.url, args.requests))
            accuracy(base_url, redis_server.url, args.rpm, args.duration)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
