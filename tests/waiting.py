"""A helper the tests share: let the event loop run until something has happened."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], rounds: int = 500) -> None:
    """Let the loop run (10 ms of loop time a turn) until ``condition()`` holds."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")
