"""Provider-neutral wire types.

Every value that crosses a boundary (caller ↔ runtime, runtime ↔ adapter) is one of
these msgspec structs. Provider-native shapes never leave their adapter: each adapter
keeps private view structs and translates into these.

All structs share :class:`Struct`'s configuration: keyword-only construction and
``omit_defaults`` so encoded replies stay small. New fields always get defaults, so
older encoded values keep decoding.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import msgspec

__all__ = [
    "Attempt",
    "ChatRequest",
    "Choice",
    "ChatResponse",
    "ContentPart",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "FrozenStruct",
    "ImagePart",
    "Message",
    "OpenAIParams",
    "RateLimitSnapshot",
    "Role",
    "StreamChunk",
    "Struct",
    "TextPart",
    "TokenLogprob",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]

Role = Literal["system", "user", "assistant", "tool"]


class Struct(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Base of every wire type: keyword-only, defaults omitted when encoded."""


class FrozenStruct(msgspec.Struct, kw_only=True, omit_defaults=True, frozen=True):
    """Base of immutable values: snapshots, statistics, attempt records."""


class TextPart(Struct, tag="text", tag_field="type"):
    """A text part of a multi-part message."""

    text: str


class ImagePart(Struct, tag="image_url", tag_field="type"):
    """An image part, by URL (``https://…`` or a ``data:`` URL)."""

    url: str
    detail: str | None = None


ContentPart = TextPart | ImagePart


class ToolCall(Struct):
    """A whole tool call the model asked for. ``arguments`` is the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"


class ToolCallDelta(Struct):
    """A fragment of a tool call inside a stream; fragments with one ``index`` add up to a call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Message(Struct):
    """One conversation turn.

    ``content`` is plain text or a list of parts; an assistant turn may carry
    ``tool_calls`` instead of text, and a ``tool`` turn answers one call by ``tool_call_id``.
    """

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text, with the text parts of a multi-part message joined."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p.text for p in content if isinstance(p, TextPart))


class Usage(Struct, gc=False):
    """Token counts of one reply (numbers and a flag: untracked by the collector, cheaper to make).

    ``estimated`` is true when the provider reported nothing and the runtime counted
    the tokens itself; the provider's own figures always win when it reports them.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cached_input_tokens: int | None = None
    reasoning_tokens: int | None = None
    estimated: bool = False


class RateLimitSnapshot(FrozenStruct, frozen=True, gc=False):
    """What a provider's rate-limit headers said; resets are seconds from when it was read
    (numbers only: untracked by the collector)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None


class Attempt(FrozenStruct, frozen=True):
    """One try at one endpoint: the endpoint's name, the error it ended with (None on success
    or when it was cancelled because a hedged twin answered first), seconds spent.

    ``recovery`` says how the attempt recovered a stream that failed after content reached
    the caller: ``"restart"`` (a new answer) or ``"continue"`` (the partial answer continued).
    """

    endpoint: str
    error: Any = None
    elapsed: float = 0.0
    hedge: bool = False
    cancelled: bool = False
    recovery: Literal["restart", "continue"] | None = None


class ChatRequest(Struct):
    """A chat request as the runtime carries it to an adapter.

    ``model`` is a route (a group or model name) at the dispatcher and is replaced by
    the endpoint's own model when the adapter builds the HTTP body.
    """

    messages: list[Message]
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    user: str | None = None
    # The OpenAI parameters beyond the common ones (runtime.providers.params translates
    # or refuses them per provider).
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    n: int | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None
    extra_body: dict[str, Any] | None = None
    extra_headers: dict[str, str] | None = None
    drop_unsupported: bool = False
    #: ``"completion"``: a text completion of ``messages[0]``'s text (``Runtime.complete``),
    #: sent to the provider's completion API instead of its chat API
    kind: Literal["chat", "completion"] = "chat"


class OpenAIParams(TypedDict, total=False):
    """The OpenAI parameters ``chat`` and ``stream`` take beyond the common ones.

    Each is translated where the endpoint's provider has an equivalent and refused with
    :class:`~runtime.errors.InvalidRequest` otherwise, unless ``drop_unsupported``.
    """

    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[str, float]
    logprobs: bool
    top_logprobs: int
    n: int
    user: str
    parallel_tool_calls: bool
    max_completion_tokens: int
    reasoning_effort: Literal["minimal", "low", "medium", "high"]
    metadata: dict[str, str]
    extra_body: dict[str, Any]
    extra_headers: dict[str, str]
    drop_unsupported: bool


class TokenLogprob(Struct):
    """One generated token's log probability, with the most likely alternatives when asked (``top_logprobs``)."""

    token: str
    logprob: float
    top: list[tuple[str, float]] = msgspec.field(default_factory=list)


class Choice(Struct):
    """One of the ``n`` choices of a reply (choice 0 is also the reply's own ``text`` and fields)."""

    index: int = 0
    text: str = ""
    finish_reason: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


class ChatResponse(Struct):
    """A whole reply: the text, why it ended, what it cost and how it was obtained."""

    text: str = ""
    finish_reason: str | None = None
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""
    endpoint: str = ""
    provider: str = ""
    id: str | None = None
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    reasoning: str | None = None
    cost_usd: float = 0.0
    #: False when the price table knew neither the model that answered nor the endpoint's
    #: configured model (and the endpoint sets no ``price``): ``cost_usd`` is then 0, not free
    cost_known: bool = True
    cached: bool = False
    stale: bool = False
    attempts: list[Attempt] = msgspec.field(default_factory=list)
    #: every choice when the request asked for ``n`` > 1 (empty otherwise)
    choices: list[Choice] = msgspec.field(default_factory=list)
    #: choice 0's token log probabilities when the request asked for ``logprobs``
    logprobs: list[TokenLogprob] | None = None
    #: the reply as an instance of the type (or JSON value of the schema) ``response_format`` named
    parsed: Any = None


class StreamChunk(Struct):
    """One piece of a streamed reply. Text, reasoning and tool-call fragments are deltas;
    ``usage`` and ``finish_reason`` arrive once, near the end.

    ``restart`` marks the chunk (it carries nothing else) a stream with
    ``on_interrupt="restart"`` yields when its answer failed mid-way and a new answer
    begins: every chunk before it is void.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    id: str | None = None
    restart: bool = False


class EmbeddingRequest(Struct):
    """Texts to embed; ``model`` routes like a chat request's."""

    inputs: list[str]
    model: str | None = None
    dimensions: int | None = None


class EmbeddingResponse(Struct):
    """One vector per input, in input order."""

    vectors: list[list[float]]
    model: str = ""
    endpoint: str = ""
    provider: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    cost_usd: float = 0.0
    #: False when the price table knew neither the model that answered nor the endpoint's
    #: configured model (and the endpoint sets no ``price``): ``cost_usd`` is then 0, not free
    cost_known: bool = True
    attempts: list[Attempt] = msgspec.field(default_factory=list)
