"""Should ``chat()`` stream upstream and assemble the reply? What it buys, and what it costs.

A whole-response request learns that its provider went silent or stalled only when its
one timeout fires, and that timeout must be long enough for the longest honest answer.
A streamed one can watch each chunk: a first-chunk timeout for a silent provider and an
idle timeout for one that stalls mid-answer. ``Endpoint(stream_chat=True)`` makes
``chat()`` do that; this program measures both sides in one run, through ``rt.chat()``
with ``stream_chat`` off and on.

Detection (part 1) runs on :class:`~runtime.testing.VirtualClockLoop` against the local
fault-injecting endpoint, so the seconds are the loop's and exact, and the minutes of
waiting take milliseconds: for each fault, the loop time from ``rt.chat()`` to its typed
error (or its reply), one attempt, with the runtime's default timeouts and with tighter
stream timeouts. Each fault is shown to a whole request as it would be: a model that
stalls mid-generation never finishes the body either, and a 90-second generation
answers a whole request after 90 seconds.

Cost (part 2) runs on the real clock against ``python -m runtime.testing.server`` in its
own process: per-request latency at concurrency 1 (modes alternating in blocks) and
throughput at concurrency 64, ``rt.chat()`` with ``stream_chat`` off and on, for a short
and a long reply, each beside a bare aiohttp call of the same kind.

    python benchmarks/chat_streaming.py [--requests 2000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
from _common import pct, samples, start_server, throughput

from runtime import AllEndpointsFailed, Endpoint, HealthPolicy, RetryPolicy, Runtime
from runtime.testing import FaultyEndpoint, VirtualClockLoop

BLOCK = 50
ROUNDS = 5
SHORT = "The answer is short."
LONG = " ".join(f"word{i}" for i in range(128))


# --- part 1: detection, on the virtual clock ---------------------------------------------------

FAULTS: dict[str, tuple[dict[str, object], dict[str, object]]] = {
    # accepts the request and never answers
    "silent provider": ({"hang": True}, {"hang": True}),
    # three words, then nothing more on an open connection
    "stall after 3 chunks": ({"hang": True}, {"chunk_delay": 0.05, "stall_after": 3}),
    # an honest 90-second answer: 90 words, one a second
    "slow honest answer (90 s)": ({"latency": 90.0}, {"chunk_delay": 1.0}),
}
SETTINGS: dict[str, dict[str, float]] = {
    "defaults (timeout 60, first chunk 60, idle 30)": {},
    "tight stream timeouts (timeout 60, first chunk 10, idle 5)": {"first_chunk_timeout": 10.0, "idle_timeout": 5.0},
}


async def outcome(ep: FaultyEndpoint, stream_chat: bool, timeouts: dict[str, float]) -> tuple[float, str]:
    endpoint = ep.endpoint(health=HealthPolicy(enabled=False), stream_chat=stream_chat, **timeouts)
    async with Runtime([endpoint], retry=RetryPolicy(max_attempts=1), timeout=600) as rt:
        start = asyncio.get_running_loop().time()
        try:
            reply = await rt.chat("Tell a story")
            what = f"reply ({len(reply.text.split())} words)"
        except AllEndpointsFailed as exc:
            what = type(exc.attempts[0].error).__name__
        return asyncio.get_running_loop().time() - start, what


async def detection() -> None:
    text = " ".join(f"w{i}" for i in range(90))
    async with FaultyEndpoint("openai", name="ep", text=text) as ep:
        for label, timeouts in SETTINGS.items():
            print(f"\n{label}: loop seconds until chat() returns")
            print(f"  {'fault':<28}{'stream_chat off':>26}{'stream_chat on':>30}")
            for fault, (as_whole, as_stream) in FAULTS.items():
                set_faults(ep, as_whole)
                t_whole, whole = await outcome(ep, False, timeouts)
                set_faults(ep, as_stream)
                t_stream, streamed = await outcome(ep, True, timeouts)
                print(f"  {fault:<28}{f'{t_whole:6.2f} s {whole}':>26}{f'{t_stream:6.2f} s {streamed}':>30}")


def set_faults(ep: FaultyEndpoint, knobs: dict[str, object]) -> None:
    ep.faults.clear()
    for name, value in knobs.items():
        setattr(ep.faults, name, value)


# --- part 2: cost, on the real clock -------------------------------------------------------------


async def cost(text: str, requests: int, concurrency: int) -> None:
    proc, base_url = start_server("--text", text)
    try:
        await measure(base_url, len(text.split()), requests, concurrency)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def measure(base_url: str, words: int, requests: int, concurrency: int) -> None:
    url = f"{base_url}/chat/completions"
    payload = {"model": "bench", "messages": [{"role": "user", "content": "Tell a story"}], "max_tokens": 400}
    stream_payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"content-type": "application/json"}
    whole_ep, stream_ep = (
        Endpoint(
            name="e", provider="openai-compatible", model="bench", base_url=base_url,
            health=HealthPolicy(enabled=False), stream_chat=on,
        )
        for on in (False, True)
    )
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
        Runtime([whole_ep], seed=1) as rt,
        Runtime([stream_ep], seed=1) as rt_stream,
    ):

        async def bare_whole() -> None:
            async with session.post(url, data=msgspec.json.encode(payload), headers=headers) as resp:
                msgspec.json.decode(await resp.read())

        async def bare_stream() -> None:
            async with session.post(url, data=msgspec.json.encode(stream_payload), headers=headers) as resp:
                async for _ in resp.content:
                    pass

        async def chat() -> None:
            await rt.chat("Tell a story", max_tokens=400)

        async def assembled() -> None:
            await rt_stream.chat("Tell a story", max_tokens=400)

        modes: dict[str, Callable[[], Awaitable[None]]] = {
            "bare whole": bare_whole, "bare stream": bare_stream, "chat()": chat, "stream_chat": assembled,
        }
        for fn in modes.values():
            for _ in range(50):
                await fn()
        seconds = await samples(modes, requests, BLOCK)
        print(f"\nreply of {words} words ({words} content chunks when streamed), concurrency 1, {requests} requests per mode")
        print(f"  {'mode':<14}{'median µs':>12}{'p99 µs':>12}")
        for name, s in seconds.items():
            print(f"  {name:<14}{statistics.median(s) * 1e6:>12.1f}{pct(s, 0.99) * 1e6:>12.1f}")
        added = statistics.median(seconds["stream_chat"]) - statistics.median(seconds["chat()"])
        bare_added = statistics.median(seconds["bare stream"]) - statistics.median(seconds["bare whole"])
        print(f"  stream_chat costs {added * 1e6:.0f} µs more than whole chat() per request (median); "
              f"a bare stream costs {bare_added * 1e6:.0f} µs more than a bare whole call")
        rates: dict[str, list[float]] = {"chat()": [], "stream_chat": []}
        for _ in range(ROUNDS):
            for name in rates:
                rates[name].append(await throughput(modes[name], max(concurrency * 4, requests // ROUNDS), concurrency))
        ratios = [s / c for s, c in zip(rates["stream_chat"], rates["chat()"], strict=True)]
        print(f"  concurrency {concurrency}: chat() {statistics.median(rates['chat()']):.0f} req/s, stream_chat "
              f"{statistics.median(rates['stream_chat']):.0f} req/s ({statistics.median(ratios):.2f}× chat())")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    print("part 1: time to detect a silent or stalled provider (virtual clock)")
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        runner.run(detection())
    print("\npart 2: cost per request (real clock, server in its own process)")
    for text in (SHORT, LONG):
        asyncio.run(cost(text, args.requests, args.concurrency))


if __name__ == "__main__":
    main()
