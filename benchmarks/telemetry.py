"""What telemetry costs per request, with an OpenTelemetry SDK installed and without.

The global tracer and meter providers can be set once per process, so each mode runs in
a worker process of its own: ``off`` (no SDK), ``traces`` (an SDK tracer provider that
records every span, no exporter), ``metrics`` (an SDK meter provider aggregating in
memory) and ``both``. The driver asks the workers in turn for blocks of requests, so a
change in machine load hits every mode alike, and reports the CPU (process time) each
mode adds per request over ``off``: the median of the rounds and their range. The
requests go to an in-process ``mock`` endpoint (no HTTP), so what is measured is the
runtime's own work and the SDK's.

Then, in the driver with both SDK providers installed, the SDK's unit costs in the
shapes the runtime uses: a span started and ended (no attributes, and an attempt's),
a histogram point, and a counter point through :class:`runtime.metrics.Metrics`.

    python benchmarks/telemetry.py [--requests 1000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable

from _common import install_otel_sdk

from runtime import Endpoint, HealthPolicy, Runtime

MODES = ("off", "traces", "metrics", "both")
OPERATIONS = ("chat", "stream", "embed")


def install(mode: str) -> None:
    """The SDK providers of ``mode``."""
    install_otel_sdk(traces=mode in ("traces", "both"), metrics=mode in ("metrics", "both"))


async def worker(mode: str) -> None:
    """Answer each line ``OPERATION N`` on stdin with the CPU µs per request of N requests."""
    install(mode)
    endpoints = [Endpoint(name="m0", provider="mock", model="bench", health=HealthPolicy(enabled=False))]
    async with Runtime(endpoints, seed=1) as rt:

        async def chat() -> None:
            await rt.chat("Say hi", max_tokens=16)

        async def stream() -> None:
            async with rt.stream("Say hi", max_tokens=16) as s:
                async for _ in s:
                    pass

        async def embed() -> None:
            await rt.embed(["Say hi"])

        ops: dict[str, Callable[[], Awaitable[None]]] = {"chat": chat, "stream": stream, "embed": embed}
        for line in sys.stdin:
            name, n = line.split()
            fn = ops[name]
            c0 = time.process_time()
            for _ in range(int(n)):
                await fn()
            print(f"{(time.process_time() - c0) / int(n) * 1e6:.3f}", flush=True)


def per_request(requests: int, rounds: int) -> None:
    workers = {
        mode: subprocess.Popen(
            [sys.executable, __file__, "--worker", mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for mode in MODES
    }

    def ask(mode: str, op: str, n: int) -> float:
        proc = workers[mode]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{op} {n}\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    try:
        print(f"CPU per request added over no SDK, mock endpoint, {rounds} alternating rounds of {requests}")
        print(f"{'operation':<10}{'off µs':>9}" + "".join(f"{m + ' added':>26}" for m in MODES[1:]))
        for op in OPERATIONS:
            for mode in MODES:  # warm up code paths and the SDK's attribute sets
                ask(mode, op, 300)
            cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(rounds):
                for mode in MODES:
                    cpu[mode].append(ask(mode, op, requests))
            cells = []
            for mode in MODES[1:]:
                added = sorted(on - off for on, off in zip(cpu[mode], cpu["off"], strict=True))
                cells.append(f"{statistics.median(added):>8.1f} ({added[0]:.1f} to {added[-1]:.1f})")
            print(f"{op:<10}{statistics.median(cpu['off']):>9.1f}" + "".join(f"{c:>26}" for c in cells))
    finally:
        for proc in workers.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)


def unit_costs() -> None:
    """The SDK's cost per span and per metric point, in the runtime's shapes."""
    from opentelemetry import trace

    from runtime.metrics import Metrics
    from runtime.telemetry import INSTRUMENTATION_NAME, end_span

    install("both")
    tracer = trace.get_tracer(INSTRUMENTATION_NAME)
    metrics = Metrics()
    histogram = metrics._instruments.duration
    attributes = {"gen_ai.operation.name": "chat", "endpoint": "m0", "provider": "mock", "model": "bench", "outcome": "ok"}

    def attempt() -> None:
        span = tracer.start_span("attempt m0", attributes={"endpoint": "m0", "attempt": 1, "gen_ai.provider.name": "mock"})
        end_span(span, None)

    cases: dict[str, Callable[[], object]] = {
        "span, no attributes": lambda: tracer.start_span("s").end(),
        "attempt span (4 attributes)": attempt,
        "histogram point (5 attributes)": lambda: histogram.record(0.01, attributes),
        "counter point (Metrics.record_error)": lambda: metrics.record_error("Overloaded", endpoint="m0"),
    }
    print("\nSDK unit costs (best of 7 × 5,000)")
    for name, fn in cases.items():
        best = min(timeit.repeat(fn, number=5000, repeat=7)) / 5000
        print(f"{name:<40}{best * 1e6:>8.2f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker))
    else:
        per_request(args.requests, args.rounds)
        unit_costs()
