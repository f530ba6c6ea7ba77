"""Every async test runs on the fast-forwarding loop: timers fire at once, sockets stay real;
a module marked ``real_time`` runs on real time instead."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from runtime.cluster.server import RedisServer
from runtime.testing import FaultyEndpoint, VirtualClockLoop

pytest_plugins = ["otel_fixtures"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_time: run the module's async tests on real time, not the virtual clock")


@pytest.fixture
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """Run anyio tests on asyncio with the virtual clock; tests marked ``real_time`` (shared
    state: Redis's clock runs the shared totals, so the loop's clock must not jump) on real time."""
    if request.node.get_closest_marker("real_time") is not None:
        return ("asyncio", {})
    return ("asyncio", {"loop_factory": VirtualClockLoop})


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for a test module; each test uses keys under a prefix of its own."""
    with RedisServer() as srv:
        yield srv


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FaultyEndpoint, FaultyEndpoint]]:
    """A primary and a backup, both local OpenAI-dialect endpoints, each answering its own
    text under its own model (a test module may define a pair of its own instead)."""
    async with (
        FaultyEndpoint("openai", name="primary", text="answer from primary", model="gpt-4o-mini") as primary,
        FaultyEndpoint("openai", name="backup", text="answer from backup", model="gpt-4o") as backup,
    ):
        yield primary, backup
