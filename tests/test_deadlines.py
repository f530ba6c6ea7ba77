"""Deadlines: many exchanges' bounds on one loop timer, on the virtual clock.

A bound behaves as ``asyncio.timeout_at``: its block raises TimeoutError at its deadline,
a cancellation from elsewhere propagates as one. The shared timer is re-armed to the
earliest deadline in flight and gone as soon as the loop runs on with nothing in flight;
a bound that begins before then (the next request of a caller) keeps it.
"""

from __future__ import annotations

import asyncio

import pytest

from runtime.providers.deadlines import Deadlines

pytestmark = pytest.mark.anyio


async def test_a_bound_raises_timeout_error_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    start = loop.time()
    with pytest.raises(TimeoutError):
        with deadlines.after(5):
            await asyncio.sleep(60)
    assert 5 <= loop.time() - start < 6
    assert deadlines._handle is None  # nothing in flight: no timer of ours on the loop


async def test_a_block_that_ends_in_time_is_untouched_and_leaves_no_timer() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())
    with deadlines.after(5) as bound:
        await asyncio.sleep(1)
    assert not bound.expired
    await asyncio.sleep(0)  # the loop runs on: nothing in flight, no timer of ours
    assert deadlines._handle is None
    await asyncio.sleep(10)  # a cancel left pending would surface at this await


async def test_back_to_back_bounds_keep_one_timer() -> None:
    """The next bound begins before the loop runs on (a caller's next request): the timer
    armed for the first stays and is not re-armed for later deadlines; once nothing is in
    flight it goes."""
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    with deadlines.after(5):
        await asyncio.sleep(0.1)
    handle = deadlines._handle
    assert handle is not None
    for _ in range(3):
        with deadlines.after(5):
            await asyncio.sleep(0.1)
        assert deadlines._handle is handle and not handle.cancelled()
    await asyncio.sleep(0)
    assert deadlines._handle is None and handle.cancelled()
    with pytest.raises(TimeoutError):  # a bound after all that still expires at its deadline
        with deadlines.after(2):
            await asyncio.sleep(60)


async def test_each_of_many_bounds_expires_at_its_own_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    start = loop.time()
    ended: dict[str, float] = {}

    async def bounded(name: str, seconds: float, work: float) -> None:
        try:
            with deadlines.after(seconds):
                await asyncio.sleep(work)
            ended[name] = -(loop.time() - start)  # finished in time: negative
        except TimeoutError:
            ended[name] = loop.time() - start

    # The 30 s bound arms the timer first; the 3 s one re-arms it earlier; the 1 s one
    # ends in time, so the timer it leaves behind finds nothing due and moves on.
    await asyncio.gather(bounded("long", 30, 100), bounded("short", 3, 100), bounded("quick", 10, 1))
    assert 3 <= ended["short"] < 3.5
    assert 30 <= ended["long"] < 30.5
    assert -1.5 < ended["quick"] <= -1
    assert deadlines._handle is None


async def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    deadlines = Deadlines(asyncio.get_running_loop())

    async def bounded() -> None:
        with deadlines.after(30):
            await asyncio.sleep(100)

    task = asyncio.create_task(bounded())
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert deadlines._handle is None


async def test_a_deadline_already_past_expires_at_the_next_await() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    with pytest.raises(TimeoutError):
        with deadlines.at(loop.time() - 1):
            await asyncio.sleep(1)


async def test_a_bound_outside_a_task_is_refused() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    refused: asyncio.Future[RuntimeError] = loop.create_future()

    def callback() -> None:  # a loop callback runs in no task
        try:
            deadlines.after(1).__enter__()
        except RuntimeError as exc:
            refused.set_result(exc)

    loop.call_soon(callback)
    assert "inside one" in str(await refused)
    assert not deadlines._bounds
