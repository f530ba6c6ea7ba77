"""The supervisor: one_for_one restarts, restart intensity, escalation.

The supervisor owns one task group; every child actor runs in it. When a child crashes
it is replaced by a fresh one built by its spec's ``start`` factory (fresh runtime state;
state that must survive, such as breaker state, lives in storage the factory hands
over). If a child crashes more than ``max_restarts`` times within ``within`` seconds the
supervisor stops restarting it and escalates: the spec's ``on_escalate`` runs (the
runtime marks the endpoint ``failed`` and routes around it) and a span says so. The
supervisor and every other child keep running.

Children are ``permanent`` (always restarted), ``transient`` (restarted only after a
crash) or ``temporary`` (never restarted). Shutdown asks every child to stop and
cancels whatever has not stopped after the grace period.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ..telemetry import emit_transition
from .actor import Actor

__all__ = ["ChildSpec", "Restart", "Supervisor"]


class Restart(enum.Enum):
    """When a child that ended is started again."""

    PERMANENT = "permanent"  # always, after a crash or a normal end
    TRANSIENT = "transient"  # only after a crash
    TEMPORARY = "temporary"  # never


@dataclass(eq=False)
class ChildSpec:
    """How to start one child and what to do with it.

    ``start`` builds a fresh actor; ``on_started`` learns of each new instance (so the
    owner can route to it); ``on_escalate`` runs once when restarts are given up.
    ``labels`` go on the lifecycle spans (``endpoint``, ``provider``, ``model``).
    """

    name: str
    start: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    on_started: Callable[[Actor], None] | None = None
    on_escalate: Callable[[BaseException], None] | None = None
    labels: dict[str, str] = field(default_factory=dict)


class Supervisor:
    """Runs child actors in one task group and restarts them by their specs."""

    def __init__(self, name: str = "runtime", *, max_restarts: int = 3, within: float = 60.0) -> None:
        self.name = name
        self.max_restarts = max_restarts
        self.within = within
        self.children: dict[str, Actor] = {}
        self.escalated: dict[str, BaseException] = {}
        self.restarts: dict[str, int] = {}
        self._tg: TaskGroup | None = None
        self._stopping = False
        self._ended: dict[str, anyio.Event] = {}

    def __repr__(self) -> str:
        return (
            f"<Supervisor {self.name!r} [children: {len(self.children)} | "
            f"restarts: {sum(self.restarts.values())} | escalated: {len(self.escalated)}]>"
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the task group until :meth:`shutdown`; children are added with :meth:`start_child`."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await anyio.sleep(math.inf)

    async def start_child(self, spec: ChildSpec) -> Actor:
        """Start a child and return once it runs."""
        assert self._tg is not None, "the supervisor is not running"
        started = await self._tg.start(self._supervise, spec)
        assert isinstance(started, Actor)
        return started

    def _lifecycle(
        self, spec: ChildSpec, from_state: str, to_state: str, reason: str, *, kind: str = "actor", **figures: float | int
    ) -> None:
        labels = spec.labels
        emit_transition(
            kind,
            endpoint=labels.get("endpoint", spec.name),
            provider=labels.get("provider", ""),
            model=labels.get("model", ""),
            from_state=from_state,
            to_state=to_state,
            reason=reason,
            **figures,
        )

    async def _supervise(self, spec: ChildSpec, *, task_status: TaskStatus[Actor]) -> None:
        ended = self._ended[spec.name] = anyio.Event()
        try:
            await self._supervise_child(spec, task_status)
        finally:
            ended.set()

    async def _supervise_child(self, spec: ChildSpec, task_status: TaskStatus[Actor]) -> None:
        crashes: deque[float] = deque()
        first = True
        while not self._stopping:
            actor = spec.start()
            self.children[spec.name] = actor
            if spec.on_started is not None:
                spec.on_started(actor)
            try:
                async with anyio.create_task_group() as inner:
                    await inner.start(actor.run)
                    if first:
                        first = False
                        task_status.started(actor)
                        self._lifecycle(spec, "starting", "running", "started")
                    else:
                        self._lifecycle(spec, "crashed", "running", "restarted", restarts=self.restarts[spec.name])
            except Exception as group:  # a crash of the child, never of the supervisor
                if first:
                    raise
                exc = _unwrap(group)
                now = anyio.current_time()
                crashes.append(now)
                while crashes and crashes[0] < now - self.within:
                    crashes.popleft()
                self._lifecycle(spec, "running", "crashed", f"{type(exc).__name__}: {exc}"[:200], crashes=len(crashes))
                if spec.restart is Restart.TEMPORARY:
                    return
                if len(crashes) > self.max_restarts:
                    self.escalated[spec.name] = exc
                    self._lifecycle(
                        spec,
                        "crashed",
                        "failed",
                        f"more than {self.max_restarts} restarts within {self.within:g}s",
                        kind="supervisor",
                        restarts=len(crashes),
                    )
                    if spec.on_escalate is not None:
                        spec.on_escalate(exc)
                    return
                self.restarts[spec.name] = self.restarts.get(spec.name, 0) + 1
                continue
            # the child returned normally
            if not self._stopping:
                self._lifecycle(spec, "running", "stopped", "returned")
            if spec.restart is not Restart.PERMANENT or self._stopping:
                return

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop every child, waiting up to ``grace`` seconds before cancelling the rest."""
        self._stopping = True
        for actor in self.children.values():
            actor.stop()
        if self._tg is not None:
            with anyio.move_on_after(grace):
                for ended in list(self._ended.values()):
                    await ended.wait()
            self._tg.cancel_scope.cancel()


def _unwrap(exc: Exception) -> Exception:
    """The one exception inside the task-group wrappers around it."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
