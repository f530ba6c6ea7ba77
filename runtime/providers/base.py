"""The adapter contract and the one boundary where HTTP and its failures are translated.

An :class:`Adapter` is protocol code for one provider dialect, bound to one endpoint:
it builds requests (URL, headers and body bytes are prepared once, at construction,
where they can be) and decodes answers and error bodies. It keeps no per-request state.

:class:`ProviderClient` does the I/O over the runtime's shared ``aiohttp`` session and
is the only code that catches ``aiohttp``, ``asyncio`` timeout and ``msgspec`` errors:
each becomes one class of :mod:`runtime.errors`, raised ``from`` the original.
"""

from __future__ import annotations

import abc
import asyncio
import datetime
import email.utils
import functools
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import aiohttp
import msgspec
from aiohttp import hdrs

from ..errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequest,
    LLMError,
    NotFound,
    Overloaded,
    ProtocolError,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from ..types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    RateLimitSnapshot,
    StreamChunk,
    ToolCall,
)
from .deadlines import Deadlines
from .registry import PROVIDERS

if TYPE_CHECKING:  # policy reads the provider registry in this package
    from ..policy import Endpoint

__all__ = [
    "Adapter",
    "ChunkStream",
    "HTTPRequest",
    "ProviderClient",
    "StreamDecoder",
    "CONTENT_FILTER_CODES",
    "DECODE_ERRORS",
    "MAX_BODY_BYTES",
    "MAX_WAIT",
    "build_error",
    "decode_error_body",
    "decode_failure",
    "error_class_for_status",
    "header_int",
    "json_text",
    "looks_like_context_overflow",
    "parse_go_duration",
    "parse_retry_after",
    "parse_rfc3339_delay",
    "rate_limit_names",
    "rate_limit_snapshot",
    "response_schema",
    "should_retry_header",
    "undecodable",
]

#: What reading hostile or broken bytes can raise: msgspec's errors, ValueError (bad
#: UTF-8 is a UnicodeDecodeError, one of them) and RecursionError (JSON nested tens of
#: thousands deep). Each becomes a ProtocolError at the adapter, never escapes bare.
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.MsgspecError, ValueError, RecursionError)


def decode_failure(what: str, exc: BaseException) -> str:
    """Why ``what`` (a body, an event) could not be read, in our words; the library's
    exception stays the ``__cause__``."""
    if isinstance(exc, RecursionError):
        reason = "it is nested too deeply to read"
    elif isinstance(exc, UnicodeError):
        reason = "it is not valid UTF-8"
    else:
        reason = str(exc)
    return f"could not read the {what}: {reason}"


def json_text(raw: msgspec.Raw) -> str:
    """A JSON value kept raw (a tool call's input or arguments) as compact JSON text,
    whatever padding the server used; ``"{}"`` when absent. Raises one of
    :data:`DECODE_ERRORS` for bytes that are no JSON text."""
    return msgspec.json.format(bytes(raw), indent=-1).decode() if raw else "{}"


_A = TypeVar("_A", bound="Adapter")
_R = TypeVar("_R")
_E = TypeVar("_E", bound=ProviderError)
_X = TypeVar("_X", bound=BaseException)

#: Provider codes that mean the content policy refused the request (OpenAI's
#: ``content_policy_violation``, Azure's ``content_filter`` and its inner
#: ``ResponsibleAIPolicyViolation``): :class:`ContentFiltered` on every dialect.
CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation", "ResponsibleAIPolicyViolation"})


def undecodable(what: str) -> Callable[[Callable[[_A, bytes], _R]], Callable[[_A, bytes], _R]]:
    """Decorate an adapter's ``parse_*`` method: any of :data:`DECODE_ERRORS` raised while
    reading the body becomes the adapter's :class:`ProtocolError` naming ``what``."""

    def wrap(method: Callable[[_A, bytes], _R]) -> Callable[[_A, bytes], _R]:
        @functools.wraps(method)
        def parse(self: _A, body: bytes) -> _R:
            try:
                return method(self, body)
            except DECODE_ERRORS as exc:
                raise self._protocol(decode_failure(what, exc)) from self.scrub(exc)

        return parse

    return wrap


class HTTPRequest(msgspec.Struct, frozen=True, gc=False):
    """What to send: method, absolute URL, headers and body bytes.

    A struct, not a NamedTuple: one is made per request, and a NamedTuple's ``__new__`` is
    a Python function."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None = None


class StreamDecoder(abc.ABC):
    """Incremental decoder of one streamed reply.

    ``feed`` takes bytes split anywhere and returns the chunks completed by them; it
    raises the matching :class:`ProviderError` for an error event inside the stream.
    ``finish`` is called at end of input and raises :class:`ProtocolError` when neither
    the terminal event (``[DONE]``, ``message_stop``, ``done: true``) nor the dialect's
    finish reason came: a clean end of the body after the finish reason is a whole answer.
    """

    done: bool = False

    @abc.abstractmethod
    def feed(self, data: bytes) -> list[StreamChunk]:
        """The chunks completed by ``data``."""

    @abc.abstractmethod
    def finish(self) -> list[StreamChunk]:
        """The chunks left at end of input; raises :class:`ProtocolError` for an answer cut short."""


class Adapter(abc.ABC):
    """Protocol code for one provider dialect, bound to one endpoint.

    Subclasses prepare URLs and constant headers in ``__init__``. Every ``parse_*``
    method raises :class:`ProtocolError` for a body it cannot read; ``parse_error``
    returns (never raises) the one error class the status and body mean.
    """

    provider: str = ""
    #: media types a successful stream may come as (the first is the canonical one)
    stream_content_types: tuple[str, ...] = ("text/event-stream",)

    def __init__(self, endpoint: Endpoint, api_key: str | None) -> None:
        self.endpoint = endpoint
        self.name = endpoint.name
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"<{type(self).__name__} endpoint={self.name!r} model={self.endpoint.model!r}>"

    @abc.abstractmethod
    def chat_request(self, request: ChatRequest, *, stream: bool) -> HTTPRequest:
        """The HTTP request of one chat attempt, streamed or not (a text completion when
        ``request.kind`` says so, on an adapter whose provider has :attr:`completions`)."""

    @abc.abstractmethod
    def parse_chat(self, body: bytes) -> ChatResponse:
        """A whole reply from a 2xx body."""

    @abc.abstractmethod
    def stream_decoder(self) -> StreamDecoder:
        """A fresh decoder for one streamed reply."""

    def embed_request(self, request: EmbeddingRequest) -> HTTPRequest:
        """The HTTP request of one embeddings attempt; a provider without an embeddings
        API (the registry says which) refuses it with :class:`InvalidRequest`."""
        raise self.no_embeddings()

    def parse_embed(self, body: bytes) -> EmbeddingResponse:
        """The vectors from a 2xx body (adapters of providers with an embeddings API)."""
        raise self.no_embeddings()

    # The capabilities and the default base URL are the provider registry's data, set on
    # each adapter class from its ``provider`` (see __init_subclass__).
    #: whether the provider has an embeddings API; the runtime routes embeddings by it
    embeddings: ClassVar[bool] = False
    #: where requests go when the endpoint names no ``base_url`` (None: it must name one)
    default_base_url: ClassVar[str | None] = None
    #: whether streams carry token usage (the OpenAI dialect asks for it when they can)
    stream_usage: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        facts = PROVIDERS[cls.provider]
        cls.embeddings = facts.embeddings
        cls.completions = facts.completions
        cls.prefill = facts.prefill
        cls.stream_usage = facts.stream_usage
        cls.default_base_url = facts.base_url

    def no_embeddings(self) -> InvalidRequest:
        """The refusal of an embeddings request by a provider that has no embeddings API."""
        able = [name for name, facts in PROVIDERS.items() if facts.embeddings and facts.dialect != "mock"]
        return InvalidRequest(
            f"{self.provider} has no embeddings API; route embeddings to an {', '.join(able[:-1])} or {able[-1]} endpoint",
            endpoint=self.name,
        )

    #: whether the provider has a text-completion API (``kind="completion"`` requests); the
    #: runtime routes ``complete()`` by it
    completions: ClassVar[bool] = False

    #: whether the provider continues a trailing assistant message (a prefill); the
    #: endpoint's ``prefill`` setting overrides it
    prefill: ClassVar[bool] = False

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest | None:
        """The request asking this endpoint to continue ``partial``, the start of an assistant
        answer to ``request``, so that only the rest is streamed; None when it cannot.

        A text completion always can: its continuation is the prompt with the partial
        appended, which every completion API continues as it would any text."""
        if request.kind == "completion":
            prompt = Message(role="user", content=request.messages[0].text + partial)
            return msgspec.structs.replace(request, messages=[prompt])
        able = self.endpoint.prefill
        if not (self.prefill if able is None else able) or not partial.strip():
            return None
        return msgspec.structs.replace(
            request, messages=[*request.messages, Message(role="assistant", content=self._prefill_text(partial))]
        )

    def tool_arguments(self, call: ToolCall) -> Any:
        """A tool call's JSON arguments as values, for a dialect that sends them as an object
        (``{}`` when empty); :class:`InvalidRequest` naming the call when they are not JSON."""
        try:
            return msgspec.json.decode(call.arguments or "{}")
        except msgspec.DecodeError as exc:
            raise InvalidRequest(
                f"tool call {call.id!r} has arguments that are not JSON: {exc}", field="messages", endpoint=self.name
            ) from exc

    def _prefill_text(self, partial: str) -> str:
        """The partial answer as this provider accepts it for a prefill."""
        return partial

    #: set by each adapter's ``__init__``: the token-free probe's URL and headers
    _probe_url: str
    _probe_headers: Mapping[str, str]

    def probe_request(self) -> HTTPRequest:
        """A token-free GET that succeeds when the endpoint is reachable and the key works."""
        return HTTPRequest("GET", self._probe_url, self._probe_headers)

    def _protocol(self, message: str) -> ProtocolError:
        """A ProtocolError for this endpoint, with the key redacted from ``message``."""
        return self.error(ProtocolError, message)

    def error(
        self,
        cls: type[_E],
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
        rate_limit: RateLimitSnapshot | None = None,
    ) -> _E:
        """An error of this endpoint, every string copied out of the response redacted:
        the one place errors are made from what a provider sent."""
        redact = self.redact
        return cls(
            redact(message),
            endpoint=self.name,
            provider=self.provider,
            status=status,
            retry_after=retry_after,
            code=redact(code) if code else code,
            error_type=redact(error_type) if error_type else error_type,
            rate_limit=rate_limit,
        )

    def snippet(self, body: bytes, limit: int = 300) -> str:
        """The start of a body that is not JSON (an HTML page from a proxy, say), on one
        line, the key redacted before the cut so no part of it can survive there."""
        key = self._api_key or ""
        text = self.redact(body[: limit + 4 * len(key)].decode("utf-8", "replace"))
        text = " ".join(text.split())
        return text[:limit] + "…" if len(text) > limit or len(body) > limit + 4 * len(key) else text

    def scrub(self, exc: _X) -> _X:
        """``exc`` and its chain with the key taken out of what they carry (their text,
        the bytes a UnicodeDecodeError holds, the request headers of an aiohttp error),
        so the library exception can stay the ``__cause__`` without leaking it."""
        key = self._api_key
        if not key:
            return exc
        raw = key.encode()
        stars = b"*" * len(raw)  # the same length: a decode error's positions stay right

        def clean(value: Any) -> Any:
            if isinstance(value, str):
                return self.redact(value)
            return value.replace(raw, stars) if isinstance(value, bytes) else value

        seen: set[int] = set()
        current: BaseException | None = exc
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            current.args = tuple(clean(a) for a in current.args)
            if isinstance(current, UnicodeDecodeError):
                current.object = clean(current.object)
            elif isinstance(current, aiohttp.ClientResponseError):
                info = current.request_info
                masked = {k: ("***" if key in v else v) for k, v in info.headers.items()}
                current.request_info = aiohttp.RequestInfo(info.url, info.method, masked, info.real_url)  # type: ignore[arg-type]
            current = current.__cause__ or current.__context__
        return exc

    @abc.abstractmethod
    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """The one error class an error status, its headers and body mean."""

    def rate_limit(self, headers: Mapping[str, str]) -> RateLimitSnapshot | None:
        """The provider's rate-limit headers, when it sends any."""
        return None

    def redact(self, text: str) -> str:
        """``text`` with this endpoint's key removed, for anything copied out of a response."""
        key = self._api_key
        if key and key in text:
            text = text.replace(key, "***")
        return text


# --- header reading -------------------------------------------------------------------

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|h|m|s)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@functools.lru_cache(maxsize=256)
def parse_go_duration(value: str) -> float | None:
    """Seconds in a Go duration such as ``"6m0s"``, ``"12ms"`` or ``"2m59.56s"``; None if unreadable."""
    value = value.strip()
    if not value:
        return None
    pos = 0
    total = 0.0
    for match in _GO_DURATION.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value):
        return _seconds(value)  # a bare number means seconds
    return _wait(total)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, ``retry-after`` (seconds or HTTP date); None if absent."""
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return _wait(when.timestamp() - (time.time() if now is None else now))


#: The largest whole body (a reply, an error, a batch of embeddings) read into memory.
#: 2048 embeddings of 3072 dimensions are about 130 MB of JSON; more is a broken server.
MAX_BODY_BYTES = 256 * 1024 * 1024

#: The longest wait a provider's header is taken at its word for: a day (a daily quota's
#: reset); "1e300" or "inf" would otherwise shut an endpoint for good.
MAX_WAIT = 86400.0


def _seconds(value: str | None) -> float | None:
    # A wait a server asked for: not negative, at most MAX_WAIT, or nothing ("nan" is no
    # wait a client can keep).
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return None if math.isnan(seconds) else _wait(seconds)


def _wait(seconds: float) -> float:
    return min(max(0.0, seconds), MAX_WAIT)


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """The provider's ``x-should-retry`` verdict, when it gives one."""
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


def error_class_for_status(status: int) -> type[ProviderError]:
    """The error class an HTTP status means before the body is read.

    402 (DeepSeek's "Insufficient Balance") counts with 401/403: the endpoint cannot serve
    anything until someone pays, so it is misconfigured, and another endpoint may serve
    the request. As a :class:`BadRequest` it would have been raised to the caller unretried.
    """
    if status == 429:
        return RateLimited
    if status in (401, 402, 403):
        return AuthenticationFailed
    if status == 404:
        return NotFound
    if status in (503, 529):
        return Overloaded
    if status >= 500:
        return ServerError
    if status == 408:
        return Timeout
    return BadRequest


_CONTEXT_PATTERNS = re.compile(
    r"context_length_exceeded|maximum context length|context length|prompt is too long|"
    r"too many tokens|context window|exceeds the context",
    re.IGNORECASE,
)


def looks_like_context_overflow(text: str) -> bool:
    """True when an error message or code says the prompt does not fit the context window."""
    return _CONTEXT_PATTERNS.search(text) is not None


def build_error(
    adapter: Adapter,
    status: int,
    headers: Mapping[str, str],
    message: str,
    *,
    code: str | None = None,
    error_type: str | None = None,
    cls: type[ProviderError] | None = None,
    retry_after: float | None = None,
) -> ProviderError:
    """The error for a failed response, with the fields every adapter fills the same way.

    Without an explicit ``cls`` the status decides, refined by the body and headers: a
    client error that says the prompt is too long is :class:`ContextWindowExceeded`, and
    the provider's ``x-should-retry`` verdict overrides the status where the two disagree.
    ``true`` on an odd client status (409, say) makes it a retryable
    :class:`ServerError`; ``false`` on a 429 means waiting will not lift the limit (a
    spent quota), so it is :class:`AuthenticationFailed`: the endpoint is misconfigured
    until someone acts and other endpoints are tried. ``retry_after`` is the adapter's own
    reading (from the body, say), used when no ``retry-after`` header came.
    """
    if cls is None:
        cls = error_class_for_status(status)
        if cls is BadRequest and (code in CONTENT_FILTER_CODES or error_type in CONTENT_FILTER_CODES):
            cls = ContentFiltered
        elif cls is BadRequest and looks_like_context_overflow(f"{code or ''} {message}"):
            cls = ContextWindowExceeded
        verdict = should_retry_header(headers)
        if verdict is True and cls is BadRequest and status not in (400, 413, 422):
            cls = ServerError
        elif verdict is False and cls is RateLimited:
            cls = AuthenticationFailed
    header_delay = parse_retry_after(headers)
    return adapter.error(
        cls,
        message or f"HTTP {status}",
        status=status,
        retry_after=header_delay if header_delay is not None else retry_after,
        code=code,
        error_type=error_type,
        rate_limit=adapter.rate_limit(headers),
    )


def decode_error_body(body: bytes) -> Any:
    """An error body as plain JSON values, or None when it is not JSON.

    Tolerant where error bodies are known to be sloppy: raw newlines and tabs inside
    strings (Azure's documented content-filter body has them) are read as spaces.
    """
    if not body:
        return None
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        return None  # a body nested this deep is no error object; its snippet is shown
    except msgspec.DecodeError:
        pass
    try:
        return msgspec.json.decode(body.replace(b"\r", b" ").replace(b"\n", b" ").replace(b"\t", b" "))
    except (msgspec.DecodeError, RecursionError):
        return None


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    """An integer header, or None when absent or unreadable."""
    return _int(headers.get(name))


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)  # int() itself allows the whitespace around the digits
    except ValueError:
        try:
            return int(float(value))
        except (ValueError, OverflowError):  # "nan", "inf": no count at all
            return None



def rate_limit_names(template: str, tokens: str = "tokens") -> tuple[str, ...]:
    """The six rate-limit header names a provider spells by ``template`` (``{field}`` is
    ``limit``/``remaining``/``reset``, ``{kind}`` is ``requests`` or ``tokens``), in the order
    :func:`rate_limit_snapshot` reads them: made once per provider, not per response."""
    return tuple(template.format(field=f, kind=k) for k in ("requests", tokens) for f in ("limit", "remaining", "reset"))


def rate_limit_snapshot(
    headers: Mapping[str, str], names: tuple[str, ...], reset: Callable[[str], float | None]
) -> RateLimitSnapshot | None:
    """The rate-limit headers ``names`` (from :func:`rate_limit_names`), resets read by
    ``reset``; None when the response carried none of them."""
    found: tuple[Any, ...] = tuple(map(headers.get, names))  # str or None each
    if None not in found:
        # Every response carries all six (when the provider sends them at all), the counts
        # in plain digits: read in one expression, the odd value by _partial_snapshot.
        limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t = found
        try:
            return RateLimitSnapshot(
                limit_requests=int(limit_r),
                remaining_requests=int(remaining_r),
                reset_requests=reset(reset_r),
                limit_tokens=int(limit_t),
                remaining_tokens=int(remaining_t),
                reset_tokens=reset(reset_t),
            )
        except ValueError:
            pass  # a count int() refuses ("12.5", "nan"): read one by one below
    elif found == _NONE_FOUND:
        return None
    return _partial_snapshot(found, reset)


_NONE_FOUND = (None,) * 6


def _partial_snapshot(found: tuple[str | None, ...], reset: Callable[[str], float | None]) -> RateLimitSnapshot:
    limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t = found
    return RateLimitSnapshot(
        limit_requests=_int(limit_r),
        remaining_requests=_int(remaining_r),
        reset_requests=reset(reset_r) if reset_r is not None else None,
        limit_tokens=_int(limit_t),
        remaining_tokens=_int(remaining_t),
        reset_tokens=reset(reset_t) if reset_t is not None else None,
    )


def response_schema(fmt: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]] | None:
    """The name and JSON schema a ``json_schema`` response format asks for (the validator
    gives every such format that shape); None for any other format."""
    if fmt is None or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    if not isinstance(schema, dict):
        return None
    return str(spec.get("name") or "response"), schema  # type: ignore[union-attr]


def parse_rfc3339_delay(value: str | None, now: float | None = None) -> float | None:
    """Seconds from ``now`` until an RFC 3339 timestamp (``2025-01-01T00:00:30Z``); None if unreadable."""
    if not value:
        return None
    try:
        when = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return _wait(when.timestamp() - (time.time() if now is None else now))


# --- the I/O boundary ------------------------------------------------------------------


def connection_story(exc: BaseException, streamed: int | None = None) -> str:
    """What a failed exchange means, in words a user reads right: aiohttp's own text can
    read like an HTTP status (``TransferEncodingError: 400``) when the server sent none.
    ``streamed`` is the characters of text a stream had delivered when it broke."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        if streamed is not None:
            return f"the stream was cut after {streamed} characters: the connection ended mid-reply"
        return "the reply was cut short: the connection ended before the whole body came"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"could not connect to {exc.host}:{exc.port}: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, aiohttp.ClientResponseError):
        # aiohttp raises these for answers that are not valid HTTP; their "status" is its own.
        return f"the server's answer is not valid HTTP ({exc.message})"
    if isinstance(exc, OSError):
        return f"the connection failed: {exc.strerror or exc}"
    return f"the HTTP exchange failed ({type(exc).__name__}: {exc})"



#: aiohttp's per-request timer off, whatever the session's default: each exchange's one
#: deadline is its client's :class:`Deadlines`.
_NO_TIMER = aiohttp.ClientTimeout(total=None)


def _unread(body: bytes) -> None:
    """A probe's answer: only that it came matters."""

class ProviderClient:
    """Sends an adapter's requests over the shared session and translates every failure.

    Methods return the decoded value and the rate-limit snapshot the response carried.
    """

    __slots__ = ("_deadlines", "_name", "_provider", "adapter", "endpoint", "session")

    def __init__(self, adapter: Adapter, session: aiohttp.ClientSession) -> None:
        self.adapter = adapter
        self.endpoint = adapter.endpoint
        self.session = session
        self._name = adapter.name
        self._provider = adapter.provider
        self._deadlines: Deadlines | None = None

    @property
    def deadlines(self) -> Deadlines:
        """The deadlines of this client's exchanges, on its loop."""
        return self._deadlines or self._start_deadlines()

    def _start_deadlines(self) -> Deadlines:
        # At first use, not in __init__: the client may be built before its loop runs.
        self._deadlines = Deadlines(asyncio.get_running_loop())
        return self._deadlines

    def __repr__(self) -> str:
        return f"<ProviderClient {self.adapter!r}>"

    @property
    def embeddings(self) -> bool:
        """Whether this endpoint's provider has an embeddings API."""
        return self.adapter.embeddings

    @property
    def completions(self) -> bool:
        """Whether this endpoint's provider has a text-completion API."""
        return self.adapter.completions

    def _timeout(self, seconds: float, what: str) -> Timeout:
        return Timeout(f"no {what} within {seconds:g}s", endpoint=self._name, provider=self._provider)

    def _connection(self, exc: BaseException, streamed: int | None = None) -> ConnectionFailed:
        """``exc`` (an aiohttp or OS error) in our words; ``streamed`` is the characters of
        text a stream had delivered when it failed."""
        return ConnectionFailed(
            self.adapter.redact(connection_story(exc, streamed)), endpoint=self._name, provider=self._provider
        )

    def _encode(self, build: Callable[..., HTTPRequest], *args: Any, **kwargs: Any) -> HTTPRequest:
        # Building the request is the caller's side of the exchange: whatever goes wrong
        # there is the request's problem on this endpoint, never the endpoint's health.
        try:
            return build(*args, **kwargs)
        except LLMError:
            raise
        except Exception as exc:
            raise self._unwritable(exc) from self.adapter.scrub(exc)

    def _unwritable(self, exc: Exception) -> InvalidRequest:
        return InvalidRequest(
            self.adapter.redact(f"the request cannot be written for endpoint {self._name!r}: {type(exc).__name__}: {exc}"),
            endpoint=self._name,
        )

    async def _fail(self, resp: aiohttp.ClientResponse) -> ProviderError:
        body = await self._read(resp)
        return self.adapter.parse_error(resp.status, resp.headers, body)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole body, refused with :class:`ProtocolError` past :data:`MAX_BODY_BYTES`
        (decompressed: a small gzip body can inflate to gigabytes)."""
        size = resp.content_length
        if size is not None and size <= MAX_BODY_BYTES and hdrs.CONTENT_ENCODING not in resp.headers:
            return await resp.read()  # the common case: a known, bounded length
        parts: list[bytes] = []
        total = 0
        async for piece in resp.content.iter_any():
            total += len(piece)
            if total > MAX_BODY_BYTES:
                raise self.adapter._protocol(f"the body exceeds the {MAX_BODY_BYTES}-byte limit")
            parts.append(piece)
        return b"".join(parts)

    # chat and embed are not coroutines of their own: each hands over its exchange's, one
    # frame less on every resumption of a request. (A request that cannot be written raises
    # when it is called, in the awaiting frame as before.)
    def chat(self, request: ChatRequest, timeout: float) -> Awaitable[tuple[ChatResponse, RateLimitSnapshot | None]]:
        """One non-streaming chat attempt, bounded by ``timeout`` seconds."""
        adapter = self.adapter
        try:  # _encode's guard, inline: this is every chat's path
            http = adapter.chat_request(request, stream=False)
        except LLMError:
            raise
        except Exception as exc:
            raise self._unwritable(exc) from adapter.scrub(exc)
        return self._exchange(http, timeout, "reply", adapter.parse_chat)

    def embed(self, request: EmbeddingRequest, timeout: float) -> Awaitable[tuple[EmbeddingResponse, RateLimitSnapshot | None]]:
        """One embeddings attempt, bounded by ``timeout`` seconds."""
        return self._exchange(self._encode(self.adapter.embed_request, request), timeout, "reply", self.adapter.parse_embed)

    async def probe(self, timeout: float) -> None:
        """A token-free health probe; raises the error it met."""
        await self._exchange(self.adapter.probe_request(), timeout, "probe answer", _unread)

    async def _exchange(
        self, http: HTTPRequest, timeout: float, what: str, parse: Callable[[bytes], _R]
    ) -> tuple[_R, RateLimitSnapshot | None]:
        """The answer to ``http`` read by ``parse``, and its rate-limit headers."""
        # One deadline bounds connect, headers and body alike, kept by the client's shared
        # timer (see runtime.providers.deadlines); aiohttp's own timer is turned off.
        try:
            with (self._deadlines or self._start_deadlines()).after(timeout):
                # Awaited rather than entered: aiohttp's two context managers are five coroutine
                # frames a request, and all their exit does is the release() below (reading the
                # whole body has already handed the connection back).
                resp = await self.session.request(
                    http.method, http.url, headers=http.headers, data=http.body, timeout=_NO_TIMER
                )
                try:
                    if resp.status >= 400:
                        raise await self._fail(resp)
                    body = await self._read(resp)
                    # The raw header, not aiohttp's parsed property: parsing costs more than the check.
                    if what == "reply" and not resp.headers.get(hdrs.CONTENT_TYPE, "").startswith("application/json"):
                        raise self.adapter._protocol(f"expected application/json, got {resp.content_type!r}")
                finally:
                    resp.release()
        except LLMError:
            raise
        except TimeoutError as exc:
            raise self._timeout(timeout, what) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise self._connection(exc) from self.adapter.scrub(exc)
        return parse(body), self.adapter.rate_limit(resp.headers)

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest | None:
        """The request asking this endpoint to continue ``partial`` (None: it cannot)."""
        return self.adapter.continuation(request, partial)

    async def stream(
        self, request: ChatRequest, *, first_chunk_timeout: float, idle_timeout: float, deadline: float = math.inf
    ) -> ChunkStream:
        """Open one streaming chat attempt; the response headers must come within
        ``first_chunk_timeout``, and no read outlives ``deadline`` (loop time: the request's)."""
        http = self._encode(self.adapter.chat_request, request, stream=True)
        stream = ChunkStream(self, first_chunk_timeout, idle_timeout, deadline)
        await stream._open(http)
        return stream


class ChunkStream:
    """An open streamed reply: an async iterator of :class:`StreamChunk`.

    The first chunk with content (text, reasoning or a tool call) must come within
    ``first_chunk_timeout`` seconds of the request: chunks without any (role openers,
    pings, usage) do not extend it. Each later read must bring a chunk within
    ``idle_timeout`` of the one before, and all of them come by ``deadline`` (loop time),
    the request's. One bound per read holds the earliest that applies, where a timeout of
    the caller's around every chunk (and another around the wait for content) cost a loop
    timer armed and cancelled each. ``aclose()`` closes the connection at once, so the
    server sees the client leave.
    """

    __slots__ = (
        "_chars",
        "_client",
        "_deadline",
        "_deadlines",
        "_decoder",
        "_ended",
        "_idle",
        "_pending",
        "_resp",
        "_timeout",
        "_until",
        "_what",
    )

    def __init__(
        self, client: ProviderClient, first_chunk_timeout: float, idle_timeout: float, deadline: float = math.inf
    ) -> None:
        self._client = client
        self._decoder = client.adapter.stream_decoder()
        self._resp: aiohttp.ClientResponse | None = None
        self._pending: list[StreamChunk] = []
        self._deadlines = client.deadlines  # read per chunk: held, not looked up through the client
        self._until = deadline
        self._deadline = min(self._deadlines.time() + first_chunk_timeout, deadline)
        self._timeout = first_chunk_timeout
        self._idle = idle_timeout
        self._what = "first chunk"
        self._ended = False
        self._chars = 0  # text delivered so far, for the story of a cut

    async def _open(self, http: HTTPRequest) -> None:
        client = self._client
        try:
            with self._deadlines.at(self._deadline):
                resp = await client.session.request(
                    http.method, http.url, headers=http.headers, data=http.body, timeout=_NO_TIMER
                )
                self._resp = resp
                if resp.status >= 400:
                    raise await client._fail(resp)
                if resp.content_type not in client.adapter.stream_content_types:
                    body = await client._read(resp)
                    if resp.content_type == "application/json":
                        # an error body under a 2xx status still says what went wrong
                        raise client.adapter.parse_error(resp.status if resp.status >= 400 else 502, resp.headers, body)
                    raise client.adapter._protocol(
                        f"expected {client.adapter.stream_content_types[0]}, got {resp.content_type!r}"
                    )
        except BaseException as exc:
            self._close()
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from client.adapter.scrub(exc)

    @property
    def rate_limit(self) -> RateLimitSnapshot | None:
        """The rate-limit headers the response carried."""
        return self._client.adapter.rate_limit(self._resp.headers) if self._resp is not None else None

    @property
    def ready(self) -> int:
        """Chunks decoded and waiting: the next ``ready`` reads do not wait for the network."""
        return len(self._pending)

    @property
    def past_deadline(self) -> bool:
        """Whether the request's deadline, not a chunk timeout, bounds the read now (or
        bounded the read that timed out)."""
        return self._deadline >= self._until

    def __aiter__(self) -> ChunkStream:
        return self

    async def __anext__(self) -> StreamChunk:
        pending = self._pending
        if pending:
            return pending.pop()
        if self._ended or self._resp is None:
            raise StopAsyncIteration
        content = self._resp.content
        decoder = self._decoder
        try:
            with self._deadlines.at(self._deadline):
                while True:
                    data = await content.readany()
                    chunks = decoder.feed(data) if data else self._finish()
                    if chunks or not data or decoder.done:
                        break
        except BaseException as exc:
            self._close()
            translated = self._translate(exc, self._chars)
            if translated is exc:
                raise
            raise translated from self._client.adapter.scrub(exc)
        if not data or decoder.done:
            self._ended = True
            self._close()
        if self._what == "next chunk" or any(c.text or c.reasoning or c.tool_calls for c in chunks):
            self._what = "next chunk"
            self._timeout = self._idle
            bound = self._deadlines.time() + self._timeout
            self._deadline = bound if bound < self._until else self._until  # min(), a call less per read
        elif chunks:
            self._what = "content"  # chunks came, none with content: the first deadline stands
        if not chunks:
            raise StopAsyncIteration
        # Counted as the read brings them, not as each is taken: nothing reads the count
        # before the next read, and by then every one of them has been taken. (A loop:
        # sum(map(len, map(attrgetter("text"), chunks))) timed 2-3x slower, 221 ns against
        # 81 for a read of one chunk, the usual read of an answer arriving token by token.)
        chars = self._chars
        for chunk in chunks:
            chars += len(chunk.text)
        self._chars = chars
        chunks.reverse()  # the rest are taken from the end, in order
        first = chunks.pop()
        self._pending = chunks
        return first

    def _finish(self) -> list[StreamChunk]:
        # The body ended: an answer cut short says how much of it the caller already has.
        try:
            return self._decoder.finish()
        except ProtocolError as exc:
            exc.message = f"the stream was cut after {self._chars} characters: {exc.message}"
            exc.args = (exc.message,)
            raise

    def _translate(self, exc: BaseException, streamed: int | None = None) -> BaseException:
        client = self._client
        if isinstance(exc, LLMError):
            return exc
        if isinstance(exc, TimeoutError):
            if self.past_deadline:
                return Timeout("the request's deadline passed mid-stream", endpoint=client._name, provider=client._provider)
            return client._timeout(self._timeout, self._what)
        if isinstance(exc, (aiohttp.ClientError, OSError)):
            return client._connection(exc, streamed)
        if isinstance(exc, DECODE_ERRORS):
            return client.adapter._protocol(decode_failure("stream", exc))
        return exc

    def _close(self) -> None:
        resp = self._resp
        if resp is not None:
            self._resp = None
            resp.close()

    async def aclose(self) -> None:
        """Close the connection now; the iterator ends."""
        self._ended = True
        self._pending.clear()
        self._close()
