"""The actor base and the supervisor: mailbox, request/reply, restarts, intensity, escalation."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.actors import Actor, ActorState, ActorStopped, ChildSpec, Restart, Supervisor
from runtime.errors import ActorTimeout, LLMError

pytestmark = pytest.mark.anyio


class Counter(Actor):
    """Counts "add" messages; answers "get"; crashes on "boom"."""

    def __init__(self, name: str = "counter") -> None:
        super().__init__(name)
        self.value = 0

    async def handle(self, message: Any) -> Any:
        match message:
            case "add":
                self.value += 1
            case "get":
                return self.value
            case "boom":
                raise RuntimeError("boom")
            case "slow":
                await anyio.sleep(10)
            case "own timeout":
                raise TimeoutError("the handler's own")
        return None


class Ticker(Actor):
    """Runs a background loop that ticks every second of loop time."""

    def __init__(self) -> None:
        super().__init__("ticker")
        self.ticks = 0

    def background(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [self._tick]

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(1)
            self.ticks += 1


async def test_messages_are_handled_in_order_and_ask_replies() -> None:
    """tell() queues messages, ask() waits for the answer after them."""
    actor = Counter()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        assert actor.state is ActorState.RUNNING
        for _ in range(5):
            actor.tell("add")
        assert await actor.ask("get") == 5
        actor.stop()
    assert actor.state is ActorState.STOPPED


async def test_tell_after_stop_raises_actor_stopped() -> None:
    """A stopped actor refuses messages with a typed error."""
    actor = Counter()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        actor.stop()
    with pytest.raises(ActorStopped):
        actor.tell("add")


async def test_background_loops_run_and_stop_with_the_actor() -> None:
    """Background loops live in the actor's task group and end when it stops."""
    actor = Ticker()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        await anyio.sleep(10.5)
        actor.stop()
    assert actor.ticks == 10


async def test_crashed_child_is_restarted_with_fresh_state(span_exporter: InMemorySpanExporter) -> None:
    """one_for_one: a crash replaces the child with a fresh instance and emits restart spans."""
    instances: list[Counter] = []

    def start() -> Counter:
        instances.append(Counter())
        return instances[-1]

    sup = Supervisor(max_restarts=3, within=60)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        first = await sup.start_child(ChildSpec(name="c", start=start, labels={"endpoint": "c"}))
        first.tell("add")
        assert await first.ask("get") == 1
        first.tell("boom")
        await anyio.sleep(0.1)
        assert len(instances) == 2
        second = sup.children["c"]
        assert second is instances[1] and second.state is ActorState.RUNNING
        assert await second.ask("get") == 0
        await sup.shutdown(grace=1)
        tg.cancel_scope.cancel()
    names = [s.name for s in span_exporter.get_finished_spans()]
    assert names == ["actor running", "actor crashed", "actor running"]
    crashed = span_exporter.get_finished_spans()[1]
    assert crashed.attributes is not None
    assert crashed.attributes["from_state"] == "running" and crashed.attributes["to_state"] == "crashed"
    assert "boom" in str(crashed.attributes["reason"])


async def test_past_restart_intensity_the_child_is_escalated(span_exporter: InMemorySpanExporter) -> None:
    """More than max_restarts crashes within the period escalate once; other children keep running."""
    escalated: list[BaseException] = []
    sup = Supervisor(max_restarts=2, within=60)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await sup.start_child(ChildSpec(name="bad", start=Counter, on_escalate=escalated.append))
        good = await sup.start_child(ChildSpec(name="good", start=Counter))
        for _ in range(3):
            sup.children["bad"].tell("boom")
            await anyio.sleep(0.1)
        assert len(escalated) == 1 and isinstance(escalated[0], RuntimeError)
        assert "bad" in sup.escalated
        good.tell("add")
        assert await good.ask("get") == 1
        await sup.shutdown(grace=1)
        tg.cancel_scope.cancel()
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "supervisor failed"]
    assert len(spans) == 1
    assert spans[0].attributes is not None and spans[0].attributes["restarts"] == 3


async def test_crashes_spread_over_time_stay_under_intensity() -> None:
    """Crashes further apart than the period never escalate."""
    escalated: list[BaseException] = []
    sup = Supervisor(max_restarts=1, within=10)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await sup.start_child(ChildSpec(name="c", start=Counter, on_escalate=escalated.append))
        for _ in range(5):
            sup.children["c"].tell("boom")
            await anyio.sleep(11)
        assert escalated == []
        assert sup.restarts["c"] == 5
        await sup.shutdown(grace=1)
        tg.cancel_scope.cancel()


async def test_temporary_child_is_not_restarted() -> None:
    """A temporary child that crashes stays down."""
    sup = Supervisor()
    starts = 0

    def start() -> Counter:
        nonlocal starts
        starts += 1
        return Counter()

    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        child = await sup.start_child(ChildSpec(name="t", start=start, restart=Restart.TEMPORARY))
        child.tell("boom")
        await anyio.sleep(1)
        assert starts == 1 and child.state is ActorState.CRASHED
        await sup.shutdown(grace=1)
        tg.cancel_scope.cancel()


async def test_shutdown_cancels_children_that_outlive_the_grace() -> None:
    """Shutdown waits up to the grace period, then cancels."""

    class Stubborn(Actor):
        async def on_stop(self) -> None:
            await anyio.sleep(1000)

    sup = Supervisor()
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await sup.start_child(ChildSpec(name="s", start=lambda: Stubborn("s")))
        start = anyio.current_time()
        await sup.shutdown(grace=5)
        assert 5 <= anyio.current_time() - start < 6
        tg.cancel_scope.cancel()


async def test_ask_gets_the_handlers_exception_and_the_actor_carries_on() -> None:
    """A handler that raises anything answers the ask with that exception; the actor keeps serving."""
    actor = Counter()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        with pytest.raises(RuntimeError, match="boom"):
            await actor.ask("boom")
        assert actor.state is ActorState.RUNNING
        actor.tell("add")
        assert await actor.ask("get") == 1
        actor.stop()


async def test_ask_past_its_timeout_raises_actor_timeout_a_timeout_error_too() -> None:
    """ask(timeout=) on an answer that takes longer: ActorTimeout naming the actor and the
    timeout, which existing `except TimeoutError` code still catches; a TimeoutError the
    handler raises is its answer, passed on as it is."""
    actor = Counter()
    async with anyio.create_task_group() as tg:
        await tg.start(actor.run)
        with pytest.raises(TimeoutError, match="the handler's own") as own:
            await actor.ask("own timeout", timeout=5)
        assert type(own.value) is TimeoutError
        with pytest.raises(ActorTimeout) as info:
            await actor.ask("slow", timeout=2)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, LLMError)
        assert (info.value.actor, info.value.timeout) == ("counter", 2)
        assert str(info.value) == "actor 'counter' did not answer 'slow' within 2s"
        actor.stop()


async def test_asks_queued_behind_a_crash_are_answered_actor_stopped() -> None:
    """tell("boom") crashes the actor: the asks queued behind it get ActorStopped, never a hang."""
    actor = Counter()
    answers: list[BaseException] = []

    async def ask() -> None:
        try:
            await actor.ask("get")
        except ActorStopped as exc:
            answers.append(exc)

    with pytest.raises(ExceptionGroup):
        async with anyio.create_task_group() as tg:
            await tg.start(actor.run)
            actor.tell("boom")
            async with anyio.create_task_group() as askers:
                for _ in range(3):
                    askers.start_soon(ask)
    assert actor.state is ActorState.CRASHED
    assert len(answers) == 3
