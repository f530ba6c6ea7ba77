"""Python bytecode executed per request, by function: bare aiohttp call vs the runtime.

Wall-clock and CPU figures on a shared machine move by tens of percent between runs; the
number of bytecode instructions the interpreter executes for one request does not. This
program runs the same requests as ``overhead.py`` (a fast local server in its own process,
concurrency 1) under ``sys.settrace`` with opcode events on, and reports per request: the
opcodes and Python calls of (a) a bare aiohttp + msgspec call and (b) ``rt.chat`` (and,
with ``--stream``, a bare SSE read and ``rt.stream`` to the end), what the runtime adds, and its costliest
functions by the opcodes each executes itself (not its callees). C work (msgspec, dict
operations, the event loop's selector) is not counted: for that, run the program under
``valgrind --tool=callgrind`` as ``overhead.py`` is.

    python benchmarks/opcodes.py [--requests 200] [--top 40] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import aiohttp
import msgspec
from _common import start_server

import runtime
from runtime import Endpoint, HealthPolicy, Runtime

PAYLOAD = {"model": "bench", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16}
WARM_UP = 50
# Where the runtime's package lies: its functions are named from here (runtime/...).
ROOT = os.path.dirname(os.path.dirname(runtime.__file__)) + os.sep


class Tally:
    """Opcodes and calls by function (``file:line:name``) while installed as the trace function."""

    def __init__(self) -> None:
        self.opcodes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._names: dict[Any, str] = {}

    def trace(self, frame: FrameType, event: str, arg: object) -> Any:  # the trace function itself
        code = frame.f_code
        name = self._names.get(code)
        if name is None:
            path = code.co_filename
            if path.startswith(ROOT):
                path = path[len(ROOT) :]
            elif "site-packages/" in path:
                path = path.split("site-packages/", 1)[1]
            name = self._names[code] = f"{path}:{code.co_firstlineno}:{code.co_name}"
        if event == "opcode":
            self.opcodes[name] += 1
        elif event == "call":
            self.calls[name] += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
        return self.trace


async def count(fn: Callable[[], Awaitable[object]], requests: int) -> Tally:
    for _ in range(WARM_UP):
        await fn()
    tally = Tally()
    sys.settrace(tally.trace)
    try:
        for _ in range(requests):
            await fn()
    finally:
        sys.settrace(None)
    return tally


async def main(requests: int, top: int, stream: bool) -> None:
    proc, base_url = start_server()
    try:
        await run(base_url, requests, top, stream)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def run(base_url: str, requests: int, top: int, stream: bool) -> None:
    url = f"{base_url}/chat/completions"
    headers = {"content-type": "application/json"}
    endpoint = Endpoint(
        name="e0", provider="openai-compatible", model="bench", base_url=base_url,
        health=HealthPolicy(enabled=False), timeout=30,
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session, Runtime([endpoint], seed=1) as rt:

        async def bare() -> None:
            async with session.post(url, data=msgspec.json.encode(PAYLOAD), headers=headers) as resp:
                msgspec.json.decode(await resp.read())

        async def chat() -> None:
            await rt.chat("Say hi", max_tokens=16)

        async def streamed() -> None:
            async with rt.stream("Say hi", max_tokens=16) as s:
                async for _ in s:
                    pass

        async def bare_stream() -> None:
            body = msgspec.json.encode({**PAYLOAD, "stream": True})
            async with session.post(url, data=body, headers=headers) as resp:
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        msgspec.json.decode(line[6:])

        modes: dict[str, Callable[[], Awaitable[None]]] = {"bare": bare, "runtime chat": chat}
        if stream:
            modes |= {"bare stream": bare_stream, "runtime stream": streamed}
        tallies = {name: await count(fn, requests) for name, fn in modes.items()}

    print(f"per request, {requests} requests at concurrency 1 (after {WARM_UP} to warm up); added: over the bare call of its kind")
    print(f"{'mode':<16}{'opcodes':>10}{'calls':>8}{'added opcodes':>15}{'added calls':>13}{'in runtime/':>13}")
    for name, tally in tallies.items():
        base = tallies["bare stream" if "stream" in name else "bare"]
        base_ops, base_calls = sum(base.opcodes.values()) / requests, sum(base.calls.values()) / requests
        ops, calls = sum(tally.opcodes.values()) / requests, sum(tally.calls.values()) / requests
        own = sum(v for k, v in tally.opcodes.items() if k.startswith("runtime/")) / requests
        print(f"{name:<16}{ops:>10.0f}{calls:>8.0f}{ops - base_ops:>15.0f}{calls - base_calls:>13.0f}{own:>13.0f}")
    for name, tally in tallies.items():
        if name.startswith("bare"):
            continue
        print(f"\n{name}: the runtime's costliest functions (opcodes each executes itself, calls)")
        functions = [(k, v) for k, v in tally.opcodes.items() if k.startswith("runtime/")]
        for key, executed in sorted(functions, key=lambda kv: -kv[1])[:top]:
            print(f"  {executed / requests:>7.0f} {tally.calls[key] / requests:>5.1f}  {key}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--stream", action="store_true", help="also a stream read to its end")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.top, args.stream))
