"""A fast-forwarding asyncio event loop for tests: timers fire at once, I/O stays real.

Like trio's ``MockClock`` with autojump: when the loop would block waiting for its next
timer and nothing has happened on any socket for ``autojump_threshold`` real seconds,
the loop's clock jumps forward to that timer. A 450-second breaker timeout runs in
milliseconds, while real sockets (the fault-injecting endpoints on 127.0.0.1) keep
working, because any I/O readiness wakes the loop before it jumps.

Only the loop's clock moves: ``loop.time()``, and so ``asyncio.sleep``, timeouts and
``anyio`` deadlines. ``time.time()`` stays real. Use IP literals (``127.0.0.1``) in tests:
name resolution runs in a thread, which the loop cannot see as pending I/O.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

__all__ = ["VirtualClockLoop"]


class _FastForwardSelector:
    """Wraps the loop's selector; a select that would only wait for a timer jumps instead."""

    def __init__(self, selector: selectors.BaseSelector, loop: VirtualClockLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None or timeout <= 0:
            return self._selector.select(timeout)
        loop = self._loop
        # With no socket but the loop's own wake-up pipe registered, nothing can arrive:
        # jump at once. Otherwise give real I/O a short real-time chance first.
        threshold = 0.0 if len(self._selector.get_map()) <= 1 else loop.autojump_threshold
        if timeout <= threshold:
            return self._selector.select(timeout)
        events = self._selector.select(threshold)
        if not events:
            loop.advance(timeout)
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock fast-forwards whenever it would idle waiting for a timer."""

    def __init__(self, autojump_threshold: float = 0.002) -> None:
        super().__init__()
        self.autojump_threshold = autojump_threshold
        self._offset = 0.0
        inner: selectors.BaseSelector = self._selector  # type: ignore[has-type]
        self._selector = _FastForwardSelector(inner, self)

    def time(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the loop's clock forward by ``seconds`` without waiting."""
        if seconds > 0:
            self._offset += seconds
