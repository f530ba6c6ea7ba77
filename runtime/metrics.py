"""OpenTelemetry metrics of the runtime, through the global ``opentelemetry.metrics`` API.

Meter name ``llm-runtime``. With no SDK configured every call lands on a no-op instrument
and costs a fraction of a microsecond; configure a ``MeterProvider`` (OTLP, Prometheus,
in-memory) and the same calls are exported. Instruments:

=================================  ==================  ======  ==============================================
name                               kind                unit    attributes
=================================  ==================  ======  ==============================================
``llm_runtime.requests``           counter             1       ``gen_ai.operation.name``, ``outcome``;
                                                               ``endpoint``, ``provider``, ``model`` for a
                                                               reply, ``error.type`` for a failure
``llm_runtime.errors``             counter             1       ``error.type`` (the error's class name),
                                                               ``endpoint``, ``provider``, ``model``
``llm_runtime.request.duration``   histogram           s       as ``llm_runtime.requests``
``llm_runtime.time_to_first_chunk`` histogram          s       ``endpoint``, ``provider``, ``model``
``llm_runtime.tokens``             counter             1       ``direction`` (``input`` | ``output``),
                                                               ``endpoint``, ``provider``, ``model``
``llm_runtime.cost``               counter             USD     ``endpoint``, ``provider``, ``model``
``llm_runtime.stream.restarts``    counter             1       ``endpoint``, ``provider``, ``model`` (whose
                                                               stream failed after content), ``recovery``
                                                               (``restart`` | ``continue``)
``llm_runtime.cache.hits``         counter             1       (none)
``llm_runtime.cache.misses``       counter             1       (none)
``llm_runtime.budget.remaining``   observable gauge    1       ``scope`` (``runtime`` or an endpoint name),
                                                               ``kind`` (``daily_tokens``, ``daily_usd``,
                                                               ``monthly_tokens``, ``monthly_usd``); the value
                                                               is in the kind's unit (tokens or USD)
=================================  ==================  ======  ==============================================

``gen_ai.operation.name`` is ``chat`` (whole replies), ``stream`` or ``embeddings``.
``outcome`` is ``ok`` for a reply from an endpoint, ``cached`` / ``stale`` for one from
the response cache and ``error`` for a request that ended without one (``error.type``
says how: ``AllEndpointsFailed``, ``NoEndpointAvailable``, ``StreamInterrupted``, ...).
``llm_runtime.errors`` counts failed attempts, one per attempt, under the endpoint that
failed it: a request that failed over twice and then succeeded adds two errors and one
``ok`` request. Durations are seconds from the request to its whole reply (or its
failure), with bucket boundaries from 5 ms to 2 minutes.

The instruments are created once per process and shared by every :class:`Metrics`
(one per runtime), because an SDK meter warns when an instrument is registered twice;
each runtime's budget callbacks are observed for as long as its ``Metrics`` lives.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, NoOpMeterProvider, Observation
from opentelemetry.metrics import _internal as _metrics_internal

from .types import Usage

__all__ = ["INSTRUMENT_NAMES", "METER_NAME", "Metrics"]

METER_NAME: Final = "llm-runtime"

#: Every instrument's name, as exported.
INSTRUMENT_NAMES: Final = (
    "llm_runtime.requests",
    "llm_runtime.errors",
    "llm_runtime.request.duration",
    "llm_runtime.time_to_first_chunk",
    "llm_runtime.tokens",
    "llm_runtime.cost",
    "llm_runtime.stream.restarts",
    "llm_runtime.cache.hits",
    "llm_runtime.cache.misses",
    "llm_runtime.budget.remaining",
)

# Seconds: from a cache-speed local answer to a long reasoning reply.
_DURATION_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
_ATTRIBUTE_CACHE_LIMIT: Final = 4096

BudgetCallback = Callable[[], Mapping[str, float]]


class _Instruments:
    """The process's instruments, created on first use."""

    def __init__(self) -> None:
        meter = metrics.get_meter(METER_NAME)
        self.requests = meter.create_counter("llm_runtime.requests", unit="1", description="Requests by outcome")
        self.errors = meter.create_counter("llm_runtime.errors", unit="1", description="Errors by class")
        self.duration = meter.create_histogram(
            "llm_runtime.request.duration",
            unit="s",
            description="Time from request to whole reply",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.ttfc = meter.create_histogram(
            "llm_runtime.time_to_first_chunk",
            unit="s",
            description="Time from request to a stream's first chunk",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.tokens = meter.create_counter("llm_runtime.tokens", unit="1", description="Tokens in and out")
        self.cost = meter.create_counter("llm_runtime.cost", unit="USD", description="Cost of replies")
        self.restarts = meter.create_counter(
            "llm_runtime.stream.restarts", unit="1", description="Streams recovered after content reached the caller"
        )
        self.cache_hits = meter.create_counter("llm_runtime.cache.hits", unit="1", description="Response cache hits")
        self.cache_misses = meter.create_counter(
            "llm_runtime.cache.misses", unit="1", description="Response cache misses"
        )
        self.budget = meter.create_observable_gauge(
            "llm_runtime.budget.remaining",
            callbacks=[_observe_budgets],
            unit="1",
            description="What is left of each budget limit (tokens or USD)",
        )


_instruments: _Instruments | None = None
_lock = threading.Lock()
_live: weakref.WeakSet[Metrics] = weakref.WeakSet()


def _shared_instruments() -> _Instruments:
    global _instruments
    if _instruments is None:
        with _lock:
            if _instruments is None:
                _instruments = _Instruments()
    return _instruments


def _observe_budgets(options: CallbackOptions) -> Iterable[Observation]:
    """The gauge's callback: every live runtime's budgets, one observation per limit."""
    for owner in list(_live):
        for scope, callback in owner._budget_callbacks:
            for kind, value in callback().items():
                yield Observation(value, {"scope": scope, "kind": kind})


def metrics_enabled() -> bool:
    """True once a real meter provider (an SDK) is installed globally.

    Until then every instrument is a proxy that records nothing, yet each call still
    costs a microsecond or more, and ``metrics.get_meter_provider()`` reads
    ``os.environ`` on every call; the set-once global is read directly instead (see
    :func:`runtime.telemetry.resolve_providers`).
    """
    provider = getattr(_metrics_internal, "_METER_PROVIDER", _UNREAD)
    if provider is _UNREAD:  # the API changed its internals: take the public, slower path
        provider = metrics.get_meter_provider()
        return type(provider).__name__ != "_ProxyMeterProvider" and not isinstance(provider, NoOpMeterProvider)
    return provider is not None and not isinstance(provider, NoOpMeterProvider)


_UNREAD = object()


class Metrics:
    """One runtime's handle on the metric instruments (see the module docstring)."""

    def __init__(self) -> None:
        self._instruments = _shared_instruments()
        self._budget_callbacks: list[tuple[str, BudgetCallback]] = []
        # Attribute dicts are reused per combination: building one per call is the main cost.
        self._attrs: dict[tuple[str | None, ...], dict[str, str]] = {}
        _live.add(self)

    def __repr__(self) -> str:
        return f"<Metrics [{METER_NAME} | {len(self._budget_callbacks)} budget callbacks]>"

    def _attributes(self, *pairs: tuple[str, str | None]) -> dict[str, str]:
        key = tuple(v for _, v in pairs)
        attrs = self._attrs.get(key)
        if attrs is None:
            if len(self._attrs) >= _ATTRIBUTE_CACHE_LIMIT:
                self._attrs.clear()
            attrs = self._attrs[key] = {k: v for k, v in pairs if v is not None}
        return attrs

    def record_request(
        self,
        endpoint: str,
        provider: str,
        model: str,
        usage: Usage | None,
        cost_usd: float,
        duration: float,
        outcome: str = "ok",
        operation: str = "chat",
    ) -> None:
        """Count one finished request: its outcome, duration, tokens and cost."""
        if not metrics_enabled():
            return
        ins = self._instruments
        attrs = self._attributes(
            ("gen_ai.operation.name", operation), ("endpoint", endpoint), ("provider", provider), ("model", model),
            ("outcome", outcome),
        )
        ins.requests.add(1, attrs)
        ins.duration.record(duration, attrs)
        if usage is not None:
            if usage.input_tokens:
                ins.tokens.add(
                    usage.input_tokens,
                    self._attributes(
                        ("direction", "input"), ("endpoint", endpoint), ("provider", provider), ("model", model)
                    ),
                )
            if usage.output_tokens:
                ins.tokens.add(
                    usage.output_tokens,
                    self._attributes(
                        ("direction", "output"), ("endpoint", endpoint), ("provider", provider), ("model", model)
                    ),
                )
        if cost_usd:
            ins.cost.add(cost_usd, self._attributes(("endpoint", endpoint), ("provider", provider), ("model", model)))

    def record_failure(self, error_class: str, duration: float, *, operation: str = "chat") -> None:
        """Count one request that ended without a reply, by the class of the error the caller got."""
        if not metrics_enabled():
            return
        ins = self._instruments
        attrs = self._attributes(("gen_ai.operation.name", operation), ("outcome", "error"), ("error.type", error_class))
        ins.requests.add(1, attrs)
        ins.duration.record(duration, attrs)

    def record_error(
        self, error_class: str, *, endpoint: str | None = None, provider: str | None = None, model: str | None = None
    ) -> None:
        """Count one failed attempt by its error's class name and the endpoint that failed it."""
        if not metrics_enabled():
            return
        self._instruments.errors.add(
            1,
            self._attributes(
                ("error.type", error_class), ("endpoint", endpoint), ("provider", provider), ("model", model)
            ),
        )

    def record_ttfc(
        self, seconds: float, *, endpoint: str | None = None, provider: str | None = None, model: str | None = None
    ) -> None:
        """Record a stream's time to first chunk."""
        if not metrics_enabled():
            return
        self._instruments.ttfc.record(
            seconds, self._attributes(("endpoint", endpoint), ("provider", provider), ("model", model))
        )

    def record_restart(self, recovery: str, *, endpoint: str | None, provider: str | None, model: str | None) -> None:
        """Count one stream recovered (restarted or continued) after ``endpoint``'s answer failed mid-way."""
        if not metrics_enabled():
            return
        self._instruments.restarts.add(
            1,
            self._attributes(("endpoint", endpoint), ("provider", provider), ("model", model), ("recovery", recovery)),
        )

    def record_cache(self, hit: bool) -> None:
        """Count one response-cache lookup as a hit or a miss."""
        if not metrics_enabled():
            return
        if hit:
            self._instruments.cache_hits.add(1)
        else:
            self._instruments.cache_misses.add(1)

    def observe_budget(self, callback: BudgetCallback, *, scope: str = "runtime") -> None:
        """Report ``callback()`` (limit kind → remaining) on the budget gauge at each collection.

        ``BudgetGuard.remaining`` is such a callback; ``scope`` names whose budget it is.
        """
        self._budget_callbacks.append((scope, callback))
