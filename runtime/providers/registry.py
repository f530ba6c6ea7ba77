"""The provider registry: every fact about a provider, once, as data.

Configuration (:mod:`runtime.policy`: the provider names, the key variables, which
providers need a key), environment detection (:func:`runtime.config.endpoints_from_env`:
the variables, the default models), the adapters (default base URLs and capabilities)
and the fault-injecting servers of :mod:`runtime.testing` (which wire dialect a provider
is served with, the model a fresh server reports) all read :data:`PROVIDERS`. A new
OpenAI-compatible preset is one entry here plus, where its wire differs, an adapter.

This module imports nothing else of the runtime, so every other module can read it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

__all__ = ["DIALECTS", "PROVIDERS", "Dialect", "ProviderSpec", "spec"]

Dialect = Literal["openai", "anthropic", "ollama", "mock"]
"""A wire format: OpenAI chat completions, Anthropic messages, Ollama's native API, or
the in-process mock (no wire at all)."""

DIALECTS: tuple[Dialect, ...] = ("openai", "anthropic", "ollama", "mock")


class ProviderSpec(NamedTuple):
    """What one provider is.

    ``dialect`` is the wire format its adapter speaks. ``base_url`` is where requests go
    when the endpoint names none (None: the endpoint must give one). ``key_env`` is the
    variable the key is read from by default and ``key_required`` whether every request
    is refused without one. The capabilities: ``embeddings`` (an embeddings API),
    ``completions`` (a text-completion API), ``prefill`` (continues a trailing assistant
    message), ``stream_usage`` (streams report token usage). ``model_env`` and
    ``default_model`` are what environment detection reads; ``base_url_env`` the
    variable overriding ``base_url`` there.
    """

    name: str
    dialect: Dialect
    base_url: str | None
    key_env: str | None
    key_required: bool
    embeddings: bool
    completions: bool
    prefill: bool
    stream_usage: bool
    default_model: str
    model_env: str | None = None
    base_url_env: str | None = None


PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY", True,
            embeddings=True, completions=True, prefill=False, stream_usage=True,
            default_model="gpt-4o-mini", model_env="OPENAI_MODEL", base_url_env="OPENAI_BASE_URL",
        ),
        ProviderSpec(
            "azure", "openai", None, "AZURE_OPENAI_API_KEY", True,
            embeddings=True, completions=True, prefill=False, stream_usage=True,
            default_model="gpt-4o-mini", model_env="AZURE_OPENAI_DEPLOYMENT", base_url_env="AZURE_OPENAI_ENDPOINT",
        ),
        ProviderSpec(
            "anthropic", "anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY", True,
            embeddings=False, completions=False, prefill=True, stream_usage=True,
            default_model="claude-3-5-haiku-latest", model_env="ANTHROPIC_MODEL",
        ),
        ProviderSpec(
            # An IP literal: no resolver hop for a local server.
            "ollama", "ollama", "http://127.0.0.1:11434", None, False,
            embeddings=True, completions=True, prefill=True, stream_usage=True,
            default_model="llama3.2", model_env="OLLAMA_MODEL", base_url_env="OLLAMA_BASE_URL",
        ),
        ProviderSpec(
            # DeepSeek has only a beta fill-in-the-middle completion API, at another base URL.
            "deepseek", "openai", "https://api.deepseek.com", "DEEPSEEK_API_KEY", True,
            embeddings=False, completions=False, prefill=False, stream_usage=True,
            default_model="deepseek-chat", model_env="DEEPSEEK_MODEL", base_url_env="DEEPSEEK_BASE_URL",
        ),
        ProviderSpec(
            "openai-compatible", "openai", None, None, False,
            embeddings=True, completions=True, prefill=False, stream_usage=True,
            default_model="gpt-4o-mini", model_env="CUSTOM_LLM_MODEL", base_url_env="CUSTOM_LLM_URL",
        ),
        ProviderSpec(
            "mock", "mock", None, None, False,
            embeddings=True, completions=True, prefill=False, stream_usage=True, default_model="mock",
        ),
    )
}


def spec(provider: str) -> ProviderSpec:
    """The registry entry of ``provider``; KeyError names it when there is none."""
    return PROVIDERS[provider]
