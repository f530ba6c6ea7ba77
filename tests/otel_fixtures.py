"""In-memory OpenTelemetry pipelines for tests.

The global tracer and meter providers can be set once per process, so they are set
once per session here; each test gets the exporter (or reader) cleared.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.metrics import METER_NAME

_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()
_installed = False


def _install() -> None:
    global _installed
    if _installed:
        return
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    _installed = True


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    """The session's in-memory span exporter, emptied for this test."""
    _install()
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    """The session's in-memory metric reader (cumulative: compare before and after)."""
    _install()
    return _READER


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Data points by instrument name, for the llm-runtime meter."""
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    if data is None:
        return points
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            if scope.scope.name != METER_NAME:
                continue
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def value(points: list[Any], **attributes: Any) -> float:
    """The summed value (or count, for histograms) of the points carrying ``attributes``."""
    total = 0.0
    for p in points:
        if all(p.attributes.get(k) == v for k, v in attributes.items()):
            total += p.count if hasattr(p, "bucket_counts") else p.value
    return total
