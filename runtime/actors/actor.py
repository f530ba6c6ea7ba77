"""The actor base: a mailbox, a run loop, request/reply, a lifecycle.

An actor owns its state; other code asks it. Messages arrive in an anyio memory object
stream and are handled one at a time by :meth:`Actor.handle`, so handlers never race
with each other. ``tell`` sends without waiting (a handler's exception then crashes the
actor, for its supervisor to restart); ``ask`` always gets an answer: the handler's
value or exception, or ActorStopped. Background loops of the actor (timers, probes) run in the actor's own
task group, so every task belongs to a group and nothing outlives its owner.

Ownership is the rule, not a mailbox hop per request: an actor may expose synchronous
methods that read or change its state from the caller's task, because on one event loop
a synchronous method runs to completion without interleaving. Only work that must wait
goes through the mailbox or the actor's own tasks.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import ActorStopped, ActorTimeout

__all__ = ["Actor", "ActorState", "ActorStopped", "Call"]


class ActorState(enum.Enum):
    """Where an actor is in its life."""

    STARTING = "starting"  # run() entered, on_start not finished
    RUNNING = "running"  # handling messages
    STOPPING = "stopping"  # asked to stop; finishing what it holds
    STOPPED = "stopped"  # run() returned normally
    CRASHED = "crashed"  # run() raised


class Call:
    """A request that expects a reply: ``ask`` waits on it, the actor answers with ``reply`` or ``fail``."""

    __slots__ = ("_done", "_error", "_value", "message")

    def __init__(self, message: Any) -> None:
        self.message = message
        self._done = anyio.Event()
        self._value: Any = None
        self._error: BaseException | None = None

    def reply(self, value: Any) -> None:
        """Answer the call."""
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        """Answer the call with an error the asker will raise."""
        self._error = error
        self._done.set()

    async def wait(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class Actor:
    """Base of every actor: subclass and override :meth:`handle`, :meth:`on_start`, :meth:`background`."""

    def __init__(self, name: str, *, mailbox_size: int = 64) -> None:
        self.name = name
        self.state = ActorState.STARTING
        self._send: MemoryObjectSendStream[Any]
        self._receive: MemoryObjectReceiveStream[Any]
        self._send, self._receive = anyio.create_memory_object_stream[Any](mailbox_size)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.state.value}>"

    # --- the lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until stopped: start, then handle messages while background loops run.

        Raises whatever crashed the actor; the supervisor decides what happens next.
        """
        try:
            await self.on_start()
            self.state = ActorState.RUNNING
            task_status.started()
            async with anyio.create_task_group() as tg:
                for loop in self.background():
                    tg.start_soon(loop)
                async for message in self._receive:
                    if isinstance(message, Call):
                        await self._answer(message)
                    else:
                        await self.handle(message)
                self.state = ActorState.STOPPING
                tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await self.on_stop()
            self.state = ActorState.STOPPED
        except BaseException:
            if self.state is not ActorState.STOPPED:
                self.state = ActorState.CRASHED
            raise
        finally:
            # A crashed actor's mailbox is closed too: tell() to it fails at once, and
            # every ask still queued is answered with ActorStopped instead of waiting.
            self._send.close()
            self._fail_queued()
            self._receive.close()

    async def _answer(self, call: Call) -> None:
        """Handle a call and answer it whatever happens: the handler's exception goes
        to the asker (the actor carries on); a cancellation answers ActorStopped."""
        try:
            value = await self.handle(call.message)
        except Exception as exc:
            call.fail(exc)
        except BaseException:
            call.fail(ActorStopped(f"actor {self.name!r} stopped before answering {call.message!r}"))
            raise
        else:
            call.reply(value)

    def _fail_queued(self) -> None:
        while True:
            try:
                message = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            if isinstance(message, Call):
                message.fail(ActorStopped(f"actor {self.name!r} stopped before answering {message.message!r}"))

    async def on_start(self) -> None:
        """Prepare before the first message (override)."""

    async def on_stop(self) -> None:
        """Clean up after the last message (override); runs shielded from cancellation."""

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Loops to run beside the mailbox for the actor's whole life (override)."""
        return []

    async def handle(self, message: Any) -> Any:
        """Handle one message; the value returned answers an ``ask`` (override)."""
        raise NotImplementedError(f"{type(self).__name__} does not handle {type(message).__name__}")

    # --- talking to it ------------------------------------------------------------------

    def tell(self, message: Any) -> None:
        """Send a message without waiting for it to be handled.

        Raises :class:`ActorStopped` if the actor has stopped, and ``anyio.WouldBlock``
        when the mailbox is full (a bounded mailbox is back-pressure, not a leak).
        """
        try:
            self._send.send_nowait(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise ActorStopped(f"actor {self.name!r} is not running") from exc

    async def ask(self, message: Any, *, timeout: float = math.inf) -> Any:
        """Send a message and wait for the actor's answer.

        Always answered: the handler's value, the exception the handler raised, or
        :class:`ActorStopped` when the actor stops or crashes first. ``timeout`` (seconds)
        raises :class:`~runtime.errors.ActorTimeout` (a ``TimeoutError`` too) if the answer
        takes longer.
        """
        call = Call(message)
        try:
            await self._send.send(call)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise ActorStopped(f"actor {self.name!r} is not running") from exc
        # move_on_after, not fail_after: a TimeoutError the handler raised is its answer, not ours.
        with anyio.move_on_after(timeout):
            return await call.wait()
        raise ActorTimeout(f"actor {self.name!r} did not answer {message!r} within {timeout:g}s",
                           actor=self.name, timeout=timeout)

    def stop(self) -> None:
        """Ask the actor to stop after the messages already in its mailbox."""
        self._send.close()
