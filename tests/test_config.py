"""Configuration: files and environment into validated structs, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import endpoints_from_env, load_config, parse_config
from runtime.errors import ConfigError
from runtime.policy import BreakerPolicy, Endpoint

GOOD = """
timeout = 20
[retry]
max_attempts = 4

[[endpoints]]
name = "primary"
provider = "openai"
model = "gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"
priority = 1
rpm = 600
[endpoints.breaker]
failure_threshold = 3

[[endpoints]]
name = "local"
provider = "ollama"
model = "llama3.2"
base_url = "http://127.0.0.1:11434"
priority = 2
"""


def test_toml_file_loads_every_section(tmp_path: Path) -> None:
    """A TOML file gives runtime settings and endpoints with nested policies."""
    path = tmp_path / "runtime.toml"
    path.write_text(GOOD)
    config = load_config(path)
    assert config.timeout == 20 and config.retry.max_attempts == 4
    assert [e.name for e in config.endpoints] == ["primary", "local"]
    assert config.endpoints[0].breaker == BreakerPolicy(failure_threshold=3)
    assert config.endpoints[0].rpm == 600


def test_json_file_loads(tmp_path: Path) -> None:
    """A .json file is read as JSON."""
    path = tmp_path / "runtime.json"
    path.write_text('{"endpoints": [{"name": "m", "provider": "mock"}]}')
    assert load_config(path).endpoints[0].provider == "mock"


def test_unknown_endpoint_key_names_key_and_endpoint() -> None:
    """A misspelt key inside an endpoint is named together with the endpoint."""
    data = {"endpoints": [{"name": "primary", "provider": "openai", "model": "x", "prority": 1}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == "prority" and info.value.endpoint == "primary"
    assert "prority" in str(info.value) and "primary" in str(info.value)


def test_mistyped_value_names_key_and_endpoint() -> None:
    """A value of the wrong type is named by its key path and endpoint."""
    data = {"endpoints": [{"name": "a", "provider": "openai", "model": "x", "rpm": "fast"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == "rpm" and info.value.endpoint == "a"


def test_nested_policy_key_is_named() -> None:
    """An unknown key in a nested breaker table is named with its path."""
    data = {"endpoints": [{"name": "a", "provider": "openai", "model": "x", "breaker": {"treshold": 2}}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == "breaker.treshold" and info.value.endpoint == "a"


def test_invalid_value_from_struct_checks_names_endpoint() -> None:
    """A value a struct refuses (negative timeout) names the endpoint."""
    data = {"endpoints": [{"name": "a", "provider": "openai", "model": "x", "timeout": -1}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == "timeout" and info.value.endpoint == "a"


def test_unknown_provider_is_refused() -> None:
    """A provider outside the list is named."""
    data = {"endpoints": [{"name": "a", "provider": "gemini", "model": "x"}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.key == "provider"


def test_unknown_top_level_key_is_named() -> None:
    """A misspelt runtime key is named."""
    with pytest.raises(ConfigError) as info:
        parse_config({"timout": 3, "endpoints": []})
    assert info.value.key == "timout"


def test_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    """Unreadable or unparsable files raise ConfigError, not OSError or TOMLDecodeError."""
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[endpoints]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_endpoint_repr_never_shows_the_key() -> None:
    """The key is masked in repr and masked()."""
    ep = Endpoint(name="a", provider="openai", model="m", api_key="sk-secret-123", headers={"Authorization": "Bearer x"})
    assert "sk-secret-123" not in repr(ep)
    assert "sk-secret-123" not in str(ep.masked()) and "Bearer x" not in str(ep.masked())


def test_missing_key_variable_is_reported() -> None:
    """An endpoint whose key variable is unset says which variable."""
    ep = Endpoint(name="a", provider="openai", model="m", api_key_env="LLMRT_TEST_UNSET_KEY")
    assert ep.key_problem() == "no API key: environment variable LLMRT_TEST_UNSET_KEY is not set"


def test_env_chain_orders_providers() -> None:
    """Without LLM_BACKEND every configured provider joins in the documented order."""
    env = {
        "OPENAI_API_KEY": "k1",
        "ANTHROPIC_API_KEY": "k2",
        "AZURE_OPENAI_API_KEY": "k3",
        "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com",
        "AZURE_OPENAI_DEPLOYMENT": "dep",
        "OLLAMA_HOST": "127.0.0.1:11434",
    }
    eps = endpoints_from_env(env)
    assert [(e.name, e.priority) for e in eps] == [("azure", 1), ("openai", 2), ("anthropic", 3), ("ollama", 4)]
    assert eps[3].base_url == "http://127.0.0.1:11434"


def test_env_backend_requires_its_variables() -> None:
    """LLM_BACKEND=custom without CUSTOM_LLM_URL names the variable."""
    with pytest.raises(ConfigError) as info:
        endpoints_from_env({"LLM_BACKEND": "custom"})
    assert info.value.key == "CUSTOM_LLM_URL"


def test_env_custom_headers_must_be_json() -> None:
    """CUSTOM_LLM_HEADERS that is not a JSON object is refused by name."""
    env = {"LLM_BACKEND": "custom", "CUSTOM_LLM_URL": "http://127.0.0.1:1/v1", "CUSTOM_LLM_MODEL": "m", "CUSTOM_LLM_HEADERS": "x"}
    with pytest.raises(ConfigError) as info:
        endpoints_from_env(env)
    assert info.value.key == "CUSTOM_LLM_HEADERS"
    env["CUSTOM_LLM_HEADERS"] = '{"X-Team": "a"}'
    assert endpoints_from_env(env)[0].headers == {"X-Team": "a"}


def test_env_with_nothing_set_is_a_clear_error() -> None:
    """No provider variables at all: one error that lists what to set."""
    with pytest.raises(ConfigError, match="no LLM provider configured"):
        endpoints_from_env({})
