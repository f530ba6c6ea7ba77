"""An agent loop that keeps working through an outage.

The agent solves arithmetic tasks with a calculator tool: it asks the model, runs the
tool calls the model makes, sends the results back, and repeats until the model answers
in text. Halfway through, the primary endpoint stops accepting connections; the runtime
fails over to the backup and the agent never notices. When the primary is back, its
breaker closes again and traffic returns to it.

It runs against two local fault-injecting endpoints (an OpenAI-style primary and an
Anthropic-style backup), so it needs no network and no API key::

    python examples/agent_loop.py

With real endpoints, build the runtime with ``Runtime.from_config("runtime.toml")``
instead; the agent code does not change.
"""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable
from typing import Any

import anyio

from runtime import BreakerPolicy, HealthPolicy, LLMError, Runtime
from runtime.testing import FaultyEndpoint, LocalEndpoints

CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression: numbers, + - * / // % ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "for example (12 + 3) * 4"}},
            "required": ["expression"],
        },
    },
}
SYSTEM = "You are a careful assistant. Use the calculator for every computation."
MAX_STEPS = 5

_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def calculate(expression: str) -> str:
    """The calculator tool: evaluates arithmetic only (never ``eval``), errors as text for the model."""

    def walk(node: ast.AST) -> float:
        match node:
            case ast.Expression(body=body):
                return walk(body)
            case ast.Constant(value=int() | float() as value) if not isinstance(value, bool):
                return value
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _OPERATORS:
                return float(_OPERATORS[type(op)](walk(left), walk(right)))
            case ast.UnaryOp(op=op, operand=operand) if type(op) in _OPERATORS:
                return float(_OPERATORS[type(op)](walk(operand)))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:40]}")

    try:
        value = walk(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as exc:
        return f"error: {exc}"
    return f"{value:g}"


async def solve(rt: Runtime, task: str) -> tuple[str, str, list[str]]:
    """Run the agent on one task: (the tool's last result, the model's final text, endpoints used)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    result = ""
    used: list[str] = []
    for _ in range(MAX_STEPS):
        reply = await rt.chat(messages, system=SYSTEM, tools=[CALCULATOR], max_tokens=200, timeout=10)
        # "*": an attempt failed first and the runtime answered from another endpoint.
        used.append(reply.endpoint + ("*" if any(a.error is not None for a in reply.attempts) else ""))
        if not reply.tool_calls:
            return result, reply.text, used
        messages.append(
            {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls],
            }
        )
        for call in reply.tool_calls:
            arguments = json.loads(call.arguments or "{}")
            result = calculate(str(arguments.get("expression", "")))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise RuntimeError(f"no final answer after {MAX_STEPS} steps")


TASKS = ["12 * (7 + 3)", "2 ** 10 - 24", "(18 + 6) / 4", "99 // 7", "3.5 * 4", "100 - 58", "7 % 3 + 40", "6 * 7"]


async def main() -> int:
    """Solve every task while the primary goes down and comes back; 0 when all were solved."""
    async with LocalEndpoints(
        FaultyEndpoint("openai", name="primary", text="Done: the calculator has the answer."),
        FaultyEndpoint("anthropic", name="backup", text="Done (from the backup): see the calculator."),
    ) as fleet:
        # Short breaker and probe periods so recovery is visible within a second.
        policies: dict[str, Any] = {
            "timeout": 5.0,
            "breaker": BreakerPolicy(failure_threshold=2, open_for=0.5, max_open_for=1.0),
            "health": HealthPolicy(interval=0.25, timeout=1.0),
        }
        endpoints = [ep.endpoint(priority=i, **policies) for i, ep in enumerate(fleet, 1)]
        solved = 0
        async with Runtime(endpoints) as rt:
            for i, task in enumerate(TASKS):
                if i == 2:
                    print("-- the primary stops accepting connections --")
                    fleet["primary"].faults.refuse()
                if i == 5:
                    print("-- the primary is back --")
                    fleet["primary"].faults.accept()
                    await anyio.sleep(1.2)  # its breaker's open period runs out; a probe passes
                try:
                    result, text, used = await solve(rt, task)
                except LLMError as exc:  # what the agent would see if every endpoint failed
                    print(f"{task:>14} -> failed: {type(exc).__name__}: {exc}")
                    continue
                solved += 1
                print(f"{task:>14} = {result:<6} {text!r}  via {' -> '.join(used)}")
            print("(* an attempt failed first; the runtime retried on another endpoint)")
            print()
            for status in rt.status():
                print(f"{status.name}: {status.state}, breaker {status.breaker}")
        print(f"{solved} of {len(TASKS)} tasks solved")
    return 0 if solved == len(TASKS) else 1


if __name__ == "__main__":
    raise SystemExit(anyio.run(main))
