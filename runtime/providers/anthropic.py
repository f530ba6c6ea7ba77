"""The Anthropic Messages API dialect.

``POST {base_url or https://api.anthropic.com}/v1/messages`` with ``x-api-key`` and
``anthropic-version: 2023-06-01``. The translation from the runtime's OpenAI-shaped
requests, decided once here:

- System messages are lifted out of the conversation into ``system`` (joined with a
  blank line when there are several).
- ``max_tokens`` is required by the API; when the request gives none,
  :data:`DEFAULT_MAX_TOKENS` (4096) is sent.
- Tools ``{"type": "function", "function": {name, description, parameters}}`` become
  ``{name, description, input_schema}``; tools already in Anthropic's shape pass through.
  ``tool_choice`` ``"auto"``/``"required"``/``"none"``/``{"function": {"name"}}`` become
  ``auto``/``any``/``none``/``tool``.
- An assistant turn's ``tool_calls`` become ``tool_use`` blocks (their JSON arguments are
  parsed into ``input``); ``tool`` turns become ``tool_result`` blocks of a user turn,
  consecutive results sharing one turn, as the API wants.
- ``response_format`` ``json_schema`` becomes a forced tool (``structured_output``, the
  schema as its ``input_schema``); its call comes back as the reply's text (the input as
  JSON), finish reason ``"stop"``, in whole replies and streams. ``json_object`` is the
  same tool with ``{"type": "object"}`` as its schema. ``seed`` has no equivalent: refused
  unless ``drop_unsupported``. ``stop`` becomes ``stop_sequences``, ``user``
  ``metadata.user_id``.

Answers: finish reasons are normalised to the OpenAI words (``end_turn`` and
``stop_sequence`` → ``"stop"``, ``max_tokens`` → ``"length"``, ``tool_use`` →
``"tool_calls"``; others pass through). Usage follows the OpenAI convention the rest of
the runtime uses: ``input_tokens`` counts every prompt token, cached or not
(Anthropic's ``input_tokens`` + ``cache_read_input_tokens`` +
``cache_creation_input_tokens``), and ``cached_input_tokens`` is the cache reads.
``thinking`` blocks become ``reasoning``. Anthropic has no embeddings API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..errors import (
    AuthenticationFailed,
    BadRequest,
    ContentFiltered,
    ContextWindowExceeded,
    InvalidRequest,
    NotFound,
    Overloaded,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from ..structured import OUTPUT_TOOL
from ..types import (
    ChatRequest,
    ChatResponse,
    ContentPart,
    Message,
    RateLimitSnapshot,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .base import (
    CONTENT_FILTER_CODES,
    Adapter,
    HTTPRequest,
    build_error,
    decode_error_body,
    error_class_for_status,
    json_text,
    looks_like_context_overflow,
    parse_rfc3339_delay,
    rate_limit_names,
    rate_limit_snapshot,
    response_schema,
    undecodable,
)
from .params import Rule, apply_params, unsupported, with_extra_headers
from .streams import FramedDecoder, SSEDecoder, SSEEvent

if TYPE_CHECKING:  # policy reads the provider registry in this package
    from ..policy import Endpoint

__all__ = ["API_VERSION", "DEFAULT_MAX_TOKENS", "AnthropicAdapter"]

#: The ``max_tokens`` sent when a request gives none (the Messages API requires one).
DEFAULT_MAX_TOKENS = 4096
#: The ``anthropic-version`` header: the Messages API version this adapter speaks.
API_VERSION = "2023-06-01"

_RATE_LIMIT_HEADERS = rate_limit_names("anthropic-ratelimit-{kind}-{field}")
_INPUT_RATE_LIMIT_HEADERS = rate_limit_names("anthropic-ratelimit-{kind}-{field}", "input-tokens")

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}

_ERROR_TYPES: dict[str, type[ProviderError]] = {
    "invalid_request_error": BadRequest,
    "authentication_error": AuthenticationFailed,
    "permission_error": AuthenticationFailed,
    "billing_error": AuthenticationFailed,
    "not_found_error": NotFound,
    "request_too_large": BadRequest,
    "rate_limit_error": RateLimited,
    "api_error": ServerError,
    "overloaded_error": Overloaded,
    "timeout_error": Timeout,
}


# --- provider-native views ----------------------------------------------------------------


class _View(msgspec.Struct, gc=False):
    """Base of the wire views: unknown fields are ignored, missing ones take defaults."""


class _BlockView(_View):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: msgspec.Raw = msgspec.Raw()  # kept as the JSON text it came as: it becomes ToolCall.arguments


class _UsageView(_View):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _ErrorView(_View):
    type: str | None = None
    message: str | None = None


class _MessageView(_View):
    type: str = ""
    id: str | None = None
    model: str | None = None
    content: list[_BlockView] = []
    stop_reason: str | None = None
    usage: _UsageView | None = None
    error: _ErrorView | None = None


class _DeltaView(_View):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None
    stop_reason: str | None = None


class _EventView(_View):
    type: str = ""
    message: _MessageView | None = None
    index: int | None = None
    content_block: _BlockView | None = None
    delta: _DeltaView | None = None
    usage: _UsageView | None = None
    error: _ErrorView | None = None


_message_decoder = msgspec.json.Decoder(_MessageView)
_event_decoder = msgspec.json.Decoder(_EventView)


# A stream's text delta, nearly every event of a reply, as one strict shape: a
# content_block_delta whose delta has text and none of the other fields the full reading
# reads. An event that fits it means exactly what the full reading of it would.


class _PlainDeltaView(_View):
    text: str
    partial_json: None = None
    thinking: None = None


class _PlainEventView(_View):
    type: Literal["content_block_delta"]
    delta: _PlainDeltaView


_decode_plain_event = msgspec.json.Decoder(_PlainEventView).decode
_encode = msgspec.json.encode

#: Extended-thinking budgets standing in for OpenAI's ``reasoning_effort`` (tokens).
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}


def _user_id(body: dict[str, Any], value: Any, request: ChatRequest) -> None:
    body["metadata"] = {"user_id": value}


def _no_parallel_tools(body: dict[str, Any], value: Any, request: ChatRequest) -> None:
    # Anthropic runs tools in parallel unless the tool choice says not to.
    if value is False:
        body["tool_choice"] = {**body.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}


def _thinking(body: dict[str, Any], value: Any, request: ChatRequest) -> None:
    budget = THINKING_BUDGETS[value]
    if body["max_tokens"] <= budget:
        raise InvalidRequest(
            f"reasoning_effort={value!r} is a thinking budget of {budget} tokens on anthropic: "
            f"max_tokens must be above it (got {body['max_tokens']})",
            field="max_tokens",
        )
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}


_PARAM_RULES: dict[str, Rule] = {
    "user": _user_id,
    "parallel_tool_calls": _no_parallel_tools,
    "reasoning_effort": _thinking,
}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}


def _finish(reason: str | None) -> str | None:
    return _FINISH.get(reason, reason) if reason is not None else None


def _make_usage(input_tokens: int, output_tokens: int, cache_read: int | None, cache_creation: int | None) -> Usage:
    prompt = input_tokens + (cache_read or 0) + (cache_creation or 0)
    return Usage(
        input_tokens=prompt,
        output_tokens=output_tokens,
        total_tokens=prompt + output_tokens,
        cached_input_tokens=cache_read,
    )


def _image_block(url: str) -> dict[str, Any]:
    # data:image/png;base64,AAAA → a base64 source; anything else is fetched by URL.
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type = head[5:].split(";", 1)[0] or "image/png"
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: list[ContentPart]) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": part.text} if isinstance(part, TextPart) else _image_block(part.url)
        for part in content
    ]


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        return tool  # already Anthropic-shaped (or a server tool): sent as given
    out: dict[str, Any] = {"name": function.get("name", "")}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(choice, str):
        return {"type": {"required": "any"}.get(choice, choice)}
    function = choice.get("function")
    if choice.get("type") == "function" and isinstance(function, dict):
        return {"type": "tool", "name": function.get("name", "")}
    return choice


def _force_output_tool(body: dict[str, Any], fmt: dict[str, Any]) -> None:
    """``json_schema`` as a forced tool whose input is the reply (works on every Claude model);
    ``json_object`` the same with any object as the schema.

    With tools of the caller's own the model must still call one of them or the output
    tool (``any``), unless the caller chose the tool choice.
    """
    wanted = response_schema(fmt) or (("JSON", _ANY_OBJECT) if fmt.get("type") == "json_object" else None)
    if wanted is None:
        return
    name, schema = wanted
    tool = {
        "name": OUTPUT_TOOL,
        "description": f"Give your answer as a {name} object: call this tool with the answer as its input.",
        "input_schema": schema,
    }
    tools = body.setdefault("tools", [])
    tools.append(tool)
    if "tool_choice" not in body:
        body["tool_choice"] = {"type": "tool", "name": OUTPUT_TOOL} if len(tools) == 1 else {"type": "any"}


class AnthropicAdapter(Adapter):
    """Anthropic's Messages API for one endpoint (see the module docstring for the translation)."""


    provider = "anthropic"

    def __init__(self, endpoint: Endpoint, api_key: str | None) -> None:
        super().__init__(endpoint, api_key)
        base = (endpoint.base_url or self.default_base_url or "").rstrip("/")
        self._model = endpoint.model
        self._url = f"{base}/v1/messages"
        self._probe_url = f"{base}/v1/models"
        auth = {"x-api-key": api_key} if api_key else {}
        self._probe_headers: dict[str, str] = {"anthropic-version": API_VERSION, **auth, **endpoint.headers}
        self._headers: dict[str, str] = {
            "Content-Type": "application/json",
            "anthropic-version": API_VERSION,
            **auth,
            **endpoint.headers,
        }
        self._stream_headers: dict[str, str] = {**self._headers, "Accept": "text/event-stream"}

    # --- requests ---------------------------------------------------------------------

    def chat_request(self, request: ChatRequest, *, stream: bool) -> HTTPRequest:
        """``POST /v1/messages`` with the conversation translated (see the module docstring)."""
        system, messages = self._messages(request.messages)
        body: dict[str, Any] = {
            "model": self._model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": messages,
        }
        if system:
            body["system"] = system
        if stream:
            body["stream"] = True
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = request.stop
        if request.tools:
            body["tools"] = [_tool(tool) for tool in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        fmt = request.response_format
        if fmt is not None and fmt.get("type") in ("json_schema", "json_object"):
            _force_output_tool(body, fmt)
        if request.seed is not None:
            unsupported("seed", request, self)
        apply_params(body, request, _PARAM_RULES, self)
        headers = with_extra_headers(self._stream_headers if stream else self._headers, request)
        return HTTPRequest("POST", self._url, headers, _encode(body))

    def _messages(self, messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
        system: list[str] = []
        out: list[dict[str, Any]] = []
        results: list[dict[str, Any]] | None = None  # the tool results of the last turn, if it holds them
        for message in messages:
            role = message.role
            if role == "system":
                system.append(message.text)
                continue
            if role == "tool":
                block = {"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.text}
                if results is None:
                    results = [block]
                    out.append({"role": "user", "content": results})
                else:
                    results.append(block)
                continue
            results = None
            content = message.content
            if role == "assistant" and message.tool_calls:
                blocks: list[dict[str, Any]] = []
                if isinstance(content, list):
                    blocks.extend(_blocks(content))
                elif content:
                    blocks.append({"type": "text", "text": content})
                blocks.extend(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": self.tool_arguments(call)}
                    for call in message.tool_calls
                )
                out.append({"role": "assistant", "content": blocks})
            elif isinstance(content, list):
                out.append({"role": role, "content": _blocks(content)})
            else:
                out.append({"role": role, "content": content or ""})
        return "\n\n".join(system), out

    def _prefill_text(self, partial: str) -> str:
        # The API refuses a final assistant message that ends in whitespace; the caller
        # already has that whitespace, so the continuation's own leading space is dropped.
        return partial.rstrip()

    # --- answers ----------------------------------------------------------------------

    @undecodable("message")
    def parse_chat(self, body: bytes) -> ChatResponse:
        """A whole Message: text blocks joined, tool_use blocks as tool calls, thinking as reasoning."""
        view = _message_decoder.decode(body)
        if view.type == "error" or view.error is not None:
            # An error object under a 2xx status is still an error, never an empty reply.
            raise self.error_event(view.error)
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[ToolCall] = []
        output = False
        for block in view.content:
            kind = block.type
            if kind == "text":
                texts.append(block.text or "")
            elif kind == "tool_use" and block.name == OUTPUT_TOOL:
                texts.append(json_text(block.input))  # the forced output tool's input is the reply
                output = True
            elif kind == "tool_use":
                calls.append(ToolCall(id=block.id or "", name=block.name or "", arguments=json_text(block.input)))
            elif kind == "thinking":
                thoughts.append(block.thinking or "")
        usage = view.usage
        return ChatResponse(
            text="".join(texts),
            finish_reason="stop" if output and not calls else _finish(view.stop_reason),
            usage=_make_usage(
                usage.input_tokens or 0,
                usage.output_tokens or 0,
                usage.cache_read_input_tokens,
                usage.cache_creation_input_tokens,
            )
            if usage is not None
            else Usage(),
            model=view.model or self._model,
            endpoint=self.name,
            provider=self.provider,
            id=view.id,
            tool_calls=calls,
            reasoning="".join(thoughts) if thoughts else None,
        )

    def stream_decoder(self) -> _MessageStreamDecoder:
        """A decoder of one Messages SSE stream."""
        return _MessageStreamDecoder(self)

    # --- errors and headers -----------------------------------------------------------

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """The one error an HTTP error response means: the status decides, the body's
        ``error.type`` refines a generic 400/5xx (``billing_error`` → misconfigured,
        ``overloaded_error`` → :class:`Overloaded`), "prompt is too long" is
        :class:`ContextWindowExceeded`; 529 is :class:`Overloaded`."""
        doc = decode_error_body(body)
        message: str | None = None
        etype: str | None = None
        if isinstance(doc, dict):
            error = doc.get("error")
            if isinstance(error, dict):
                message = error.get("message") if isinstance(error.get("message"), str) else None
                etype = error.get("type") if isinstance(error.get("type"), str) else None
            elif isinstance(error, str):
                message = error
        if message is None:
            message = self.snippet(body) if doc is None else ""
        cls: type[ProviderError] | None = None
        by_type = _ERROR_TYPES.get(etype or "")
        if by_type is not None and by_type is not BadRequest and error_class_for_status(status) in (BadRequest, ServerError):
            cls = by_type
        return build_error(self, status, headers, message, code=etype, error_type=etype, cls=cls)

    def error_event(self, error: _ErrorView | None) -> ProviderError:
        """The error an ``event: error`` inside a stream means, by its ``error.type``."""
        etype = error.type if error is not None else None
        message = (error.message if error is not None else None) or "error event in the stream"
        cls = ContentFiltered if etype in CONTENT_FILTER_CODES else _ERROR_TYPES.get(etype or "", ServerError)
        if cls is BadRequest and looks_like_context_overflow(message):
            cls = ContextWindowExceeded
        return self.error(cls, message, code=etype, error_type=etype)

    def rate_limit(self, headers: Mapping[str, str]) -> RateLimitSnapshot | None:
        """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``; resets are RFC 3339
        times, read as seconds from now. Without the combined token headers the input-token
        ones are read."""
        names = _RATE_LIMIT_HEADERS
        if names[3] not in headers and names[4] not in headers:
            names = _INPUT_RATE_LIMIT_HEADERS
        return rate_limit_snapshot(headers, names, parse_rfc3339_delay)


class _MessageStreamDecoder(FramedDecoder[SSEEvent]):
    """Messages SSE → :class:`StreamChunk`; ends at ``message_stop``, or at a clean end of
    the body after a ``message_delta`` with a ``stop_reason``.

    ``message_start`` gives the id, model and prompt usage; text, ``input_json_delta`` and
    thinking deltas become chunks (a ``tool_use`` block start becomes a
    :class:`ToolCallDelta` with its id and name, numbered among the tool calls, not among
    all blocks); ``message_delta`` carries the finish reason and the cumulative usage;
    ``ping`` and unknown events are ignored; ``error`` raises the matching error.
    """

    terminal = "message_stop event"

    def __init__(self, adapter: AnthropicAdapter) -> None:
        super().__init__(adapter, SSEDecoder())
        self._anthropic = adapter
        self._id: str | None = None
        self._model: str | None = None
        self._input = 0
        self._output = 0
        self._cache_read: int | None = None
        self._cache_creation: int | None = None
        self._tools: dict[int, int] = {}  # content-block index → tool-call number
        self._output_blocks: set[int] = set()  # content-block indexes of the forced output tool

    def _plain(self, frame: SSEEvent) -> StreamChunk | None:
        text = _decode_plain_event(frame.data).delta.text
        return StreamChunk(text=text, model=self._model, id=self._id) if text else None

    def _frame(self, frame: SSEEvent, out: list[StreamChunk]) -> None:
        event = _event_decoder.decode(frame.data)
        kind = event.type or frame.event
        if kind == "content_block_delta":
            self._block_delta(event, out)
        elif kind == "message_start":
            message = event.message
            if message is not None:
                self._id = message.id
                self._model = message.model
                self._read_usage(message.usage)
        elif kind == "content_block_start":
            self._block_start(event, out)
        elif kind == "message_delta":
            self._read_usage(event.usage)
            delta = event.delta
            if delta is not None and delta.stop_reason:
                self.finished = True
            finish = _finish(delta.stop_reason if delta is not None else None)
            if self._output_blocks and not self._tools:
                finish = "stop"  # the output tool's call was the reply, not a tool call
            out.append(
                StreamChunk(
                    finish_reason=finish,
                    usage=_make_usage(self._input, self._output, self._cache_read, self._cache_creation),
                    model=self._model,
                    id=self._id,
                )
            )
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise self._anthropic.error_event(event.error)
        # ping, content_block_stop and event types added later carry nothing to deliver

    def _block_delta(self, event: _EventView, out: list[StreamChunk]) -> None:
        """A text, tool-input (the output tool's input is the reply's text) or thinking fragment."""
        delta = event.delta
        if delta is None:
            return
        if delta.text:
            out.append(StreamChunk(text=delta.text, model=self._model, id=self._id))
        elif delta.partial_json:
            index = event.index if event.index is not None else -1
            number = self._tools.get(index)
            if index in self._output_blocks:
                out.append(StreamChunk(text=delta.partial_json, model=self._model, id=self._id))
            elif number is not None:
                out.append(
                    StreamChunk(
                        tool_calls=[ToolCallDelta(index=number, arguments=delta.partial_json)],
                        model=self._model,
                        id=self._id,
                    )
                )
        elif delta.thinking:
            out.append(StreamChunk(reasoning=delta.thinking, model=self._model, id=self._id))

    def _block_start(self, event: _EventView, out: list[StreamChunk]) -> None:
        """A tool_use block opening: a tool call numbered among the calls, or the output tool's reply."""
        block = event.content_block
        if block is None or block.type != "tool_use":
            return
        if block.name == OUTPUT_TOOL:
            self._output_blocks.add(event.index if event.index is not None else -1)
            whole = json_text(block.input)
            if whole != "{}":
                out.append(StreamChunk(text=whole, model=self._model, id=self._id))
            return
        number = len(self._tools)
        self._tools[event.index if event.index is not None else -1 - number] = number
        # The input arrives as input_json_delta fragments after an empty {}; a
        # non-empty input here is a whole call given at once.
        arguments = json_text(block.input)
        if arguments == "{}":
            arguments = ""
        out.append(
            StreamChunk(
                tool_calls=[ToolCallDelta(index=number, id=block.id, name=block.name, arguments=arguments)],
                model=self._model,
                id=self._id,
            )
        )

    def _read_usage(self, usage: _UsageView | None) -> None:
        # message_delta's counts are cumulative and, in recent streams, repeat the input
        # counts: a field present replaces what message_start said.
        if usage is None:
            return
        if usage.input_tokens is not None:
            self._input = usage.input_tokens
        if usage.output_tokens is not None:
            self._output = usage.output_tokens
        if usage.cache_read_input_tokens is not None:
            self._cache_read = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self._cache_creation = usage.cache_creation_input_tokens
