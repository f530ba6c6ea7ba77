"""One gateway-like process for the multi-process shared-state tests.

Reads one JSON command per line on stdin, answers one JSON line on stdout:

- ``{"op": "start", "shared": {...}, "endpoint": {...}, "budget": {...} | null}``: enter a
  Runtime on that SharedPolicy with that one Endpoint (max_attempts 1: every refusal shows);
- ``{"op": "load", "concurrency": C, "requests": N | "duration": D, "timeout": T, "max_tokens": M}``:
  send N requests (or keep sending for D seconds) from C concurrent callers; answers the
  outcomes by class name and the usage of the successes;
- ``{"op": "status"}``: the endpoint's breaker, state and shared-state description;
- ``{"op": "stop"}``: leave the Runtime.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from runtime import AllEndpointsFailed, Budget, Endpoint, HealthPolicy, RetryPolicy, Runtime
from runtime.cluster import SharedPolicy
from runtime.policy import BreakerPolicy


class Worker:
    def __init__(self) -> None:
        self.rt: Runtime | None = None

    async def start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        spec = dict(cmd["endpoint"])
        if "breaker" in spec:
            spec["breaker"] = BreakerPolicy(**spec["breaker"])
        endpoint = Endpoint(health=HealthPolicy(enabled=False), **spec)
        budget = Budget(**cmd["budget"]) if cmd.get("budget") else None
        self.rt = Runtime(
            [endpoint], shared=SharedPolicy(**cmd["shared"]), budget=budget, retry=RetryPolicy(max_attempts=1)
        )
        await self.rt.__aenter__()
        return {"ok": True}

    async def load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        rt = self.rt
        assert rt is not None
        outcomes: Counter[str] = Counter()
        tokens = 0
        left = cmd.get("requests")
        end = time.monotonic() + cmd.get("duration", 3600.0)

        async def caller() -> None:
            nonlocal left, tokens
            while time.monotonic() < end and (left is None or left > 0):
                if left is not None:
                    left -= 1
                started = time.monotonic()
                try:
                    reply = await rt.chat("hello there", max_tokens=cmd.get("max_tokens", 16), timeout=cmd["timeout"])
                except Exception as exc:
                    # One attempt per request: name what that attempt met, not the wrapper.
                    cause = exc.attempts[-1].error if isinstance(exc, AllEndpointsFailed) and exc.attempts else exc
                    outcomes[type(cause).__name__] += 1
                    # A refusal answers at once; do not spin on it faster than the deadline would.
                    await asyncio.sleep(max(0.0, cmd.get("pause", 0.0) - (time.monotonic() - started)))
                    continue
                outcomes["ok"] += 1
                tokens += reply.usage.input_tokens + reply.usage.output_tokens

        await asyncio.gather(*(caller() for _ in range(cmd["concurrency"])))
        return {"outcomes": dict(outcomes), "tokens": tokens}

    def status(self) -> dict[str, Any]:
        assert self.rt is not None
        status = self.rt.status()[0]
        stats = self.rt.actor(status.name).breaker.statistics()
        return {"breaker": status.breaker, "state": status.state, "shared": status.shared, "trips": stats.trips}

    async def stop(self) -> dict[str, Any]:
        if self.rt is not None:
            await self.rt.__aexit__(None, None, None)
            self.rt = None
        return {"ok": True}


async def main() -> None:
    worker = Worker()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            await worker.stop()
            return
        cmd = json.loads(line)
        match cmd["op"]:
            case "start":
                answer = await worker.start(cmd)
            case "load":
                answer = await worker.load(cmd)
            case "status":
                answer = worker.status()
            case _:
                answer = await worker.stop()
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
