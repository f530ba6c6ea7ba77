"""Scenario files: validated like the config loader, every mistake named by its key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import ConfigError
from runtime.harness import catalogue, load_scenario, parse_scenario, resolve
from runtime.harness.scenario import knob_names
from runtime.providers.registry import PROVIDERS

_BASE = """
name = "t"
duration = 10
[[endpoints]]
name = "a"
[[endpoints]]
name = "b"
dialect = "ollama"
[load]
rate = 2
"""


def _parse(extra: str) -> Any:
    return parse_scenario(tomllib.loads(_BASE + extra), source="t.toml")


def _refused(extra: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _parse(extra)
    return info.value


def test_flat_fault_knobs_are_faults_attributes() -> None:
    """A fault table's keys that are Faults attributes become its knobs, typed by their defaults."""
    s = _parse('[[faults]]\nendpoint = "a"\nat = 1\nfor = 2\nerror_rate = 1.0\nerror_status = 429\nretry_after = false\n')
    fault = s.faults[0]
    assert fault.knobs == {"error_rate": 1.0, "error_status": 429, "retry_after": None}
    assert (fault.start, fault.end) == (1, 3)
    assert "error_rate=1.0" in fault.name
    assert {"latency", "error_rate", "cut_after", "no_terminal"} <= set(knob_names())


def test_wrong_key_in_a_fault_is_refused_naming_it() -> None:
    """A misspelt knob is an unknown key, named with its fault's index."""
    err = _refused('[[faults]]\nendpoint = "a"\nat = 1\nerror_rat = 1.0\n')
    assert err.key == "faults[0].error_rat" and "unknown key 'error_rat'" in str(err)


def test_wrong_top_level_and_endpoint_keys_are_refused() -> None:
    """Unknown keys anywhere: the top level, a table, an endpoint (named)."""
    with pytest.raises(ConfigError) as info:
        parse_scenario(tomllib.loads("colour = 1\n" + _BASE))
    assert info.value.key == "colour"
    assert _refused("[expect]\nmax_failure = 0\n").key == "expect.max_failure"
    err = _refused('[[endpoints]]\nname = "c"\nlatncy = 1\n')
    assert err.endpoint == "c" and err.key == "latncy"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[[faults]]\nendpoint = "zz"\nat = 1\nrefuse = true\n', "faults[0].endpoint"),
        ('[[faults]]\nendpoint = "a"\nat = 99\nrefuse = true\n', "faults[0].at"),
        ('[[faults]]\nendpoint = "a"\nat = 1\n', "faults[0]"),
        ('[[faults]]\nendpoint = "a"\nat = 1\noutage = 503\n', "faults[0].for"),
        ('[[faults]]\nendpoint = "a"\nat = 1\nerror_rate = 2\n', "faults[0].error_rate"),
        ('[[faults]]\nendpoint = "a"\nat = 1\nhang = 1\n', "faults[0].hang"),
        ('[[faults]]\nendpoint = "a"\nat = 1\nerror_status = 429.5\n', "faults[0].error_status"),
        ('[[faults]]\nendpoint = "a"\nat = 1\nlatency = -1\n', "faults[0].latency"),
        ('[[endpoints]]\nname = "c"\npriority = 0\n', "priority"),
        ('[[faults]]\nendpoint = "a"\nat = 1\nschedule = ["explode"]\n', "faults[0].schedule[0]"),
        ("[requests]\nstream = 1.5\n", "requests.stream"),
        ("[budget]\nattempts = 0\n", "budget.attempts"),
        ("[runtime.breaker]\nopen_for = -1\n", "breaker.open_for"),
    ],
)
def test_bad_values_are_refused_naming_the_key(extra: str, key: str) -> None:
    """Each wrong value names its key."""
    assert _refused(extra).key == key


def test_a_dialect_is_a_provider_of_the_registry_with_a_wire() -> None:
    """Every provider of the registry with a wire format can be faked; "mock" (no wire) and
    a name the registry lacks are refused naming the endpoint."""
    for name, provider in PROVIDERS.items():
        extra = f'[[endpoints]]\nname = "c"\ndialect = "{name}"\n'
        if provider.dialect == "mock":
            err = _refused(extra)
            assert (err.key, err.endpoint) == ("dialect", "c") and "no wire format" in str(err)
        else:
            assert _parse(extra).endpoints[-1].dialect == name
    err = _refused('[[endpoints]]\nname = "c"\ndialect = "gemini"\n')
    assert (err.key, err.endpoint) == ("dialect", "c")


def test_load_needs_exactly_one_shape() -> None:
    """rate and concurrency together, or no load at all, are refused."""
    with pytest.raises(ConfigError) as info:
        parse_scenario(tomllib.loads(_BASE.replace("rate = 2", "rate = 2\nconcurrency = 3")))
    assert info.value.key == "load"
    with pytest.raises(ConfigError, match="no load"):
        parse_scenario(tomllib.loads(_BASE.replace("rate = 2", "")))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    """A file that cannot be read or is not TOML: a ConfigError saying which."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(bad)


def test_catalogue_is_valid_and_resolvable(tmp_path: Path) -> None:
    """Every built-in scenario validates; names and files both resolve."""
    scenarios = catalogue()
    assert scenarios and all(s.description for s in scenarios.values())
    name = next(iter(scenarios))
    assert resolve(name) == scenarios[name]
    path = tmp_path / "mine.toml"
    path.write_text(_BASE)
    assert resolve(str(path)).name == "t"
    with pytest.raises(ConfigError, match="no built-in scenario"):
        resolve("nope")


def test_scaled_stretches_every_time() -> None:
    """scaled() multiplies the duration, the faults' times and the bursts'."""
    s = _parse('[[faults]]\nendpoint = "a"\nat = 2\nfor = 4\nrefuse = true\n[[load.bursts]]\nat = 5\nn = 3\n')
    half = s.scaled(0.5, rate=8)
    assert (half.duration, half.faults[0].at, half.faults[0].for_, half.load.bursts[0].at, half.load.rate) == (5, 1, 2, 2.5, 8)
