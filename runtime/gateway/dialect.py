"""Errors in the client's dialect: which HTTP status, and the OpenAI or Anthropic error body.

A client library maps an error by its status (the ``openai`` and ``anthropic`` clients
raise ``BadRequestError`` for 400, ``AuthenticationError`` for 401, ``RateLimitError``
for 429, ...), so the status is chosen for what the client should do next:

======================================  ======  =================================
what happened                           status  code
======================================  ======  =================================
the request is wrong (names the field)  400     ``invalid_request``
context too long for every endpoint     400     ``context_length_exceeded``
the provider's content filter           400     ``content_filter``
unknown or bad gateway key              401     ``invalid_api_key``
the key may not use that route          403     ``model_not_allowed``
unknown route (model)                   404     ``model_not_found``
body too large                          413     ``request_too_large``
key limit, budget, nothing free now     429     ``rate_limit_exceeded`` / ``insufficient_quota``
every attempt failed upstream           502     ``upstream_failed``
this process is at its request cap      503     ``overloaded``
the request's deadline passed           504     ``timeout``
======================================  ======  =================================

429 and 503 carry ``Retry-After``. Every message is the runtime's own text, which never
holds a key.
"""

from __future__ import annotations

import datetime
import math
from typing import Literal, NamedTuple

import msgspec

from ..errors import (
    AllEndpointsFailed,
    BadRequest,
    BudgetExceeded,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequest,
    LLMError,
    NoEndpointAvailable,
    NotFound,
    RateLimited,
    StreamInterrupted,
    Timeout,
)
from ..types import ChatResponse, EmbeddingResponse

__all__ = ["Dialect", "Failure", "cost_of", "failure_of"]

Dialect = Literal["openai", "anthropic"]

_encode = msgspec.json.encode


class Failure(NamedTuple):
    """An error as the gateway answers it: status, machine code, message, the field it is
    about (``param``) and, for 429/503, seconds until trying again makes sense."""

    status: int
    code: str
    message: str
    param: str | None = None
    retry_after: float | None = None

    def headers(self) -> dict[str, str]:
        """``Retry-After`` in whole seconds (at least 1) when there is one."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def cost_of(reply: ChatResponse | EmbeddingResponse) -> float | None:
    """What a reply cost in USD, or None when no price is known for it (its ``cost_usd`` is
    then 0, which a client must not read as free)."""
    return reply.cost_usd if reply.cost_known else None


def failure_of(exc: LLMError) -> Failure:
    """The answer to give for a runtime error."""
    match exc:
        case StreamInterrupted():
            return failure_of(exc.cause)
        case InvalidRequest():
            return Failure(400, "invalid_request", str(exc), exc.field)
        case ContextWindowExceeded():
            return Failure(400, "context_length_exceeded", str(exc), "messages")
        case ContentFiltered():
            return Failure(400, "content_filter", str(exc))
        case NotFound():
            return Failure(404, "model_not_found", str(exc), "model")
        case BadRequest():
            return Failure(400, "invalid_request", str(exc))
        case BudgetExceeded():
            return Failure(429, "insufficient_quota", str(exc), None, _until_period_end(exc.kind))
        case NoEndpointAvailable():
            return Failure(429, "rate_limit_exceeded", str(exc), None, exc.retry_after or 1.0)
        case RateLimited():
            return Failure(429, "rate_limit_exceeded", str(exc), None, exc.retry_after or 1.0)
        case Timeout():
            return Failure(504, "timeout", str(exc))
        case AllEndpointsFailed():
            return _all_failed(exc)
        case _:
            return Failure(502, "upstream_failed", str(exc))


def _all_failed(exc: AllEndpointsFailed) -> Failure:
    errors = [a.error for a in exc.attempts if a.error is not None]
    if errors and all(isinstance(e, RateLimited) for e in errors):
        # Every endpoint said "later": so does the gateway, with the soonest time.
        waits = [e.retry_after for e in errors if e.retry_after is not None]
        return Failure(429, "rate_limit_exceeded", str(exc), None, min(waits) if waits else 1.0)
    if errors and isinstance(errors[-1], Timeout) and "deadline" in exc.message:
        return Failure(504, "timeout", str(exc))
    return Failure(502, "upstream_failed", str(exc))


def _until_period_end(kind: str) -> float:
    """Seconds until a daily budget resets (midnight UTC) or a monthly one (the 1st)."""
    now = datetime.datetime.now(datetime.UTC)
    if kind.startswith("monthly"):
        year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        end = datetime.datetime(year, month, 1, tzinfo=datetime.UTC)
    else:
        end = datetime.datetime.combine(now.date() + datetime.timedelta(days=1), datetime.time(), datetime.UTC)
    return (end - now).total_seconds()


# OpenAI's error "type" by status; the openai client reads the status, people read the type.
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}
# Anthropic's error types by status, as its API documents them.
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def error_body(dialect: Dialect, failure: Failure) -> bytes:
    """The JSON error document of ``dialect``."""
    if dialect == "anthropic":
        kind = _ANTHROPIC_TYPE.get(failure.status, "api_error")
        return _encode({"type": "error", "error": {"type": kind, "message": failure.message}})
    kind = _OPENAI_TYPE.get(failure.status, "server_error" if failure.status >= 500 else "invalid_request_error")
    return _encode(
        {"error": {"message": failure.message, "type": kind, "param": failure.param, "code": failure.code}}
    )


def error_event(dialect: Dialect, failure: Failure) -> bytes:
    """The SSE event that ends a stream cut after content: the dialect's error, never its end marker."""
    if dialect == "anthropic":
        return b"event: error\ndata: " + error_body(dialect, failure) + b"\n\n"
    return b"data: " + error_body(dialect, failure) + b"\n\n"
