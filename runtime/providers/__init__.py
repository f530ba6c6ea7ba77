"""Provider adapters: the protocol code for each dialect, and the I/O boundary.

:func:`make_client` turns an :class:`~runtime.policy.Endpoint` into the client the endpoint
actor calls: a :class:`ProviderClient` over the runtime's shared ``aiohttp`` session with
the adapter of the endpoint's provider, or a :class:`MockClient` for provider ``mock``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from ..errors import ConfigError
from ..validation import header_problem
from .anthropic import AnthropicAdapter
from .base import Adapter, ChunkStream, HTTPRequest, ProviderClient, StreamDecoder
from .mock import MockClient, MockStream
from .ollama import OllamaAdapter
from .openai import AzureAdapter, DeepSeekAdapter, OpenAIAdapter, OpenAICompatibleAdapter

if TYPE_CHECKING:  # policy reads the provider registry in this package
    from ..policy import Endpoint

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AnthropicAdapter",
    "AzureAdapter",
    "ChunkStream",
    "DeepSeekAdapter",
    "HTTPRequest",
    "MockClient",
    "MockStream",
    "OllamaAdapter",
    "OpenAIAdapter",
    "OpenAICompatibleAdapter",
    "ProviderClient",
    "StreamDecoder",
    "adapter_for",
    "make_client",
]

#: The adapter class of each HTTP provider (``mock`` has none: it is in-process).
ADAPTERS: dict[str, type[Adapter]] = {
    "openai": OpenAIAdapter,
    "azure": AzureAdapter,
    "deepseek": DeepSeekAdapter,
    "openai-compatible": OpenAICompatibleAdapter,
    "anthropic": AnthropicAdapter,
    "ollama": OllamaAdapter,
}


def adapter_for(endpoint: Endpoint) -> Adapter:
    """The adapter for ``endpoint``, holding the key :meth:`Endpoint.resolve_key` finds.

    Raises :class:`ConfigError` for provider ``mock`` (it speaks no HTTP) and when the
    endpoint lacks what its provider needs (an ``openai-compatible`` endpoint without
    ``base_url``).
    """
    cls = ADAPTERS.get(endpoint.provider)
    if cls is None:
        raise ConfigError(
            f"provider {endpoint.provider!r} has no HTTP adapter", key="provider", endpoint=endpoint.name
        )
    key = endpoint.resolve_key()
    if key is not None and header_problem("Authorization", key) is not None:
        # The key itself is never echoed; where it came from is enough to find it.
        raise ConfigError(
            f"the API key{f' in ${endpoint.key_env}' if not endpoint.api_key and endpoint.key_env else ''} "
            "has a newline or control character",
            key="api_key",
            endpoint=endpoint.name,
        )
    return cls(endpoint, key)


def make_client(endpoint: Endpoint, session: aiohttp.ClientSession) -> ProviderClient | MockClient:
    """The client the endpoint's actor calls: HTTP through ``session``, or in-process for ``mock``."""
    if endpoint.provider == "mock":
        return MockClient(endpoint)
    return ProviderClient(adapter_for(endpoint), session)
