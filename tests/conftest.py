"""Every async test runs on the fast-forwarding loop: timers fire at once, sockets stay real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime.testing import FaultyEndpoint, VirtualClockLoop

pytest_plugins = ["otel_fixtures"]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Run anyio tests on asyncio with the virtual clock."""
    return ("asyncio", {"loop_factory": VirtualClockLoop})


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FaultyEndpoint, FaultyEndpoint]]:
    """A primary and a backup, both local OpenAI-dialect endpoints, each answering its own
    text under its own model (a test module may define a pair of its own instead)."""
    async with (
        FaultyEndpoint("openai", name="primary", text="answer from primary", model="gpt-4o-mini") as primary,
        FaultyEndpoint("openai", name="backup", text="answer from backup", model="gpt-4o") as backup,
    ):
        yield primary, backup
