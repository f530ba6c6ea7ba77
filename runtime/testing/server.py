"""Fault-injecting local LLM endpoints, and a command that serves one in its own process.

The endpoints themselves live in :mod:`runtime.testing._server` and are re-exported here
and from :mod:`runtime.testing`. Run one standalone, for example as the target of a
benchmark::

    python -m runtime.testing.server --dialect openai --port 0

It prints the base URL (what ``Endpoint(base_url=...)`` needs) on one line of stdout,
then serves until it is interrupted or terminated. No faults are set, so every request
takes the plain path: read the body, build the deterministic reply, write it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence

from ._server import Decision as Decision
from ._server import Dialect as Dialect
from ._server import Faults as Faults
from ._server import FaultyEndpoint as FaultyEndpoint
from ._server import LocalEndpoints as LocalEndpoints
from ._server import ServerStats as ServerStats
from ._server import Step as Step

__all__ = ["Decision", "Dialect", "FaultyEndpoint", "Faults", "LocalEndpoints", "ServerStats", "Step", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runtime.testing.server",
        description="Serve one local LLM endpoint; print its base URL, then serve until killed.",
    )
    parser.add_argument(
        "--dialect",
        default="openai",
        choices=["openai", "anthropic", "ollama", "azure", "deepseek", "openai-compatible"],
        help="wire format to speak (default: openai)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--name", default="local", help="endpoint name, used in the default reply")
    parser.add_argument("--model", default=None, help="model name to report (default: the dialect's usual one)")
    parser.add_argument("--text", default=None, help="reply text (default: 'This is a reply from NAME.')")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to wait before each answer")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between stream chunks")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)
    endpoint = FaultyEndpoint(args.dialect, name=args.name, model=args.model, text=args.text, host=args.host, port=args.port)
    endpoint.faults.latency = args.latency
    endpoint.faults.chunk_delay = args.chunk_delay
    async with endpoint:
        print(endpoint.base_url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command: serve one endpoint until SIGINT or SIGTERM; returns the exit status."""
    args = _parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
