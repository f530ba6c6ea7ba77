"""The one exception hierarchy of llm-runtime.

::

    LLMError
    ├── ConfigError                  a config file, key or value is wrong (names it)
    ├── InvalidRequest               refused before sending: the request itself is wrong
    ├── BudgetExceeded               refused before sending: a token or USD budget is spent
    ├── NoEndpointAvailable          refused before sending: nothing can take it in time
    ├── ProviderError                an endpoint answered with, or failed with, an error
    │   ├── RateLimited              429: throttled until retry_after (not a breaker failure)
    │   ├── Overloaded               503 / 529: the provider is shedding load
    │   ├── ServerError              other 5xx
    │   ├── Timeout                  no answer (or no next chunk) in time
    │   ├── ConnectionFailed         refused, reset, DNS, TLS
    │   ├── AuthenticationFailed     401 / 403: the endpoint is misconfigured
    │   ├── BadRequest               400 / 413 / 422: the caller's request
    │   ├── NotFound                 404: unknown model or path
    │   ├── ContextWindowExceeded    the prompt does not fit this endpoint's window
    │   ├── ContentFiltered          the provider's safety filter refused it
    │   └── ProtocolError            malformed body, wrong content type, stream cut short
    ├── StreamInterrupted            a stream failed after text reached the caller
    ├── InvalidOutput                the reply does not match the response_format schema
    ├── AllEndpointsFailed           every attempt failed; ``attempts`` tells each story
    ├── ActorStopped                 an actor stopped (or crashed) before it could answer
    └── ActorTimeout                 an actor's answer to ``ask`` took longer than its timeout
                                     (also a built-in ``TimeoutError``)

Adapters translate every ``aiohttp`` and ``msgspec`` exception into one of these at their
boundary (``raise ... from exc``); nothing above them sees a library exception.

Two class attributes on :class:`ProviderError` drive the dispatcher and the breaker, so
classification is one attribute read, not a chain of ``isinstance`` checks:
``retryable`` (another attempt, here or elsewhere, may succeed) and ``breaker_failure``
(the endpoint itself is unwell). No error ever carries an API key: adapters redact the
key from any text they copy out of a response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .types import Attempt, RateLimitSnapshot

__all__ = [
    "ActorStopped",
    "ActorTimeout",
    "AllEndpointsFailed",
    "AuthenticationFailed",
    "BadRequest",
    "BudgetExceeded",
    "ConfigError",
    "ConnectionFailed",
    "ContentFiltered",
    "ContextWindowExceeded",
    "InvalidOutput",
    "InvalidRequest",
    "LLMError",
    "NoEndpointAvailable",
    "NotFound",
    "Overloaded",
    "ProtocolError",
    "ProviderError",
    "RateLimited",
    "ServerError",
    "StreamInterrupted",
    "Timeout",
]


class LLMError(Exception):
    """Base of every error the runtime raises."""

    message: str

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(LLMError):
    """A configuration is wrong. ``key`` names the offending key, ``endpoint`` the endpoint,
    ``detail`` what is wrong with it (the message without the key and endpoint)."""

    def __init__(self, message: str, *, key: str | None = None, endpoint: str | None = None) -> None:
        self.detail = message
        where = []
        if endpoint is not None:
            where.append(f"endpoint {endpoint!r}")
        if key is not None:
            where.append(f"key {key!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.key = key
        self.endpoint = endpoint


class InvalidRequest(LLMError):
    """The request cannot be sent as given (refused before any byte went out)."""

    def __init__(self, message: str, *, field: str | None = None, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.endpoint = endpoint


class BudgetExceeded(LLMError):
    """A budget is spent; nothing was sent. ``kind`` is e.g. ``"daily_tokens"``."""

    def __init__(self, message: str, *, kind: str, used: float, limit: float, scope: str = "runtime") -> None:
        super().__init__(message)
        self.kind = kind
        self.used = used
        self.limit = limit
        self.scope = scope


class NoEndpointAvailable(LLMError):
    """No endpoint serving the route could take the request before the deadline.

    ``retry_after`` is the soonest any of them expects to take requests again, when known.
    """

    def __init__(self, message: str, *, route: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.route = route
        self.retry_after = retry_after


class ProviderError(LLMError):
    """An endpoint failed the request.

    Carries the endpoint's name, the HTTP ``status`` where there was one, ``retry_after``
    in seconds where the provider said so, the provider's own error ``code`` and
    ``error_type``, and the rate-limit headers it sent.
    """

    retryable: ClassVar[bool] = True
    breaker_failure: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        provider: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        error_type: str | None = None,
        rate_limit: RateLimitSnapshot | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        self.code = code
        self.error_type = error_type
        self.rate_limit = rate_limit

    def __str__(self) -> str:
        parts = []
        if self.endpoint:
            parts.append(f"endpoint {self.endpoint!r}")
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(f"code {self.code!r}")
        if self.retry_after is not None:
            parts.append(f"retry after {self.retry_after:g}s")
        prefix = f"[{', '.join(parts)}] " if parts else ""
        return prefix + self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class RateLimited(ProviderError):
    """429: the endpoint is throttled until ``retry_after``; not a sign it is unwell."""

    breaker_failure = False


class Overloaded(ProviderError):
    """503 / 529: the provider is shedding load."""


class ServerError(ProviderError):
    """A 5xx the provider did not explain further."""


class Timeout(ProviderError):
    """No answer, first chunk or next chunk within the allowed time."""


class ConnectionFailed(ProviderError):
    """The connection could not be made or was lost (refused, reset, DNS, TLS)."""


class AuthenticationFailed(ProviderError):
    """401 / 403: the key is missing, wrong or lacks permission; the endpoint is misconfigured.

    Another endpoint may still serve the request, so it is retryable elsewhere, but it
    says nothing about the endpoint's health.
    """

    breaker_failure = False


class BadRequest(ProviderError):
    """400 / 413 / 422: the request is wrong and would be wrong anywhere; never retried."""

    retryable = False
    breaker_failure = False


class NotFound(ProviderError):
    """404: the model or path does not exist; the caller's to fix, never retried."""

    retryable = False
    breaker_failure = False


class ContextWindowExceeded(ProviderError):
    """The prompt plus ``max_tokens`` exceeds this endpoint's context window.

    The dispatcher tries endpoints with a larger window before raising it.
    """

    retryable = False
    breaker_failure = False


class ContentFiltered(ProviderError):
    """The provider's content filter refused the prompt or cut the completion."""

    retryable = False
    breaker_failure = False


class ProtocolError(ProviderError):
    """The answer was malformed: bad JSON, wrong content type, a stream without its end."""


class StreamInterrupted(LLMError):
    """A stream failed after its first chunk reached the caller.

    It is never spliced with another endpoint's answer: ``partial`` is the text the caller
    already has and ``cause`` the error that ended it.
    """

    def __init__(self, message: str, *, partial: str, cause: LLMError, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.cause = cause
        self.endpoint = endpoint
        self.__cause__ = cause


class InvalidOutput(LLMError):
    """The reply does not match the schema ``response_format`` asked for.

    ``path`` is where it failed (``$.address.city``; ``$`` when it is not JSON at all),
    ``reason`` what was wrong there, ``raw`` the reply's text, ``endpoint`` who wrote it
    and ``repairs`` how many repair attempts (``repair=N``) were made before giving up.
    The endpoint worked: this says nothing about its health.
    """

    def __init__(self, message: str, *, path: str, reason: str, raw: str, endpoint: str | None, repairs: int = 0) -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason
        self.raw = raw
        self.endpoint = endpoint
        self.repairs = repairs


class AllEndpointsFailed(LLMError):
    """Every attempt failed. ``attempts`` holds one :class:`~runtime.types.Attempt` per try."""

    def __init__(self, message: str, *, attempts: Sequence[Attempt]) -> None:
        super().__init__(message)
        self.attempts = list(attempts)

    def __str__(self) -> str:
        trail = "; ".join(
            f"{a.endpoint}: {type(a.error).__name__ if a.error is not None else 'ok'} ({a.elapsed:.3f}s)"
            for a in self.attempts
        )
        return f"{self.message} [{trail}]" if trail else self.message


class ActorStopped(LLMError):
    """The actor is not running, so it cannot take the message."""


class ActorTimeout(LLMError, TimeoutError):
    """An actor did not answer an ``ask`` within its ``timeout``. Also a ``TimeoutError``, the
    built-in a timed-out wait raises, so code written against that keeps working. The
    message is still the actor's to handle: a timeout only stops the wait."""

    def __init__(self, message: str, *, actor: str, timeout: float) -> None:
        super().__init__(message)
        self.actor = actor
        self.timeout = timeout
