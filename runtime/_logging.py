"""Standard :mod:`logging` under the ``runtime`` logger.

What is logged, and at which level:

==========  ======================================================================
INFO        every state transition (breaker, endpoint throttled / misconfigured /
            unhealthy / healthy again, actor restarts, supervisor escalation) and
            every failover (a request answered by another endpoint after a failure)
WARNING     budget warnings (``runtime.budget``), an exporter or a shared store
            that is down
DEBUG       every attempt: endpoint, outcome, elapsed, HTTP status
==========  ======================================================================

Nothing at any level carries a key or a prompt: the lines are built from endpoint
names, error class names, states, reasons and figures only, never from an error's
message (a provider may echo the request back in it).

As a library, ``runtime`` only adds a :class:`logging.NullHandler`; the application
decides where records go. ``LLM_RUNTIME_LOG=debug|info|warning`` attaches a stderr
handler at that level when ``runtime`` is imported (like ``OPENAI_LOG`` does for the
openai client), and the CLI's ``-v``/``-vv`` do the same.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

__all__ = ["LOG_ENV", "LOGGER_NAME", "configure", "level_from_env", "log_attempt", "log_transition", "logger", "logging_to_stderr"]

LOGGER_NAME = "runtime"
#: The variable that turns logging to stderr on without code: ``debug``, ``info`` or ``warning``.
LOG_ENV = "LLM_RUNTIME_LOG"

logger = logging.getLogger(LOGGER_NAME)
logger.addHandler(logging.NullHandler())

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The handler configure() attached, so a second call replaces it instead of doubling lines.
_handler: logging.Handler | None = None


def level_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The level ``LLM_RUNTIME_LOG`` asks for, or None when it is unset or not a level name."""
    value = (os.environ if environ is None else environ).get(LOG_ENV, "").strip().lower()
    return _LEVELS.get(value)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record comes, not what it was at set-up."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        return None


def configure(level: int, stream: Any = None) -> logging.Handler:
    """Send ``runtime`` records at ``level`` and above to ``stream`` (default: stderr), one line each."""
    global _handler
    if _handler is not None:
        logger.removeHandler(_handler)
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(level)
    _handler = handler
    return handler


@contextmanager
def logging_to_stderr(level: int) -> Iterator[None]:
    """While inside, ``runtime`` records at ``level`` and above go to stderr (the CLI's set-up).

    The OpenTelemetry exporters' own retry chatter is kept below WARNING unless DEBUG is
    asked for: the ``runtime`` logger already says once that an exporter is down.
    """
    global _handler
    saved_level, saved_handler = logger.level, _handler
    otel = logging.getLogger("opentelemetry.exporter.otlp")
    otel_level = otel.level
    if level > logging.DEBUG:
        otel.setLevel(logging.CRITICAL)
    configure(level)
    try:
        yield
    finally:
        if _handler is not None:
            logger.removeHandler(_handler)
        logger.setLevel(saved_level)
        otel.setLevel(otel_level)
        _handler = saved_handler
        if saved_handler is not None:
            logger.addHandler(saved_handler)


def log_transition(
    kind: str, endpoint: str, from_state: str, to_state: str, reason: str, figures: Mapping[str, object]
) -> None:
    """One INFO line for a state transition (called where its span is emitted)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    shown = " ".join(f"{key}={value}" for key, value in figures.items() if value is not None)
    logger.info(
        "%s %s: %s -> %s (%s)%s", kind, endpoint, from_state, to_state, reason, f" {shown}" if shown else ""
    )


def log_attempt(attempts: Sequence[Any]) -> None:
    """A DEBUG line for the attempt just recorded, and an INFO line when it ended a failover.

    ``attempts`` is the request's trail so far (:class:`runtime.types.Attempt`); the last
    one has just ended.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    last = attempts[-1]
    error = last.error
    if logger.isEnabledFor(logging.DEBUG):
        status = getattr(error, "status", None)
        logger.debug(
            "attempt %d on %s: %s in %.1f ms%s%s",
            len(attempts),
            last.endpoint,
            "ok" if error is None else type(error).__name__,
            last.elapsed * 1000,
            "" if status is None else f", HTTP {status}",
            " (hedge)" if last.hedge else "",
        )
    if error is None:
        failed = [f"{a.endpoint} ({type(a.error).__name__})" for a in attempts[:-1] if a.error is not None]
        if failed:
            logger.info("failover: answered by %s after %s", last.endpoint, ", ".join(failed))


def _configure_from_env() -> None:
    level = level_from_env()
    if level is not None:
        configure(level)


_configure_from_env()
