"""Typed structured output with repair and failover, and a text completion.

``response_format=Ticket`` (a msgspec Struct) asks every provider for JSON matching the
struct in its own way: the OpenAI-compatible primary with a strict ``json_schema``, the
Anthropic backup with a forced tool. The reply is checked and comes back as a ``Ticket``
on ``reply.parsed``. The primary's first answer here misses a field: with ``repair=1``
the runtime sends it back, with what was wrong, to the same endpoint, which fixes it.
When the primary goes down the backup answers in the same shape. Last, ``complete()``
continues a prompt on the endpoint that has a text-completion API (Ollama), skipping
the Anthropic one that has none.

Runs against local fault-injecting endpoints, with no network and no API key::

    python examples/structured_output.py
"""

from __future__ import annotations

from typing import Literal

import anyio
import msgspec

from runtime import InvalidOutput, Runtime
from runtime.testing import FaultyEndpoint, LocalEndpoints


class Ticket(msgspec.Struct):
    """What the support bot must extract from a message."""

    summary: str
    priority: Literal["low", "high"]
    steps: list[str]


GOOD = '{"summary": "login fails after reset", "priority": "high", "steps": ["reset password", "log in"]}'
INCOMPLETE = '{"summary": "login fails after reset", "priority": "high"}'


async def main() -> int:
    """Extract, repair, fail over, complete; 0 when all went as described."""
    async with LocalEndpoints(
        FaultyEndpoint("openai-compatible", name="primary", text=GOOD),
        FaultyEndpoint("anthropic", name="backup"),
        FaultyEndpoint("ollama", name="local", text="and the password was reset."),
    ) as fleet:
        endpoints = [ep.endpoint(priority=i, timeout=5.0) for i, ep in enumerate(fleet, 1)]
        async with Runtime(endpoints) as rt:
            message = "I reset my password and now I cannot log in."
            fleet["primary"].replies.append(INCOMPLETE)  # the model forgets a field once
            try:
                await rt.chat(message, response_format=Ticket)
            except InvalidOutput as exc:
                print(f"without repair: {type(exc).__name__} at {exc.path}: {exc.reason}")
            fleet["primary"].replies.append(INCOMPLETE)
            fixed = await rt.chat(message, response_format=Ticket, repair=1)
            print(f"with repair=1: {fixed.parsed!r} via {fixed.endpoint} ({len(fixed.attempts)} attempts)")

            fleet["primary"].faults.refuse()
            print("-- the primary stops accepting connections --")
            other = await rt.chat(message, response_format=Ticket)
            print(f"failover: {type(other.parsed).__name__} with priority {other.parsed.priority!r} via {other.endpoint}")

            completion = await rt.complete("I reset my password")
            print(f"completion via {completion.endpoint}: {completion.text}")

        ok = (
            isinstance(fixed.parsed, Ticket) and fixed.parsed.steps == ["reset password", "log in"]
            and fixed.endpoint == "primary" and isinstance(other.parsed, Ticket) and other.endpoint == "backup"
            and completion.endpoint == "local"
        )
        print("every reply is a Ticket" if ok else "unexpected result")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
