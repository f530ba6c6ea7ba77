"""Where the CLI sends spans and metrics: a console, a JSON-lines file, an OTLP backend.

The library itself only talks to the global OpenTelemetry API (:mod:`runtime.telemetry`);
an application configures its own SDK. The command line is an application, so it sets
one up here:

- ``--trace console`` writes one readable line per finished span to stderr, and
  ``--trace FILE`` one JSON object per span to FILE;
- the usual OpenTelemetry variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_HEADERS``,
  ``OTEL_SERVICE_NAME``, ...) send spans and metrics over OTLP/HTTP when the ``otlp``
  extra (``pip install 'llm-runtime[otlp]'``) is installed; an export that fails is one
  WARNING on the ``runtime`` logger per outage, not a line per batch.

The global tracer provider can be set only once per process, so one :class:`SpanTap`
is added to it for good and each run registers (then removes) its own sinks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TextIO

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from ._logging import logger

__all__ = ["OTLP_EXTRA", "SpanTap", "console_line", "otlp_configured", "span_tap", "telemetry_for_cli"]

#: The extra that brings the OTLP exporter.
OTLP_EXTRA = "llm-runtime[otlp]"
_OTLP_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")


class SpanTap(SpanProcessor):
    """Hands every finished span to the sinks registered at the time."""

    def __init__(self) -> None:
        self.sinks: list[Callable[[ReadableSpan], None]] = []

    def on_end(self, span: ReadableSpan) -> None:
        """Pass the span to every sink."""
        for sink in tuple(self.sinks):
            sink(span)


_TAP: SpanTap | None = None


def span_tap() -> SpanTap:
    """The process's tap: added to the global SDK provider, or to a new one installed globally."""
    global _TAP
    if _TAP is None:
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            # No SDK yet (the CLI's case): install one. If the application had set a
            # provider of another implementation this one would not take, and the
            # sinks would simply see no spans.
            provider = TracerProvider(resource=_resource())
            trace.set_tracer_provider(provider)
        tap = SpanTap()
        provider.add_span_processor(tap)
        _TAP = tap
    return _TAP


def console_line(span: ReadableSpan) -> str:
    """One readable line for a span: its name, duration and attributes."""
    duration = "" if span.end_time is None or span.start_time is None else f" {(span.end_time - span.start_time) / 1e6:.1f}ms"
    attributes = " ".join(f"{key}={value!s}" for key, value in (span.attributes or {}).items())
    return f"span {span.name!r}{duration} {attributes}".rstrip()


def otlp_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when an OTLP endpoint variable is set."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in _OTLP_VARIABLES)


@contextmanager
def telemetry_for_cli(trace_to: str | None, stream: TextIO) -> Iterator[None]:
    """Send spans to ``trace_to`` (``console``: ``stream``; else a file path) and to OTLP when configured.

    Flushes and detaches everything on exit. Raises :class:`OSError` when the file
    cannot be written.
    """
    with ExitStack() as stack:
        if trace_to is not None:
            if trace_to == "console":
                out, render = stream, console_line
            else:
                out = stack.enter_context(open(trace_to, "w", encoding="utf-8"))
                render = _json_line

            def write(span: ReadableSpan) -> None:
                out.write(render(span) + "\n")

            tap = span_tap()
            tap.sinks.append(write)
            stack.callback(tap.sinks.remove, write)
        if otlp_configured():
            stack.callback(_start_otlp())
        yield


def _json_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line


def _resource() -> Resource:
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the default
    # service name ("unknown_service") says nothing in a backend.
    if os.environ.get("OTEL_SERVICE_NAME"):
        return Resource.create()
    return Resource.create({"service.name": "llm-runtime"})


def _start_otlp() -> Callable[[], None]:
    """Install OTLP span and metric export from the environment; return what flushes it."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        logger.warning(
            "OTEL_EXPORTER_OTLP_* is set but the OTLP exporter is not installed: "
            "pip install '%s' (spans and metrics are not exported)",
            OTLP_EXTRA,
        )
        return _nothing
    watch = _ExportWatch()
    tap = span_tap()
    processor = BatchSpanProcessor(_WatchedSpans(OTLPSpanExporter(), watch))
    tap.sinks.append(processor.on_end)
    flushes: list[Callable[[], object]] = [lambda: tap.sinks.remove(processor.on_end), processor.shutdown]
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        reader = PeriodicExportingMetricReader(_WatchedMetrics(OTLPMetricExporter(), watch))
        meter_provider = MeterProvider(resource=_resource(), metric_readers=[reader])
        metrics.set_meter_provider(meter_provider)
        flushes.append(meter_provider.shutdown)

    def flush() -> None:
        for step in flushes:
            step()

    return flush


def _nothing() -> None:
    return None


class _ExportWatch:
    """Says once that the exporter is down, and once that it is back."""

    def __init__(self) -> None:
        self.down = False

    def result(self, ok: bool, what: str) -> None:
        if not ok and not self.down:
            self.down = True
            logger.warning("OTLP exporter is down: %s could not be exported (will keep trying)", what)
        elif ok and self.down:
            self.down = False
            logger.info("OTLP exporter is back: %s exported again", what)


class _WatchedSpans(SpanExporter):
    """A span exporter whose failures reach the ``runtime`` logger."""

    def __init__(self, inner: SpanExporter, watch: _ExportWatch) -> None:
        self._inner = inner
        self._watch = watch

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export through the inner exporter and report a failure."""
        result = self._inner.export(spans)
        self._watch.result(result is SpanExportResult.SUCCESS, "spans")
        return result

    def shutdown(self) -> None:
        """Shut the inner exporter down."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the inner exporter."""
        return self._inner.force_flush(timeout_millis)


class _WatchedMetrics(MetricExporter):
    """A metric exporter whose failures reach the ``runtime`` logger."""

    def __init__(self, inner: MetricExporter, watch: _ExportWatch) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._watch = watch

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        """Export through the inner exporter and report a failure."""
        result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        self._watch.result(result is MetricExportResult.SUCCESS, "metrics")
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the inner exporter."""
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Shut the inner exporter down."""
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)
