"""llm-runtime: an embeddable, actor-style resilience runtime for calling LLM endpoints.

The public surface is re-exported here; everything else is private to the package.
"""

from ._runtime import BlockingRuntime as BlockingRuntime
from ._runtime import ReplyStream as ReplyStream
from ._runtime import Runtime as Runtime
from .accounting import UsageReport as UsageReport
from .accounting import count_tokens as count_tokens
from .endpoint.actor import EndpointState as EndpointState
from .endpoint.actor import EndpointStatus as EndpointStatus
from .errors import AllEndpointsFailed as AllEndpointsFailed
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import BadRequest as BadRequest
from .errors import BudgetExceeded as BudgetExceeded
from .errors import ConfigError as ConfigError
from .errors import ConnectionFailed as ConnectionFailed
from .errors import ContentFiltered as ContentFiltered
from .errors import ContextWindowExceeded as ContextWindowExceeded
from .errors import InvalidOutput as InvalidOutput
from .errors import InvalidRequest as InvalidRequest
from .errors import LLMError as LLMError
from .errors import NoEndpointAvailable as NoEndpointAvailable
from .errors import NotFound as NotFound
from .errors import Overloaded as Overloaded
from .errors import ProtocolError as ProtocolError
from .errors import ProviderError as ProviderError
from .errors import RateLimited as RateLimited
from .errors import ServerError as ServerError
from .errors import StreamInterrupted as StreamInterrupted
from .errors import Timeout as Timeout
from .policy import BreakerPolicy as BreakerPolicy
from .policy import Budget as Budget
from .policy import CachePolicy as CachePolicy
from .policy import Endpoint as Endpoint
from .policy import HealthPolicy as HealthPolicy
from .policy import HedgePolicy as HedgePolicy
from .policy import Price as Price
from .policy import RetryPolicy as RetryPolicy
from .types import Attempt as Attempt
from .types import ChatRequest as ChatRequest
from .types import ChatResponse as ChatResponse
from .types import EmbeddingRequest as EmbeddingRequest
from .types import EmbeddingResponse as EmbeddingResponse
from .types import ImagePart as ImagePart
from .types import Message as Message
from .types import StreamChunk as StreamChunk
from .types import TextPart as TextPart
from .types import ToolCall as ToolCall
from .types import ToolCallDelta as ToolCallDelta
from .types import Usage as Usage

__version__ = "0.1.0"

__all__ = [
    "AllEndpointsFailed",
    "Attempt",
    "AuthenticationFailed",
    "BadRequest",
    "BlockingRuntime",
    "BreakerPolicy",
    "Budget",
    "BudgetExceeded",
    "CachePolicy",
    "ChatRequest",
    "ChatResponse",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "ContextWindowExceeded",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "Endpoint",
    "EndpointState",
    "EndpointStatus",
    "HealthPolicy",
    "HedgePolicy",
    "ImagePart",
    "InvalidOutput",
    "InvalidRequest",
    "LLMError",
    "Message",
    "NoEndpointAvailable",
    "NotFound",
    "Overloaded",
    "Price",
    "ProtocolError",
    "ProviderError",
    "RateLimited",
    "ReplyStream",
    "RetryPolicy",
    "Runtime",
    "ServerError",
    "StreamChunk",
    "StreamInterrupted",
    "TextPart",
    "Timeout",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "UsageReport",
    "count_tokens",
]
