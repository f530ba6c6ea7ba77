"""Fault-injecting local LLM endpoints, and a command that serves one in its own process.

The endpoints themselves live in :mod:`runtime.testing._server` and are re-exported here
and from :mod:`runtime.testing`. Run one standalone, for example as the target of a
benchmark::

    python -m runtime.testing.server --dialect openai --port 0

It prints the base URL (what ``Endpoint(base_url=...)`` needs) on one line of stdout,
then serves until it is interrupted or terminated. Without fault flags every request
takes the plain path: read the body, build the deterministic reply, write it. The fault
flags make it misbehave the way real endpoints do, so failover can be watched from a
second terminal (``llm-runtime status --watch``, ``llm-runtime chat``)::

    python -m runtime.testing.server --port 8001 --error-rate 0.5 --error-status 503
    python -m runtime.testing.server --port 8002 --error-rate 1 --error-status 429 --retry-after 30
    python -m runtime.testing.server --port 8003 --outage 20 --outage-after 10
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

__all__ = ["Decision", "Dialect", "FaultyEndpoint", "Faults", "LocalEndpoints", "ServerStats", "Step", "apply_faults", "main"]


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
    parser.add_argument("--seed", type=int, default=0, help="seed of the random faults (default: 0)")
    faults = parser.add_argument_group("faults (probes of /models are affected too, unless noted)")
    faults.add_argument("--hang", action="store_true", help="accept requests and never answer")
    faults.add_argument("--reset", action="store_true", help="close every connection abruptly instead of answering")
    faults.add_argument("--refuse", action="store_true", help="refuse connections on the printed port")
    faults.add_argument("--error-rate", type=_fraction, default=0.0, metavar="P",
                        help="fail this fraction of chat requests (0-1; probes still answer)")
    faults.add_argument("--error-status", type=int, default=500, metavar="STATUS",
                        help="HTTP status of those failures (default: 500; 429 sends Retry-After)")
    faults.add_argument("--retry-after", type=float, default=1.0, metavar="S",
                        help="seconds in the Retry-After header of a 429 (default: 1)")
    faults.add_argument("--cut-after", type=int, metavar="N", help="cut every stream after N content chunks")
    faults.add_argument("--malformed", action="store_true", help="answer 200 with a truncated body")
    faults.add_argument("--stream-error-after", type=int, metavar="N",
                        help="send the dialect's in-stream error event after N content chunks")
    faults.add_argument("--no-terminal", action="store_true",
                        help="end streams after the finish reason, without [DONE] / message_stop")
    faults.add_argument("--end-after", type=int, metavar="N",
                        help="end streams cleanly after N content chunks, before any finish reason")
    faults.add_argument("--stall-after", type=int, metavar="N", help="go silent after N content chunks")
    faults.add_argument("--malformed-after", type=int, metavar="N",
                        help="send one undecodable event after N content chunks")
    faults.add_argument("--reject-prefill", action="store_true",
                        help="answer 400 to a request that asks to continue an assistant message")
    faults.add_argument("--outage", type=float, metavar="S", help="refuse connections for S seconds ...")
    faults.add_argument("--outage-after", type=float, default=0.0, metavar="S",
                        help="... starting S seconds after start (default: at once)")
    return parser


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def apply_faults(faults: Faults, args: argparse.Namespace) -> None:
    """Set the persistent faults the command line asks for (the port-level ones need a running endpoint)."""
    faults.latency = args.latency
    faults.chunk_delay = args.chunk_delay
    faults.reseed(args.seed)
    faults.hang = args.hang
    faults.reset = args.reset
    faults.error_rate = args.error_rate
    faults.error_status = args.error_status
    faults.retry_after = args.retry_after
    faults.cut_after = args.cut_after
    faults.malformed = args.malformed
    faults.stream_error_after = args.stream_error_after
    faults.no_terminal = args.no_terminal
    faults.end_after = args.end_after
    faults.stall_after = args.stall_after
    faults.malformed_after = args.malformed_after
    faults.reject_prefill = args.reject_prefill


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)
    endpoint = FaultyEndpoint(args.dialect, name=args.name, model=args.model, text=args.text, host=args.host, port=args.port)
    apply_faults(endpoint.faults, args)
    async with endpoint:
        if args.refuse:
            endpoint.faults.refuse()
        if args.outage is not None:
            endpoint.faults.outage(args.outage, status=None, after=args.outage_after)
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
