"""Fault-injecting local LLM endpoints on ``aiohttp.web``.

A :class:`FaultyEndpoint` speaks one provider's wire format faithfully (OpenAI chat
completions, Anthropic messages, Ollama chat; OpenAI and Ollama text completions; JSON
and streams; embeddings; model listings) and misbehaves on demand. Its :class:`Faults` object is plain data that a test
changes between requests; every request asks it, in one synchronous step, what to do
(``Faults.decide(now, probe=...)``), then the endpoint does the I/O. Nothing here sleeps
on the wall clock: latency, slow streams and outage windows follow the event loop's
clock, so on :class:`~runtime.testing.VirtualClockLoop` a ten-minute outage passes in
milliseconds.

Replies are deterministic: the text is the endpoint's ``text`` (default ``"This is a
reply from <name>."``) or, with ``echo=True``, the last user message; it is split at
word boundaries into pieces (``"This"``, ``" is"``, …), one stream chunk per piece.
Token counts are words: ``input_tokens`` is the number of whitespace-separated words
in every message (and the system prompt), ``output_tokens`` the number of pieces sent.
When a request offers ``tools`` (and its last message is not a tool result), the reply
is a call of the first tool with arguments built from its JSON schema.

A request whose last message is from the assistant asks for that message to be continued
(a prefill) on Anthropic and Ollama, and on the OpenAI dialect when the body says
``continue_final_message: true`` (vLLM's extension, which wants ``add_generation_prompt:
false`` with it): when that text begins the reply, only the rest of the reply is sent,
as a real model continues its own words. ``Faults.reject_prefill`` refuses such requests
with the dialect's 400.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import hashlib
import itertools
import random
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
from aiohttp import web

from ..policy import KEY_REQUIRED, Endpoint
from ..providers.registry import PROVIDERS

Dialect = Literal["openai", "anthropic", "ollama"]
"""A wire format: OpenAI chat completions, Anthropic messages or Ollama's native API."""

# Which wire dialect each provider name is served with, and the model a fresh endpoint
# reports when none is given: the provider registry's facts (the mock has no wire).
_DIALECT_OF: dict[str, Dialect] = {
    name: spec.dialect for name, spec in PROVIDERS.items() if spec.dialect != "mock"
}
_DEFAULT_MODEL: dict[str, str] = {name: PROVIDERS[name].default_model for name in _DIALECT_OF}

Step = int | Literal["ok", "hang", "reset", "malformed"]
"""One scheduled behaviour: an HTTP status to answer with (``200`` answers normally),
``"ok"`` (answer normally), ``"hang"``, ``"reset"`` or ``"malformed"``."""

_Action = Literal["answer", "error", "hang", "reset", "malformed"]
_Kind = Literal["chat", "complete", "embed", "probe"]
_StreamEnd = Literal["cut", "error", "end", "stall"]

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_WORD = re.compile(r"\s*\S+")


# ---------------------------------------------------------------------------------------
# Faults: the plain, synchronous part


@dataclass(frozen=True, slots=True)
class Decision:
    """What one request gets: wait ``delay`` seconds, then do ``action``.

    ``status``, ``message``, ``code`` and ``retry_after`` describe an injected error
    (``action == "error"``); ``message`` and ``code`` replace the dialect's defaults.
    """

    action: _Action = "answer"
    delay: float = 0.0
    status: int = 200
    message: str | None = None
    code: str | None = None
    retry_after: float | None = None


_ANSWER = Decision()


@dataclass(slots=True)
class _Outage:
    start: float
    end: float
    status: int | None  # None: the port refuses connections for the window


@dataclass(slots=True)
class _Hooks:
    """How a :class:`Faults` bound to a running endpoint reaches its listener and clock."""

    refuse: Callable[[], None]
    accept: Callable[[], None]
    is_refusing: Callable[[], bool]
    call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle]


class Faults:
    """What an endpoint does wrong. Change any attribute at any time; each request reads it.

    Persistent settings (until changed back):

    - ``latency`` seconds before every answer, plus up to ``jitter`` more (seeded RNG);
    - ``error_rate``: the probability that a request fails with ``error_status`` (seeded);
    - ``retry_after``: seconds sent in ``Retry-After`` with every 429 (None: no header);
    - ``hang``: never answer; the request is held until the client leaves;
    - ``reset``: close every connection abruptly (TCP RST) instead of answering;
    - ``malformed``: answer 200 with a truncated JSON body (a broken frame in streams);
    - ``chunk_delay``: seconds before each content chunk of a stream (a slow stream);
    - ``cut_after``: close the connection after that many content chunks of a stream
      (one ``chunk_delay`` after the last chunk, as a peer dying between chunks would);
    - ``stream_error_after``: after that many content chunks, send the dialect's
      in-stream error event (OpenAI ``data: {"error":…}``, Anthropic ``event: error``
      with ``overloaded_error``, Ollama an ``{"error":…}`` line) and end the stream;
    - ``no_terminal``: end streams cleanly but without their terminal event
      (``data: [DONE]``, ``message_stop``, the ``done: true`` line); the finish reason
      (OpenAI's finish chunk and usage, Anthropic's ``message_delta``) is still sent,
      except on Ollama, where the ``done: true`` line is the finish reason;
    - ``end_after``: after that many content chunks, end the body cleanly with no
      finish reason and no terminal event (an answer cut short by a proxy or a server);
    - ``stall_after``: after that many content chunks, send nothing more and hold the
      connection open until the client leaves (a provider stalled mid-answer);
    - ``malformed_after``: after that many content chunks, send one undecodable event
      (a frame cut in half), then the rest of the stream as usual;
    - ``reject_prefill``: answer a request that asks to continue a trailing assistant
      message with the dialect's 400 (a provider or model without prefill);
    - ``body``: answer every chat and embedding request 200 with exactly these bytes,
      under the dialect's content type (a stream's when the request streams): hostile
      or broken bodies on demand (nesting, bad UTF-8, a BOM); probes answer as usual;
      ``body_status`` is the status they come with (default 200; a 500 with an HTML page, say);
    - ``trickle``: seconds between content-less chunks sent forever before any content
      (OpenAI role openers and usage-only chunks, Anthropic ``ping`` and ``message_delta``
      without a stop reason, Ollama empty messages), until the client leaves;
    - ``probes_exempt``: model-listing probes ignore latency, hang, reset and outages
      (a refused port refuses them too).

    One-shot behaviour, consumed in order by chat and embedding requests (never by
    probes): :meth:`fail_next` and :meth:`schedule`. Time windows: :meth:`outage`.
    The port itself: :meth:`refuse` and :meth:`accept` (endpoint must be running).

    Precedence for one request: outage window, ``hang``, ``reset``, the schedule,
    ``error_rate``, ``malformed``, then a normal answer.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.latency = 0.0
        self.jitter = 0.0
        self.error_rate = 0.0
        self.error_status = 500
        self.retry_after: float | None = 1.0
        self.hang = False
        self.reset = False
        self.malformed = False
        self.chunk_delay = 0.0
        self.cut_after: int | None = None
        self.stream_error_after: int | None = None
        self.no_terminal = False
        self.end_after: int | None = None
        self.stall_after: int | None = None
        self.malformed_after: int | None = None
        self.reject_prefill = False
        self.trickle: float | None = None
        self.probes_exempt = False
        self.body: bytes | None = None
        self.body_status = 200
        self._seed = seed
        self._rng = random.Random(seed)
        self._steps: deque[Decision] = deque()
        self._outages: list[_Outage] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._hooks: _Hooks | None = None

    def __repr__(self) -> str:
        shown = []
        for name, default in _FAULT_DEFAULTS.items():
            value = getattr(self, name)
            if value != default:
                shown.append(f"{name}={value!r}")
        if self._steps:
            shown.append(f"scheduled={len(self._steps)}")
        if self._outages:
            shown.append(f"outages={len(self._outages)}")
        return f"<Faults {' '.join(shown) or 'none'}>"

    # --- one-shot and timed behaviour ---------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        *,
        message: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Fail the next ``n`` chat/embedding requests with ``status``.

        ``message`` and ``code`` replace the dialect's default error text and code (for
        example ``code="context_length_exceeded"`` on a 400); ``retry_after`` adds a
        ``Retry-After`` header (a 429 carries :attr:`retry_after` when this is None).
        """
        step = self._error_step(status, message, code, retry_after)
        self._steps.extend([step] * n)

    def schedule(self, *steps: Step) -> None:
        """Append behaviours that the next chat/embedding requests get, one each, in order.

        ``ep.faults.schedule(429, 500, "reset", 200)``: a 429, then a 500, then a reset
        connection, then a normal answer; after that, the persistent settings again.
        """
        for step in steps:
            if step in ("ok", 200):
                self._steps.append(_ANSWER)
            elif isinstance(step, int):
                self._steps.append(self._error_step(step, None, None, None))
            elif step in ("hang", "reset", "malformed"):
                self._steps.append(Decision(action=step))
            else:
                raise ValueError(f"unknown step {step!r}: use a status, 'ok', 'hang', 'reset' or 'malformed'")

    @property
    def scheduled(self) -> int:
        """How many scheduled behaviours are still waiting for a request."""
        return len(self._steps)

    def outage(self, for_seconds: float, *, status: int | None = 503, after: float = 0.0) -> None:
        """Make the endpoint unavailable from ``after`` to ``after + for_seconds`` seconds from now.

        Times are on the event loop's clock. During the window every request (probes too,
        unless ``probes_exempt``) fails with ``status``; with ``status=None`` the port
        refuses connections instead, and listens again when the window ends.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        start, end = now + after, now + after + for_seconds
        if status is not None:
            self._outages.append(_Outage(start, end, status))
            return
        hooks = self._bound()
        self._timers.append(hooks.call_at(start, hooks.refuse))
        self._timers.append(hooks.call_at(end, hooks.accept))

    def refuse(self) -> None:
        """Stop listening: new connections are refused and open ones are dropped, at once."""
        self._bound().refuse()

    def accept(self) -> None:
        """Listen again on the same port, at once (connections queue until served)."""
        self._bound().accept()

    @property
    def refusing(self) -> bool:
        """True while the port refuses connections."""
        return self._hooks is not None and self._hooks.is_refusing()

    def reseed(self, seed: int) -> None:
        """Restart the random sequence behind ``jitter`` and ``error_rate`` from ``seed``."""
        self._seed = seed
        self._rng = random.Random(seed)

    def clear(self) -> None:
        """Back to a healthy endpoint: defaults, empty schedule, no outages, listening."""
        for name, default in _FAULT_DEFAULTS.items():
            setattr(self, name, default)
        self._steps.clear()
        self._outages.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.refusing:
            self.accept()
        self.reseed(self._seed)

    # --- the decision -------------------------------------------------------------

    def decide(self, now: float, *, probe: bool = False) -> Decision:
        """What the request arriving at loop time ``now`` gets. Consumes one scheduled step."""
        if probe and self.probes_exempt:
            return _ANSWER
        delay = self.latency
        if self.jitter > 0:
            delay += self.jitter * self._rng.random()
        if self._outages:
            self._outages = [o for o in self._outages if o.end > now]
            for outage in self._outages:
                if outage.start <= now and outage.status is not None:
                    return self._error_step(outage.status, None, None, None, delay)
        if self.hang:
            return Decision(action="hang")
        if self.reset:
            return Decision(action="reset", delay=delay)
        if probe:
            return Decision(delay=delay) if delay else _ANSWER
        if self._steps:
            step = self._steps.popleft()
            return _with_delay(step, delay)
        if self.error_rate > 0 and self._rng.random() < self.error_rate:
            return self._error_step(self.error_status, None, None, None, delay)
        if self.malformed:
            return Decision(action="malformed", delay=delay)
        return Decision(delay=delay) if delay else _ANSWER

    def _error_step(
        self, status: int, message: str | None, code: str | None, retry_after: float | None, delay: float = 0.0
    ) -> Decision:
        if status == 200:
            return Decision(delay=delay)
        if retry_after is None and status == 429:
            retry_after = self.retry_after
        return Decision("error", delay, status, message, code, retry_after)

    def _bound(self) -> _Hooks:
        if self._hooks is None:
            raise RuntimeError("these Faults are not attached to a running FaultyEndpoint")
        return self._hooks

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()


def _with_delay(step: Decision, delay: float) -> Decision:
    if step.action == "hang" or not delay:
        return step
    return Decision(step.action, delay, step.status, step.message, step.code, step.retry_after)


_FAULT_DEFAULTS: dict[str, Any] = {
    "latency": 0.0,
    "jitter": 0.0,
    "error_rate": 0.0,
    "error_status": 500,
    "retry_after": 1.0,
    "hang": False,
    "reset": False,
    "malformed": False,
    "chunk_delay": 0.0,
    "cut_after": None,
    "stream_error_after": None,
    "no_terminal": False,
    "end_after": None,
    "stall_after": None,
    "malformed_after": None,
    "reject_prefill": False,
    "trickle": None,
    "probes_exempt": False,
    "body": None,
    "body_status": 200,
}


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as the endpoint saw it: when (loop clock), what (``chat``, ``embed``,
    ``probe``), its parsed JSON body (None for probes) and what the faults decided."""

    at: float
    kind: str
    body: Any
    decision: Decision


# ---------------------------------------------------------------------------------------
# Counters


class ServerStats(msgspec.Struct, kw_only=True):
    """One endpoint's counters; :meth:`FaultyEndpoint.statistics` hands out a copy.

    ``requests`` counts chat and embedding requests (and unknown paths), ``probes`` the
    model listings; ``by_path`` counts both by URL path. ``disconnects`` counts clients
    that left before their answer was complete (never a connection the endpoint dropped
    itself); ``injected`` counts requests that got a fault; ``streams`` streamed answers
    begun; ``in_flight`` requests being answered when the copy was taken.
    """

    requests: int = 0
    probes: int = 0
    disconnects: int = 0
    injected: int = 0
    streams: int = 0
    in_flight: int = 0
    by_path: dict[str, int] = msgspec.field(default_factory=dict)


@dataclass(slots=True, eq=False)
class _Flight:
    """One request being answered; ``ours`` once the endpoint itself drops its connection."""

    ours: bool = False


# ---------------------------------------------------------------------------------------
# The reply, independent of dialect


@dataclass(slots=True)
class _Prompt:
    """What the reply depends on, read from any dialect's request."""

    model: str
    words: int
    last_user: str
    tools: list[tuple[str, dict[str, Any]]]
    tool_result_last: bool
    max_tokens: int | None
    stream: bool
    include_usage: bool = False
    prefill: str | None = None  # the assistant text the request asks to continue
    completion: bool = False  # a text completion (/v1/completions, /api/generate), not a chat


@dataclass(slots=True)
class _Reply:
    id: str
    model: str
    pieces: list[str]  # text pieces, or argument fragments of a tool call
    finish: Literal["stop", "length", "tool"]
    input_tokens: int
    tool_id: str = ""
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "" if self.tool_name else "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return len(self.pieces)


def _words(text: str) -> int:
    return len(text.split())


def _text_of(content: Any) -> str:
    """The text of a message content in any dialect: a string or a list of parts/blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
                elif part.get("type") == "tool_result":
                    out.append(_text_of(part.get("content")))
        return " ".join(out)
    return ""


def _trailing_assistant(messages: list[dict[str, Any]]) -> str | None:
    """The text of the last message when it is an assistant's words (not a tool call)."""
    last = messages[-1]
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return None
    return _text_of(last.get("content"))


def _arguments_for(schema: dict[str, Any], last_user: str) -> dict[str, Any]:
    """Arguments filling a tool's JSON schema: strings get the last user message."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    args: dict[str, Any] = {}
    for key, spec in props.items():
        kind = spec.get("type") if isinstance(spec, dict) else None
        enum = spec.get("enum") if isinstance(spec, dict) else None
        if isinstance(enum, list) and enum:  # with or without a type (msgspec's Literal schemas have none)
            args[key] = enum[0]
        elif kind == "string":
            args[key] = last_user or key
        elif kind in ("integer", "number"):
            args[key] = 1
        elif kind == "boolean":
            args[key] = True
        elif kind == "array":
            args[key] = []
        elif kind == "object":
            args[key] = {}
        else:
            args[key] = None
    return args


def _fragments(text: str, size: int = 8) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _vector(text: str, dims: int) -> list[float]:
    """A unit vector that depends only on ``text`` (not on the process or the run)."""
    rng = random.Random(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big"))
    values = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


class _BadRequest(Exception):
    """The request itself is wrong; answered with the dialect's 400 (or ``status``)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def _as_dict(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    return body


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a non-empty array of objects", param="messages")
    return messages


# ---------------------------------------------------------------------------------------
# Dialects: how requests are read and answers written


@dataclass(slots=True)
class _Frames:
    """A stream's frames: ``preamble`` before any content, one frame per content piece,
    ``closing`` frames, and the ``terminal`` event."""

    preamble: list[bytes]
    content: list[bytes]
    closing: list[bytes]
    terminal: bytes
    error: bytes
    content_type: str
    #: frames that carry no content, sent in turn by the ``trickle`` fault
    idle: list[bytes]


class _Dialect(abc.ABC):
    """Protocol code of one wire dialect. Stateless; the endpoint passes in what varies."""

    name: Dialect

    @abc.abstractmethod
    def prompt(self, body: dict[str, Any], model: str) -> _Prompt:
        """Read a chat request; raises :class:`_BadRequest` where the real API answers 400."""

    @abc.abstractmethod
    def chat(self, reply: _Reply) -> dict[str, Any]:
        """The non-streamed answer."""

    @abc.abstractmethod
    def frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        """The streamed answer, frame by frame."""

    @abc.abstractmethod
    def probe(self, models: Sequence[str], path: str) -> web.Response:
        """The model listing (or version) a health probe reads."""

    @abc.abstractmethod
    def error(self, status: int, message: str | None, code: str | None, model: str) -> dict[str, Any]:
        """The error body for ``status``; ``message``/``code`` replace the defaults."""

    #: the 400's message for a prefill refused by :attr:`Faults.reject_prefill`
    prefill_refusal = "this model cannot continue an assistant message"

    def embed(self, body: dict[str, Any], model: str, dims: int) -> dict[str, Any]:
        """The embeddings answer; a dialect without embeddings answers 404."""
        raise _BadRequest("this API has no embeddings", status=404)

    def completion_prompt(self, body: dict[str, Any], model: str, limit: Any, stream: bool) -> _Prompt:
        """A text-completion request's prompt (``body["prompt"]``, a string); ``limit`` its length cap."""
        text = body.get("prompt")
        if not isinstance(text, str):
            raise _BadRequest("'prompt' must be a string", param="prompt")
        if not model:
            raise _BadRequest("you must provide a model parameter", param="model")
        options = body.get("stream_options")
        return _Prompt(
            model=model, words=_words(text), last_user=text, tools=[], tool_result_last=False,
            max_tokens=limit if isinstance(limit, int) and limit > 0 else None, stream=stream,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True, completion=True,
        )

    def completion(self, reply: _Reply) -> dict[str, Any]:
        """The non-streamed answer of a text completion."""
        raise NotImplementedError  # routed only for dialects that override it

    def completion_frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        """The streamed answer of a text completion."""
        raise NotImplementedError  # routed only for dialects that override it

    def headers(self, status: int, retry_after: float | None, request_id: str) -> dict[str, str]:
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return headers

    def authorized(self, request: web.Request, key: str) -> bool:
        return request.headers.get("authorization") == f"Bearer {key}"


def _tools_openai(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    tools = body.get("tools")
    if not isinstance(tools, list) or body.get("tool_choice") == "none":
        return []
    out = []
    for tool in tools:
        fn = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            params = fn.get("parameters")
            out.append((fn["name"], params if isinstance(params, dict) else {}))
    return out


def _chat_prompt(
    body: dict[str, Any], model: str, messages: list[dict[str, Any]], *,
    max_tokens: int | None, stream: bool, include_usage: bool = False, prefill: str | None = None,
) -> _Prompt:
    """What a reply depends on, from a request in the OpenAI chat shape (which Ollama's chat shares)."""
    return _Prompt(
        model=model,
        words=sum(_words(_text_of(m.get("content"))) for m in messages),
        last_user=next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), ""),
        tools=_tools_openai(body),
        tool_result_last=messages[-1].get("role") == "tool",
        max_tokens=max_tokens,
        stream=stream,
        include_usage=include_usage,
        prefill=prefill,
    )


_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (injected by FaultyEndpoint)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "You are not allowed to access this resource."),
    404: ("invalid_request_error", "model_not_found", "The model `{model}` does not exist or you do not have access to it."),
    408: ("timeout", None, "Request timed out."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for {model} in organization org-local on requests per min (RPM): Limit 60, Used 60, Requested 1. Please try again in 1s."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later"),
    529: ("server_error", None, "The engine is currently overloaded, please try again later"),
}
_OPENAI_OK_HEADERS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "10000000",
    "x-ratelimit-remaining-tokens": "9999000",
    "x-ratelimit-reset-tokens": "6ms",
}


class _OpenAI(_Dialect):
    """OpenAI chat completions (also the Azure, DeepSeek and compatible paths)."""

    name: Dialect = "openai"
    prefill_refusal = "Unrecognized request argument supplied: continue_final_message"

    def prompt(self, body: dict[str, Any], model: str) -> _Prompt:
        messages = _messages(body)
        if not model:
            raise _BadRequest("you must provide a model parameter", param="model")
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        options = body.get("stream_options")
        prefill = None
        if body.get("continue_final_message") is True:
            if body.get("add_generation_prompt", True) is not False:
                raise _BadRequest("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
            prefill = _trailing_assistant(messages)
        return _chat_prompt(
            body, model, messages,
            max_tokens=limit if isinstance(limit, int) else None,
            stream=body.get("stream") is True,
            include_usage=isinstance(options, dict) and options.get("include_usage") is True,
            prefill=prefill,
        )

    @staticmethod
    def _usage(reply: _Reply, *, full: bool) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        }
        if full:
            usage["prompt_tokens_details"] = {"cached_tokens": 0, "audio_tokens": 0}
            usage["completion_tokens_details"] = {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            }
        else:
            usage["completion_tokens_details"] = {"reasoning_tokens": 0}
        return usage

    @staticmethod
    def _finish(reply: _Reply) -> str:
        return {"stop": "stop", "length": "length", "tool": "tool_calls"}[reply.finish]

    def chat(self, reply: _Reply) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": None if reply.tool_name else reply.text, "refusal": None}
        if reply.tool_name:
            message["tool_calls"] = [
                {
                    "id": reply.tool_id,
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": "".join(reply.pieces)},
                }
            ]
        message["annotations"] = []
        return {
            "id": reply.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish(reply)}],
            "usage": self._usage(reply, full=True),
            "service_tier": "default",
            "system_fingerprint": "fp_faulty",
        }

    def frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        head = {
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": reply.model,
            "system_fingerprint": "fp_faulty",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return b"data: " + _encode({**head, "choices": [choice]}) + b"\n\n"

        if reply.tool_name:
            call = {
                "index": 0,
                "id": reply.tool_id,
                "type": "function",
                "function": {"name": reply.tool_name, "arguments": ""},
            }
            first = chunk({"role": "assistant", "content": None, "tool_calls": [call], "refusal": None})
            content = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in reply.pieces]
        else:
            first = chunk({"role": "assistant", "content": "", "refusal": None})
            content = [chunk({"content": p}) for p in reply.pieces]
        closing = [chunk({}, self._finish(reply))]
        if prompt.include_usage:
            closing.append(b"data: " + _encode({**head, "choices": [], "usage": self._usage(reply, full=False)}) + b"\n\n")
        error = b"data: " + _encode(self.error(500, None, None, reply.model)) + b"\n\n"
        usage_only = b"data: " + _encode({**head, "choices": [], "usage": self._usage(reply, full=False)}) + b"\n\n"
        idle = [chunk({"role": "assistant", "content": ""}), usage_only]
        return _Frames([first], content, closing, b"data: [DONE]\n\n", error, "text/event-stream; charset=utf-8", idle)

    def completion(self, reply: _Reply) -> dict[str, Any]:
        choice = {"text": reply.text, "index": 0, "logprobs": None, "finish_reason": self._finish(reply)}
        return {
            "id": reply.id.replace("chatcmpl", "cmpl", 1),
            "object": "text_completion",
            "created": int(time.time()),
            "model": reply.model,
            "choices": [choice],
            "usage": self._usage(reply, full=False),
        }

    def completion_frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        head = {"id": reply.id.replace("chatcmpl", "cmpl", 1), "object": "text_completion", "created": int(time.time()), "model": reply.model}

        def chunk(text: str, finish: str | None = None) -> bytes:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
            return b"data: " + _encode({**head, "choices": [choice]}) + b"\n\n"

        closing = [chunk("", self._finish(reply))]
        if prompt.include_usage:
            closing.append(b"data: " + _encode({**head, "choices": [], "usage": self._usage(reply, full=False)}) + b"\n\n")
        error = b"data: " + _encode(self.error(500, None, None, reply.model)) + b"\n\n"
        content = [chunk(p) for p in reply.pieces]
        idle = [chunk("")]
        return _Frames([], content, closing, b"data: [DONE]\n\n", error, "text/event-stream; charset=utf-8", idle)

    def embed(self, body: dict[str, Any], model: str, dims: int) -> dict[str, Any]:
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise _BadRequest("'input' must be a string or a non-empty array of strings", param="input")
        if not model:
            raise _BadRequest("you must provide a model parameter", param="model")
        want = body.get("dimensions")
        dims = want if isinstance(want, int) and want > 0 else dims
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vector: Any = _vector(text, dims)
            if b64:  # what the official SDK asks for by default: little-endian float32
                vector = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(_words(t) for t in inputs)
        return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def probe(self, models: Sequence[str], path: str) -> web.Response:
        data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in models]
        return _json_response(200, {"object": "list", "data": data})

    def error(self, status: int, message: str | None, code: str | None, model: str) -> dict[str, Any]:
        kind, default_code, default_message = _OPENAI_ERRORS.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None, f"HTTP {status} (injected by FaultyEndpoint).")
        )
        return {
            "error": {
                "message": message if message is not None else default_message.format(model=model),
                "type": kind,
                "param": None,
                "code": code if code is not None else default_code,
            }
        }

    def headers(self, status: int, retry_after: float | None, request_id: str) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if status == 429:
            reset = f"{retry_after:g}s" if retry_after is not None else "1s"
            headers.update(_OPENAI_OK_HEADERS)
            headers["x-ratelimit-remaining-requests"] = "0"
            headers["x-ratelimit-reset-requests"] = reset
        elif status < 400:
            headers.update(_OPENAI_OK_HEADERS)
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return headers

    def authorized(self, request: web.Request, key: str) -> bool:
        return request.headers.get("authorization") == f"Bearer {key}" or request.headers.get("api-key") == key


_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request (injected by FaultyEndpoint)."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model: {model}"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed the rate limit for your organization of 50 requests per minute."),
    500: ("api_error", "Internal server error"),
    503: ("overloaded_error", "Overloaded"),
    529: ("overloaded_error", "Overloaded"),
}


class _Anthropic(_Dialect):
    """Anthropic messages."""

    name: Dialect = "anthropic"
    prefill_refusal = (
        "This model does not support assistant message prefill. The conversation must end with a user message."
    )

    def prompt(self, body: dict[str, Any], model: str) -> _Prompt:
        messages = _messages(body)
        if not model:
            raise _BadRequest("model: Field required", param="model")
        limit = body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise _BadRequest("max_tokens: Field required", param="max_tokens")
        last = messages[-1].get("content")
        tool_result_last = isinstance(last, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in last
        )
        tools: list[tuple[str, dict[str, Any]]] = []
        choice = body.get("tool_choice")
        raw_tools = body.get("tools")
        if isinstance(raw_tools, list) and not (isinstance(choice, dict) and choice.get("type") == "none"):
            for tool in raw_tools:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    schema = tool.get("input_schema")
                    tools.append((tool["name"], schema if isinstance(schema, dict) else {}))
        last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        prefill = _trailing_assistant(messages)
        if prefill is not None and prefill != prefill.rstrip():
            raise _BadRequest("messages: final assistant content cannot end with trailing whitespace")
        return _Prompt(
            model=model,
            words=_words(_text_of(body.get("system"))) + sum(_words(_text_of(m.get("content"))) for m in messages),
            last_user=last_user,
            tools=tools,
            tool_result_last=tool_result_last,
            max_tokens=limit,
            stream=body.get("stream") is True,
            prefill=prefill,
        )

    @staticmethod
    def _stop(reply: _Reply) -> str:
        return {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}[reply.finish]

    @staticmethod
    def _usage(reply: _Reply, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    def chat(self, reply: _Reply) -> dict[str, Any]:
        block: dict[str, Any]
        if reply.tool_name:
            block = {"type": "tool_use", "id": reply.tool_id, "name": reply.tool_name, "input": reply.tool_args}
        else:
            block = {"type": "text", "text": reply.text}
        return {
            "model": reply.model,
            "id": reply.id,
            "type": "message",
            "role": "assistant",
            "content": [block],
            "stop_reason": self._stop(reply),
            "stop_sequence": None,
            "usage": self._usage(reply, reply.output_tokens),
        }

    @staticmethod
    def _event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"

    def frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        ev = self._event
        message: dict[str, Any] = {
            "model": reply.model,
            "id": reply.id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(reply, 1),
        }
        if reply.tool_name:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": reply.tool_id,
                "name": reply.tool_name,
                "input": {},
                "caller": {"type": "direct"},
            }
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in reply.pieces]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in reply.pieces]
        preamble = [
            ev("message_start", {"type": "message_start", "message": message}),
            ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            ev("ping", {"type": "ping"}),
        ]
        content = [ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas]
        usage = {"input_tokens": reply.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": reply.output_tokens}
        closing = [
            ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": self._stop(reply), "stop_sequence": None}, "usage": usage}),
        ]
        error = ev("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        idle = [ev("ping", {"type": "ping"}), ev("message_delta", {"type": "message_delta", "delta": {}, "usage": usage})]
        return _Frames(
            preamble, content, closing, ev("message_stop", {"type": "message_stop"}), error,
            "text/event-stream; charset=utf-8", idle,
        )

    def probe(self, models: Sequence[str], path: str) -> web.Response:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2024-10-22T00:00:00Z"} for m in models
        ]
        body = {"data": data, "has_more": False, "first_id": models[0] if models else None, "last_id": models[-1] if models else None}
        return _json_response(200, body)

    def error(self, status: int, message: str | None, code: str | None, model: str) -> dict[str, Any]:
        kind, default = _ANTHROPIC_ERRORS.get(status, ("api_error" if status >= 500 else "invalid_request_error", f"HTTP {status}"))
        return {
            "type": "error",
            "error": {"type": code or kind, "message": message if message is not None else default.format(model=model)},
            "request_id": None,  # filled in per request
        }

    def headers(self, status: int, retry_after: float | None, request_id: str) -> dict[str, str]:
        headers = {"request-id": request_id}
        if status >= 400:
            headers["x-should-retry"] = "true" if status in (408, 409, 429) or status >= 500 else "false"
        if status == 429:
            headers["anthropic-ratelimit-requests-limit"] = "50"
            headers["anthropic-ratelimit-requests-remaining"] = "0"
            reset = time.gmtime(time.time() + (retry_after or 1.0))
            headers["anthropic-ratelimit-requests-reset"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", reset)
        if retry_after is not None:
            headers["retry-after"] = f"{retry_after:g}"
        return headers

    def authorized(self, request: web.Request, key: str) -> bool:
        return request.headers.get("x-api-key") == key or request.headers.get("authorization") == f"Bearer {key}"


_OLLAMA_ERRORS: dict[int, str] = {
    400: "invalid request (injected by FaultyEndpoint)",
    401: "unauthorized",
    404: "model '{model}' not found",
    429: "too many requests",
    500: "an error was encountered while running the model",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


class _Ollama(_Dialect):
    """Ollama's native chat API."""

    name: Dialect = "ollama"

    def prompt(self, body: dict[str, Any], model: str) -> _Prompt:
        if not model:
            raise _BadRequest("model is required")
        messages = _messages(body)
        options = body.get("options")
        limit = options.get("num_predict") if isinstance(options, dict) else None
        return _chat_prompt(
            body, model, messages,
            max_tokens=limit if isinstance(limit, int) and limit > 0 else None,
            stream=body.get("stream") is not False,  # streaming is Ollama's default
            prefill=_trailing_assistant(messages),
        )

    @staticmethod
    def _created() -> str:
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"

    @staticmethod
    def _metrics(reply: _Reply) -> dict[str, Any]:
        # Fixed per-token costs in nanoseconds, so durations are deterministic.
        prompt_ns = reply.input_tokens * 1_000_000
        eval_ns = reply.output_tokens * 10_000_000
        load_ns = 1_000_000
        return {
            "total_duration": load_ns + prompt_ns + eval_ns,
            "load_duration": load_ns,
            "prompt_eval_count": reply.input_tokens,
            "prompt_eval_duration": prompt_ns,
            "eval_count": reply.output_tokens,
            "eval_duration": eval_ns,
        }

    @staticmethod
    def _done_reason(reply: _Reply) -> str:
        return "length" if reply.finish == "length" else "stop"

    def _tool_message(self, reply: _Reply) -> dict[str, Any]:
        call = {"function": {"name": reply.tool_name, "arguments": reply.tool_args}}
        return {"role": "assistant", "content": "", "tool_calls": [call]}

    def chat(self, reply: _Reply) -> dict[str, Any]:
        message = self._tool_message(reply) if reply.tool_name else {"role": "assistant", "content": reply.text}
        return {
            "model": reply.model,
            "created_at": self._created(),
            "message": message,
            "done_reason": self._done_reason(reply),
            "done": True,
            **self._metrics(reply),
        }

    def frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        created = self._created()

        def line(obj: dict[str, Any]) -> bytes:
            return _encode(obj) + b"\n"

        if reply.tool_name:
            # Ollama sends a tool call whole, in one chunk, not as fragments.
            content = [line({"model": reply.model, "created_at": created, "message": self._tool_message(reply), "done": False})]
        else:
            content = [
                line({"model": reply.model, "created_at": created, "message": {"role": "assistant", "content": p}, "done": False})
                for p in reply.pieces
            ]
        final = {
            "model": reply.model,
            "created_at": created,
            "message": {"role": "assistant", "content": ""},
            "done_reason": self._done_reason(reply),
            "done": True,
            **self._metrics(reply),
        }
        error = line({"error": "an error was encountered while running the model"})
        idle = [line({"model": reply.model, "created_at": created, "message": {"role": "assistant", "content": ""}, "done": False})]
        return _Frames([], content, [], line(final), error, "application/x-ndjson", idle)

    def completion(self, reply: _Reply) -> dict[str, Any]:
        return {
            "model": reply.model,
            "created_at": self._created(),
            "response": reply.text,
            "done": True,
            "done_reason": self._done_reason(reply),
            "context": list(range(1, reply.input_tokens + reply.output_tokens + 1)),
            **self._metrics(reply),
        }

    def completion_frames(self, reply: _Reply, prompt: _Prompt) -> _Frames:
        created = self._created()

        def line(obj: dict[str, Any]) -> bytes:
            return _encode(obj) + b"\n"

        content = [line({"model": reply.model, "created_at": created, "response": p, "done": False}) for p in reply.pieces]
        final = {**self.completion(reply), "response": ""}
        error = line({"error": "an error was encountered while running the model"})
        idle = [line({"model": reply.model, "created_at": created, "response": "", "done": False})]
        return _Frames([], content, [], line(final), error, "application/x-ndjson", idle)

    def embed(self, body: dict[str, Any], model: str, dims: int) -> dict[str, Any]:
        if not model:
            raise _BadRequest("model is required")
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise _BadRequest("invalid input type")
        want = body.get("dimensions")
        dims = want if isinstance(want, int) and want > 0 else dims
        tokens = sum(_words(t) for t in inputs)
        return {
            "model": model,
            "embeddings": [_vector(t, dims) for t in inputs],
            "total_duration": 1_000_000 + tokens * 1_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": tokens,
        }

    def probe(self, models: Sequence[str], path: str) -> web.Response:
        if path == "/api/version":
            return _json_response(200, {"version": "0.12.0"})
        if path == "/":
            return web.Response(text="Ollama is running")
        tags = []
        for m in models:
            name = m if ":" in m else f"{m}:latest"
            digest = hashlib.sha256(name.encode()).hexdigest()
            details = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "3.2B", "quantization_level": "Q4_K_M"}
            tags.append({"name": name, "model": name, "modified_at": "2025-05-04T17:37:44.706015396-07:00", "size": 2019393189, "digest": digest, "details": details})
        return _json_response(200, {"models": tags})

    def error(self, status: int, message: str | None, code: str | None, model: str) -> dict[str, Any]:
        default = _OLLAMA_ERRORS.get(status, f"HTTP {status}")
        return {"error": message if message is not None else default.format(model=model)}


_DIALECTS: dict[Dialect, _Dialect] = {"openai": _OpenAI(), "anthropic": _Anthropic(), "ollama": _Ollama()}


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=_encode(body), headers=headers, content_type="application/json")


# ---------------------------------------------------------------------------------------
# The listener: a port that can refuse and listen again


class _Listener:
    """The listening socket of one endpoint, opened and closed synchronously.

    ``open`` binds and listens at once, so a client connecting right after it is queued
    by the kernel rather than refused; the asyncio server that accepts from the socket
    starts on the next loop iteration, in a task the endpoint owns and awaits on close.
    """

    def __init__(self, server: web.Server, host: str, port: int) -> None:
        self._web = server
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._pending: asyncio.Task[None] | None = None
        self._want_open = False

    @property
    def listening(self) -> bool:
        return self._want_open

    def open(self) -> None:
        if self._want_open:
            return
        sock = socket.create_server((self.host, self.port), backlog=512)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]  # the port chosen for port 0, kept for reopening
        self._want_open = True
        previous = self._pending
        self._pending = asyncio.get_running_loop().create_task(self._serve(sock, previous))

    async def _serve(self, sock: socket.socket, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous  # keep open/close in call order
        if not self._want_open or self._pending is not asyncio.current_task():
            sock.close()  # closed again before it started serving
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._web, sock=sock)
        if not self._want_open or self._pending is not asyncio.current_task():
            self._server.close()
            self._server = None

    def close(self) -> None:
        self._want_open = False
        if self._server is not None:
            self._server.close()
            self._server = None
        # A pending start sees _want_open False and closes its socket itself.

    async def wait(self) -> None:
        """Let a pending open or close finish."""
        while self._pending is not None and not self._pending.done():
            await asyncio.shield(self._pending)

    async def aclose(self) -> None:
        self.close()
        await self.wait()


# ---------------------------------------------------------------------------------------
# The endpoint


class FaultyEndpoint:
    """A local LLM endpoint speaking one provider's wire format, with scriptable faults.

    ::

        async with FaultyEndpoint("openai", name="primary", text="hello world") as ep:
            Endpoint(name="primary", provider="openai", model=ep.model, base_url=ep.base_url, api_key="k")
            ep.faults.fail_next(2, status=503)
            ep.stats.requests, ep.last_request

    ``dialect`` is ``openai``, ``anthropic`` or ``ollama``, or a provider name served with
    the OpenAI wire (``azure``, ``deepseek``, ``openai-compatible``). Paths served:

    - openai: ``POST /v1/chat/completions``, ``/chat/completions`` and
      ``/openai/deployments/{deployment}/chat/completions`` (Azure), the same three for
      ``completions`` (text completions) and ``embeddings``; probes ``GET /v1/models``, ``/models``, ``/openai/models``;
    - anthropic: ``POST /v1/messages``; probe ``GET /v1/models``;
    - ollama: ``POST /api/chat``, ``POST /api/generate``, ``POST /api/embed``; probes ``GET /api/tags``,
      ``/api/version`` and ``/``.

    ``text`` is the reply (default ``"This is a reply from <name>."``), ``echo=True``
    answers with the last user message instead; both can be changed while running.
    ``replies`` (a deque) queues texts answered first, one per request, before those.
    With ``api_key`` set, requests without it get the dialect's 401. Embeddings have
    ``dimensions`` numbers unless the request asks for another size.
    """

    def __init__(
        self,
        dialect: str = "openai",
        *,
        name: str = "faulty",
        model: str | None = None,
        models: Sequence[str] = (),
        text: str | None = None,
        echo: bool = False,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        dimensions: int = 8,
        faults: Faults | None = None,
    ) -> None:
        if dialect not in _DIALECT_OF:
            raise ValueError(f"unknown dialect {dialect!r}: use one of {', '.join(_DIALECT_OF)}")
        self.provider: str = dialect
        self.dialect: Dialect = _DIALECT_OF[dialect]
        self.name = name
        self.model = model or _DEFAULT_MODEL[dialect]
        self.models: list[str] = list(models) or [self.model]
        self.text = text
        self.echo = echo
        self.api_key = api_key
        self.dimensions = dimensions
        self.faults = faults if faults is not None else Faults(seed=seed)
        self.replies: deque[str] = deque()
        """Texts to answer before ``text``/``echo``, one per chat request that calls no tool, first first."""
        self.served_model: str | None = None
        """The model name answers report (as an OpenAI-compatible server reports its own); None: the one asked for."""
        self.last_request: Any = None
        """The parsed JSON body of the last chat or embedding request (None if unparsable)."""
        self.last_headers: dict[str, str] = {}
        """The headers of the last chat or embedding request."""
        self.observer: Callable[[Arrival], None] | None = None
        """Called with every request as it is decided (probes too): what a benchmark records."""
        self._host = host
        self._port = port
        self._wire = _DIALECTS[self.dialect]
        self._counters = ServerStats()
        self._flights: set[_Flight] = set()
        self._serial = 0
        self._runner: web.AppRunner | None = None
        self._listener: _Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- addresses ------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port the endpoint listens on (chosen at start when 0 was asked)."""
        return self._listener.port if self._listener is not None else self._port

    @property
    def url(self) -> str:
        """The server's root, ``http://HOST:PORT``."""
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What ``Endpoint(base_url=...)`` of this provider needs: ``/v1`` added for OpenAI."""
        return self.url + "/v1" if self.provider in ("openai", "openai-compatible") else self.url

    def endpoint(self, **overrides: Any) -> Endpoint:
        """A runtime :class:`~runtime.policy.Endpoint` pointing here; keywords override fields."""
        fields: dict[str, Any] = {"name": self.name, "provider": self.provider, "model": self.model, "base_url": self.base_url}
        if self.api_key is not None or self.provider in KEY_REQUIRED:
            fields["api_key"] = self.api_key or "test-key"
        fields.update(overrides)
        return Endpoint(**fields)

    # --- counters -------------------------------------------------------------------

    def statistics(self) -> ServerStats:
        """A copy of the counters as they stand (the endpoint's own record keeps counting)."""
        c = self._counters
        return msgspec.structs.replace(c, in_flight=len(self._flights), by_path=dict(c.by_path))

    @property
    def stats(self) -> ServerStats:
        """Same as :meth:`statistics`."""
        return self.statistics()

    def reset_stats(self) -> None:
        """Zero the counters and forget the last request."""
        self._counters = ServerStats()
        self.last_request = None
        self.last_headers = {}

    def __repr__(self) -> str:
        c = self._counters
        where = self.base_url if self._listener is not None else "not started"
        return (
            f"<FaultyEndpoint {self.name!r} {self.provider} {where} "
            f"[requests {c.requests}, probes {c.probes}, disconnects {c.disconnects}, in flight {len(self._flights)}] "
            f"{self.faults!r}>"
        )

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving; returns once the port accepts connections."""
        if self._runner is not None:
            raise RuntimeError(f"{self.name!r} is already running")
        self._loop = asyncio.get_running_loop()
        app = web.Application(client_max_size=32 * 1024 * 1024)
        self._routes(app)
        # handler_cancellation: a client that leaves cancels its handler, which is how a
        # hung request learns it lost its client (and counts the disconnect).
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        assert runner.server is not None
        listener = _Listener(runner.server, self._host, self._port)
        try:
            listener.open()
            await listener.wait()
        except BaseException:
            await listener.aclose()
            await runner.cleanup()
            raise
        self._runner, self._listener = runner, listener
        loop = self._loop
        self.faults._hooks = _Hooks(
            refuse=self._refuse,
            accept=self._listener.open,
            is_refusing=lambda: self._listener is not None and not self._listener.listening,
            call_at=loop.call_at,
        )

    async def aclose(self) -> None:
        """Stop serving: drop every connection (hung requests included) and close the port."""
        runner, listener = self._runner, self._listener
        if runner is None or listener is None:
            return
        self.faults._cancel_timers()
        self.faults._hooks = None
        self._drop_connections()
        await listener.aclose()
        await runner.cleanup()
        self._runner = None
        self._port = listener.port
        self._listener = None

    async def __aenter__(self) -> FaultyEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _refuse(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._drop_connections()

    def _drop_connections(self) -> None:
        for flight in self._flights:
            flight.ours = True
        server = self._runner.server if self._runner is not None else None
        if server is not None:
            for conn in server.connections:
                conn.force_close()

    # --- routing --------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        add = app.router.add_route
        if self.dialect == "openai":
            for prefix in ("/v1", "", "/openai/deployments/{deployment}"):
                add("POST", prefix + "/chat/completions", self._chat)
                add("POST", prefix + "/completions", self._complete)
                add("POST", prefix + "/embeddings", self._embed)
            for path in ("/v1/models", "/models", "/openai/models"):
                add("GET", path, self._probe)
        elif self.dialect == "anthropic":
            add("POST", "/v1/messages", self._chat)
            add("GET", "/v1/models", self._probe)
        else:
            add("POST", "/api/chat", self._chat)
            add("POST", "/api/generate", self._complete)
            add("POST", "/api/embed", self._embed)
            for path in ("/api/tags", "/api/version", "/"):
                add("GET", path, self._probe)
        add("*", "/{tail:.*}", self._unknown)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "chat")

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "embed")

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "complete")

    async def _probe(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, "probe")

    async def _unknown(self, request: web.Request) -> web.StreamResponse:
        self._serial += 1
        c = self._counters
        c.requests += 1
        c.by_path[request.path] = c.by_path.get(request.path, 0) + 1
        if self.dialect == "ollama":  # gin's own answer for an unknown route
            return web.Response(status=404, text="404 page not found")
        message = f"Invalid URL ({request.method} {request.path})" if self.dialect == "openai" else "Not Found"
        return self._error_response(404, message, None, None)

    # --- answering ------------------------------------------------------------------

    async def _serve(self, request: web.Request, kind: _Kind) -> web.StreamResponse:
        if self.faults.refusing:
            # A connection the kernel accepted before the port closed but whose protocol
            # asyncio made after (so the close's drop missed it): a dead endpoint answers
            # nothing on it either, or the client's pool would reuse it through the outage.
            _reset(request)
            return web.Response(status=499)  # never reaches anyone; aiohttp discards it
        flight = _Flight()
        self._flights.add(flight)
        self._serial += 1  # numbers the reply's id and the request-id header
        try:
            return await self._answer(request, kind, flight)
        except asyncio.CancelledError:
            if not flight.ours:
                self._counters.disconnects += 1
            raise
        except ConnectionResetError:  # the client left while the answer was being written
            if not flight.ours:
                self._counters.disconnects += 1
            return web.Response(status=499)  # never reaches anyone; aiohttp discards it
        finally:
            self._flights.discard(flight)

    async def _answer(self, request: web.Request, kind: _Kind, flight: _Flight) -> web.StreamResponse:
        c = self._counters
        path = request.path
        c.by_path[path] = c.by_path.get(path, 0) + 1
        probe = kind == "probe"
        body: Any = None
        if probe:
            c.probes += 1
        else:
            c.requests += 1
            raw = await request.read()
            try:
                body = _decode(raw)
            except msgspec.DecodeError:
                body = None
            self.last_request = body
            self.last_headers = dict(request.headers)

        assert self._loop is not None
        decision = self.faults.decide(self._loop.time(), probe=probe)
        if self.observer is not None:
            self.observer(Arrival(at=self._loop.time(), kind=kind, body=body, decision=decision))
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        action = decision.action
        if action != "answer":
            c.injected += 1
            if action == "error":
                model = request.match_info.get("deployment") or (body.get("model") if isinstance(body, dict) else None) or self.model
                return self._error_response(decision.status, decision.message, decision.code, decision.retry_after, model)
            if action == "hang":
                await self._loop.create_future()  # only the client leaving (a cancel) ends this
            if action == "reset":
                flight.ours = True
                _reset(request)
                return web.Response(status=499)

        if self.api_key is not None and not self._wire.authorized(request, self.api_key):
            return self._error_response(401, None, None, None)
        if probe:
            return self._wire.probe(self.models, path)
        if self.faults.body is not None:
            return self._raw(self.faults.body, streamed=bool(_as_dict(body).get("stream")))
        try:
            model = request.match_info.get("deployment") or _as_dict(body).get("model") or ""
            if kind == "embed":
                data = self._wire.embed(_as_dict(body), model, self.dimensions)
                return self._ok(data, malformed=action == "malformed")
            prompt = self._completion_prompt(_as_dict(body), model) if kind == "complete" else self._wire.prompt(_as_dict(body), model)
            if prompt.prefill is not None and self.faults.reject_prefill:
                c.injected += 1
                raise _BadRequest(self._wire.prefill_refusal)
        except _BadRequest as exc:
            return self._error_response(exc.status, exc.message, None, None)
        reply = self._reply(prompt)
        if prompt.stream:
            return await self._stream(request, reply, prompt, flight, malformed=action == "malformed")
        answer = self._wire.completion(reply) if prompt.completion else self._wire.chat(reply)
        return self._ok(answer, malformed=action == "malformed")

    def _completion_prompt(self, body: dict[str, Any], model: str) -> _Prompt:
        if self.dialect == "ollama":  # streams unless told not to; the cap is an option
            options = body.get("options")
            limit = options.get("num_predict") if isinstance(options, dict) else None
            return self._wire.completion_prompt(body, model, limit, body.get("stream") is not False)
        return self._wire.completion_prompt(body, model, body.get("max_tokens"), body.get("stream") is True)

    def _reply(self, prompt: _Prompt) -> _Reply:
        n = self._serial
        wire = self.dialect
        rid = {"openai": f"chatcmpl-{self.name}-{n}", "anthropic": f"msg_{self.name}_{n}", "ollama": ""}[wire]
        if prompt.tools and not prompt.tool_result_last:
            name, schema = prompt.tools[0]
            args = _arguments_for(schema, prompt.last_user)
            return _Reply(
                id=rid,
                model=self.served_model or prompt.model,
                pieces=_fragments(_encode(args).decode()),
                finish="tool",
                input_tokens=prompt.words,
                tool_id=f"call_{self.name}_{n}" if wire == "openai" else f"toolu_{self.name}_{n}",
                tool_name=name,
                tool_args=args,
            )
        if self.replies:
            text = self.replies.popleft()
        else:
            text = prompt.last_user if self.echo else (self.text if self.text is not None else f"This is a reply from {self.name}.")
        if prompt.prefill and text.startswith(prompt.prefill):
            text = text[len(prompt.prefill) :]  # a continuation: only the words not yet written
        pieces = _WORD.findall(text)
        if prompt.completion and not self.echo:
            # A prompt ending with the reply's first words continues after them, as a model
            # continues its own text (a text completion has no prefill of its own).
            written = next((k for k in range(len(pieces), 0, -1) if prompt.last_user.endswith("".join(pieces[:k]))), 0)
            pieces = pieces[written:]
        finish: Literal["stop", "length"] = "stop"
        if prompt.max_tokens is not None and len(pieces) > prompt.max_tokens:
            pieces = pieces[: max(prompt.max_tokens, 0)]
            finish = "length"
        return _Reply(id=rid, model=self.served_model or prompt.model, pieces=pieces, finish=finish, input_tokens=prompt.words)

    def _request_id(self) -> str:
        return f"req_{self.name}_{self._serial}"

    def _ok(self, data: dict[str, Any], *, malformed: bool) -> web.Response:
        body = _encode(data)
        if malformed:
            body = body[: len(body) // 2]  # a body cut short: valid HTTP, invalid JSON
        return web.Response(body=body, headers=self._wire.headers(200, None, self._request_id()), content_type="application/json")

    def _raw(self, body: bytes, *, streamed: bool) -> web.Response:
        self._counters.injected += 1
        kind = ("application/x-ndjson" if self.dialect == "ollama" else "text/event-stream") if streamed else "application/json"
        status = self.faults.body_status
        return web.Response(status=status, body=body, headers=self._wire.headers(status, None, self._request_id()), content_type=kind)

    def _error_response(
        self, status: int, message: str | None, code: str | None, retry_after: float | None, model: str | None = None
    ) -> web.Response:
        request_id = self._request_id()
        body = self._wire.error(status, message, code, model or self.model)
        if "request_id" in body:
            body["request_id"] = request_id
        return _json_response(status, body, self._wire.headers(status, retry_after, request_id))

    async def _stream(
        self, request: web.Request, reply: _Reply, prompt: _Prompt, flight: _Flight, *, malformed: bool
    ) -> web.StreamResponse:
        frames = self._wire.completion_frames(reply, prompt) if prompt.completion else self._wire.frames(reply, prompt)
        # Read once, so a test changing the faults mid-stream affects the next stream only.
        plan = _StreamFaults.read(self.faults)
        if plan.injects:
            self._counters.injected += 1
        self._counters.streams += 1
        headers = self._wire.headers(200, None, self._request_id())
        headers["Content-Type"] = frames.content_type
        headers["Cache-Control"] = "no-cache"
        resp = web.StreamResponse(status=200, headers=headers)
        await resp.prepare(request)
        for frame in frames.preamble:
            await resp.write(frame)
        if plan.trickle is not None:
            for frame in itertools.cycle(frames.idle):  # only the client leaving (a cancel) ends this
                await asyncio.sleep(plan.trickle)
                await resp.write(frame)
        if malformed:
            await resp.write(self._broken(frames.content[0] if frames.content else frames.terminal))
            await resp.write_eof()
            return resp
        sent = 0
        for frame in frames.content:
            if plan.stop(sent) is not None:
                break
            if sent == plan.malformed_after:
                await resp.write(self._broken(frame))
            if plan.delay > 0:
                await asyncio.sleep(plan.delay)
            await resp.write(frame)
            sent += 1
        match plan.stop(sent):
            case "cut":
                flight.ours = True
                if plan.delay > 0:
                    # A peer dies between chunks, not in the same write as the last one: aiohttp drops
                    # the data buffered with a cut, so a cut sent with the chunk would eat that chunk.
                    await asyncio.sleep(plan.delay)
                transport = request.transport
                if transport is not None:
                    transport.close()  # flushes what was written, then ends the connection mid-body
                return resp
            case "stall":
                assert self._loop is not None
                await self._loop.create_future()  # only the client leaving (a cancel) ends this
            case "error":
                await resp.write(frames.error)
            case "end":
                pass  # a clean end of the body: no finish reason, no terminal event
            case None:
                for frame in frames.closing:
                    await resp.write(frame)
                if plan.terminal:
                    await resp.write(frames.terminal)
        await resp.write_eof()
        return resp

    def _broken(self, frame: bytes) -> bytes:
        """``frame`` cut in half, still terminated: one event no decoder can read."""
        return frame[: len(frame) // 2] + (b"\n" if self.dialect == "ollama" else b"\n\n")


@dataclass(frozen=True, slots=True)
class _StreamFaults:
    """The stream faults one streamed answer follows, read from :class:`Faults` when it begins."""

    delay: float
    cut: int | None
    error: int | None
    end: int | None
    stall: int | None
    malformed_after: int | None
    terminal: bool
    trickle: float | None

    @classmethod
    def read(cls, faults: Faults) -> _StreamFaults:
        return cls(
            faults.chunk_delay, faults.cut_after, faults.stream_error_after, faults.end_after,
            faults.stall_after, faults.malformed_after, not faults.no_terminal, faults.trickle,
        )

    @property
    def injects(self) -> bool:
        """Whether this stream misbehaves (a slow stream does not count)."""
        return not self.terminal or any(
            n is not None for n in (self.cut, self.error, self.end, self.stall, self.malformed_after, self.trickle)
        )

    def stop(self, sent: int) -> _StreamEnd | None:
        """The fault that ends the stream once ``sent`` content chunks are out, if any."""
        ends: tuple[tuple[_StreamEnd, int | None], ...] = (
            ("cut", self.cut), ("error", self.error), ("end", self.end), ("stall", self.stall)
        )
        for name, after in ends:
            if after is not None and sent >= after:
                return name
        return None


def _reset(request: web.Request) -> None:
    """Close the connection with a TCP RST, the way a crashed peer or a proxy resets it."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER on with a zero timeout turns close() into an abortive RST.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# ---------------------------------------------------------------------------------------
# Several at once


class LocalEndpoints:
    """Several :class:`FaultyEndpoint` values started and stopped together.

    ::

        async with LocalEndpoints(FaultyEndpoint("openai", name="a"), FaultyEndpoint("ollama", name="b")) as fleet:
            fleet["a"].faults.refuse()
            Runtime(endpoints=[ep.endpoint(priority=i) for i, ep in enumerate(fleet, 1)])

    Each endpoint has its own app runner and port. Names must be unique.
    """

    def __init__(self, *endpoints: FaultyEndpoint) -> None:
        for i, ep in enumerate(endpoints):
            if not isinstance(ep, FaultyEndpoint):
                raise TypeError(f"LocalEndpoints takes FaultyEndpoint values, got {type(ep).__name__} at position {i}")
        names = [ep.name for ep in endpoints]
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint names must be unique, got {names}")
        self._endpoints = list(endpoints)

    def __getitem__(self, name: str) -> FaultyEndpoint:
        for ep in self._endpoints:
            if ep.name == name:
                return ep
        raise KeyError(name)

    def __iter__(self) -> Iterator[FaultyEndpoint]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def __repr__(self) -> str:
        return f"<LocalEndpoints {', '.join(repr(ep.name) for ep in self._endpoints)}>"

    async def start(self) -> None:
        """Start every endpoint; if one fails, the ones started are stopped again."""
        results = await asyncio.gather(*(ep.start() for ep in self._endpoints), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.aclose()
            raise errors[0]

    async def aclose(self) -> None:
        """Stop every endpoint."""
        await asyncio.gather(*(ep.aclose() for ep in self._endpoints))

    async def __aenter__(self) -> LocalEndpoints:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
