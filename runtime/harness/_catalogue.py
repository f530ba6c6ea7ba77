"""The built-in scenarios: TOML files shipped in ``runtime/harness/catalogue/``."""

from __future__ import annotations

import tomllib
from importlib import resources

from ..errors import ConfigError
from .scenario import Scenario, load_scenario, parse_scenario

__all__ = ["builtin", "catalogue", "resolve"]


def catalogue() -> dict[str, Scenario]:
    """Every built-in scenario by name, in file-name order."""
    out: dict[str, Scenario] = {}
    for entry in sorted(resources.files(__package__).joinpath("catalogue").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".toml"):
            scenario = parse_scenario(tomllib.loads(entry.read_text("utf-8")), source=f"catalogue/{entry.name}")
            out[scenario.name] = scenario
    return out


def builtin(name: str) -> Scenario:
    """The built-in scenario called ``name``."""
    scenarios = catalogue()
    if name not in scenarios:
        raise ConfigError(f"no built-in scenario {name!r} (see `llm-runtime bench list`)", key="scenario")
    return scenarios[name]


def resolve(name_or_file: str) -> Scenario:
    """A built-in scenario by name, or a scenario file by path (``.toml``)."""
    if name_or_file.endswith(".toml") or "/" in name_or_file:
        return load_scenario(name_or_file)
    return builtin(name_or_file)
