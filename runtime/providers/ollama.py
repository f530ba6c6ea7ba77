"""The Ollama dialect: ``/api/chat``, ``/api/generate``, ``/api/embed`` and ``/api/tags``.

Default base ``http://127.0.0.1:11434`` (an IP literal: no resolver hop for a local
server). No key is needed; one given (Ollama behind a proxy, or ollama.com) is sent as a
Bearer token. The translation, decided once here:

- ``max_tokens`` → ``options.num_predict``; ``temperature``, ``top_p``, ``stop`` and ``seed``
  go under ``options`` too. ``response_format`` ``json_object`` → ``format: "json"``,
  ``json_schema`` → ``format: <the schema>``. Tools are sent in the OpenAI shape, which
  Ollama reads; ``tool_choice`` ``"auto"`` is Ollama's way anyway, ``"none"`` sends no
  tools, and ``"required"`` or a named tool (no equivalent) is refused unless
  ``drop_unsupported``.
- Images must be inline: ``data:`` URLs become the message's ``images`` (base64); an
  ``https://`` image is refused with :class:`InvalidRequest`.
- Tool calls come with ``arguments`` as a JSON object; they become
  :attr:`ToolCall.arguments` as compact JSON text. Ollama gives calls no id, so they are
  numbered ``call_0``, ``call_1``… Ollama finishes a tool-calling turn with
  ``done_reason: "stop"``; it is reported as ``"tool_calls"``, the word the rest of the
  runtime uses for it.
- A text completion (``kind="completion"``) goes to ``/api/generate`` with ``prompt``, the
  same ``options`` and parameters; Ollama applies the model's prompt template there, as
  its own ``/v1/completions`` does (``extra_body={"raw": True}`` sends the prompt as it
  is). Its ``response`` text is read like a chat message's content, whole and streamed.
- Streams are NDJSON (``application/x-ndjson``) ending with a ``done: true`` object that
  carries ``prompt_eval_count`` / ``eval_count`` (→ usage). An ``{"error": …}`` line inside
  an HTTP 200 stream raises :class:`NotFound` when it says a model was not found, else
  :class:`ServerError`. ``thinking`` (``think: true``) becomes ``reasoning``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from ..errors import InvalidRequest, NotFound, ProviderError, ServerError
from ..types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    StreamChunk,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .base import Adapter, HTTPRequest, build_error, decode_error_body, json_text, response_schema, undecodable
from .params import Rule, apply_params, in_options, unsupported, with_extra_headers
from .streams import FramedDecoder, NDJSONDecoder

if TYPE_CHECKING:  # policy reads the provider registry in this package
    from ..policy import Endpoint

__all__ = ["OllamaAdapter"]


class _View(msgspec.Struct, gc=False):
    """Base of the wire views: unknown fields are ignored, missing ones take defaults."""


class _FunctionView(_View):
    index: int | None = None
    name: str = ""
    arguments: msgspec.Raw = msgspec.Raw()


class _ToolCallView(_View):
    id: str | None = None
    function: _FunctionView | None = None


class _MessageView(_View):
    content: str | None = None
    thinking: str | None = None
    tool_calls: list[_ToolCallView] | None = None


class _ChatView(_View):
    model: str | None = None
    message: _MessageView | None = None
    response: str | None = None  # /api/generate's text
    thinking: str | None = None  # /api/generate's reasoning
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    error: str | None = None


class _EmbedView(_View):
    model: str | None = None
    embeddings: list[list[float]] = []
    prompt_eval_count: int | None = None
    error: str | None = None


_chat_decoder = msgspec.json.Decoder(_ChatView)


# A stream's text line, nearly every line of a reply, as one strict shape: not done, no
# error, a message with content and none of the other fields the full reading reads. A
# line that fits it means exactly what the full reading of it would.


class _PlainMessageView(_View):
    content: str
    thinking: None = None
    tool_calls: None = None


class _PlainLineView(_View):
    message: _PlainMessageView
    model: str | None = None
    done: Literal[False] = False
    error: None = None


_decode_plain_line = msgspec.json.Decoder(_PlainLineView).decode
_embed_decoder = msgspec.json.Decoder(_EmbedView)
_encode = msgspec.json.encode


def _think(body: dict[str, Any], value: Any, request: ChatRequest) -> None:
    body["think"] = True  # Ollama's reasoning switch; models that cannot think refuse it


_PARAM_RULES: dict[str, Rule] = {
    "presence_penalty": in_options("presence_penalty"),
    "frequency_penalty": in_options("frequency_penalty"),
    "reasoning_effort": _think,
}


def _usage(view: _ChatView) -> Usage:
    prompt = view.prompt_eval_count or 0
    output = view.eval_count or 0
    return Usage(input_tokens=prompt, output_tokens=output, total_tokens=prompt + output)


def _calls(calls: list[_ToolCallView], first: int) -> list[tuple[int, ToolCall]]:
    out = []
    for offset, call in enumerate(calls):
        function = call.function or _FunctionView()
        number = first + offset
        out.append((number, ToolCall(id=call.id or f"call_{number}", name=function.name, arguments=json_text(function.arguments))))
    return out


class OllamaAdapter(Adapter):
    """Ollama's native API for one endpoint (see the module docstring for the translation)."""

    provider = "ollama"
    stream_content_types = ("application/x-ndjson",)

    def __init__(self, endpoint: Endpoint, api_key: str | None) -> None:
        super().__init__(endpoint, api_key)
        base = (endpoint.base_url or self.default_base_url or "").rstrip("/")
        self._model = endpoint.model
        self._chat_url = f"{base}/api/chat"
        self._generate_url = f"{base}/api/generate"
        self._embed_url = f"{base}/api/embed"
        self._probe_url = f"{base}/api/tags"
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._probe_headers: dict[str, str] = {**auth, **endpoint.headers}
        self._headers: dict[str, str] = {"Content-Type": "application/json", **auth, **endpoint.headers}

    # --- requests ---------------------------------------------------------------------

    def chat_request(self, request: ChatRequest, *, stream: bool) -> HTTPRequest:
        """``POST /api/chat``; ``stream`` is always sent, since Ollama streams by default."""
        completion = request.kind == "completion"
        body: dict[str, Any] = (
            {"model": self._model, "prompt": request.messages[0].text, "stream": stream}
            if completion
            else {"model": self._model, "messages": [self._wire_message(m) for m in request.messages], "stream": stream}
        )
        options: dict[str, Any] = {}
        if request.max_tokens is not None:
            options["num_predict"] = request.max_tokens
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.stop:
            options["stop"] = request.stop
        if request.seed is not None:
            options["seed"] = request.seed
        if options:
            body["options"] = options
        choice = request.tool_choice
        if request.tools and choice != "none":  # "none": the model may call nothing, so it is offered nothing
            body["tools"] = request.tools
        if choice is not None and choice not in ("auto", "none"):
            # Ollama cannot be made to call a tool: "required" or a named tool has no equivalent
            unsupported("tool_choice", request, self)
        fmt = request.response_format
        if fmt is not None:
            kind = fmt.get("type")
            if kind == "json_object":
                body["format"] = "json"
            elif (wanted := response_schema(fmt)) is not None:
                body["format"] = wanted[1]
        apply_params(body, request, _PARAM_RULES, self)
        url = self._generate_url if completion else self._chat_url
        return HTTPRequest("POST", url, with_extra_headers(self._headers, request), _encode(body))

    def _wire_message(self, message: Message) -> Message | dict[str, Any]:
        content = message.content
        if message.tool_calls is None and message.role != "tool" and (content is None or isinstance(content, str)):
            return message  # already Ollama's shape
        wire: dict[str, Any] = {"role": message.role, "content": message.text}
        if isinstance(content, list):
            images = []
            for part in content:
                if isinstance(part, TextPart):
                    continue
                if not part.url.startswith("data:"):
                    raise InvalidRequest(
                        "ollama takes inline images only (data: URLs), not links",
                        field="messages",
                        endpoint=self.name,
                    )
                images.append(part.url.partition(",")[2])
            if images:
                wire["images"] = images
        if message.tool_calls:
            wire["tool_calls"] = [
                {"id": call.id, "function": {"name": call.name, "arguments": self.tool_arguments(call)}}
                for call in message.tool_calls
            ]
        if message.role == "tool":
            if message.name is not None:
                wire["tool_name"] = message.name
            if message.tool_call_id is not None:
                wire["tool_call_id"] = message.tool_call_id
        return wire

    def embed_request(self, request: EmbeddingRequest) -> HTTPRequest:
        """``POST /api/embed`` with every input in one call."""
        body: dict[str, Any] = {"model": self._model, "input": request.inputs}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        return HTTPRequest("POST", self._embed_url, self._headers, _encode(body))

    # --- answers ----------------------------------------------------------------------

    @undecodable("chat reply")
    def parse_chat(self, body: bytes) -> ChatResponse:
        """A whole ``/api/chat`` reply (``stream: false``)."""
        view = _chat_decoder.decode(body)
        if view.error is not None:
            raise self.error_line(view.error)
        message = view.message or _MessageView()
        calls = [call for _, call in _calls(message.tool_calls or [], 0)]
        finish = view.done_reason or "stop"
        if calls and finish == "stop":
            finish = "tool_calls"
        return ChatResponse(
            text=message.content or view.response or "",
            finish_reason=finish,
            usage=_usage(view),
            model=view.model or self._model,
            endpoint=self.name,
            provider=self.provider,
            tool_calls=calls,
            reasoning=message.thinking or view.thinking or None,
        )

    def stream_decoder(self) -> _ChatStreamDecoder:
        """A decoder of one ``/api/chat`` NDJSON stream."""
        return _ChatStreamDecoder(self)

    @undecodable("embeddings reply")
    def parse_embed(self, body: bytes) -> EmbeddingResponse:
        """One vector per input, in input order."""
        view = _embed_decoder.decode(body)
        if view.error is not None:
            raise self.error_line(view.error)
        prompt = view.prompt_eval_count or 0
        return EmbeddingResponse(
            vectors=view.embeddings,
            model=view.model or self._model,
            endpoint=self.name,
            provider=self.provider,
            usage=Usage(input_tokens=prompt, total_tokens=prompt),
        )

    # --- errors -----------------------------------------------------------------------

    def parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderError:
        """The one error an HTTP error response (``{"error": "…"}``) means; the status decides.
        A proxy in front of Ollama may send ``{"error": {"message", "code"}}``: its code is
        read too (a content-filter code is :class:`ContentFiltered`, as on every dialect)."""
        doc = decode_error_body(body)
        message: str | None = None
        code: str | None = None
        if isinstance(doc, dict):
            error = doc.get("error")
            if isinstance(error, str):
                message = error
            elif isinstance(error, dict):
                message = error["message"] if isinstance(error.get("message"), str) else None
                code = error["code"] if isinstance(error.get("code"), str) else None
        if message is None:
            message = self.snippet(body) if doc is None else ""
        return build_error(self, status, headers, message, code=code)

    def error_line(self, message: str) -> ProviderError:
        """The error an ``{"error": …}`` object under HTTP 200 means (mid-stream, typically)."""
        lowered = message.lower()
        cls: type[ProviderError] = NotFound if "not found" in lowered and "model" in lowered else ServerError
        return self.error(cls, message or "error line in the reply")


class _ChatStreamDecoder(FramedDecoder[bytes]):
    """``/api/chat`` NDJSON → :class:`StreamChunk`; ends at the ``done: true`` object."""

    terminal = '"done": true object'
    unit = "stream line"

    def __init__(self, adapter: OllamaAdapter) -> None:
        super().__init__(adapter, NDJSONDecoder())
        self._ollama = adapter
        self._calls = 0

    def _plain(self, frame: bytes) -> StreamChunk | None:
        plain = _decode_plain_line(frame)
        text = plain.message.content
        return StreamChunk(text=text, model=plain.model) if text else None

    def _frame(self, frame: bytes, out: list[StreamChunk]) -> None:
        view = _chat_decoder.decode(frame)
        if view.error is not None:
            raise self._ollama.error_line(view.error)
        message = view.message
        text = view.response or ""  # /api/generate's line; /api/chat's is in message
        reasoning = view.thinking or ""
        tools = None
        if message is not None:
            text = message.content or ""
            reasoning = message.thinking or ""
            if message.tool_calls:
                # Ollama sends each call whole: one delta carries id, name and all arguments.
                tools = [
                    ToolCallDelta(index=number, id=call.id, name=call.name, arguments=call.arguments)
                    for number, call in _calls(message.tool_calls, self._calls)
                ]
                self._calls += len(tools)
        if view.done:
            self.done = True
            finish = view.done_reason or "stop"
            if self._calls and finish == "stop":
                finish = "tool_calls"
            out.append(
                StreamChunk(
                    text=text,
                    reasoning=reasoning,
                    tool_calls=tools,
                    finish_reason=finish,
                    usage=_usage(view),
                    model=view.model,
                )
            )
        elif text or reasoning or tools:
            out.append(StreamChunk(text=text, reasoning=reasoning, tool_calls=tools, model=view.model))
