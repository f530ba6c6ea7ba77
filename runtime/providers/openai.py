"""The OpenAI Chat Completions dialect, and the providers that speak it.

:class:`OpenAIAdapter` is the dialect; the presets are configuration on the same code:

- ``openai``: ``https://api.openai.com/v1`` (default), ``Authorization: Bearer``; the reply
  limit is sent as ``max_completion_tokens`` (``max_tokens`` is refused by reasoning models).
- ``azure`` (:class:`AzureAdapter`): ``{base_url}/openai/deployments/{model}/…?api-version=…``
  (default ``2024-10-21``), ``api-key`` header, content filtering mapped to
  :class:`ContentFiltered`.
- ``deepseek`` (:class:`DeepSeekAdapter`): ``https://api.deepseek.com`` (default); usage on
  the finish chunk, ``prompt_cache_hit_tokens``, ``reasoning_content``, ``: keep-alive``
  comments. DeepSeek has no embeddings API and no schema mode: ``json_schema`` is sent as
  JSON mode with the schema in a system message.
- ``openai-compatible`` (:class:`OpenAICompatibleAdapter`): any ``base_url`` (required),
  key optional.

Shared behaviour, decided once here:

- Streams ask for usage (``stream_options: {"include_usage": true}``); usage is accepted on
  a trailing ``choices: []`` chunk (OpenAI, Azure) or on the finish chunk (DeepSeek).
- A whole reply's choice 0 is the reply; with ``n > 1`` every choice is also in
  ``choices``. A stream reads choice 0 only (``n > 1`` is refused for streams).
- ``logprobs`` of a whole reply become ``ChatResponse.logprobs`` (and each choice's).
- ``reasoning_content`` (DeepSeek; ``reasoning`` on some compatible servers) becomes
  ``reasoning``, kept apart from the text.
- A ``refusal`` (structured outputs) is the model's answer and is returned as the text
  when there is no ``content``; ``finish_reason`` stays what the provider said.
- ``finish_reason: "content_filter"``: a whole reply with no text and no tool calls raises
  :class:`ContentFiltered` (there is nothing to return); one with partial text is
  returned as it is, finish reason and all. A stream that ends with that finish reason
  delivers its chunks, the finish chunk included, then raises :class:`ContentFiltered`
  where the stream ends: the caller sees a refusal, not a short success.
- A text completion (``kind="completion"``) goes to ``…/completions`` beside
  ``…/chat/completions`` with ``prompt`` and ``max_tokens``; its choices' ``text`` is read
  where a chat reply's content would be, whole and streamed. Of the parameters beyond the
  common ones it takes penalties, ``logit_bias``, ``n`` and ``user``. DeepSeek has none.
- ``Endpoint.headers`` go on every request, after the adapter's own, so they may
  override them (an Azure Entra ``Authorization`` header instead of ``api-key``, say).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from ..errors import (
    AuthenticationFailed,
    BadRequest,
    ConfigError,
    ContentFiltered,
    ContextWindowExceeded,
    Overloaded,
    ProviderError,
    RateLimited,
    ServerError,
)
from ..types import (
    ChatRequest,
    ChatResponse,
    Choice,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    RateLimitSnapshot,
    StreamChunk,
    TextPart,
    TokenLogprob,
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
    looks_like_context_overflow,
    parse_go_duration,
    rate_limit_names,
    rate_limit_snapshot,
    response_schema,
    undecodable,
)
from .params import (
    NOTHING_EXTRA,
    OPENAI_RULES,
    Rule,
    apply_params,
    params_and_extra_body,
    rules_for,
    with_extra_headers,
)
from .streams import FramedDecoder, SSEDecoder, SSEEvent

if TYPE_CHECKING:  # policy reads the provider registry in this package
    from ..policy import Endpoint

__all__ = ["AzureAdapter", "DeepSeekAdapter", "OpenAIAdapter", "OpenAICompatibleAdapter"]


# --- provider-native views: private, every field defaulted so unknown or missing keys pass ---


class _View(msgspec.Struct, gc=False):
    """Base of the wire views: unknown fields are ignored, missing ones take defaults."""


class _FunctionView(_View):
    name: str | None = None
    arguments: str | None = None


class _ToolCallView(_View):
    index: int = 0
    id: str | None = None
    function: _FunctionView | None = None


class _MessageView(_View):
    content: str | None = None
    refusal: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCallView] | None = None


class _TopLogprobView(_View):
    token: str = ""
    logprob: float = 0.0


class _LogprobView(_View):
    token: str = ""
    logprob: float = 0.0
    top_logprobs: list[_TopLogprobView] = []


class _ChoiceLogprobsView(_View):
    content: list[_LogprobView] | None = None


class _ChoiceView(_View):
    index: int = 0
    message: _MessageView | None = None
    text: str | None = None  # a text completion's choice
    finish_reason: str | None = None
    logprobs: _ChoiceLogprobsView | None = None


class _PromptDetailsView(_View):
    cached_tokens: int | None = None


class _CompletionDetailsView(_View):
    reasoning_tokens: int | None = None


class _UsageView(_View):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: _PromptDetailsView | None = None
    completion_tokens_details: _CompletionDetailsView | None = None
    prompt_cache_hit_tokens: int | None = None  # DeepSeek


class _ErrorView(_View):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _CompletionView(_View):
    id: str | None = None
    model: str | None = None
    choices: list[_ChoiceView] = []
    usage: _UsageView | None = None
    error: _ErrorView | str | None = None


class _ChunkChoiceView(_View):
    index: int = 0
    delta: _MessageView | None = None  # a delta has a message's fields, each a fragment
    text: str | None = None  # a streamed text completion's choice
    finish_reason: str | None = None


class _ChunkView(_View):
    id: str | None = None
    model: str | None = None
    choices: list[_ChunkChoiceView] = []
    usage: _UsageView | None = None
    error: _ErrorView | str | None = None


# A stream's plain text delta, nearly every event of a reply, as one strict shape: one
# choice, choice 0, a delta with content and none of the other fields the full reading
# reads (those it ignores, such as a role, may be there), no finish reason, usage or
# error. An event that fits it means exactly what the full reading of it would; one that
# does not fails to decode and is read in full.


class _PlainDeltaView(_View):
    content: str
    refusal: None = None
    reasoning_content: None = None
    reasoning: None = None
    tool_calls: None = None


class _PlainChoiceView(_View):
    delta: _PlainDeltaView
    index: Literal[0] = 0
    finish_reason: None = None


class _PlainChunkView(_View):
    choices: tuple[_PlainChoiceView]
    id: str | None = None
    model: str | None = None
    usage: None = None
    error: None = None


class _EmbeddingView(_View):
    index: int = 0
    embedding: list[float] = []


class _EmbeddingListView(_View):
    data: list[_EmbeddingView] = []
    model: str | None = None
    usage: _UsageView | None = None


class _ChatBody(msgspec.Struct, omit_defaults=True, gc=False):
    """A chat (or text completion) request body, its keys in their order on the wire; a
    field left at its default is not sent. A struct, not a dict: no store and no test a
    key, and it encodes as the dict would (``to_builtins`` makes that dict when parameters
    are to be added)."""

    model: str
    messages: list[Message | dict[str, Any]] | None = None
    prompt: str | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None


class _ModernChatBody(_ChatBody, rename={"max_tokens": "max_completion_tokens"}):
    """OpenAI's chat body: the reply limit as ``max_completion_tokens``."""

    # declared again (in its place) for the rename to reach it: msgspec renames a class's own fields
    max_tokens: int | None = None


#: The chat body of each spelling of the reply limit (``max_tokens_field``).
_CHAT_BODIES: dict[str, type[_ChatBody]] = {"max_tokens": _ChatBody, "max_completion_tokens": _ModernChatBody}

_NO_MESSAGE = _MessageView()
_completion_decoder = msgspec.json.Decoder(_CompletionView)
_chunk_decoder = msgspec.json.Decoder(_ChunkView)
_decode_plain_chunk = msgspec.json.Decoder(_PlainChunkView).decode
_embedding_decoder = msgspec.json.Decoder(_EmbeddingListView)
_encode = msgspec.json.encode

_INCLUDE_USAGE: dict[str, Any] = {"include_usage": True}
_JSON_MODE: dict[str, Any] = {"type": "json_object"}
# The parameters /completions takes as chat does (its logprobs is a count, not a switch: refused).
_COMPLETION_RULES = rules_for(("presence_penalty", "frequency_penalty", "logit_bias", "n", "user"))
# vLLM's way to continue the final assistant message; it refuses the first without the second.
_CONTINUE: dict[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}
# "Please try again in 6ms." / "in 20s." / "in 1m30s." in OpenAI's 429 messages
_RATE_LIMIT_HEADERS = rate_limit_names("x-ratelimit-{field}-{kind}")
_TRY_AGAIN = re.compile(r"try again in ((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|h|m|s))+)")


def _usage(view: _UsageView) -> Usage:
    """OpenAI usage → :class:`Usage`: prompt → input, completion → output, cached prompt
    tokens (``prompt_tokens_details.cached_tokens``, else DeepSeek's
    ``prompt_cache_hit_tokens``) → cached input, ``reasoning_tokens`` → reasoning."""
    prompt = view.prompt_tokens or 0
    completion = view.completion_tokens or 0
    details = view.prompt_tokens_details
    cached = details.cached_tokens if details is not None else None
    if cached is None:
        cached = view.prompt_cache_hit_tokens
    out_details = view.completion_tokens_details
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=view.total_tokens or prompt + completion,
        cached_input_tokens=cached,
        reasoning_tokens=out_details.reasoning_tokens if out_details is not None else None,
    )


def _choice_content(choice: _ChoiceView) -> tuple[str, list[ToolCall]]:
    """A choice's text (a refusal when there is no content; a text completion's ``text``) and its tool calls."""
    message = choice.message
    if message is None:
        return choice.text or "", []
    text = message.content or message.refusal or ""
    if not message.tool_calls:
        return text, []
    calls = [
        ToolCall(
            id=call.id or f"call_{i}",
            name=(call.function.name or "") if call.function else "",
            arguments=(call.function.arguments or "{}") if call.function else "{}",
        )
        for i, call in enumerate(message.tool_calls)
    ]
    return text, calls


def _logprobs(view: _ChoiceLogprobsView | None) -> list[TokenLogprob] | None:
    """``choices[i].logprobs.content`` → one :class:`TokenLogprob` per token (None when not asked)."""
    if view is None or view.content is None:
        return None
    return [
        TokenLogprob(token=item.token, logprob=item.logprob, top=[(t.token, t.logprob) for t in item.top_logprobs])
        for item in view.content
    ]


def _wire_message(message: Message) -> Message | dict[str, Any]:
    """A message in OpenAI's shape. Plain-text messages already encode as it, unchanged."""
    content = message.content
    if message.tool_calls is None and (content is None or isinstance(content, str)):
        return message
    wire: dict[str, Any] = {"role": message.role}
    if isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for part in content:
            if isinstance(part, TextPart):
                parts.append({"type": "text", "text": part.text})
            else:
                image: dict[str, Any] = {"url": part.url}
                if part.detail is not None:
                    image["detail"] = part.detail
                parts.append({"type": "image_url", "image_url": image})
        wire["content"] = parts
    else:
        # An assistant turn that only calls tools has null content on the wire.
        wire["content"] = content
    if message.name is not None:
        wire["name"] = message.name
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


def _error_fields(doc: Any) -> tuple[str | None, str | None, str | None, bool]:
    """(message, code, type, content-filtered?) from any error body shape seen in the wild:
    ``{"error": {...}}`` (OpenAI, Azure, DeepSeek), ``{"error": "..."}``, ``{"message": ...}``
    (vLLM), ``{"detail": ...}`` (FastAPI servers)."""
    if not isinstance(doc, dict):
        return None, None, None, False
    error = doc.get("error")
    if isinstance(error, str):
        return error, None, None, False
    if not isinstance(error, dict):
        error = doc
    message = error.get("message")
    if message is None and "detail" in doc:
        message = doc["detail"]
    code = error.get("code")
    etype = error.get("type")
    inner = error.get("innererror") or error.get("inner_error")
    inner_code = inner.get("code") if isinstance(inner, dict) else None
    filtered = code in CONTENT_FILTER_CODES or inner_code in CONTENT_FILTER_CODES
    return (
        message if isinstance(message, str) else (None if message is None else str(message)),
        None if code is None else str(code),
        etype if isinstance(etype, str) else None,
        filtered,
    )


def _class_for_code(code: str | None, etype: str | None, message: str) -> type[ProviderError]:
    """The error class of an error carried without an HTTP status (inside a stream or a 200 body)."""
    if code is not None and code.isdigit() and 400 <= int(code) < 600:
        # vLLM and other compatible servers put the HTTP status in ``code``
        cls = error_class_for_status(int(code))
        if cls is BadRequest and looks_like_context_overflow(message):
            return ContextWindowExceeded
        return cls
    key = f"{code or ''} {etype or ''}"
    if code in CONTENT_FILTER_CODES or etype in CONTENT_FILTER_CODES or "content_filter" in key:
        return ContentFiltered
    if "insufficient_quota" in key:
        return AuthenticationFailed
    if "rate_limit" in key or etype in ("requests", "tokens"):
        return RateLimited
    if looks_like_context_overflow(f"{key} {message}"):
        return ContextWindowExceeded
    if "overloaded" in key:
        return Overloaded
    if "invalid_request" in key:
        return BadRequest
    if "auth" in key or "invalid_api_key" in key:
        return AuthenticationFailed
    return ServerError


class OpenAIAdapter(Adapter):
    """OpenAI Chat Completions and Embeddings, for one endpoint (see the module docstring)."""

    provider = "openai"
    #: the body key of the reply-length limit
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    #: how the OpenAI parameters beyond the common ones go on the wire (runtime.providers.params)
    param_rules: ClassVar[Mapping[str, Rule]] = OPENAI_RULES

    def __init__(self, endpoint: Endpoint, api_key: str | None) -> None:
        super().__init__(endpoint, api_key)
        base = (endpoint.base_url or self.default_base_url or "").rstrip("/")
        if not base:
            raise ConfigError(f"base_url is required for {self.provider}", key="base_url", endpoint=endpoint.name)
        self._base = base
        self._model = endpoint.model
        self._chat_url, self._embed_url, self._probe_url = self._urls(base, endpoint)
        # …/chat/completions → …/completions, the text-completion API beside it
        self._completions_url = self._chat_url.replace("/chat/completions", "/completions", 1)
        self._chat_body = _CHAT_BODIES[self.max_tokens_field]
        auth = self._auth_headers(api_key)
        self._probe_headers: dict[str, str] = {**auth, **endpoint.headers}
        self._json_headers: dict[str, str] = {"Content-Type": "application/json", **auth, **endpoint.headers}
        self._stream_headers: dict[str, str] = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            **auth,
            **endpoint.headers,
        }

    def _urls(self, base: str, endpoint: Endpoint) -> tuple[str, str, str]:
        """The chat, embeddings and probe URLs."""
        return f"{base}/chat/completions", f"{base}/embeddings", f"{base}/models"

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        """The headers that carry the key (none without a key)."""
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    # --- requests ---------------------------------------------------------------------

    def chat_request(self, request: ChatRequest, *, stream: bool) -> HTTPRequest:
        """``POST …/chat/completions`` with the endpoint's model and the request's options."""
        completion = request.kind == "completion"
        # a text completion's body spells the limit max_tokens: the legacy API knows no other
        body = (_ChatBody if completion else self._chat_body)(
            model=self._model,
            messages=None if completion else list(map(_wire_message, request.messages)),
            prompt=request.messages[0].text if completion else None,
            stream=stream,
            stream_options=_INCLUDE_USAGE if stream and self.stream_usage else None,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stop or None,
            tools=request.tools or None,
            tool_choice=request.tool_choice,
            response_format=request.response_format,  # json_object / json_schema, as given
            seed=request.seed,
        )
        if params_and_extra_body(request) == NOTHING_EXTRA:
            encoded = _encode(body)
        else:
            wire = msgspec.to_builtins(body)  # the same keys in the same order, as a dict to add to
            apply_params(wire, request, _COMPLETION_RULES if completion else self.param_rules, self)
            encoded = _encode(wire)
        headers = with_extra_headers(self._stream_headers if stream else self._json_headers, request)
        return HTTPRequest("POST", self._completions_url if completion else self._chat_url, headers, encoded)

    def continuation(self, request: ChatRequest, partial: str) -> ChatRequest | None:
        """With ``prefill`` on the endpoint (vLLM and servers like it): the partial answer as a
        trailing assistant message, and the flags that make the server continue it rather
        than answer it."""
        continued = super().continuation(request, partial)
        if continued is None:
            return None
        return msgspec.structs.replace(continued, extra_body={**(request.extra_body or {}), **_CONTINUE})

    def embed_request(self, request: EmbeddingRequest) -> HTTPRequest:
        """``POST …/embeddings`` asking for float vectors (the SDKs default to base64)."""
        if not self.embeddings:
            raise self.no_embeddings()
        body: dict[str, Any] = {"model": self._model, "input": request.inputs, "encoding_format": "float"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        return HTTPRequest("POST", self._embed_url, self._json_headers, _encode(body))

    # --- answers ----------------------------------------------------------------------

    @undecodable("chat reply")
    def parse_chat(self, body: bytes) -> ChatResponse:
        """A whole reply: choice 0's text, reasoning, tool calls, finish reason, and usage."""
        view = _completion_decoder.decode(body)
        if view.error is not None:
            raise self.error_in_body(view.error)
        choices_in = view.choices
        if not choices_in:
            raise self._protocol("chat reply has no choices")
        choice = choices_in[0]
        if choice.index:  # choice 0 is the reply, wherever the provider put it
            choice = next((c for c in choices_in if c.index == 0), choice)
        message = choice.message
        calls: list[ToolCall]
        if message is not None and not message.tool_calls:  # a plain reply, read here
            text = message.content or message.refusal or ""
            calls = []
        else:
            text, calls = _choice_content(choice)
            message = message or _NO_MESSAGE
        finish = choice.finish_reason
        if finish == "content_filter" and not text and not calls:
            raise ContentFiltered(
                "the provider's content filter withheld the completion",
                endpoint=self.name,
                provider=self.provider,
                code="content_filter",
            )
        choices: list[Choice] = []
        if len(choices_in) > 1:  # n > 1: every choice, in index order
            for other in sorted(choices_in, key=lambda c: c.index):
                other_text, other_calls = _choice_content(other)
                choices.append(
                    Choice(
                        index=other.index, text=other_text, finish_reason=other.finish_reason,
                        tool_calls=other_calls, logprobs=_logprobs(other.logprobs),
                    )
                )
        return ChatResponse(
            text=text,
            finish_reason=finish,
            usage=_usage(view.usage) if view.usage is not None else Usage(),
            model=view.model or self._model,
            endpoint=self.name,
            provider=self.provider,
            id=view.id or None,
            tool_calls=calls,
            reasoning=message.reasoning_content or message.reasoning,
            choices=choices,
            logprobs=_logprobs(choice.logprobs) if choice.logprobs is not None else None,
        )

    def stream_decoder(self) -> _ChatStreamDecoder:
        """A decoder of one Chat Completions SSE stream."""
        return _ChatStreamDecoder(self)

    @undecodable("embeddings reply")
    def parse_embed(self, body: bytes) -> EmbeddingResponse:
        """One float vector per input, in input order (the ``index`` field decides)."""
        view = _embedding_decoder.decode(body)
        items = sorted(view.data, key=lambda item: item.index)
        usage = view.usage
        return EmbeddingResponse(
            vectors=[item.embedding for item in items],
            model=view.model or self._model,
            endpoint=self.name,
            provider=self.provider,
            usage=_usage(usage) if usage is not None else Usage(),
        )

    # --- errors and headers -----------------------------------------------------------

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """The one error an HTTP error response means (see :func:`~runtime.providers.base.build_error`).

        Beyond the status: ``content_filter`` (Azure; ``innererror.code``
        ``ResponsibleAIPolicyViolation``) is :class:`ContentFiltered`, ``insufficient_quota``
        is :class:`AuthenticationFailed` (no amount of waiting helps; the endpoint needs
        someone to act), context-length wording is :class:`ContextWindowExceeded`, and a
        429 without ``Retry-After`` takes its delay from "try again in 6ms" in the message.
        """
        doc = decode_error_body(body)
        message, code, etype, filtered = _error_fields(doc)
        if message is None:
            message = self.snippet(body) if doc is None else ""
        cls: type[ProviderError] | None = None
        if filtered:
            cls = ContentFiltered
        elif code == "insufficient_quota" or etype == "insufficient_quota":
            cls = AuthenticationFailed
        hint = None
        if status == 429 and message:
            match = _TRY_AGAIN.search(message)
            if match is not None:
                hint = parse_go_duration(match.group(1))
        return build_error(self, status, headers, message, code=code, error_type=etype, cls=cls, retry_after=hint)

    def error_in_body(self, error: _ErrorView | str) -> ProviderError:
        """The error an ``{"error": …}`` object means where no HTTP status says it (mid-stream)."""
        if isinstance(error, str):
            message, code, etype = error, None, None
        else:
            message = error.message or ""
            code = None if error.code is None else str(error.code)
            etype = error.type
        return self.error(_class_for_code(code, etype, message), message or "error event in the reply", code=code, error_type=etype)

    def rate_limit(self, headers: Mapping[str, str]) -> RateLimitSnapshot | None:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; resets are Go durations."""
        return rate_limit_snapshot(headers, _RATE_LIMIT_HEADERS, parse_go_duration)


class _ChatStreamDecoder(FramedDecoder[SSEEvent]):
    """Chat Completions SSE → :class:`StreamChunk`; ends at ``data: [DONE]``, or at a clean
    end of the body after choice 0's ``finish_reason`` (usage taken if it came before).

    Emits a chunk for every event that carries text, reasoning, tool-call fragments, a
    finish reason or usage; role-only openers, Azure's filter annotations and empty
    keep-alive events carry nothing and emit nothing. A stream whose choice 0 finished
    with ``content_filter`` raises :class:`ContentFiltered` once its chunks are out.
    """

    terminal = "data: [DONE]"

    def __init__(self, adapter: OpenAIAdapter) -> None:
        super().__init__(adapter, SSEDecoder())
        self._openai = adapter
        self._filtered = False

    def _plain(self, frame: SSEEvent) -> StreamChunk | None:
        plain = _decode_plain_chunk(frame.data)
        text = plain.choices[0].delta.content
        return StreamChunk(text=text, model=plain.model or None, id=plain.id or None) if text else None

    def _frame(self, frame: SSEEvent, out: list[StreamChunk]) -> None:
        data = frame.data
        if len(data) < 16 and data.strip() == b"[DONE]":
            if self._filtered:
                raise self._missing_terminal()
            self.done = True
            return
        chunk = _chunk_decoder.decode(data)
        if chunk.error is not None:
            raise self._openai.error_in_body(chunk.error)
        usage = _usage(chunk.usage) if chunk.usage is not None else None
        model = chunk.model or None
        ident = chunk.id or None
        for choice in chunk.choices:
            if choice.index != 0:
                continue
            delta = choice.delta
            finish = choice.finish_reason
            if delta is None:
                text = choice.text or ""
                reasoning = ""
                tools = None
            else:
                text = delta.content or delta.refusal or ""
                reasoning = delta.reasoning_content or delta.reasoning or ""
                tools = (
                    [
                        ToolCallDelta(
                            index=call.index,
                            id=call.id,
                            name=call.function.name if call.function else None,
                            arguments=(call.function.arguments or "") if call.function else "",
                        )
                        for call in delta.tool_calls
                    ]
                    if delta.tool_calls
                    else None
                )
            if finish == "content_filter":
                self._filtered = True  # never finished: the end raises ContentFiltered
            elif finish:
                self.finished = True
            if text or reasoning or tools or finish or usage is not None:
                out.append(
                    StreamChunk(
                        text=text,
                        reasoning=reasoning,
                        tool_calls=tools,
                        finish_reason=finish,
                        usage=usage,
                        model=model,
                        id=ident,
                    )
                )
                usage = None
        if usage is not None:
            out.append(StreamChunk(usage=usage, model=model, id=ident))

    def _missing_terminal(self) -> ProviderError:
        if self._filtered:
            adapter = self._openai
            return ContentFiltered(
                "the provider's content filter cut the completion",
                endpoint=adapter.name,
                provider=adapter.provider,
                code="content_filter",
            )
        return super()._missing_terminal()


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI: the deployment (``Endpoint.model``) is in the URL, the key in ``api-key``.

    ``POST {base_url}/openai/deployments/{model}/chat/completions?api-version={api_version}``
    (``api_version`` defaults to ``2024-10-21``, the GA version); the probe lists the
    resource's models, ``GET {base_url}/openai/models?api-version=…``. Prompt filtering
    (400, ``code: content_filter``) and completion filtering (``finish_reason:
    content_filter``) are :class:`ContentFiltered` as the module docstring says.
    """

    provider = "azure"
    max_tokens_field = "max_tokens"
    #: the API version used when the endpoint names none
    default_api_version: ClassVar[str] = "2024-10-21"

    def _urls(self, base: str, endpoint: Endpoint) -> tuple[str, str, str]:
        if base.endswith("/openai"):
            base = base[: -len("/openai")]
        version = urllib.parse.quote(endpoint.api_version or self.default_api_version, safe="")
        deployment = f"{base}/openai/deployments/{urllib.parse.quote(endpoint.model, safe='')}"
        return (
            f"{deployment}/chat/completions?api-version={version}",
            f"{deployment}/embeddings?api-version={version}",
            f"{base}/openai/models?api-version={version}",
        )

    def _auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"api-key": api_key} if api_key else {}


class DeepSeekAdapter(OpenAIAdapter):
    """DeepSeek: ``https://api.deepseek.com`` by default, Bearer key, no embeddings API.

    ``deepseek-reasoner``'s ``reasoning_content`` becomes ``reasoning``;
    ``prompt_cache_hit_tokens`` becomes ``cached_input_tokens``; ``: keep-alive`` comments
    are skipped by the SSE framer and do not reset the idle timer.
    """

    provider = "deepseek"
    max_tokens_field = "max_tokens"
    param_rules = rules_for(("presence_penalty", "frequency_penalty", "logprobs", "top_logprobs"))

    def chat_request(self, request: ChatRequest, *, stream: bool) -> HTTPRequest:
        """As OpenAI's, but ``json_schema`` becomes JSON mode with the schema in a system message:
        DeepSeek has no schema mode, and its JSON mode wants the word "json" in the prompt."""
        wanted = response_schema(request.response_format)
        if wanted is not None:
            instruction = Message(
                role="system",
                content="Reply with one json object, and nothing else, that matches this JSON schema:\n"
                + _encode(wanted[1]).decode(),
            )
            request = msgspec.structs.replace(request, messages=[instruction, *request.messages], response_format=_JSON_MODE)
        return super().chat_request(request, stream=stream)


class OpenAICompatibleAdapter(OpenAIAdapter):
    """Any server speaking the OpenAI dialect (vLLM, llama.cpp, LM Studio, LiteLLM, …).

    ``base_url`` is required (the prefix before ``/chat/completions``, usually ending in
    ``/v1``); the key is optional and sent as a Bearer token when given; custom headers
    come from ``Endpoint.headers``.
    """

    provider = "openai-compatible"
    max_tokens_field = "max_tokens"
