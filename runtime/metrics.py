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

The counters are observable counters fed from running totals kept here, one per
attribute set: a request adds to a dict under a lock (well under a microsecond) and the
SDK reads the totals at each collection, so its per-measurement work (copying, checking
and hashing the attributes, a few microseconds a point) is paid once per attribute set
per export instead of once per point. They export as any counter does (monotonic sums,
cumulative or delta as the reader asks) but carry no exemplars; the two histograms are
recorded per request, as histograms must be. The totals and the instruments are the
process's, shared by every :class:`Metrics` (one per runtime): an SDK meter warns when
an instrument is registered twice, and a counter must not go back when a runtime is
closed. Each runtime's budget callbacks are observed for as long as its ``Metrics``
lives. Past 2,000 attribute sets a counter adds to one set marked
``otel.metric.overflow``, as the SDK does for its own instruments.
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
# The SDK's default cardinality limit per instrument.
_CARDINALITY_LIMIT: Final = 2000
_OVERFLOW: Final[Mapping[str, bool]] = {"otel.metric.overflow": True}
_OVERFLOW_KEY: Final[tuple[str | None, ...]] = ("otel.metric.overflow",)

BudgetCallback = Callable[[], Mapping[str, float]]
Key = tuple[str | None, ...]

# One lock for every total: a BlockingRuntime records from its own loop's thread and the
# exporter reads from its own, and a read-modify-write of a dict entry is not atomic.
_lock = threading.Lock()


class _AttributeSets:
    """Attribute dicts by key, each built once: a key is the tuple of attribute values in
    the order of ``names`` (None: the attribute is absent)."""

    __slots__ = ("names", "sets")

    def __init__(self, *names: str) -> None:
        self.names = names
        self.sets: dict[Key, Mapping[str, str]] = {}

    def get(self, key: Key) -> Mapping[str, str]:
        """The attribute dict of ``key`` (past the cardinality limit, a new one each time:
        the SDK folds those into its overflow set)."""
        attributes = self.sets.get(key)
        if attributes is None:
            attributes = {n: v for n, v in zip(self.names, key, strict=True) if v is not None}
            if len(self.sets) < _CARDINALITY_LIMIT:
                self.sets[key] = attributes
        return attributes


class _Sum:
    """One counter's running totals by attribute set, read by its observable instrument."""

    __slots__ = ("attributes", "totals")

    def __init__(self, *names: str) -> None:
        self.attributes = _AttributeSets(*names)
        self.totals: dict[Key, float] = {}

    def add(self, key: Key, amount: float) -> Mapping[str, str]:
        """Add ``amount`` under ``key``; the attribute dict of ``key``."""
        with _lock:
            total = self.totals.get(key)
            # Integer amounts keep an integer total: the exporter sends an int, as a counter's would be.
            if total is None and len(self.totals) >= _CARDINALITY_LIMIT:
                self.totals[_OVERFLOW_KEY] = self.totals.get(_OVERFLOW_KEY, 0) + amount
            else:
                self.totals[key] = (total or 0) + amount
        return self.attributes.get(key)

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """The instrument's callback: one observation per attribute set seen."""
        with _lock:
            totals = list(self.totals.items())
        return [Observation(total, _OVERFLOW if key is _OVERFLOW_KEY else self.attributes.get(key)) for key, total in totals]


class _Instruments:
    """The process's instruments and counter totals, created on first use."""

    def __init__(self) -> None:
        meter = metrics.get_meter(METER_NAME)
        self.requests = _Sum("gen_ai.operation.name", "endpoint", "provider", "model", "outcome", "error.type")
        self.errors = _Sum("error.type", "endpoint", "provider", "model")
        self.tokens = _Sum("direction", "endpoint", "provider", "model")
        self.cost = _Sum("endpoint", "provider", "model")
        self.restarts = _Sum("endpoint", "provider", "model", "recovery")
        self.cache_hits = _Sum()
        self.cache_misses = _Sum()
        for name, unit, description, sums in (
            ("llm_runtime.requests", "1", "Requests by outcome", self.requests),
            ("llm_runtime.errors", "1", "Failed attempts by error class and endpoint", self.errors),
            ("llm_runtime.tokens", "1", "Tokens in and out", self.tokens),
            ("llm_runtime.cost", "USD", "Cost of replies", self.cost),
            ("llm_runtime.stream.restarts", "1", "Streams recovered after content reached the caller", self.restarts),
            ("llm_runtime.cache.hits", "1", "Response cache hits", self.cache_hits),
            ("llm_runtime.cache.misses", "1", "Response cache misses", self.cache_misses),
        ):
            meter.create_observable_counter(name, callbacks=[sums.observe], unit=unit, description=description)
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
        self.ttfc_attributes = _AttributeSets("endpoint", "provider", "model")
        self.budget = meter.create_observable_gauge(
            "llm_runtime.budget.remaining",
            callbacks=[_observe_budgets],
            unit="1",
            description="What is left of each budget limit (tokens or USD)",
        )


_instruments: _Instruments | None = None
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

    Until then nothing is recorded (not even the running totals), and
    ``metrics.get_meter_provider()`` reads ``os.environ`` on every call; the set-once
    global is read directly instead (see :func:`runtime.telemetry.resolve_providers`).
    """
    if _API_CHANGED:  # its internals are not what this reads: take the public, slower path
        provider: metrics.MeterProvider | None = metrics.get_meter_provider()
        return type(provider).__name__ != "_ProxyMeterProvider" and not isinstance(provider, NoOpMeterProvider)
    provider = _metrics_internal._METER_PROVIDER
    return provider is not None and not isinstance(provider, NoOpMeterProvider)


_UNREAD = object()
# Decided once: the set-once global is read as an attribute, without a getattr() call per request.
_API_CHANGED = getattr(_metrics_internal, "_METER_PROVIDER", _UNREAD) is _UNREAD


class Metrics:
    """One runtime's handle on the metric instruments (see the module docstring)."""

    def __init__(self) -> None:
        self._instruments = _shared_instruments()
        self._budget_callbacks: list[tuple[str, BudgetCallback]] = []
        _live.add(self)

    def __repr__(self) -> str:
        return f"<Metrics [{METER_NAME} | {len(self._budget_callbacks)} budget callbacks]>"

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
        attrs = ins.requests.add((operation, endpoint, provider, model, outcome, None), 1)
        ins.duration.record(duration, attrs)
        if usage is not None:
            if usage.input_tokens:
                ins.tokens.add(("input", endpoint, provider, model), usage.input_tokens)
            if usage.output_tokens:
                ins.tokens.add(("output", endpoint, provider, model), usage.output_tokens)
        if cost_usd:
            ins.cost.add((endpoint, provider, model), cost_usd)

    def record_failure(self, error_class: str, duration: float, *, operation: str = "chat") -> None:
        """Count one request that ended without a reply, by the class of the error the caller got."""
        if not metrics_enabled():
            return
        ins = self._instruments
        ins.duration.record(duration, ins.requests.add((operation, None, None, None, "error", error_class), 1))

    def record_error(
        self, error_class: str, *, endpoint: str | None = None, provider: str | None = None, model: str | None = None
    ) -> None:
        """Count one failed attempt by its error's class name and the endpoint that failed it."""
        if metrics_enabled():
            self._instruments.errors.add((error_class, endpoint, provider, model), 1)

    def record_ttfc(
        self, seconds: float, *, endpoint: str | None = None, provider: str | None = None, model: str | None = None
    ) -> None:
        """Record a stream's time to first chunk."""
        if not metrics_enabled():
            return
        ins = self._instruments
        ins.ttfc.record(seconds, ins.ttfc_attributes.get((endpoint, provider, model)))

    def record_restart(self, recovery: str, *, endpoint: str | None, provider: str | None, model: str | None) -> None:
        """Count one stream recovered (restarted or continued) after ``endpoint``'s answer failed mid-way."""
        if metrics_enabled():
            self._instruments.restarts.add((endpoint, provider, model, recovery), 1)

    def record_cache(self, hit: bool) -> None:
        """Count one response-cache lookup as a hit or a miss."""
        if metrics_enabled():
            (self._instruments.cache_hits if hit else self._instruments.cache_misses).add((), 1)

    def observe_budget(self, callback: BudgetCallback, *, scope: str = "runtime") -> None:
        """Report ``callback()`` (limit kind → remaining) on the budget gauge at each collection.

        ``BudgetGuard.remaining`` is such a callback; ``scope`` names whose budget it is.
        """
        self._budget_callbacks.append((scope, callback))
