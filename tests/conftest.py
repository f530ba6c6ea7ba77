"""Every async test runs on the fast-forwarding loop: timers fire at once, sockets stay real."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.testing import VirtualClockLoop

pytest_plugins = ["otel_fixtures"]


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """Run anyio tests on asyncio with the virtual clock."""
    return ("asyncio", {"loop_factory": VirtualClockLoop})
