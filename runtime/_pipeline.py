"""The request pipeline: the one walk chat, stream and embed take.

    arguments → options (built and checked once) → Call (deadline, route, span)
    → response cache → budget reservation → dispatcher (choose, admit, attempt, fail over,
    hedge) → the permit settled by its one owner → account (usage, cost, budgets, ledger)
    → metrics and span → the reply, stream or embedding.

:func:`chat_options` and :func:`embed_options` declare the keywords once; the async
facade and the blocking one take their signatures from them (:func:`takes`). A
:class:`Call` holds one request's state for its whole walk, so a stream (a view on its
call) gets the same span, trail, budget and metrics a chat gets.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar, Unpack

import msgspec

from ._assembly import assembled, streamable
from .accounting import (
    BudgetGuard,
    Metrics,
    PriceTable,
    ResponseCache,
    UsageLedger,
    cacheable,
    estimate_request_tokens,
    estimate_usage,
    fit_messages,
)
from .accounting.cost import ModelPrice
from .dispatch.dispatcher import Dispatcher, Outcome, RouteTable, Tier
from .endpoint.actor import EndpointActor
from .errors import AllEndpointsFailed, InvalidRequest, LLMError
from .metrics import metrics_enabled
from .policy import ON_INTERRUPT, ON_INTERRUPT_RULE, HedgePolicy, OnInterrupt
from .structured import OutputSchema, output_schema
from .structured import finish as finish_structured
from .telemetry import NO_SPAN, activate, end_span, start_span, tracing_enabled
from .types import (
    Attempt,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    OpenAIParams,
    Usage,
)
from .validation import MAX_TEMPERATURE, call_options, chat_messages, chat_request, embed_request

if TYPE_CHECKING:
    from ._stream import ReplyStream

__all__ = ["Call", "ChatOptions", "EmbedOptions", "Pipeline", "chat_options", "complete_options", "embed_options", "takes"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")

# Reserved against TPM when a request sets no max_tokens: a typical reply, so that an
# unbounded request neither reserves nothing nor a whole context window.
DEFAULT_REPLY_RESERVE = 1024
_PRICE_CACHE_LIMIT = 1024
_NO_REPAIR = 0  # repair's default: the same small-int object, so an identity test finds it


class ChatOptions(msgspec.Struct, frozen=True):
    """A chat or stream request with its per-call options, checked once by :func:`chat_options`.

    Its keywords: ``messages`` is a string (one user message) or a list of messages (dicts
    or :class:`Message`). ``model`` routes by group or model name, ``endpoint`` pins one
    endpoint, ``timeout`` is the whole request's deadline in seconds, ``cache`` opts in
    (True) or out (False) of the response cache, ``hedge`` overrides the runtime's hedging
    for this request (a policy, or False for none). With ``trim`` a conversation too long
    for an endpoint's ``context_window`` is trimmed to fit it (system messages and the
    newest turns kept, tool call and result never split) instead of routing around that
    endpoint. The OpenAI parameters beyond these (:class:`~runtime.types.OpenAIParams`:
    ``presence_penalty``, ``n``, ``logprobs``, ``reasoning_effort``, ``extra_body``, ...)
    are translated per provider or refused. ``response_format`` may be a msgspec Struct,
    dataclass or TypedDict type or a JSON schema: the reply is then checked and
    ``reply.parsed`` holds it (:mod:`runtime.structured`), and ``repair`` is how many times
    an invalid reply is sent back, with what was wrong, to the endpoint that wrote it.
    ``on_interrupt`` (streams only) says what a stream that fails after content reached the
    caller does: ``"raise"``, ``"restart"`` or ``"continue"`` (:mod:`runtime._recovery`);
    None takes the runtime's.
    """

    request: ChatRequest
    timeout: float | None = None
    endpoint: str | None = None
    cache: bool | None = None
    hedge: HedgePolicy | bool | None = None
    trim: bool = False
    #: the type or schema the reply must parse into (``reply.parsed``), and how many times
    #: an invalid reply is sent back to its endpoint to be repaired
    output: OutputSchema | None = None
    repair: int = 0
    #: what a stream does when it fails after content reached the caller (None: the runtime's default)
    on_interrupt: OnInterrupt | None = None

    @property
    def route(self) -> str | None:
        """What the cache and errors name the request by: the pinned endpoint, else the model."""
        return self.endpoint or self.request.model


class EmbedOptions(msgspec.Struct, frozen=True):
    """An embedding request with its per-call options, checked once."""

    request: EmbeddingRequest
    timeout: float | None = None
    endpoint: str | None = None


def chat_options(
    messages: str | Sequence[Message | Mapping[str, Any]],
    *,
    system: str | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    tool_choice: str | Mapping[str, Any] | None = None,
    response_format: Mapping[str, Any] | type | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    endpoint: str | None = None,
    cache: bool | None = None,
    hedge: HedgePolicy | bool | None = None,
    trim: bool = False,
    repair: int = 0,
    on_interrupt: OnInterrupt | None = None,
    **params: Unpack[OpenAIParams],
) -> ChatOptions:
    """The keywords of ``chat`` and ``stream``, declared once, checked into a :class:`ChatOptions`
    (which says what each one does)."""
    # The knobs are checked only when one is set: most requests set none.
    if timeout is not None or endpoint is not None or cache is not None or hedge is not None or trim is not False:
        call_options(timeout=timeout, endpoint=endpoint, cache=cache, hedge=hedge, trim=trim)
    if on_interrupt is not None and on_interrupt not in ON_INTERRUPT:
        raise InvalidRequest(f"on_interrupt {ON_INTERRUPT_RULE}, got {on_interrupt!r}", field="on_interrupt")
    output = output_schema(response_format) if response_format is not None else None
    # The default (the very object 0) passes on one identity test; type(): a bool is no count.
    if repair is not _NO_REPAIR and (type(repair) is not int or repair < 0):
        raise InvalidRequest(f"repair must be an integer >= 0, got {repair!r}", field="repair")
    if (
        system is None and stop is None and tools is None and tool_choice is None and response_format is None
        and not params and top_p is None and seed is None and (model is None or (type(model) is str and model))
        and (max_tokens is None or (type(max_tokens) is int and max_tokens >= 1))
        and (temperature is None or (type(temperature) is float and 0.0 <= temperature <= MAX_TEMPERATURE))
    ):
        # Messages and keywords that plainly pass chat_request's checks (most requests): built
        # here, without its frame and twelve arguments. Anything else, it checks.
        msgs = (
            [Message(role="user", content=messages)] if type(messages) is str and messages.strip()
            else chat_messages(messages)
        )
        request = ChatRequest(messages=msgs, model=model, max_tokens=max_tokens, temperature=temperature)
    else:
        request = chat_request(
            messages, system=system, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            stop=stop, tools=tools, tool_choice=tool_choice,
            response_format=output.wire if output is not None else response_format, seed=seed, params=params,
        )
    return ChatOptions(request, timeout, endpoint, cache, hedge, trim, output, repair, on_interrupt)


def embed_options(
    inputs: str | Sequence[str],
    *,
    model: str | None = None,
    dimensions: int | None = None,
    timeout: float | None = None,
    endpoint: str | None = None,
) -> EmbedOptions:
    """The keywords of ``embed``, declared once: ``model`` routes, ``endpoint`` pins, ``timeout`` is the deadline."""
    if timeout is not None or endpoint is not None:
        call_options(timeout=timeout, endpoint=endpoint)
    return EmbedOptions(embed_request(inputs, model=model, dimensions=dimensions), timeout, endpoint)


def complete_options(
    prompt: str,
    *,
    model: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: str | Sequence[str] | None = None,
    seed: int | None = None,
    timeout: float | None = None,
    endpoint: str | None = None,
    cache: bool | None = None,
    hedge: HedgePolicy | bool | None = None,
    on_interrupt: OnInterrupt | None = None,
    **params: Unpack[OpenAIParams],
) -> ChatOptions:
    """The keywords of ``complete`` and ``stream_complete``, declared once: ``prompt`` is the
    text to continue; the others mean what they mean for :func:`chat_options`."""
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest(f"prompt must be a non-empty string, got {prompt!r}", field="prompt")
    options = chat_options(
        prompt, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed,
        timeout=timeout, endpoint=endpoint, cache=cache, hedge=hedge, on_interrupt=on_interrupt, **params,
    )
    return msgspec.structs.replace(options, request=msgspec.structs.replace(options.request, kind="completion"))


def takes(builder: Callable[P, Any]) -> Callable[[Callable[..., R]], Callable[Concatenate[S, P], R]]:
    """Give a method the parameters of ``builder`` (after ``self``), for type checkers and
    :func:`inspect.signature` alike; the method passes its arguments on to ``builder``."""
    parameters = list(inspect.signature(builder).parameters.values())

    def decorate(method: Callable[..., R]) -> Callable[Concatenate[S, P], R]:
        own = inspect.signature(method)
        this = next(iter(own.parameters.values()))
        method.__signature__ = own.replace(parameters=[this, *parameters])  # type: ignore[attr-defined]
        return method

    return decorate


class Pipeline:
    """The steps every request takes, for one running runtime."""

    def __init__(
        self,
        routes: RouteTable,
        dispatcher: Dispatcher,
        *,
        timeout: float,
        hedge: HedgePolicy | None,
        cache: ResponseCache | None,
        budget: BudgetGuard | None,
        endpoint_budgets: dict[str, BudgetGuard],
        prices: PriceTable,
        ledger: UsageLedger,
        metrics: Metrics,
        count_prompt: bool,
        on_interrupt: OnInterrupt = "raise",
    ) -> None:
        self.routes = routes
        #: route -> its tiers, None for an unknown one (the table's dict, whose tiers a restart edits in place)
        self.route_tiers = routes.by_route.get
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.hedge = hedge
        self.cache = cache
        self.budget = budget
        self.endpoint_budgets = endpoint_budgets
        self.prices = prices
        self.ledger = ledger
        self.metrics = metrics
        # Counting prompt tokens costs microseconds per request; do it only when a TPM
        # limit, a context window or a budget will read the count.
        self.count_prompt = count_prompt
        self.on_interrupt = on_interrupt
        self.accept = _budget_filter(endpoint_budgets)
        self.windows = any(actor.endpoint.context_window is not None for actor in routes.actors)
        self.accept_embeddings = _embeddings_filter(self.accept)
        # Built inside the running loop the runtime serves from: its clock, read once.
        self.clock = asyncio.get_running_loop().time
        # The stream class, which imports this module: imported once here, not by an import
        # statement per stream (the import machinery's lookups cost microseconds each time).
        from ._stream import ReplyStream

        self._reply_stream = ReplyStream
        # (endpoint, model that answered) -> price: one dict hit per reply after the first.
        self._prices: dict[tuple[str, str], ModelPrice] = {}

    # --- the operations ----------------------------------------------------------------------

    async def chat(self, options: ChatOptions, deadline: float | None = None) -> ChatResponse:
        """A whole reply, from the cache or the best endpoint; parsed (and repaired on the
        endpoint that wrote it) when the options ask for typed output. ``deadline`` (loop
        time) is given for a repair, which keeps its request's; None starts the caller's."""
        now = self.clock()  # read once: the deadline's start, the call's and the dispatch's
        if deadline is None:
            if options.on_interrupt is not None:
                raise InvalidRequest(
                    "on_interrupt is for stream(): a whole reply reaches the caller only once it is complete",
                    field="on_interrupt",
                )
            timeout = options.timeout
            deadline = now + (self.timeout if timeout is None else timeout)  # deadline(), a call less
            if options.output is not None:
                return await self.typed(options, options.output, deadline)
        request = options.request
        completion = request.kind == "completion"
        call = Call(
            self, "text_completion" if completion else "chat", request.model, options.endpoint, deadline, now, completion,
            request, options.trim,
        )
        if tracing_enabled():
            call.start_span()
        key = None
        if self.cache is not None:
            key, hit = call.cached(request, options.cache)
            if hit is not None:
                return hit
        hedge = options.hedge
        try:
            tokens, window = call.reserve(request, options.trim)
            outcome = await call.dispatch(
                call.chat_attempt, tokens=tokens, window=window, usage_tokens=_total_tokens,
                hedge=self.hedge if hedge is None else self.hedge_for(hedge), now=now,
            )
        except AllEndpointsFailed as exc:
            stale = call.stale(key, exc)
            if stale is not None:
                return stale
            call.fail(exc)
            raise
        except BaseException as exc:
            call.fail(exc)
            raise
        reply = outcome.value
        call.account(reply, outcome.actor, request)
        # A reply that does not match the schema asked for is not kept to be served again.
        if key is not None and self.cache is not None and (options.output is None or options.output.matches(reply.text)):
            self.cache.set(key, reply)
        return reply

    async def typed(self, options: ChatOptions, output: OutputSchema, deadline: float) -> ChatResponse:
        """A whole reply parsed into ``output``, repaired on its endpoint up to ``options.repair`` times."""
        reply = await self.chat(options, deadline)

        async def resend(messages: list[Message], endpoint: str) -> ChatResponse:
            request = msgspec.structs.replace(options.request, messages=messages)
            return await self.chat(msgspec.structs.replace(options, request=request, endpoint=endpoint), deadline)

        return await finish_structured(reply, output, options.request.messages, options.repair, resend)

    def stream(self, options: ChatOptions) -> ReplyStream:
        """A streamed reply; the walk starts when the caller enters it."""
        request = options.request
        now, timeout = self.clock(), options.timeout
        deadline = now + (self.timeout if timeout is None else timeout)  # deadline(), a call and a clock reading less
        call = Call(self, "stream", request.model, options.endpoint, deadline, now, request.kind == "completion")
        return self._reply_stream(self, call, options)

    async def embed(self, options: EmbedOptions) -> EmbeddingResponse:
        """Vectors from the best endpoint that has an embeddings API."""
        request = options.request
        call = Call(self, "embeddings", request.model, options.endpoint, self.deadline(options.timeout), self.clock())
        call.start_span()

        async def attempt(actor: EndpointActor, timeout: float) -> EmbeddingResponse:
            reply, _ = await actor.client.embed(request, timeout)
            return reply

        tokens = sum(map(len, request.inputs)) // 4 + 1
        try:
            call.reservation = self.budget.reserve(tokens, 0.0) if self.budget is not None else None
            outcome = await call.dispatch(attempt, tokens=tokens, accept=self.accept_embeddings)
        except BaseException as exc:
            call.fail(exc)
            raise
        reply = outcome.value
        call.account(reply, outcome.actor)
        return reply

    # --- steps the operations share --------------------------------------------------------------

    def deadline(self, timeout: float | None) -> float:
        """The loop time by which a request given ``timeout`` (None: the runtime's) must resolve."""
        return self.clock() + (timeout if timeout is not None else self.timeout)

    def hedge_for(self, hedge: HedgePolicy | bool | None) -> HedgePolicy | None:
        """This request's hedging: the runtime's unless the call says otherwise."""
        if hedge is None:  # the call says nothing (most calls)
            return self.hedge
        if hedge is True:
            return self.hedge or HedgePolicy()
        return hedge or None

    @staticmethod
    def fit(request: ChatRequest, actor: EndpointActor) -> ChatRequest:
        """The request trimmed to the endpoint's context window (unchanged when it has none)."""
        window = actor.endpoint.context_window
        if window is None:
            return request
        fitted = fit_messages(
            request.messages,
            context_window=window,
            max_tokens=request.max_tokens or DEFAULT_REPLY_RESERVE,
            model=actor.model,
            extra_tokens=estimate_request_tokens(msgspec.structs.replace(request, messages=[])),
        )
        if not fitted.dropped:
            return request
        return msgspec.structs.replace(request, messages=fitted.messages)

    def price(self, reply_model: str, actor: EndpointActor) -> ModelPrice:
        """What the reply costs per token: the endpoint's own price, else the table's for the
        model that answered, else for the endpoint's configured model (an OpenAI-compatible
        server may answer under its own name), else unknown (0, ``known=False``)."""
        key = (actor.name, reply_model)
        price = self._prices.get(key)
        if price is None:
            if len(self._prices) >= _PRICE_CACHE_LIMIT:  # a server naming a new model each time
                self._prices.clear()
            price = self.prices.price(reply_model or actor.model, actor.provider, actor.endpoint.price)
            if not price.known and reply_model and reply_model != actor.model:
                price = self.prices.price(actor.model, actor.provider)
            self._prices[key] = price
        return price


class Call:
    """One request's state for its whole walk: deadline, route, span, budget reservation,
    attempt trail, and the open permit of a stream."""

    __slots__ = ("counted", "deadline", "model", "operation", "pipeline", "request", "reservation", "route", "span",
                 "started", "tiers", "trail", "trim")

    def __init__(
        self, pipeline: Pipeline, operation: str, model: str | None, endpoint: str | None, deadline: float,
        started: float,
        completion: bool = False,
        request: ChatRequest | None = None,
        trim: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.operation = operation
        self.model = model
        self.started = started
        self.deadline = deadline
        self.route = endpoint or model
        # Unpinned (nearly every request): the route's tiers straight from the table, tiers() a call less.
        tiers = pipeline.route_tiers(model) if endpoint is None else None
        if tiers is None:
            tiers = pipeline.routes.tiers(model, endpoint)
        self.tiers: list[Tier] = _completion_tiers(tiers, endpoint, model) if completion else tiers
        self.trail: list[Attempt] = []
        self.counted = 0
        self.reservation: Any = None
        self.span: Any = NO_SPAN
        #: a whole chat's request and trim option, read by :meth:`chat_attempt`
        self.request = request
        self.trim = trim

    def start_span(self) -> None:
        """Open the request's span (a no-op one when tracing is off); attempts are its children."""
        if not tracing_enabled():
            return
        model = self.model
        attributes: dict[str, Any] = {"gen_ai.operation.name": self.operation}
        if model:
            attributes["gen_ai.request.model"] = model
        self.span = start_span(f"{self.operation} {model}" if model else self.operation, attributes)

    def __repr__(self) -> str:
        return f"<Call [{self.operation} {self.route or 'default'} | {len(self.trail)} attempts]>"

    async def chat_attempt(self, actor: EndpointActor, timeout: float) -> ChatResponse:
        """One attempt at a whole chat reply on ``actor`` (a bound method, not a closure
        built per request): read as a stream and assembled when the endpoint streams chats."""
        request = self.request
        assert request is not None
        sent = self.pipeline.fit(request, actor) if self.trim else request
        if actor.endpoint.stream_chat and streamable(request):
            return await assembled(actor, sent, timeout, self.deadline)
        reply, snapshot = await actor.client.chat(sent, timeout)
        if snapshot is not None:
            actor.observe_rate_limit(snapshot, self.pipeline.clock())
        return reply

    def cached(self, request: ChatRequest, opt_in: bool | None) -> tuple[str | None, ChatResponse | None]:
        """The cache key for a cacheable request (None if not cacheable) and the hit, counted
        and its span ended."""
        pipeline = self.pipeline
        cache = pipeline.cache
        if cache is None or not cacheable(request, opt_in):
            return None, None
        key = cache.key(self.route, request)
        hit = cache.get(key)
        metered = metrics_enabled()  # asked once for both counts (each would ask again)
        if metered:
            pipeline.metrics.record_cache(hit is not None)
        if hit is None:
            return key, None
        pipeline.ledger.record_cache_hit(hit.endpoint, hit.model)
        if metered:
            pipeline.metrics.record_request(
                hit.endpoint, hit.provider, hit.model, None, 0.0, 0.0, outcome="cached", operation=self.operation
            )
        if self.span is not NO_SPAN:
            end_span(self.span, None, {"llm_runtime.cached": True})
        return key, msgspec.structs.replace(hit, cached=True, attempts=[])

    def stale(self, key: str | None, failure: AllEndpointsFailed) -> ChatResponse | None:
        """A stale cached reply to serve instead of ``failure``, when the cache policy allows it."""
        cache = self.pipeline.cache
        if key is None or cache is None or not cache.policy.serve_stale:
            return None
        stale = cache.stale(key)
        if stale is None:
            return None
        self.count_failed_attempts()
        self.release()
        self.pipeline.metrics.record_request(
            stale.endpoint, stale.provider, stale.model, None, 0.0, 0.0, outcome="stale", operation=self.operation
        )
        end_span(self.span, None, {"llm_runtime.stale": True})
        return msgspec.structs.replace(stale, cached=True, stale=True, attempts=failure.attempts)

    def reserve(self, request: ChatRequest, trim: bool) -> tuple[int, int]:
        """Reserve the request's tokens against the runtime budget; the tokens to reserve
        against TPM and the context window the request needs (0: any, as with ``trim``)."""
        pipeline = self.pipeline
        prompt = estimate_request_tokens(request) if pipeline.count_prompt else 0
        tokens = prompt + (request.max_tokens or DEFAULT_REPLY_RESERVE)
        if pipeline.budget is not None:
            self.reservation = pipeline.budget.reserve(tokens, 0.0)
        # No endpoint with a context window: nothing to fit, and no window check per admission.
        return tokens, 0 if trim or not pipeline.windows else prompt + (request.max_tokens or 0)

    def dispatch(
        self,
        attempt: Callable[[EndpointActor, float], Awaitable[T]],
        *,
        tokens: int,
        window: int = 0,
        settle: bool = True,
        usage_tokens: Callable[[T], int | None] | None = None,
        accept: Callable[[EndpointActor], bool] | None = None,
        hedge: HedgePolicy | None = None,
        now: float | None = None,
    ) -> Awaitable[Outcome[T]]:
        """Run attempts through the dispatcher under this call's span, deadline and trail
        (``now``: the loop time just read, if it was). Every way out of the call
        (:meth:`account`, :meth:`fail`, :meth:`stale`) counts the trail's failed attempts."""
        pipeline = self.pipeline
        budget = pipeline.budget
        hold = budget.hold if budget is not None and self.reservation is not None else None
        traced = self.span is not NO_SPAN  # tracing was on when the call started: its attempts have spans
        run = pipeline.dispatcher.run(
            self.tiers, attempt, tokens=tokens, deadline=self.deadline, prompt_tokens=window,
            route=self.route, settle=settle, usage_tokens=usage_tokens,
            accept=pipeline.accept if accept is None else accept, hedge=hedge, trail=self.trail,
            now=None if hold is not None else now,  # a hold on shared totals waits first: the dispatch reads its own
            traced=traced,
        )
        if hold is not None:
            run = _held(hold(self.reservation), run)
        if not traced:
            return run  # no frame of ours between the caller and the dispatcher
        return _under(self.span, run)

    def attempt_failed(self, endpoint: str, error: LLMError, elapsed: float) -> None:
        """The attempt serving the request failed after the dispatcher handed it over (a
        stream cut after its first chunk): its entry in the trail says so, and it is counted."""
        trail = self.trail
        failed = Attempt(endpoint=endpoint, error=error, elapsed=elapsed)
        if trail and trail[-1].endpoint == endpoint and trail[-1].error is None:
            trail[-1] = msgspec.structs.replace(trail[-1], error=error, elapsed=trail[-1].elapsed + elapsed)
            self.counted = min(self.counted, len(trail) - 1)
        else:
            trail.append(failed)
        self.count_failed_attempts()

    def count_failed_attempts(self) -> None:
        """Count each failed attempt of the trail not yet counted in ``llm_runtime.errors``."""
        trail = self.trail
        if self.counted == len(trail):
            return
        metrics, by_name = self.pipeline.metrics, self.pipeline.routes.by_name
        for attempt in trail[self.counted :]:
            error = attempt.error
            if error is not None:
                actor = by_name.get(attempt.endpoint)
                metrics.record_error(
                    type(error).__name__, endpoint=attempt.endpoint,
                    provider=actor.provider if actor else None, model=actor.model if actor else None,
                )
        self.counted = len(trail)

    def account(
        self, reply: ChatResponse | EmbeddingResponse, actor: EndpointActor, request: ChatRequest | None = None
    ) -> None:
        """Fill in who answered, usage and cost; settle budgets; count in ledger, metrics and span."""
        pipeline = self.pipeline
        reply.endpoint = actor.name
        reply.provider = actor.provider
        reply.attempts = self.trail
        answered = reply.model
        if not answered:
            reply.model = actor.model
        usage = reply.usage
        if request is not None and not (usage.input_tokens or usage.output_tokens) and isinstance(reply, ChatResponse):
            reply.usage = usage = estimate_usage(
                request, reply.text, actor.model, tool_calls=reply.tool_calls, reasoning=reply.reasoning
            )
        price = pipeline._prices.get((actor.name, answered))  # price()'s first step, a call less
        if price is None:
            price = pipeline.price(answered, actor)
        known = price.known
        reply.cost_usd = cost = price.cost(usage) if known else 0.0  # an unknown price is all zeros: no call
        reply.cost_known = known
        # The tokens are summed only for a budget to charge (most runtimes have none).
        if self.reservation is not None and pipeline.budget is not None:
            pipeline.budget.settle(self.reservation, usage.input_tokens + usage.output_tokens, cost)
            self.reservation = None
        if pipeline.endpoint_budgets:
            guard = pipeline.endpoint_budgets.get(actor.name)
            if guard is not None:
                guard.spend(usage.input_tokens + usage.output_tokens, cost)
        pipeline.ledger.record(actor.name, reply.model, usage, cost, priced=known)
        if metrics_enabled():
            pipeline.metrics.record_request(
                actor.name, actor.provider, reply.model, usage, cost, pipeline.clock() - self.started,
                operation=self.operation,
            )
        if len(self.trail) > 1:
            self.count_failed_attempts()
        span = self.span
        if span is NO_SPAN:
            return
        attributes = None
        if span.is_recording():
            if not self.model and actor.model:  # the endpoint chose the model: name the span by it
                span.update_name(f"{self.operation} {actor.model}")
            attributes = _reply_attributes(reply, usage, self.model or actor.model, len(self.trail))
        end_span(span, None, attributes)

    def spent(self, actor: EndpointActor, model: str, usage: Usage) -> None:
        """Charge what an attempt used without a reply to show for it (a stream's answer that
        failed mid-way, estimated: its provider bills it, but no usage came with the cut
        answer) to the ledger, the budgets and the token metrics, as no request."""
        pipeline = self.pipeline
        cost = pipeline.price(model, actor).cost(usage)
        tokens = usage.input_tokens + usage.output_tokens
        if pipeline.budget is not None:
            pipeline.budget.spend(tokens, cost)
        guard = pipeline.endpoint_budgets.get(actor.name)
        if guard is not None:
            guard.spend(tokens, cost)
        pipeline.ledger.record(actor.name, model or actor.model, usage, cost, request=False)

    def fail(self, exc: BaseException) -> None:
        """The request ends without a reply: free its reservation, count it, end its span."""
        self.release()
        self.count_failed_attempts()
        pipeline = self.pipeline
        span = self.span
        attributes: dict[str, Any] | None = None
        if isinstance(exc, LLMError):
            name = type(exc).__name__
            pipeline.ledger.record_error(None, self.model, name)
            pipeline.metrics.record_failure(name, pipeline.clock() - self.started, operation=self.operation)
            if span.is_recording():
                attributes = {"attempts": len(self.trail)}
                if not self.model and self.trail:
                    actor = pipeline.routes.by_name.get(self.trail[-1].endpoint)
                    if actor is not None:
                        attributes["gen_ai.request.model"] = actor.model
        end_span(span, exc, attributes)

    def release(self) -> None:
        """Free the budget reservation, once."""
        reservation, self.reservation = self.reservation, None
        if reservation is not None and self.pipeline.budget is not None:
            self.pipeline.budget.release(reservation)


async def _held(hold: Awaitable[None], run: Coroutine[Any, Any, T]) -> T:
    """The budget reservation held where the totals are shared (other processes'), then the
    dispatch; a refusal raises before the dispatch starts."""
    try:
        await hold
    except BaseException:
        run.close()
        raise
    return await run


async def _under(span: Any, run: Awaitable[T]) -> T:
    """Await ``run`` with ``span`` current, so the attempts' spans are its children."""
    with activate(span):
        return await run


def _total_tokens(reply: ChatResponse) -> int | None:
    usage = reply.usage
    total = usage.input_tokens + usage.output_tokens
    return total or None


def _budget_filter(budgets: dict[str, BudgetGuard]) -> Callable[[EndpointActor], bool] | None:
    """Admits endpoints whose own budget is not spent; None when no endpoint has one."""
    if not budgets:
        return None
    return lambda actor: (guard := budgets.get(actor.name)) is None or not guard.exhausted()


def _completion_tiers(tiers: list[Tier], endpoint: str | None, model: str | None) -> list[Tier]:
    """The endpoints of ``tiers`` whose provider has a text-completion API, by tier;
    :class:`InvalidRequest` naming the others when none has one."""
    kept = [Tier(t.priority, able) for t in tiers if (able := [a for a in t.actors if a.client.completions])]
    if not kept:
        names = ", ".join(f"{a.name!r} ({a.provider})" for t in tiers for a in t.actors)
        raise InvalidRequest(
            f"no text-completion API on {names}: complete() needs an openai, azure, openai-compatible "
            "or ollama endpoint; use chat() here",
            field="endpoint" if endpoint is not None else "model",
        )
    return kept


def _embeddings_filter(accept: Callable[[EndpointActor], bool] | None) -> Callable[[EndpointActor], bool]:
    """Admits endpoints with an embeddings API (and, when given, accepted by ``accept``)."""
    if accept is None:
        return lambda actor: bool(actor.client.embeddings)
    return lambda actor: bool(actor.client.embeddings) and accept(actor)


def _reply_attributes(
    reply: ChatResponse | EmbeddingResponse, usage: Usage, model: str, attempts: int
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "gen_ai.request.model": model,
        "gen_ai.provider.name": reply.provider,
        "gen_ai.response.model": reply.model,
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "endpoint": reply.endpoint,
        "attempts": attempts,
        "llm_runtime.cost_usd": reply.cost_usd,
    }
    if isinstance(reply, ChatResponse) and reply.finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [reply.finish_reason]
    if not reply.cost_known:
        attributes["llm_runtime.cost_known"] = False
    return attributes
