"""A configuration built in Python is checked like a file: same rules, same words.

Every bad value below is given twice, once to the constructor and once through the
file loader, and both must raise ConfigError naming the same key and endpoint with the
same message; `config check` must exit non-zero for each of them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from runtime import BreakerPolicy, CachePolicy, Endpoint, HedgePolicy, RetryPolicy, Runtime
from runtime.cli import main
from runtime.config import parse_config
from runtime.errors import ConfigError

BASE: dict[str, Any] = {"name": "ep", "provider": "openai", "model": "m", "api_key": "k"}
NAN = math.nan
INF = math.inf

# (endpoint fields, the key named) — the endpoint 'ep' is named too
BAD_ENDPOINT: list[tuple[dict[str, Any], str, str]] = [
    ({"priority": "high"}, "priority", "must be an integer, got 'high'"),
    ({"priority": 1.5}, "priority", "must be an integer, got 1.5"),
    ({"groups": "fast"}, "groups", "must be a list of strings, got 'fast'"),
    ({"groups": [1]}, "groups", "must be a list of strings, got [1]"),
    ({"headers": {"X-Team": 1}}, "headers", "must be a table of strings to strings, got {'X-Team': 1}"),
    ({"weight": INF}, "weight", "must be a finite number, got inf"),
    ({"weight": NAN}, "weight", "must be a finite number, got nan"),
    ({"timeout": "5"}, "timeout", "must be a finite number, got '5'"),
    ({"rpm": "10"}, "rpm", "must be an integer (or absent), got '10'"),
    ({"drop_unsupported": "yes"}, "drop_unsupported", "must be true or false, got 'yes'"),
    ({"provider": "wizard"}, "provider", "must be one of"),
    ({"headers": {"X-Team": "a\r\nX-Evil: 1"}}, "headers['X-Team']", "control character"),
    ({"headers": {"X-Team": "a\nb"}}, "headers['X-Team']", "control character"),
    ({"headers": {"bad name": "v"}}, "headers['bad name']", "not an HTTP token"),
    ({"base_url": "http://a b/v1"}, "base_url", "no spaces or control characters"),
    ({"base_url": "https:///v1"}, "base_url", "with a host"),
    ({"api_key": "sk-secret\r\nX-Evil: 1"}, "api_key", "has a newline or control character"),
    ({"breaker": {"failure_threshold": "5"}}, "breaker.failure_threshold", "must be an integer, got '5'"),
    ({"breaker": {"open_for": NAN}}, "breaker.open_for", "must be a finite number, got nan"),
    ({"health": {"interval": INF}}, "health.interval", "must be a finite number, got inf"),
]


def _construct(fields: dict[str, Any]) -> None:
    nested = {"breaker": BreakerPolicy, "health": __import__("runtime").HealthPolicy}
    built = {k: nested[k](**v) if k in nested else v for k, v in fields.items()}
    Endpoint(**{**BASE, **built})


@pytest.mark.parametrize(("fields", "key", "words"), BAD_ENDPOINT, ids=[k for _, k, _ in BAD_ENDPOINT])
def test_endpoint_values_are_refused_alike_in_python_and_in_files(fields: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as built:
        _construct(fields)
    with pytest.raises(ConfigError) as loaded:
        parse_config({"endpoints": [{**BASE, **fields}]}, source="f.toml")
    assert loaded.value.key == key and loaded.value.endpoint == "ep", str(loaded.value)
    assert built.value.key == key, str(built.value)
    assert words in str(built.value) and words in str(loaded.value)
    # The same words (after the file's name, for what msgspec found): one rule, one message.
    assert loaded.value.detail.removeprefix("f.toml: ") == built.value.detail


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: RetryPolicy(max_attempts="3"), "retry.max_attempts"),
        (lambda: RetryPolicy(backoff_base=NAN), "retry.backoff_base"),
        (lambda: HedgePolicy(after="fast"), "hedge.after"),
        (lambda: CachePolicy(ttl=INF), "cache.ttl"),
        (lambda: BreakerPolicy(failure_threshold="5"), "breaker.failure_threshold"),
        (lambda: Runtime([Endpoint(**BASE)], timeout="5"), "timeout"),
        (lambda: Runtime([Endpoint(**BASE)], shutdown_grace=NAN), "shutdown_grace"),
        (lambda: Runtime([Endpoint(**BASE)], shutdown_grace=-1), "shutdown_grace"),
        (lambda: Runtime([Endpoint(**BASE)], retry="3"), "retry"),
        (lambda: Runtime([Endpoint(**BASE)], max_restarts="3"), "max_restarts"),
        (lambda: Runtime(["not an endpoint"]), "endpoints"),
        (lambda: Runtime(Endpoint(**BASE)), "endpoints"),
        (lambda: Runtime([]), "endpoints"),
    ],
)
def test_policies_and_the_runtime_check_their_arguments(make: Any, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key, str(info.value)


@pytest.mark.parametrize(
    "line",
    [
        "weight = inf",
        'priority = "high"',
        'groups = "fast"',
        'headers = { X-Team = "a\\r\\nX-Evil: 1" }',
        "timeout = nan",
    ],
)
def test_config_check_fails_for_every_value_that_would_fail_at_run_time(
    line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rt.toml"
    path.write_text(f'[[endpoints]]\nname = "ep"\nprovider = "openai"\nmodel = "m"\napi_key = "k"\n{line}\n')
    assert main(["config", "check", str(path)]) != 0
    assert "ConfigError" in capsys.readouterr().err


def test_top_level_values_in_files_follow_the_same_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rt.toml"
    path.write_text('shutdown_grace = nan\n[[endpoints]]\nname = "ep"\nprovider = "mock"\n')
    assert main(["config", "check", str(path)]) != 0
    assert "shutdown_grace" in capsys.readouterr().err


def test_a_key_with_a_newline_is_refused_without_being_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the field or from its variable: ConfigError naming where it came from, never the key."""
    from runtime.providers import adapter_for

    with pytest.raises(ConfigError) as info:
        Endpoint(**{**BASE, "api_key": "sk-secret\nX: y"})
    assert "sk-secret" not in str(info.value)
    monkeypatch.setenv("LLMRT_TEST_BAD_KEY", "sk-secret\r\n")
    with pytest.raises(ConfigError) as info:
        adapter_for(Endpoint(name="ep", provider="openai", model="m", api_key_env="LLMRT_TEST_BAD_KEY"))
    assert info.value.key == "api_key" and "LLMRT_TEST_BAD_KEY" in str(info.value) and "sk-secret" not in str(info.value)
