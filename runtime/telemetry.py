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

from opentelemetry import context, metrics, trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ._logging import log_transition

__all__ = [
    "INSTRUMENTATION_NAME",
    "NO_SPAN",
    "activate",
    "attempt_span",
    "emit_transition",
    "end_span",
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
    if _API_CHANGED:  # its internals are not what this reads: take the public, slower path
        provider: object = trace.get_tracer_provider()
    else:
        provider = trace._TRACER_PROVIDER
    return provider is not None and not isinstance(provider, _NO_SDK)


_UNREAD = object()
# Decided once: the set-once global is read as an attribute, without a getattr() call per request.
_API_CHANGED = getattr(trace, "_TRACER_PROVIDER", _UNREAD) is _UNREAD


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


class _Current:
    """Makes a span current for a ``with`` block: the context attached, then detached.

    ``trace.use_span`` (and ``start_as_current_span`` over it) is a generator context
    manager that records exceptions with their tracebacks; a request needs only the
    parent link, at a fraction of the cost.
    """

    __slots__ = ("span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        self.token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        context.detach(self.token)


class _Attempt(_Current):
    """An attempt's span, current inside the block (an instrumented HTTP client's spans
    become its children) and ended with the block's outcome."""

    __slots__ = ()

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        context.detach(self.token)
        end_span(self.span, error)


def attempt_span(name: str, attributes: dict[str, AttributeValue]) -> Any:
    """A context manager for an attempt: its span, current inside and ended by
    :func:`end_span` on the way out; a shared no-op when tracing is off."""
    if not tracing_enabled():
        return NO_SPAN
    return _Attempt(tracer().start_span(name, attributes=attributes))


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
    return _Current(span)


def end_span(span: Any, error: BaseException | None, attributes: dict[str, AttributeValue] | None = None) -> None:
    """End a span with ``attributes`` and its ``outcome``: ok, cancelled (the caller's
    choice, not an error) or the error's class, which also sets ``error.type`` and the
    error status. The attributes go in one call: the SDK takes its lock and checks the
    values once per call."""
    if span is NO_SPAN:
        return
    attributes = {} if attributes is None else attributes
    if error is None:
        attributes["outcome"] = "ok"
    elif isinstance(error, asyncio.CancelledError):
        attributes["outcome"] = "cancelled"
    else:
        name = type(error).__name__
        attributes["outcome"] = attributes["error.type"] = name
        span.set_status(Status(StatusCode.ERROR, name))
    span.set_attributes(attributes)
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
