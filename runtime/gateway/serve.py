"""``llm-runtime serve``: run the gateway until SIGTERM or Ctrl-C, then drain.

One process: the runtime starts, the gateway listens, the base URL is printed on one
line of stdout (a note on stderr says the loop, workers and keys), and SIGTERM or SIGINT
start the drain: ``/health/ready`` turns false, the port closes, requests in flight get
the runtime's ``shutdown_grace``, then the runtime stops.

``--workers N`` starts N such processes on one port (``SO_REUSEPORT``: the kernel spreads
connections among them) and forwards SIGTERM to each. Each worker has its own runtime,
so breakers, limits, budgets and key limits are per process unless ``[shared]`` puts
them on one Redis for every worker and replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import msgspec

from .._runtime import Runtime
from ..errors import ConfigError
from .config import GatewayConfig
from .server import Gateway

__all__ = ["event_loop", "serve", "serve_workers"]

#: Tracked allocations (net of frees) between two young-generation collections of a
#: serving process; CPython's default is 700.
_GC_YOUNG = 10_000


def event_loop(choice: str = "auto") -> str:
    """The loop to run: ``auto`` is ``uvloop`` when it is installed (the ``uvloop`` extra),
    else ``asyncio``; asking for ``uvloop`` without it installed is a ConfigError."""
    if choice == "asyncio":
        return "asyncio"
    # Looked up, not imported: the extra may be absent (and then has no type stubs either).
    if importlib.util.find_spec("uvloop") is not None:
        return "uvloop"
    if choice == "uvloop":
        raise ConfigError("uvloop is not installed: pip install 'llm-runtime[uvloop]'", key="loop")
    return "asyncio"


async def _serve(rt: Runtime, config: GatewayConfig, announce: Callable[[Gateway], None], reuse_port: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with rt:
        gateway = Gateway(rt, config)
        await gateway.start(reuse_port=reuse_port)
        _settle_heap()
        try:
            announce(gateway)
            await stop.wait()
        finally:
            await gateway.drain()


def _settle_heap() -> None:
    """Tune the cyclic garbage collector for serving, once everything long-lived exists.

    What is alive now (modules, the runtime, its actors, the server: ~69,000 tracked
    objects) lives as long as the process: frozen, full collections no longer walk it.
    Each request in flight holds tens of tracked objects, so at CPython's default
    threshold (700 net allocations) the young generation was collected every few requests,
    walking every in-flight request's objects each time: measured over 30,000 requests at
    concurrency 1, 16 and 64, 1,236 collections took 1.7 s, ~58 µs a request. At 10,000 a
    serving gateway collects about once in 30,000 requests: its requests' objects are freed
    by reference counting, and what little is cyclic waits for the next collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


def serve(rt: Runtime, config: GatewayConfig, *, loop: str = "auto", reuse_port: bool = False, quiet: bool = False) -> None:
    """Serve in this process until SIGTERM or SIGINT; prints the base URL when ready."""
    loop = event_loop(loop)

    def announce(gateway: Gateway) -> None:
        print(gateway.base_url, flush=True)
        if not quiet:
            keys = f"{len(gateway.keys.keys)} keys" if gateway.keys else "no keys: loopback only"
            print(f"llm-runtime: gateway ready at {gateway.base_url}/v1 ({loop}, {keys})", file=sys.stderr, flush=True)

    anyio.run(_serve, rt, config, announce, reuse_port, backend="asyncio", backend_options={"use_uvloop": loop == "uvloop"})


def serve_workers(argv: Sequence[str], config: GatewayConfig, workers: int, loop: str = "auto") -> int:
    """Start ``workers`` processes of ``serve`` on one port; forward SIGTERM/SIGINT; wait for them."""
    port = config.port or _free_port(config.host)
    command = [sys.executable, "-m", "runtime", "serve", *argv, "--port", str(port), "--loop", loop, "--worker"]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(workers)]

    def forward(signum: int, frame: Any) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        urls = [child.stdout.readline().strip() if child.stdout else "" for child in children]
        if not all(urls):
            forward(signal.SIGTERM, None)
            return max((child.wait() for child in children), default=1) or 1
        print(urls[0], flush=True)
        print(f"llm-runtime: {workers} gateway workers ready at {urls[0]}/v1 ({event_loop(loop)})", file=sys.stderr, flush=True)
        return max(child.wait() for child in children)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def resolved(config: GatewayConfig, host: str | None, port: int | None) -> GatewayConfig:
    """``config`` with the command line's host and port, when given."""
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    return msgspec.structs.replace(config, **changes) if changes else config
