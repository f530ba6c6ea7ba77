"""Spans and metrics keep their promises on the cheap path: attempt outcomes, counter totals,
and an SDK installed after the runtime started."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from otel_fixtures import collect, value

from runtime import HealthPolicy, RetryPolicy, Runtime
from runtime import metrics as metrics_module
from runtime.metrics import Metrics
from runtime.testing import FaultyEndpoint

QUIET = HealthPolicy(enabled=False)


@pytest.mark.anyio
async def test_a_failed_attempt_span_says_why_and_is_an_error(span_exporter: InMemorySpanExporter) -> None:
    """The failed attempt: outcome and error.type name the class, status ERROR; the next: outcome ok, status unset."""
    async with FaultyEndpoint("openai", name="down") as down, FaultyEndpoint("openai", name="up") as up:
        down.faults.fail_next(1, status=500)
        endpoints = [down.endpoint(health=QUIET, priority=1), up.endpoint(health=QUIET, priority=2)]
        async with Runtime(endpoints, retry=RetryPolicy(tier_wait=0.0)) as rt:
            await rt.chat("hi")
    spans = {s.name: s for s in span_exporter.get_finished_spans() if s.name.startswith("attempt ")}
    failed, served = spans["attempt down"], spans["attempt up"]
    assert dict(failed.attributes or {})["outcome"] == "ServerError"
    assert dict(failed.attributes or {})["error.type"] == "ServerError"
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(served.attributes or {})["outcome"] == "ok"
    assert served.status.status_code is StatusCode.UNSET
    assert not failed.events  # no exception event: its text is not ours to export


def test_counter_totals_outlive_the_runtime_that_counted(metric_reader: InMemoryMetricReader) -> None:
    """A counter never goes back: what a dropped Metrics counted stays in the process's totals."""
    attrs = {"error.type": "TotalsTest", "endpoint": "gone"}
    before = value(collect(metric_reader).get("llm_runtime.errors", []), **attrs)
    m = Metrics()
    m.record_error("TotalsTest", endpoint="gone")
    del m
    gc.collect()
    Metrics().record_error("TotalsTest", endpoint="gone")
    assert value(collect(metric_reader)["llm_runtime.errors"], **attrs) - before == 2


def test_a_counter_past_the_cardinality_limit_adds_to_the_overflow_set() -> None:
    """Past the limit, new attribute sets add to one otel.metric.overflow set; known ones keep counting."""
    sums = metrics_module._Sum("endpoint")
    limit = metrics_module._CARDINALITY_LIMIT
    for i in range(limit):
        sums.add((f"e{i}",), 1)
    sums.add(("e0",), 1)
    sums.add(("new",), 2)
    sums.add(("newer",), 3)
    observed = {tuple(sorted(o.attributes.items())): o.value for o in sums.observe(None)}  # type: ignore[arg-type]
    assert len(observed) == limit + 1
    assert observed[(("endpoint", "e0"),)] == 2
    assert observed[(("otel.metric.overflow", True),)] == 5


SDK_AFTER_START = """
import asyncio
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from runtime import Endpoint, HealthPolicy, Runtime

async def main():
    async with Runtime([Endpoint(name="m", provider="mock", health=HealthPolicy(enabled=False))]) as rt:
        await rt.chat("before")
        spans, reader, provider = InMemorySpanExporter(), InMemoryMetricReader(), TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        await rt.chat("after")
    names = sorted(s.name for s in spans.get_finished_spans() if s.name.startswith(("chat", "attempt")))
    data = reader.get_metrics_data()
    points = {m.name: m.data.data_points for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    requests = sum(p.value for p in points["llm_runtime.requests"])
    durations = sum(p.count for p in points["llm_runtime.request.duration"])
    print(names, requests, durations)

asyncio.run(main())
"""


def test_an_sdk_installed_after_the_runtime_started_gets_the_next_request(tmp_path: Path) -> None:
    """Providers set after Runtime start (a fresh interpreter: they can be set once) see the
    next request's spans and metrics, and nothing of the request before."""
    done = subprocess.run(
        [sys.executable, "-c", SDK_AFTER_START], capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['attempt m', 'chat'] 1 1"
