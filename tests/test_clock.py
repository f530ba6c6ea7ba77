"""The virtual clock fast-forwards timers while real sockets keep working."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

pytestmark = pytest.mark.anyio


async def test_long_sleep_takes_no_real_time() -> None:
    """A 450-second sleep completes in well under a real second."""
    loop = asyncio.get_running_loop()
    start_real, start_loop = time.monotonic(), loop.time()
    await anyio.sleep(450)
    assert loop.time() - start_loop >= 450
    assert time.monotonic() - start_real < 1.0


async def test_deadline_fires_on_virtual_time() -> None:
    """anyio deadlines follow the loop's clock."""
    with anyio.move_on_after(30) as scope:
        await anyio.sleep(3600)
    assert scope.cancelled_caught


async def test_socket_io_still_works() -> None:
    """Real loopback I/O completes while timers are pending."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(await stream.receive())

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        with anyio.fail_after(10):
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                await client.send(b"ping")
                assert await client.receive() == b"ping"
        tg.cancel_scope.cancel()
