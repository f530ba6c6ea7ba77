"""The deadlines of a client's in-flight exchanges, kept on one loop timer.

Every exchange has a deadline, but a loop timer per exchange is the dearest thing on the
wire path: aiohttp's per-request timer (a ``TimerHandle`` plus a timer context entered at
every stage of the request) cost about 8 µs a request, ``asyncio.timeout`` about 4, both
more than building the request and decoding the reply together. :class:`Deadlines`
keeps the bounds in a set and one timer armed at the earliest of them. A bound that ends
before its deadline (nearly all do) leaves the timer alone: when it fires it finds
nothing due and moves to the earliest deadline still in flight, so under load the timer
is re-armed about once per timeout, not once per request. When the last bound ends the
timer is cancelled as the loop runs on (a callback made ready then), unless a new bound
came first, as it does when a caller sends its next request at once: requests one after
another keep one timer rather than arming and cancelling one each (~250 bytecodes and a
heap push and pop a request, with asyncio's share). An idle loop holds no timer of ours,
and a fast-forwarding test clock has nothing of ours to jump to.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from types import TracebackType
from typing import Any

import msgspec

__all__ = ["Bound", "Deadlines"]

# The timer's callbacks read no context variable: one empty context serves every arming,
# instead of the copy of the caller's that call_at makes by default.
_NO_CONTEXT = contextvars.Context()


class Deadlines:
    """The bounds in flight on one event loop and the one timer that enforces them."""

    __slots__ = ("_armed", "_bounds", "_disarming", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._bounds: set[Bound] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._armed = math.inf  # when the timer fires (inf: no timer)
        self._disarming = False  # _disarm is ready to run

    def time(self) -> float:
        """The loop's clock, which deadlines are on."""
        return self._loop.time()

    def at(self, when: float) -> Bound:
        """A bound at ``when`` (loop time), to enter in the task it bounds."""
        return Bound(self, when)

    def after(self, seconds: float) -> Bound:
        """A bound ``seconds`` from now."""
        return Bound(self, self._loop.time() + seconds)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = when
        self._handle = self._loop.call_at(when, self._fire, context=_NO_CONTEXT)

    def _disarm(self) -> None:
        # The last bound ended an iteration ago: cancel the timer unless another came since.
        self._disarming = False
        if not self._bounds and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed = math.inf

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
                if bound.task is not None:  # always, once entered (only entered bounds are here)
                    bound.task.cancel()
            elif bound.when < following:
                following = bound.when
        if following < math.inf:
            self._arm(following)


class Bound(msgspec.Struct, eq=False):
    """``with deadlines.at(when):`` cancels the task at ``when`` and raises
    :class:`TimeoutError` from the block, as ``asyncio.timeout_at`` does: a cancellation
    from elsewhere (a hedge's twin won, the caller left) still propagates as one.

    A struct (made in C, no Python ``__init__``: one is made per exchange and per chunk
    read), compared and hashed by identity."""

    _deadlines: Deadlines
    when: float
    expired: bool = False
    task: asyncio.Task[Any] | None = None
    _cancelling: int = 0

    def __enter__(self) -> Bound:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline bounds a task: enter it inside one")
        self.task = task
        self._cancelling = task.cancelling()
        # Deadlines' bookkeeping inline: entering and leaving are on every exchange's path.
        deadlines = self._deadlines
        deadlines._bounds.add(self)
        if self.when < deadlines._armed:
            deadlines._arm(self.when)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        deadlines = self._deadlines
        bounds = deadlines._bounds
        bounds.discard(self)
        if not bounds and deadlines._handle is not None and not deadlines._disarming:
            deadlines._disarming = True
            deadlines._loop.call_soon(deadlines._disarm, context=_NO_CONTEXT)
        if self.expired:  # rare: tested first, and the rest read only then
            task = self.task
            if task is not None and task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError from exc
