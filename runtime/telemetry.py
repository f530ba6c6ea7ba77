"""OpenTelemetry spans for state transitions and requests.

Everything goes through the global OpenTelemetry API, so it costs next to nothing when
no SDK is configured and lands in the user's pipeline when one is. The tracer is looked
up once per call site group, not per request.

Transition spans are instantaneous: one span per real transition, named
``"{kind} {to_state}"`` (``"breaker open"``, ``"endpoint throttled"``,
``"actor restarted"``), with these attributes:

=============  ==============================================================
``endpoint``   the endpoint's name
``provider``   its provider
``model``      its model
``from_state`` the state before
``to_state``   the state after
``reason``     why, in a few words
figures        what the decision rested on: ``failure_count``, ``failure_rate``,
               ``retry_after``, ``open_for``, ``restarts`` …
=============  ==============================================================

A transition to the same state is not a transition: :func:`emit_transition` drops it.
Each real one is also one INFO line on the ``runtime`` logger (:mod:`runtime._logging`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ._logging import log_transition

__all__ = [
    "INSTRUMENTATION_NAME",
    "NO_SPAN",
    "activate",
    "emit_transition",
    "end_span",
    "request_span",
    "resolve_providers",
    "start_span",
    "tracer",
    "tracing_enabled",
]

INSTRUMENTATION_NAME = "llm-runtime"


def tracer() -> trace.Tracer:
    """The runtime's tracer from the current global provider, looked up once per provider.

    ``get_tracer`` builds an instrumentation scope and, on the SDK, checks it under a
    warnings filter: tens of microseconds that a span per request must not pay.
    """
    global _tracer, _tracer_of
    provider = getattr(trace, "_TRACER_PROVIDER", _UNREAD)
    if _tracer is None or provider is not _tracer_of or provider is _UNREAD:
        _tracer, _tracer_of = trace.get_tracer(INSTRUMENTATION_NAME), provider
    return _tracer


_tracer: trace.Tracer | None = None
_tracer_of: object = None


_NO_SDK = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def tracing_enabled() -> bool:
    """True once a real tracer provider (an SDK) is installed globally.

    Even a no-op span costs several microseconds (context attach and detach), and
    ``trace.get_tracer_provider()`` reads ``os.environ`` on every call until a provider
    is set. The global provider can be set only once, so the set-once module global is
    read directly; :func:`resolve_providers` (called when a runtime starts) lets an
    environment-configured provider load first.
    """
    provider = getattr(trace, "_TRACER_PROVIDER", _UNREAD)
    if provider is _UNREAD:  # the API changed its internals: take the public, slower path
        provider = trace.get_tracer_provider()
    return provider is not None and not isinstance(provider, _NO_SDK)


_UNREAD = object()


def resolve_providers() -> None:
    """Let providers configured by ``OTEL_PYTHON_*_PROVIDER`` variables load now, not mid-request."""
    trace.get_tracer_provider()
    metrics.get_meter_provider()


class _NoSpan:
    """Stands in for a span when tracing is off: a context manager that records nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        return None

    def is_recording(self) -> bool:
        return False

    def end(self) -> None:
        return None


NO_SPAN = _NoSpan()


def request_span(name: str, attributes: dict[str, AttributeValue]) -> Any:
    """A current span for an attempt (a context manager), or a shared no-op when tracing is off."""
    if not tracing_enabled():
        return NO_SPAN
    return tracer().start_as_current_span(name, attributes=attributes)


def start_span(name: str, attributes: dict[str, AttributeValue]) -> Any:
    """A request's span, started but not current (a stream's outlives any one ``with``
    block): make it current with :func:`activate`, end it with :func:`end_span`. The
    shared no-op when tracing is off."""
    if not tracing_enabled():
        return NO_SPAN
    return tracer().start_span(name, attributes=attributes)


def activate(span: Any) -> Any:
    """A context manager making ``span`` current, so the spans started inside are its children."""
    if span is NO_SPAN:
        return NO_SPAN
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def end_span(span: Any, error: BaseException | None) -> None:
    """End a request's span: ``outcome`` ok, cancelled (the caller's choice, not an error)
    or the error's class, which also sets the error status."""
    if span is NO_SPAN:
        return
    if error is None:
        span.set_attribute("outcome", "ok")
    elif isinstance(error, asyncio.CancelledError):
        span.set_attribute("outcome", "cancelled")
    else:
        name = type(error).__name__
        span.set_attribute("outcome", name)
        span.set_attribute("error.type", name)
        span.set_status(Status(StatusCode.ERROR, name))
    span.end()


def emit_transition(
    kind: str,
    *,
    endpoint: str,
    provider: str,
    model: str,
    from_state: str,
    to_state: str,
    reason: str,
    **figures: float | int | str | bool | None,
) -> bool:
    """Emit one span for a state transition; return False (and emit nothing) for a no-op."""
    if from_state == to_state:
        return False
    log_transition(kind, endpoint, from_state, to_state, reason, figures)
    attributes: dict[str, Any] = {
        "endpoint": endpoint,
        "provider": provider,
        "model": model,
        "from_state": from_state,
        "to_state": to_state,
        "reason": reason,
    }
    for key, value in figures.items():
        if value is not None:
            attributes[key] = value
    span = tracer().start_span(f"{kind} {to_state}", attributes=attributes)
    span.end()
    return True
