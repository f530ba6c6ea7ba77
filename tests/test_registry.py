"""The provider registry is the one place provider facts live: everything else agrees with it."""

from __future__ import annotations

import typing

import pytest

from runtime.config import endpoints_from_env
from runtime.policy import DEFAULT_KEY_ENV, KEY_REQUIRED, PROVIDERS, Endpoint, Provider
from runtime.providers import ADAPTERS, MockClient, adapter_for
from runtime.providers.registry import PROVIDERS as REGISTRY
from runtime.testing import FaultyEndpoint


def test_the_provider_names_are_the_registrys() -> None:
    assert typing.get_args(Provider) == tuple(REGISTRY) == PROVIDERS
    assert set(ADAPTERS) == {name for name, spec in REGISTRY.items() if spec.dialect != "mock"}
    assert DEFAULT_KEY_ENV == {name: spec.key_env for name, spec in REGISTRY.items() if spec.key_env}
    assert KEY_REQUIRED == {name for name, spec in REGISTRY.items() if spec.key_required}


@pytest.mark.parametrize("name", [n for n in REGISTRY if n != "mock"])
def test_adapters_take_capabilities_and_urls_from_the_registry(name: str) -> None:
    spec = REGISTRY[name]
    cls = ADAPTERS[name]
    assert (cls.embeddings, cls.completions, cls.prefill, cls.stream_usage) == (
        spec.embeddings, spec.completions, spec.prefill, spec.stream_usage,
    )
    assert cls.default_base_url == spec.base_url
    base = None if spec.base_url else "https://r.example.com"
    adapter = adapter_for(Endpoint(name="e", provider=name, model="m", base_url=base, api_key="k"))  # type: ignore[arg-type]
    if spec.base_url:
        assert adapter.probe_request().url.startswith(spec.base_url)
    assert (MockClient.embeddings, MockClient.completions) == (REGISTRY["mock"].embeddings, REGISTRY["mock"].completions)


def test_a_provider_without_embeddings_says_where_to_send_them() -> None:
    adapter = adapter_for(Endpoint(name="e", provider="anthropic", model="m", api_key="k"))
    message = str(adapter.no_embeddings())
    assert all(name in message for name, spec in REGISTRY.items() if spec.embeddings and name != "mock")


@pytest.mark.parametrize("name", [n for n in REGISTRY if n != "mock"])
def test_testing_servers_speak_the_registrys_dialect_and_model(name: str) -> None:
    server = FaultyEndpoint(name)
    assert server.dialect == REGISTRY[name].dialect and server.model == REGISTRY[name].default_model


def test_environment_detection_uses_the_registrys_defaults() -> None:
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k", "DEEPSEEK_API_KEY": "k", "OLLAMA_HOST": "127.0.0.1:11434"}
    found = {ep.provider: ep for ep in endpoints_from_env(env)}
    for name in ("openai", "anthropic", "deepseek", "ollama"):
        assert found[name].model == REGISTRY[name].default_model
    assert found["openai"].api_key_env == REGISTRY["openai"].key_env
