"""The deadlines of a client's in-flight exchanges, kept on one loop timer.

Every exchange has a deadline, but a loop timer per exchange is the dearest thing on the
wire path: aiohttp's per-request timer (a ``TimerHandle`` plus a timer context entered at
every stage of the request) cost about 8 µs a request, ``asyncio.timeout`` about 4, both
more than building the request and decoding the reply together. :class:`Deadlines`
keeps the bounds in a set and one timer armed at the earliest of them. A bound that ends
before its deadline (nearly all do) leaves the timer alone: when it fires it finds
nothing due and moves to the earliest deadline still in flight, so under load the timer
is re-armed about once per timeout, not once per request. The timer is cancelled when
the last bound ends: an idle loop holds no timer of ours, and a fast-forwarding test
clock has nothing of ours to jump to.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

__all__ = ["Bound", "Deadlines"]


class Deadlines:
    """The bounds in flight on one event loop and the one timer that enforces them."""

    __slots__ = ("_armed", "_bounds", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._bounds: set[Bound] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = math.inf  # when the timer fires (inf: no timer)

    def time(self) -> float:
        """The loop's clock, which deadlines are on."""
        return self._loop.time()

    def at(self, when: float) -> Bound:
        """A bound at ``when`` (loop time), to enter in the task it bounds."""
        return Bound(self, when)

    def after(self, seconds: float) -> Bound:
        """A bound ``seconds`` from now."""
        return Bound(self, self._loop.time() + seconds)

    def _add(self, bound: Bound) -> None:
        self._bounds.add(bound)
        if bound.when < self._armed:
            self._arm(bound.when)

    def _remove(self, bound: Bound) -> None:
        bounds = self._bounds
        bounds.discard(bound)
        if not bounds and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed = math.inf

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        # The loop runs a timer up to its clock resolution early: what was armed for is due.
        due = max(self._loop.time(), self._armed)
        self._handle = None
        self._armed = math.inf
        following = math.inf
        for bound in self._bounds:
            if bound.expired:
                continue  # its task is already cancelled and has yet to leave the block
            if bound.when <= due:
                bound.expired = True
                bound.task.cancel()
            elif bound.when < following:
                following = bound.when
        if following < math.inf:
            self._arm(following)


class Bound:
    """``with deadlines.at(when):`` cancels the task at ``when`` and raises
    :class:`TimeoutError` from the block, as ``asyncio.timeout_at`` does: a cancellation
    from elsewhere (a hedge's twin won, the caller left) still propagates as one."""

    __slots__ = ("_cancelling", "_deadlines", "expired", "task", "when")

    task: asyncio.Task[object]

    def __init__(self, deadlines: Deadlines, when: float) -> None:
        self._deadlines = deadlines
        self.when = when
        self.expired = False

    def __enter__(self) -> Bound:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline bounds a task: enter it inside one")
        self.task = task
        self._cancelling = task.cancelling()
        self._deadlines._add(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._deadlines._remove(self)
        if self.expired and self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
