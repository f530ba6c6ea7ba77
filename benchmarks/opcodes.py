"""Python bytecode executed per request, by function: bare aiohttp call vs the runtime.

Wall-clock and CPU figures on a shared machine move by tens of percent between runs; the
number of bytecode instructions the interpreter executes for one request does not. This
program runs the same requests as ``overhead.py`` (a fast local server in its own process,
concurrency 1) under ``sys.settrace`` with opcode events on, and reports per request: the
opcodes and Python calls of (a) a bare aiohttp + msgspec call and (b) ``rt.chat`` on one
endpoint and on a tier of three (and, with ``--stream``, a bare SSE read and ``rt.stream``
to the end), what the runtime adds, and its costliest functions by the opcodes each
executes itself (not its callees). C work (msgspec, dict operations, the event loop's
selector) is not counted: for that, run the program under
``valgrind --tool=callgrind`` as ``overhead.py`` is. So a cut that moves Python work into
C builtins (``map``, ``attrgetter``, ``compress``) can count fewer bytecodes and still take
longer: time such a cut alone (``timeit``) before keeping it.

With ``--gateway`` it counts the server's side instead: a bare aiohttp proxy (read, POST
upstream, answer) and the gateway on a runtime, both in this process, one bare client
calling each: what the gateway adds over the floor any aiohttp gateway stands on.

    python benchmarks/opcodes.py [--requests 200] [--top 40] [--stream | --gateway]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import aiohttp
import msgspec
from _common import bench_endpoints, start_server
from aiohttp import web

import runtime
from runtime import Runtime
from runtime.gateway import GatewayConfig
from runtime.gateway.server import Gateway

HEADERS = {"content-type": "application/json"}
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


async def main(requests: int, top: int, stream: bool, gateway: bool) -> None:
    proc, base_url = start_server()
    try:
        async with Runtime(bench_endpoints(base_url, 1), seed=1) as rt:
            modes = await (through_gateway(rt, base_url) if gateway else direct(rt, base_url, stream))
            try:
                tallies = {name: await count(fn, requests) for name, fn in modes.items()}
            finally:
                await _CLEANUP.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    report(tallies, requests, top)


_CLEANUP = contextlib.AsyncExitStack()
Modes = dict[str, Callable[[], Awaitable[None]]]


async def direct(rt: Runtime, base_url: str, stream: bool) -> Modes:
    """The client's side: a bare call vs ``rt.chat`` (and, with ``stream``, a bare SSE read vs ``rt.stream``)."""
    url = f"{base_url}/chat/completions"
    session = await _CLEANUP.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))

    async def bare() -> None:
        async with session.post(url, data=msgspec.json.encode(PAYLOAD), headers=HEADERS) as resp:
            msgspec.json.decode(await resp.read())

    async def chat() -> None:
        await rt.chat("Say hi", max_tokens=16)

    rt3 = await _CLEANUP.enter_async_context(Runtime(bench_endpoints(base_url, 3), seed=1))

    async def chat3() -> None:  # one tier of three: a choice between two drawn each request
        await rt3.chat("Say hi", max_tokens=16)

    async def bare_stream() -> None:
        body = msgspec.json.encode({**PAYLOAD, "stream": True})
        async with session.post(url, data=body, headers=HEADERS) as resp:
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    msgspec.json.decode(line[6:])

    async def streamed() -> None:
        async with rt.stream("Say hi", max_tokens=16) as s:
            async for _ in s:
                pass

    modes: Modes = {"bare": bare, "runtime chat": chat, "chat, 3 endpoints": chat3}
    if stream:
        modes |= {"bare stream": bare_stream, "runtime stream": streamed}
    return modes


async def through_gateway(rt: Runtime, base_url: str) -> Modes:
    """The server's side, in this process with the client: a bare aiohttp proxy (read, POST
    upstream, answer) vs the gateway on ``rt``, each called by the same bare client."""
    upstream = await _CLEANUP.enter_async_context(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))

    async def proxy(request: web.Request) -> web.Response:
        body = await request.read()
        async with upstream.post(f"{base_url}/chat/completions", data=body, headers=HEADERS) as resp:
            return web.Response(body=await resp.read(), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", proxy)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    _CLEANUP.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    gw = await _CLEANUP.enter_async_context(Gateway(rt, GatewayConfig(port=0)))
    client = await _CLEANUP.enter_async_context(aiohttp.ClientSession())
    body = msgspec.json.encode(PAYLOAD)

    def caller(url: str) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            async with client.post(url, data=body, headers=HEADERS) as resp:
                msgspec.json.decode(await resp.read())

        return call

    return {
        "bare proxy": caller(f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"),
        "gateway": caller(f"{gw.base_url}/v1/chat/completions"),
    }


def report(tallies: dict[str, Tally], requests: int, top: int) -> None:
    print(f"per request, {requests} requests at concurrency 1 (after {WARM_UP} to warm up); added: over the bare call of its kind")
    print(f"{'mode':<16}{'opcodes':>10}{'calls':>8}{'added opcodes':>15}{'added calls':>13}{'in runtime/':>13}")
    for name, tally in tallies.items():
        base = tallies["bare stream" if "stream" in name else "bare proxy" if "bare proxy" in tallies else "bare"]
        base_ops, base_calls = sum(base.opcodes.values()) / requests, sum(base.calls.values()) / requests
        ops, calls = sum(tally.opcodes.values()) / requests, sum(tally.calls.values()) / requests
        own = sum(v for k, v in tally.opcodes.items() if k.startswith("runtime/")) / requests
        print(f"{name:<16}{ops:>10.0f}{calls:>8.0f}{ops - base_ops:>15.0f}{calls - base_calls:>13.0f}{own:>13.0f}")
    for name, tally in tallies.items():
        if name.startswith(("bare", "chat, 3")):
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
    parser.add_argument("--gateway", action="store_true", help="the gateway's side instead: gateway vs a bare aiohttp proxy")
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.top, args.stream, args.gateway))
