"""Metrics land in an in-memory reader under the documented names and attributes."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from otel_fixtures import collect, value

from runtime import metrics as metrics_module
from runtime.metrics import INSTRUMENT_NAMES, Metrics
from runtime.types import Usage


def test_every_documented_instrument_is_exported(metric_reader: InMemoryMetricReader) -> None:
    """Each instrument named in the module docstring appears once something is recorded."""
    m = Metrics()
    m.record_request("primary", "openai", "gpt-4o-mini", Usage(input_tokens=10, output_tokens=2), 0.0001, 0.25)
    m.record_error("RateLimited", endpoint="primary")
    m.record_ttfc(0.05, endpoint="primary")
    m.record_restart("restart", endpoint="primary", provider="openai", model="gpt-4o-mini")
    m.record_cache(True)
    m.record_cache(False)
    m.observe_budget(lambda: {"daily_tokens": 900.0})
    names = set(collect(metric_reader))
    assert set(INSTRUMENT_NAMES) <= names
    for name in INSTRUMENT_NAMES:
        assert f"``{name}``" in (metrics_module.__doc__ or "")


def test_request_attributes_and_values(metric_reader: InMemoryMetricReader) -> None:
    """A request adds to requests, duration, tokens by direction and cost, with its attributes."""
    before = collect(metric_reader)
    attrs = {"endpoint": "m-ep", "provider": "anthropic", "model": "claude-3-5-haiku"}
    m = Metrics()
    m.record_request("m-ep", "anthropic", "claude-3-5-haiku", Usage(input_tokens=120, output_tokens=30), 0.002, 1.5)
    m.record_request("m-ep", "anthropic", "claude-3-5-haiku", None, 0.0, 0.01, outcome="cached")
    after = collect(metric_reader)

    def delta(name: str, **extra: Any) -> float:
        return value(after.get(name, []), **attrs, **extra) - value(before.get(name, []), **attrs, **extra)

    assert delta("llm_runtime.requests", outcome="ok") == 1
    assert delta("llm_runtime.requests", outcome="cached") == 1
    assert delta("llm_runtime.request.duration", outcome="ok") == 1
    assert delta("llm_runtime.tokens", direction="input") == 120
    assert delta("llm_runtime.tokens", direction="output") == 30
    assert abs(delta("llm_runtime.cost") - 0.002) < 1e-12


def test_errors_by_class(metric_reader: InMemoryMetricReader) -> None:
    """Errors are counted per class name under error.type."""
    before = value(collect(metric_reader).get("llm_runtime.errors", []), **{"error.type": "Overloaded"})
    m = Metrics()
    m.record_error("Overloaded")
    m.record_error("Overloaded", endpoint="x", provider="openai", model="gpt-4o")
    after = value(collect(metric_reader)["llm_runtime.errors"], **{"error.type": "Overloaded"})
    assert after - before == 2


def test_cache_hits_and_misses(metric_reader: InMemoryMetricReader) -> None:
    """Hits and misses go to their own counters."""
    before = collect(metric_reader)
    m = Metrics()
    for hit in (True, True, False):
        m.record_cache(hit)
    after = collect(metric_reader)
    hits = value(after["llm_runtime.cache.hits"]) - value(before.get("llm_runtime.cache.hits", []))
    misses = value(after["llm_runtime.cache.misses"]) - value(before.get("llm_runtime.cache.misses", []))
    assert (hits, misses) == (2, 1)


def test_budget_gauge_observes_callbacks(metric_reader: InMemoryMetricReader) -> None:
    """The budget gauge reports each registered callback's limits, by scope and kind, while its Metrics lives."""
    remaining = {"daily_tokens": 5000.0, "daily_usd": 1.25}
    m = Metrics()
    m.observe_budget(lambda: remaining, scope="gauge-test")
    points = collect(metric_reader)["llm_runtime.budget.remaining"]
    assert value(points, scope="gauge-test", kind="daily_tokens") == 5000.0
    assert value(points, scope="gauge-test", kind="daily_usd") == 1.25
    remaining["daily_tokens"] = 10.0
    assert (
        value(collect(metric_reader)["llm_runtime.budget.remaining"], scope="gauge-test", kind="daily_tokens") == 10.0
    )
    assert "1 budget callbacks" in repr(m)
