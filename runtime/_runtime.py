"""The ``Runtime`` facade: builds the supervision tree and serves chat, stream and embed.

``async with Runtime(...)`` opens one pooled ``aiohttp`` session, starts the supervisor
and one endpoint actor per endpoint under it. Requests run in the caller's task: the
facade builds the provider-neutral request, the dispatcher chooses endpoints and runs
attempts, and the reply comes back with its endpoint, attempt trail, usage and cost.
Leaving the block drains: new requests are refused, those in flight get a grace period,
then everything is cancelled and the session closed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack, cast

import aiohttp
import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import validation
from .accounting import (
    BudgetGuard,
    Metrics,
    PriceTable,
    ResponseCache,
    UsageLedger,
    UsageReport,
    cacheable,
    estimate_request_tokens,
    estimate_usage,
    fit_messages,
    replay_as_stream,
    token_counter,
)
from .actors import ChildSpec, Supervisor
from .dispatch.dispatcher import Dispatcher, RouteTable, Tier
from .endpoint.actor import EndpointActor, EndpointStatus, Permit
from .errors import (
    AllEndpointsFailed,
    ConfigError,
    InvalidRequest,
    LLMError,
    StreamInterrupted,
    Timeout,
)
from .policy import Budget, CachePolicy, Endpoint, HedgePolicy, RetryPolicy
from .providers import make_client
from .providers.base import ChunkStream
from .structured import OutputSchema, output_schema
from .structured import finish as finish_structured
from .telemetry import NO_SPAN, request_span, resolve_providers, tracing_enabled
from .types import (
    Attempt,
    ChatRequest,
    ChatResponse,
    EmbeddingResponse,
    Message,
    OpenAIParams,
    StreamChunk,
    ToolCall,
    Usage,
)

__all__ = ["BlockingRuntime", "ReplyStream", "Runtime"]

# Reserved against TPM when a request sets no max_tokens: a typical reply, so that an
# unbounded request neither reserves nothing nor a whole context window.
DEFAULT_REPLY_RESERVE = 1024


class Runtime:
    """A supervised fleet of LLM endpoints behind ``chat``, ``stream`` and ``embed``.

    ``timeout`` is the default deadline of a whole request (override per call).
    ``retry``, ``hedge``, ``cache`` and ``budget`` are the policies of
    :mod:`runtime.policy`; ``hedge``, ``cache`` and ``budget`` are off when None.
    ``shutdown_grace`` bounds how long leaving ``async with`` waits for requests in flight.
    """

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        hedge: HedgePolicy | None = None,
        cache: CachePolicy | None = None,
        budget: Budget | None = None,
        shutdown_grace: float = 10.0,
        max_restarts: int = 3,
        restart_within: float = 60.0,
        seed: int | None = None,
    ) -> None:
        endpoints = list(endpoints)
        if not endpoints:
            raise ConfigError("at least one endpoint is required", key="endpoints")
        seen: set[str] = set()
        for ep in endpoints:
            if not isinstance(ep, Endpoint):
                raise ConfigError(f"expected an Endpoint, got {type(ep).__name__}", key="endpoints")
            if ep.name in seen:
                raise ConfigError("duplicate endpoint name", key="name", endpoint=ep.name)
            seen.add(ep.name)
        if not (timeout > 0):
            raise ConfigError(f"must be > 0, got {timeout!r}", key="timeout")
        self.endpoints = endpoints
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.hedge = hedge
        self.cache_policy = cache
        self.budget = budget
        self.shutdown_grace = shutdown_grace
        self._rng = random.Random(seed)
        self._max_restarts = max_restarts
        self._restart_within = restart_within
        self._session: aiohttp.ClientSession | None = None
        self._supervisor: Supervisor | None = None
        self._tg: TaskGroup | None = None
        self._actors: dict[str, EndpointActor] = {}
        self._routes: RouteTable | None = None
        self._dispatcher: Dispatcher | None = None
        self._running = False
        self._breaker_storage: dict[str, Any] = {}
        self.prices = PriceTable.load()
        self.ledger = UsageLedger()
        self.metrics = Metrics()
        self.cache = ResponseCache(cache) if cache is not None else None
        self.budget_guard = BudgetGuard(budget) if budget is not None else None
        self._endpoint_budgets = {
            ep.name: BudgetGuard(ep.budget, scope=ep.name) for ep in endpoints if ep.budget is not None
        }
        for name, guard in self._endpoint_budgets.items():
            self.metrics.observe_budget(guard.remaining, scope=name)
        self._accept = self._budget_filter()
        # Counting prompt tokens costs microseconds per request; do it only when a TPM
        # limit, a context window or a budget will read the count.
        self._count_prompt = budget is not None or any(
            ep.tpm or ep.context_window or ep.budget for ep in endpoints
        )
        if self.budget_guard is not None:
            self.metrics.observe_budget(self.budget_guard.remaining)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Runtime [{state} | endpoints: {', '.join(self._actors or {e.name: None for e in self.endpoints})}]>"

    # --- construction from files and the environment -------------------------------------

    @classmethod
    def from_config(cls, path: str | Path, **overrides: Any) -> Runtime:
        """A runtime from a TOML or JSON file; unknown or mistyped keys raise ConfigError naming them."""
        from .config import load_config

        config = load_config(path)
        return cls(**{**config.runtime_kwargs(), **overrides})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Runtime:
        """A runtime from ``LLM_BACKEND`` and the providers' usual variables (see the README)."""
        from .config import endpoints_from_env

        return cls(endpoints_from_env(environ), **overrides)

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._running:
            raise InvalidRequest("the runtime is already running")
        resolve_providers()
        # Our own deadlines bound every request; aiohttp's default 5-minute total would
        # only race them. limit=0: the concurrency caps live in the endpoint limiters.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None),
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            # The first token count for a model may load a tokenizer file: do it now,
            # off the event loop, rather than on the first request.
            for model in {ep.model for ep in self.endpoints}:
                await anyio.to_thread.run_sync(token_counter, model)
            self._supervisor = Supervisor(max_restarts=self._max_restarts, within=self._restart_within)
            await self._tg.start(self._supervisor.run)
            actors = [self._build_actor(ep) for ep in self.endpoints]
            self._routes = RouteTable(actors)
            self._dispatcher = Dispatcher(self._routes, retry=self.retry, hedge=self.hedge, rng=self._rng)
            for actor in actors:
                await self._supervisor.start_child(self._spec(actor))
        except BaseException:
            await self._close()
            raise
        self._running = True
        return self

    def _build_actor(self, endpoint: Endpoint) -> EndpointActor:
        assert self._session is not None
        storage = self._breaker_storage.get(endpoint.name)
        actor = EndpointActor(
            endpoint,
            make_client(endpoint, self._session),
            breaker_storage=storage,
            rng=self._rng,
        )
        self._breaker_storage[endpoint.name] = actor.breaker.storage
        self._actors[endpoint.name] = actor
        return actor

    def _spec(self, first: EndpointActor) -> ChildSpec:
        endpoint = first.endpoint
        pending = [first]

        def start() -> EndpointActor:
            # The first instance is the one already routed to; restarts get fresh state
            # but the same breaker storage, so an open breaker stays open.
            if pending:
                return pending.pop()
            old = self._actors[endpoint.name]
            new = self._build_actor(endpoint)
            assert self._routes is not None
            self._routes.replace(old, new)
            return new

        def escalate(exc: BaseException) -> None:
            self._actors[endpoint.name].mark_failed(f"actor crashed too often: {type(exc).__name__}: {exc}")

        return ChildSpec(
            name=endpoint.name,
            start=start,
            on_escalate=escalate,
            labels={"endpoint": endpoint.name, "provider": endpoint.provider, "model": endpoint.model},
        )

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._running = False
        for actor in self._actors.values():
            actor.drain()
        # Requests in flight get the grace period even if the caller is being cancelled.
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.shutdown_grace):
            for actor in self._actors.values():
                await actor.drained.wait()
        await self._close()

    async def _close(self) -> None:
        """Stop the supervision tree and close the session (the task group is exited here,
        at the scope level it was entered at)."""
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                if self._supervisor is not None:
                    with anyio.CancelScope(shield=True):
                        await self._supervisor.shutdown(grace=0)
                tg.cancel_scope.cancel()
                await tg.__aexit__(None, None, None)
        finally:
            if self._session is not None:
                session, self._session = self._session, None
                with anyio.CancelScope(shield=True):
                    await session.close()

    def _require_running(self) -> tuple[RouteTable, Dispatcher]:
        if not self._running or self._routes is None or self._dispatcher is None:
            raise InvalidRequest("the runtime is not running: use `async with runtime:` around requests")
        return self._routes, self._dispatcher

    # --- requests ------------------------------------------------------------------------------

    def _request(
        self,
        messages: str | Sequence[Message | Mapping[str, Any]],
        *,
        system: str | None,
        model: str | None,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        stop: str | Sequence[str] | None,
        tools: Sequence[Mapping[str, Any]] | None,
        tool_choice: str | Mapping[str, Any] | None,
        response_format: Mapping[str, Any] | None,
        seed: int | None,
        params: OpenAIParams,
    ) -> ChatRequest:
        return validation.chat_request(
            messages, system=system, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            stop=stop, tools=tools, tool_choice=tool_choice, response_format=response_format, seed=seed,
            params=params,
        )

    def _deadline(self, timeout: float | None) -> float:
        return asyncio.get_running_loop().time() + (timeout if timeout is not None else self.timeout)

    def _budget_filter(self) -> Callable[[EndpointActor], bool] | None:
        """Admits endpoints whose own budget is not spent; None when no endpoint has one."""
        budgets = self._endpoint_budgets
        if not budgets:
            return None
        return lambda actor: (guard := budgets.get(actor.name)) is None or not guard.exhausted()

    def _cached(self, route: str | None, request: ChatRequest, opt_in: bool | None) -> tuple[str | None, ChatResponse | None]:
        """The cache key for a cacheable request (None if not cacheable) and the hit, counted."""
        cache = self.cache
        if cache is None or not cacheable(request, opt_in):
            return None, None
        key = cache.key(route, request)
        hit = cache.get(key)
        self.metrics.record_cache(hit is not None)
        if hit is None:
            return key, None
        self.ledger.record_cache_hit(hit.endpoint, hit.model)
        self.metrics.record_request(hit.endpoint, hit.provider, hit.model, None, 0.0, 0.0, outcome="cached")
        return key, msgspec.structs.replace(hit, cached=True, attempts=[])

    def _reserve(self, request: ChatRequest, trim: bool) -> tuple[int, int, Any]:
        """Tokens to reserve against TPM, the context window the request needs (0: any, as
        with ``trim``), and the runtime budget's reservation."""
        prompt = estimate_request_tokens(request) if self._count_prompt else 0
        reserve = prompt + (request.max_tokens or DEFAULT_REPLY_RESERVE)
        window = 0 if trim else prompt + (request.max_tokens or 0)
        return reserve, window, self._reserve_budget(reserve)

    async def chat(
        self,
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
        **params: Unpack[OpenAIParams],
    ) -> ChatResponse:
        """Send a chat request to the best healthy endpoint and return the whole reply.

        ``messages`` is a string (one user message) or a list of messages (dicts or
        :class:`Message`). ``model`` routes by group or model name, ``endpoint`` pins one
        endpoint, ``timeout`` is the whole request's deadline in seconds, ``cache``
        opts in (True) or out (False) of the response cache, ``hedge`` overrides the
        runtime's hedging for this request (a policy, or False for none). With ``trim``
        a conversation too long for an endpoint's ``context_window`` is trimmed to fit it
        (system messages and the newest turns kept, tool call and result never split)
        instead of routing around that endpoint. The OpenAI parameters beyond these
        (:class:`~runtime.types.OpenAIParams`: ``presence_penalty``, ``n``, ``logprobs``,
        ``reasoning_effort``, ``extra_body``, ...) are translated per provider or refused.
        ``response_format`` may be a msgspec Struct, dataclass or TypedDict type or a JSON
        schema: the reply is then checked and ``reply.parsed`` holds it
        (:mod:`runtime.structured`), and ``repair`` is how many times an invalid reply is
        sent back, with what was wrong, to the endpoint that wrote it.
        """
        routes, dispatcher = self._require_running()
        validation.call_options(timeout=timeout, endpoint=endpoint, cache=cache, hedge=hedge, trim=trim)
        output = output_schema(response_format)
        if isinstance(repair, bool) or not isinstance(repair, int) or repair < 0:
            raise InvalidRequest(f"repair must be an integer >= 0, got {repair!r}", field="repair")
        request = self._request(
            messages, system=system, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            stop=stop, tools=tools, tool_choice=tool_choice,
            response_format=output.wire if output is not None else cast(Mapping[str, Any] | None, response_format),
            seed=seed, params=params,
        )
        deadline = self._deadline(timeout)
        tiers = routes.tiers(model, endpoint)
        route = endpoint or model
        key, hit = self._cached(route, request, cache)
        if hit is not None:
            return hit
        cache_store = self.cache
        hedge_policy = self.hedge if hedge is None or hedge is True else (hedge or None)
        if hedge is True and hedge_policy is None:
            hedge_policy = HedgePolicy()
        span_scope = (
            request_span(f"chat {model or 'default'}", {"gen_ai.operation.name": "chat", "gen_ai.request.model": model or ""})
            if tracing_enabled()
            else NO_SPAN
        )
        with span_scope as span:
            try:
                reply = await self._send(
                    tiers, request, deadline, route, hedge_policy if hedge_policy and dispatcher.hedge_budget else None, trim
                )
            except AllEndpointsFailed as exc:
                if key is not None and cache_store is not None and cache_store.policy.serve_stale:
                    stale = cache_store.stale(key)
                    if stale is not None:
                        span.set_attribute("llm_runtime.stale", True)
                        self.metrics.record_request(
                            stale.endpoint, stale.provider, stale.model, None, 0.0, 0.0, outcome="stale"
                        )
                        return msgspec.structs.replace(stale, cached=True, stale=True, attempts=exc.attempts)
                raise
            _annotate(span, reply)
        if key is not None and cache_store is not None:
            cache_store.set(key, reply)
        if output is not None:
            return await self._structured(reply, output, request, deadline, repair, trim)
        return reply

    async def _structured(
        self, reply: ChatResponse, output: OutputSchema, request: ChatRequest, deadline: float, repair: int, trim: bool
    ) -> ChatResponse:
        """``reply`` parsed into ``output``; repairs go through the same path, pinned to its endpoint."""
        routes, _ = self._require_running()

        async def resend(messages: list[Message], endpoint: str) -> ChatResponse:
            retry = msgspec.structs.replace(request, messages=messages)
            return await self._send(routes.tiers(None, endpoint), retry, deadline, endpoint, None, trim)

        return await finish_structured(reply, output, request.messages, repair, resend)

    async def _send(
        self,
        tiers: list[Tier],
        request: ChatRequest,
        deadline: float,
        route: str | None,
        hedge: HedgePolicy | None,
        trim: bool,
    ) -> ChatResponse:
        _, dispatcher = self._require_running()
        reserve, window, reservation = self._reserve(request, trim)
        loop_time = asyncio.get_running_loop().time

        async def attempt(actor: EndpointActor, timeout: float) -> ChatResponse:
            reply, snapshot = await actor.client.chat(self._fit(request, actor) if trim else request, timeout)
            if snapshot is not None:
                actor.observe_rate_limit(snapshot, loop_time())
            return reply

        try:
            outcome = await dispatcher.run(
                tiers, attempt, tokens=reserve, deadline=deadline, prompt_tokens=window,
                route=route, usage_tokens=_total_tokens, accept=self._accept, hedge=hedge,
            )
        except BaseException as exc:
            self._release_budget(reservation)
            if isinstance(exc, LLMError):
                self.ledger.record_error(None, request.model, type(exc).__name__)
                self.metrics.record_error(type(exc).__name__)
            raise
        reply = outcome.value
        self._finish_reply(reply, outcome.actor, request, outcome.attempts, reservation)
        return reply

    @staticmethod
    def _fit(request: ChatRequest, actor: EndpointActor) -> ChatRequest:
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

    def _finish_reply(
        self, reply: ChatResponse, actor: EndpointActor, request: ChatRequest, attempts: list[Any], reservation: Any
    ) -> None:
        """Fill in who answered, usage, cost; settle budgets, ledger and metrics."""
        reply.endpoint = actor.name
        reply.provider = actor.provider
        reply.attempts = attempts
        if not reply.model:
            reply.model = actor.model
        usage = reply.usage
        if usage.input_tokens == 0 and usage.output_tokens == 0:
            reply.usage = usage = estimate_usage(
                request, reply.text, actor.model, tool_calls=reply.tool_calls, reasoning=reply.reasoning
            )
        reply.cost_usd = self.prices.cost_usd(usage, reply.model or actor.model, actor.provider, actor.endpoint.price)
        tokens = usage.input_tokens + usage.output_tokens
        if reservation is not None and self.budget_guard is not None:
            self.budget_guard.settle(reservation, tokens, reply.cost_usd)
        guard = self._endpoint_budgets.get(actor.name)
        if guard is not None:
            guard.spend(tokens, reply.cost_usd)
        self.ledger.record(actor.name, reply.model or actor.model, usage, reply.cost_usd)
        self.metrics.record_request(actor.name, actor.provider, reply.model or actor.model, usage, reply.cost_usd, attempts[-1].elapsed if attempts else 0.0)

    def _reserve_budget(self, tokens: int) -> Any:
        if self.budget_guard is None:
            return None
        return self.budget_guard.reserve(tokens, 0.0)

    def _release_budget(self, reservation: Any) -> None:
        if reservation is not None and self.budget_guard is not None:
            self.budget_guard.release(reservation)

    def stream(
        self,
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
        trim: bool = False,
        **params: Unpack[OpenAIParams],
    ) -> ReplyStream:
        """Stream a chat reply: ``async with rt.stream(...) as s: async for chunk in s: ...``.

        Failover is transparent until the first chunk with content reaches the caller;
        after that a failure raises :class:`StreamInterrupted` carrying the partial text.
        ``s.response`` holds the whole reply once the stream has ended. ``trim`` as for
        :meth:`chat`.
        """
        routes, _ = self._require_running()
        validation.call_options(timeout=timeout, endpoint=endpoint, cache=cache, trim=trim)
        if params.get("n", 1) != 1:
            raise InvalidRequest("n > 1 cannot be streamed: use chat() to get every choice", field="n")
        output = output_schema(response_format)
        request = self._request(
            messages, system=system, model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            stop=stop, tools=tools, tool_choice=tool_choice,
            response_format=output.wire if output is not None else cast(Mapping[str, Any] | None, response_format),
            seed=seed, params=params,
        )
        return ReplyStream(
            self, request, routes.tiers(model, endpoint), self._deadline(timeout), endpoint or model, cache, trim
        )

    async def embed(
        self,
        inputs: str | Sequence[str],
        *,
        model: str | None = None,
        dimensions: int | None = None,
        timeout: float | None = None,
        endpoint: str | None = None,
    ) -> EmbeddingResponse:
        """Embed texts on the best healthy endpoint that has an embeddings API."""
        routes, dispatcher = self._require_running()
        validation.call_options(timeout=timeout, endpoint=endpoint)
        request = validation.embed_request(inputs, model=model, dimensions=dimensions)
        texts = request.inputs
        deadline = self._deadline(timeout)
        tokens = sum(len(t) for t in texts) // 4 + 1

        async def attempt(actor: EndpointActor, attempt_timeout: float) -> EmbeddingResponse:
            reply, _ = await actor.client.embed(request, attempt_timeout)
            return reply

        outcome = await dispatcher.run(
            routes.tiers(model, endpoint), attempt, tokens=tokens, deadline=deadline, route=endpoint or model,
            accept=_has_embeddings,
        )
        reply = outcome.value
        reply.endpoint = outcome.actor.name
        reply.provider = outcome.actor.provider
        reply.attempts = outcome.attempts
        if not reply.model:
            reply.model = outcome.actor.model
        reply.cost_usd = self.prices.cost_usd(reply.usage, reply.model, outcome.actor.provider, outcome.actor.endpoint.price)
        self.ledger.record(outcome.actor.name, reply.model, reply.usage, reply.cost_usd)
        return reply

    # --- introspection ---------------------------------------------------------------------

    def status(self) -> list[EndpointStatus]:
        """One :class:`EndpointStatus` per endpoint, in configuration order. Carries no secret."""
        if not self._actors:
            return [
                EndpointStatus(
                    name=ep.name, provider=ep.provider, model=ep.model,
                    state="misconfigured" if ep.key_problem() else "healthy", breaker="closed",
                    in_flight=0, latency_ms=None, last_error=ep.key_problem(), priority=ep.priority,
                )
                for ep in self.endpoints
            ]
        return [self._actors[ep.name].status() for ep in self.endpoints]

    def usage(self) -> UsageReport:
        """Requests, tokens, cost, errors and cache hits: overall, by endpoint, by model and by day."""
        return self.ledger.report()

    def actor(self, name: str) -> EndpointActor:
        """The endpoint actor named ``name`` (for operations such as ``isolate()`` and ``reset()``)."""
        try:
            return self._actors[name]
        except KeyError:
            raise InvalidRequest(f"no endpoint named {name!r}", field="endpoint") from None

    def blocking(self) -> BlockingContext:
        """Run the runtime in a background event loop for code that is not async.

        ``with Runtime(...).blocking() as rt: rt.chat("hi")``: the same methods, blocking.
        """
        return BlockingContext(self)

    @contextmanager
    def _blocking(self) -> Iterator[BlockingRuntime]:
        # One task enters and leaves the runtime, as its task group requires.
        with start_blocking_portal() as portal, portal.wrap_async_context_manager(self):
            yield BlockingRuntime(self, portal)


class BlockingContext:
    """What :meth:`Runtime.blocking` returns: a context manager giving a :class:`BlockingRuntime`.

    Used without ``with`` (``rt.blocking().chat(...)``), it says how to use it instead of
    a bare ``AttributeError`` about a generator.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._opened = runtime._blocking()

    def __enter__(self) -> BlockingRuntime:
        return self._opened.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self._opened.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"Runtime.blocking() is a context manager: use `with rt.blocking() as brt: brt.{name}(...)`; "
            "the runtime runs only inside the with block"
        )


class ReplyStream:
    """A streamed reply: an async context manager and an async iterator of :class:`StreamChunk`.

    Entering it chooses an endpoint and waits for the first chunk that carries content,
    failing over transparently until then. Leaving it early closes the HTTP response and
    releases the endpoint's concurrency slot and limiter reservation.
    """

    def __init__(
        self,
        runtime: Runtime,
        request: ChatRequest,
        tiers: list[Tier],
        deadline: float,
        route: str | None,
        cache: bool | None,
        trim: bool = False,
    ) -> None:
        self._rt = runtime
        self._trim = trim
        self._request = request
        self._tiers = tiers
        self._deadline = deadline
        self._route = route
        self._cache_opt = cache
        self._chunks: ChunkStream | None = None
        self._buffer: list[StreamChunk] = []
        self._actor: EndpointActor | None = None
        self._permit: Permit | None = None
        self._attempts: list[Any] = []
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._tool_calls: dict[int, list[str]] = {}
        self._tool_ids: dict[int, tuple[str, str]] = {}
        self._usage: Usage | None = None
        self._finish: str | None = None
        self._model: str | None = None
        self._id: str | None = None
        self._response: ChatResponse | None = None
        self._ended = False
        self._cache_key: str | None = None
        self._reservation: Any = None
        self._first_at: float | None = None
        self._started = 0.0

    def __repr__(self) -> str:
        where = self._actor.name if self._actor else "unopened"
        return f"<ReplyStream [{where} | {'ended' if self._ended else 'open'} | {len(''.join(self._text))} chars]>"

    async def __aenter__(self) -> ReplyStream:
        rt = self._rt
        _, dispatcher = rt._require_running()
        self._started = anyio.current_time()
        request = self._request
        self._cache_key, hit = rt._cached(self._route, request, self._cache_opt)
        if hit is not None:
            self._response = hit
            self._buffer = replay_as_stream(hit)
            self._ended = True
            return self
        reserve, window, self._reservation = rt._reserve(request, self._trim)

        async def attempt(actor: EndpointActor, timeout: float) -> tuple[ChunkStream, list[StreamChunk]]:
            endpoint = actor.endpoint
            chunks = await actor.client.stream(
                rt._fit(request, actor) if self._trim else request,
                first_chunk_timeout=min(actor.first_chunk_timeout, timeout),
                idle_timeout=endpoint.idle_timeout,
            )
            try:
                # Hold back chunks that carry nothing for the caller (a role-only opener):
                # until real content arrives the stream may still fail over.
                held: list[StreamChunk] = []
                async for chunk in chunks:
                    held.append(chunk)
                    if chunk.text or chunk.reasoning or chunk.tool_calls:
                        break
                return chunks, held
            except BaseException:
                await chunks.aclose()
                raise

        try:
            outcome = await dispatcher.run(
                self._tiers, attempt, tokens=reserve, deadline=self._deadline,
                prompt_tokens=window, route=self._route, settle=False, accept=rt._accept,
            )
        except BaseException:
            rt._release_budget(self._reservation)
            raise
        self._chunks, self._buffer = outcome.value
        self._actor, self._permit, self._attempts = outcome.actor, outcome.permit, outcome.attempts
        self._first_at = anyio.current_time()
        rt.metrics.record_ttfc(self._first_at - self._started)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._buffer:
            chunk = self._buffer.pop(0)
            if self._chunks is not None:
                self._absorb(chunk)
            return chunk
        chunks = self._chunks
        if self._ended or chunks is None:
            raise StopAsyncIteration
        try:
            async with asyncio.timeout_at(self._deadline):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            self._complete()
            raise
        except TimeoutError as exc:
            raise self._interrupted(Timeout("the request's deadline passed mid-stream", endpoint=self._actor_name())) from exc
        except LLMError as exc:
            raise self._interrupted(exc) from exc
        self._absorb(chunk)
        return chunk

    def _actor_name(self) -> str | None:
        return self._actor.name if self._actor else None

    def _absorb(self, chunk: StreamChunk) -> None:
        if chunk.text:
            self._text.append(chunk.text)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        if chunk.tool_calls:
            for delta in chunk.tool_calls:
                parts = self._tool_calls.setdefault(delta.index, [])
                if delta.arguments:
                    parts.append(delta.arguments)
                old_id, old_name = self._tool_ids.get(delta.index, ("", ""))
                self._tool_ids[delta.index] = (delta.id or old_id, delta.name or old_name)
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.model:
            self._model = chunk.model
        if chunk.id:
            self._id = chunk.id

    def _interrupted(self, cause: LLMError) -> StreamInterrupted:
        self._ended = True
        actor = self._release(cause)
        if actor is not None:
            self._attempts.append(Attempt(endpoint=actor.name, error=cause, elapsed=anyio.current_time() - self._started))
        self._rt.metrics.record_error(type(cause).__name__)
        partial = "".join(self._text)
        return StreamInterrupted(
            f"the stream from {self._actor_name()!r} failed after {len(partial)} characters: {cause}",
            partial=partial,
            cause=cause,
            endpoint=self._actor_name(),
        )

    def _complete(self) -> None:
        self._ended = True
        actor, permit = self._actor, self._permit
        assert actor is not None and permit is not None
        reply = ChatResponse(
            text="".join(self._text),
            finish_reason=self._finish,
            usage=self._usage or Usage(),
            model=self._model or "",
            id=self._id,
            tool_calls=[
                ToolCall(id=self._tool_ids[i][0], name=self._tool_ids[i][1], arguments="".join(self._tool_calls[i]) or "{}")
                for i in sorted(self._tool_calls)
            ],
            reasoning="".join(self._reasoning) or None,
        )
        self._permit = None
        usage = reply.usage
        actor.finish(permit, None, anyio.current_time(), usage.input_tokens + usage.output_tokens or None)
        self._rt._finish_reply(reply, actor, self._request, self._attempts, self._reservation)
        self._response = reply
        if self._cache_key is not None and self._rt.cache is not None:
            self._rt.cache.set(self._cache_key, reply)

    @property
    def response(self) -> ChatResponse:
        """The whole reply (text, tool calls, usage, finish reason, endpoint) once the stream ended."""
        if self._response is None:
            raise InvalidRequest("the stream has not ended yet: read it to the end first", field="response")
        return self._response

    @property
    def endpoint(self) -> str | None:
        """The endpoint serving this stream."""
        return self._actor_name() or (self._response.endpoint if self._response else None)

    async def aclose(self) -> None:
        """Leave the stream: close the connection and release the endpoint's slot and reservation."""
        self._ended = True
        self._buffer.clear()
        if self._chunks is not None:
            await self._chunks.aclose()
        # Leaving early is the caller's choice: it counts as nothing against the endpoint.
        self._release(anyio.get_cancelled_exc_class()())

    def _release(self, outcome: BaseException) -> EndpointActor | None:
        """Settle a still-open permit with ``outcome`` and free the budget reservation, once;
        the actor it was settled with, or None when there was nothing to settle."""
        actor, permit = self._actor, self._permit
        if actor is None or permit is None:
            return None
        self._permit = None
        actor.finish(permit, outcome, anyio.current_time())
        self._rt._release_budget(self._reservation)
        return actor


class BlockingRuntime:
    """The runtime's methods for code that is not async; made by :meth:`Runtime.blocking`."""

    def __init__(self, runtime: Runtime, portal: BlockingPortal) -> None:
        self.runtime = runtime
        self._portal = portal

    def chat(self, messages: str | Sequence[Message | Mapping[str, Any]], **kwargs: Any) -> ChatResponse:
        """Blocking :meth:`Runtime.chat`."""
        return self._portal.call(lambda: self.runtime.chat(messages, **kwargs))

    def embed(self, inputs: str | Sequence[str], **kwargs: Any) -> EmbeddingResponse:
        """Blocking :meth:`Runtime.embed`."""
        return self._portal.call(lambda: self.runtime.embed(inputs, **kwargs))

    @contextmanager
    def stream(self, messages: str | Sequence[Message | Mapping[str, Any]], **kwargs: Any) -> Iterator[BlockingStream]:
        """Blocking :meth:`Runtime.stream`: ``with rt.stream(...) as s: for chunk in s: ...``."""
        cm: AbstractAsyncContextManager[ReplyStream] = self._portal.call(lambda: _stream_cm(self.runtime, messages, kwargs))
        with self._portal.wrap_async_context_manager(cm) as stream:
            yield BlockingStream(stream, self._portal)

    def status(self) -> list[EndpointStatus]:
        """:meth:`Runtime.status`."""
        return self.runtime.status()

    def usage(self) -> UsageReport:
        """:meth:`Runtime.usage`."""
        return self.runtime.usage()


class BlockingStream:
    """A :class:`ReplyStream` iterated from a thread."""

    def __init__(self, stream: ReplyStream, portal: BlockingPortal) -> None:
        self._stream = stream
        self._portal = portal

    def __iter__(self) -> Iterator[StreamChunk]:
        while True:
            try:
                yield self._portal.call(self._stream.__anext__)
            except StopAsyncIteration:
                return

    @property
    def response(self) -> ChatResponse:
        """The whole reply once the stream has ended."""
        return self._stream.response


async def _stream_cm(runtime: Runtime, messages: Any, kwargs: dict[str, Any]) -> ReplyStream:
    return runtime.stream(messages, **kwargs)


def _total_tokens(reply: ChatResponse) -> int | None:
    usage = reply.usage
    total = usage.input_tokens + usage.output_tokens
    return total or None


def _has_embeddings(actor: EndpointActor) -> bool:
    return bool(actor.client.embeddings)


def _annotate(span: Any, reply: ChatResponse) -> None:
    if not span.is_recording():
        return
    span.set_attribute("gen_ai.provider.name", reply.provider)
    span.set_attribute("gen_ai.response.model", reply.model)
    span.set_attribute("gen_ai.usage.input_tokens", reply.usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", reply.usage.output_tokens)
    if reply.finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [reply.finish_reason])
    span.set_attribute("endpoint", reply.endpoint)
    span.set_attribute("attempts", len(reply.attempts))

