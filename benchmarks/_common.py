"""What the benchmark programs share: a local server in its own process, percentiles,
alternating latency samples and closed-loop throughput.

Imported by the programs beside it (``python benchmarks/NAME.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["bench_endpoints", "install_otel_sdk", "pct", "samples", "start_child", "start_server", "throughput"]


def start_server(*flags: str, dialect: str = "openai") -> tuple[subprocess.Popen[str], str]:
    """``python -m runtime.testing.server`` in its own process, with ``flags``; the process and its base URL."""
    return start_child([sys.executable, "-m", "runtime.testing.server", "--dialect", dialect, "--port", "0", *flags])


def bench_endpoints(base_url: str, n: int) -> list[Any]:
    """``n`` endpoints of one tier on the local server at ``base_url``. Probes off: the
    benchmarks measure the request path, not background traffic."""
    from runtime import Endpoint, HealthPolicy

    return [
        Endpoint(
            name=f"e{i}", provider="openai-compatible", model="bench", base_url=base_url,
            health=HealthPolicy(enabled=False), timeout=30,
        )
        for i in range(n)
    ]


def start_child(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    """A server in its own process and the URL it prints on its first line of stdout."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"{' '.join(args)} did not start: {url!r}")
    return proc, url


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples``, nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def samples(
    modes: Mapping[str, Callable[[], Awaitable[object]]], requests: int, block: int, cpu: dict[str, float] | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each mode, ``requests`` each, the modes alternating in blocks of
    ``block`` calls: often enough that drift in machine load hits every mode alike, seldom
    enough that each mode runs with its code warm in cache. ``cpu``, when given, gains each
    mode's process time."""
    out: dict[str, list[float]] = {name: [] for name in modes}
    clock, cpu_clock = time.perf_counter, time.process_time
    for _ in range(max(1, requests // block)):
        for name, fn in modes.items():
            c0 = cpu_clock()
            for _ in range(block):
                t0 = clock()
                await fn()
                out[name].append(clock() - t0)
            if cpu is not None:
                cpu[name] = cpu.get(name, 0.0) + cpu_clock() - c0
    return out


async def throughput(fn: Callable[[], Awaitable[None]], total: int, concurrency: int) -> float:
    """Calls per second of ``fn``, ``total`` calls by ``concurrency`` workers in a closed loop."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await fn()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


def install_otel_sdk(traces: bool = True, metrics: bool = True) -> None:
    """The global OpenTelemetry SDK providers: a tracer provider that records every span (no
    exporter: its cost is the SDK's, not the network's), a meter provider aggregating in memory."""
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    if traces:
        trace.set_tracer_provider(TracerProvider())
    if metrics:
        otel_metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
