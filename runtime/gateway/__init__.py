"""The gateway: ``llm-runtime serve``, an OpenAI- and Anthropic-compatible HTTP face on a Runtime.

Its configuration (:mod:`runtime.gateway.config`) imports nothing of the server, so the
config loader can validate the ``[gateway]`` table; the server is
:class:`runtime.gateway.server.Gateway`.
"""

from .config import GatewayConfig as GatewayConfig
from .config import GatewayKey as GatewayKey

__all__ = ["GatewayConfig", "GatewayKey"]
