"""The examples run as a user would run them, so they cannot rot.

Each script runs in its own interpreter (``python examples/X.py``), with no key in the
environment, against its own local endpoints; ``runtime.toml`` goes through
``llm-runtime config check``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.config import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KEY_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "ANTHROPIC_API_KEY", "DEEPSEEK_API_KEY", "LLM_BACKEND")


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    """``python examples/NAME`` from the examples directory, keys removed from the environment."""
    env = {k: v for k, v in os.environ.items() if k not in KEY_VARS and not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)], cwd=EXAMPLES, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_every_example_is_tested() -> None:
    """A new example must get a test here."""
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".toml")) == [
        "agent_loop.py", "embeddings.py", "runtime.toml", "structured_output.py", "test_your_agent.py",
    ]


def test_agent_loop_solves_every_task_through_the_outage() -> None:
    """The agent finishes every task; the backup answers during the outage and the primary after it."""
    done = run_example("agent_loop.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    outage = lines.index("-- the primary stops accepting connections --")
    back = lines.index("-- the primary is back --")
    assert all("via backup" in line for line in lines[outage + 1 : back])
    assert all("via primary" in line for line in lines[back + 1 : back + 4])
    assert "8 of 8 tasks solved" in lines and "primary: healthy, breaker closed" in lines


def test_structured_output_is_repaired_and_survives_failover() -> None:
    """Every reply is a Ticket: repaired on the primary, then from the Anthropic backup; the completion skips it."""
    done = run_example("structured_output.py")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "without repair: InvalidOutput at $: Object missing required field `steps`"
    assert lines[1].startswith("with repair=1: Ticket(") and lines[1].endswith("via primary (2 attempts)")
    assert "failover: Ticket with priority 'high' via backup" in lines
    assert "completion via local: and the password was reset." in lines
    assert lines[-1] == "every reply is a Ticket"


def test_embeddings_fail_over_between_replicas() -> None:
    """Search works on either replica of the embedding model."""
    done = run_example("embeddings.py")
    assert done.returncode == 0, done.stderr
    assert "via replica-a" in done.stdout and "via replica-b" in done.stdout
    assert done.stdout.rstrip().endswith("same answer from either replica")


def test_test_your_agent_passes() -> None:
    """The copyable failure tests pass when run as a script (pytest in a fresh interpreter)."""
    done = run_example("test_your_agent.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "failed" not in done.stdout and "error" not in done.stdout.lower()


def test_runtime_toml_passes_config_check_and_sets_every_knob(capsys: pytest.CaptureFixture[str]) -> None:
    """examples/runtime.toml is valid, names every provider, and sets every Endpoint and policy key."""
    path = EXAMPLES / "runtime.toml"
    assert main(["config", "check", str(path)]) == 0
    capsys.readouterr()
    config = load_config(path)
    assert {ep.provider for ep in config.endpoints} == {
        "openai", "azure", "anthropic", "ollama", "deepseek", "openai-compatible", "mock",
    }
    raw = tomllib.loads(path.read_text())
    assert {"timeout", "shutdown_grace", "retry", "hedge", "cache", "budget"} <= raw.keys()
    assert set(raw["retry"]) == set(type(config.retry).__struct_fields__)
    assert config.hedge is not None and set(raw["hedge"]) == set(type(config.hedge).__struct_fields__)
    assert config.cache is not None and set(raw["cache"]) == set(type(config.cache).__struct_fields__)
    assert config.budget is not None and set(raw["budget"]) == set(type(config.budget).__struct_fields__)
    first = raw["endpoints"][0]
    endpoint = config.endpoints[0]
    # Every Endpoint field appears somewhere in the file (api_key on the local server only).
    used = set().union(*(ep.keys() for ep in raw["endpoints"]))
    assert used == set(type(endpoint).__struct_fields__)
    assert set(first["breaker"]) == set(type(endpoint.breaker).__struct_fields__)
    assert set(first["health"]) == set(type(endpoint.health).__struct_fields__)
    assert endpoint.price is not None and set(first["price"]) == set(type(endpoint.price).__struct_fields__)
