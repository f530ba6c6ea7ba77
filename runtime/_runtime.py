"""The ``Runtime`` facade: builds the supervision tree and serves chat, stream and embed.

``async with Runtime(...)`` opens one pooled ``aiohttp`` session, starts the supervisor
and one endpoint actor per endpoint under it. Requests run in the caller's task: the
facade builds the provider-neutral request, the dispatcher chooses endpoints and runs
attempts, and the reply comes back with its endpoint, attempt trail, usage and cost.
Leaving the block drains: new requests are refused, those in flight get a grace period,
then everything is cancelled and the session closed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ._pipeline import Pipeline, chat_options, complete_options, embed_options, takes
from ._stream import ReplyStream
from .accounting import (
    BudgetGuard,
    Metrics,
    PriceTable,
    ResponseCache,
    UsageLedger,
    UsageReport,
    token_counter,
)
from .actors import ChildSpec, Supervisor
from .cluster import SharedPolicy
from .dispatch.dispatcher import Dispatcher, RouteTable
from .endpoint.actor import EndpointActor, EndpointStatus
from .endpoint.limiter import Limiter
from .errors import ConfigError, InvalidRequest
from .policy import (
    Budget,
    CachePolicy,
    Endpoint,
    HedgePolicy,
    OnInterrupt,
    RetryPolicy,
)
from .providers import make_client
from .telemetry import resolve_providers
from .types import ChatResponse, EmbeddingResponse, StreamChunk

if TYPE_CHECKING:
    from .cluster._state import SharedState

__all__ = ["BlockingRuntime", "ReplyStream", "Runtime"]

def _shared_state(shared: SharedPolicy | str | None, rng: random.Random) -> SharedState | None:
    if shared is None:
        return None
    from .cluster._state import SharedState

    return SharedState(SharedPolicy.coerce(shared), rng=rng)


class Runtime:
    """A supervised fleet of LLM endpoints behind ``chat``, ``stream`` and ``embed``.

    ``timeout`` is the default deadline of a whole request (override per call).
    ``retry``, ``hedge``, ``cache`` and ``budget`` are the policies of
    :mod:`runtime.policy`; ``hedge``, ``cache`` and ``budget`` are off when None.
    ``shutdown_grace`` bounds how long leaving ``async with`` waits for requests in flight.
    ``shared`` (a :class:`~runtime.cluster.SharedPolicy` or a ``redis://`` URL) shares
    breakers, rate limits, concurrency, throttles and budgets with every process on the
    same Redis; None keeps all state in this process.
    ``on_interrupt`` is what a stream that fails after content reached the caller does by
    default (``"raise"``, ``"restart"`` or ``"continue"``; see the README's streams section).
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
        shared: SharedPolicy | str | None = None,
        on_interrupt: OnInterrupt = "raise",
    ) -> None:
        from .config import RuntimeConfig  # checks every argument by the rules of a config file

        if isinstance(endpoints, Endpoint | str | bytes) or not isinstance(endpoints, Sequence):
            raise ConfigError(f"must be a list of Endpoint, got {endpoints!r}", key="endpoints")
        endpoints = RuntimeConfig(
            endpoints=list(endpoints), timeout=timeout, shutdown_grace=shutdown_grace, retry=retry or RetryPolicy(),
            hedge=hedge, cache=cache, budget=budget, max_restarts=max_restarts, restart_within=restart_within, seed=seed,
            on_interrupt=on_interrupt,
        ).endpoints
        self.on_interrupt: OnInterrupt = on_interrupt
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
        self._pipeline: Pipeline | None = None
        self._running = False
        self._breaker_storage: dict[str, Any] = {}
        self.prices = PriceTable.load()
        self.ledger = UsageLedger()
        self.metrics = Metrics()
        # [shared]: breakers, limiters and budgets shared through Redis (redis-py is imported
        # only then); without it, everything is in-process.
        self._shared = _shared_state(shared, self._rng)
        self._set_up_accounting(cache, budget)

    def _set_up_accounting(self, cache: CachePolicy | None, budget: Budget | None) -> None:
        """The response cache and the budget guards (the runtime's and each endpoint's), on
        the shared state when there is one; the guards' remainders on the budget gauge."""
        store = None
        if cache is not None and self._shared is not None and self._shared.policy.cache:
            store = self._shared.cache_store(cache.max_entries)
        self.cache = ResponseCache(cache, store=store) if cache is not None else None
        new_guard: Callable[..., BudgetGuard] = BudgetGuard if self._shared is None else self._shared.budget_guard
        self._new_guard = new_guard
        self.budget_guard = new_guard(budget) if budget is not None else None
        self._endpoint_budgets = {ep.name: new_guard(ep.budget, scope=ep.name) for ep in self.endpoints if ep.budget}
        for name, guard in self._endpoint_budgets.items():
            self.metrics.observe_budget(guard.remaining, scope=name)
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
            if self._shared is not None:
                await self._tg.start(self._shared.run)
            actors = [self._build_actor(ep) for ep in self.endpoints]
            self._routes = RouteTable(actors)
            self._pipeline = self._build_pipeline(self._routes)
            for actor in actors:
                await self._supervisor.start_child(self._spec(actor))
        except BaseException:
            await self._close()
            raise
        self._running = True
        return self

    def _build_pipeline(self, routes: RouteTable) -> Pipeline:
        endpoints = self.endpoints
        return Pipeline(
            routes,
            Dispatcher(routes, retry=self.retry, hedge=self.hedge, rng=self._rng),
            timeout=self.timeout,
            hedge=self.hedge,
            cache=self.cache,
            budget=self.budget_guard,
            endpoint_budgets=self._endpoint_budgets,
            prices=self.prices,
            ledger=self.ledger,
            metrics=self.metrics,
            # Counting prompt tokens costs microseconds per request; do it only when a TPM
            # limit, a context window or a budget will read the count.
            count_prompt=self.budget is not None or any(ep.tpm or ep.context_window or ep.budget for ep in endpoints),
            on_interrupt=self.on_interrupt,
        )

    def _build_actor(self, endpoint: Endpoint) -> EndpointActor:
        assert self._session is not None
        storage = self._breaker_storage.get(endpoint.name)
        shared = self._shared
        actor = EndpointActor(
            endpoint,
            make_client(endpoint, self._session),
            breaker_storage=storage if shared is None else shared.breaker_storage(endpoint),
            limiter=None if shared is None else shared.limiter(endpoint),
            rng=self._rng,
        )
        if shared is not None:
            shared.attach(actor)
        self._breaker_storage[endpoint.name] = actor.breaker.storage
        self._actors[endpoint.name] = actor
        return actor

    def _spec(self, first: EndpointActor) -> ChildSpec:
        endpoint = first.endpoint
        pending = [first]

        def start() -> EndpointActor:
            # The first instance is the one already routed to; a restart gets fresh tasks
            # and takes the endpoint's breaker, limiter and permits still out over.
            if pending:
                return pending.pop()
            old = self._actors[endpoint.name]
            new = self._actors[endpoint.name] = old.restarted()
            if self._shared is not None:
                self._shared.attach(new)
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
            if self._shared is not None:
                await self._shared.aclose()
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

    # --- requests ------------------------------------------------------------------------------

    def _pipeline_running(self) -> Pipeline:
        if not self._running or self._pipeline is None:
            raise InvalidRequest("the runtime is not running: use `async with runtime:` around requests")
        return self._pipeline

    @takes(chat_options)
    async def chat(self, *args: Any, **kwargs: Any) -> ChatResponse:
        """Send a chat request to the best healthy endpoint and return the whole reply.

        The keywords (:class:`~runtime._pipeline.ChatOptions` says what each does): ``system``,
        ``model`` (a group or model name to route by), ``max_tokens``, ``temperature``, ``top_p``,
        ``stop``, ``tools``, ``tool_choice``, ``response_format``, ``seed``, ``timeout`` (the
        whole request's deadline), ``endpoint`` (pin one), ``cache``, ``hedge``, ``trim``,
        ``repair``, ``on_interrupt`` and the OpenAI parameters of :class:`~runtime.types.OpenAIParams`.
        """
        pipeline = self._pipeline
        if pipeline is None or not self._running:  # _pipeline_running(), a call less on the hot path
            pipeline = self._pipeline_running()
        return await pipeline.chat(chat_options(*args, **kwargs))

    @takes(chat_options)
    def stream(self, *args: Any, **kwargs: Any) -> ReplyStream:
        """Stream a chat reply: ``async with rt.stream(...) as s: async for chunk in s: ...``.

        The keywords are :meth:`chat`'s. Failover is transparent until the first chunk with
        content reaches the caller; after that a failure raises :class:`StreamInterrupted`
        carrying the partial text. ``s.response`` holds the whole reply once the stream has ended.
        """
        pipeline = self._pipeline
        if pipeline is None or not self._running:  # _pipeline_running(), a call less on the hot path
            pipeline = self._pipeline_running()
        options = chat_options(*args, **kwargs)
        if options.request.n not in (None, 1):
            raise InvalidRequest("n > 1 cannot be streamed: use chat() to get every choice", field="n")
        return pipeline.stream(options)

    @takes(embed_options)
    async def embed(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        """Embed texts on the best healthy endpoint that has an embeddings API."""
        pipeline = self._pipeline_running()
        return await pipeline.embed(embed_options(*args, **kwargs))

    @takes(complete_options)
    async def complete(self, *args: Any, **kwargs: Any) -> ChatResponse:
        """Continue ``prompt`` with a provider's text-completion API (OpenAI-dialect
        ``/completions``, Ollama ``/api/generate``), with chat's routing and resilience.

        Only endpoints whose provider has one are tried; when none of the route's has one
        it is :class:`InvalidRequest`. The reply is a :class:`ChatResponse` (``text``,
        ``finish_reason``, ``usage``, ...).
        """
        pipeline = self._pipeline_running()
        return await pipeline.chat(complete_options(*args, **kwargs))

    @takes(complete_options)
    def stream_complete(self, *args: Any, **kwargs: Any) -> ReplyStream:
        """Stream a text completion: ``async with rt.stream_complete(prompt) as s: ...``, as :meth:`stream`."""
        pipeline = self._pipeline_running()
        options = complete_options(*args, **kwargs)
        if options.request.n not in (None, 1):
            raise InvalidRequest("n > 1 cannot be streamed: use complete() to get every choice", field="n")
        return pipeline.stream(options)

    def budget_guard_for(self, budget: Budget, *, scope: str) -> BudgetGuard:
        """A guard enforcing ``budget`` for ``scope`` (a gateway key, say) the way the runtime's
        own budgets are enforced: its totals shared through Redis with ``shared``, else this process's."""
        return self._new_guard(budget, scope=scope)

    def limiter_for(self, *, rpm: int | None, tpm: int | None, max_concurrency: int | None, scope: str) -> Limiter:
        """A limiter for ``scope`` (a gateway key, say), the endpoints' own kind: shared through
        Redis with ``shared`` (its ``confirm`` takes the shared capacity), else this process's."""
        if self._shared is None:
            return Limiter(rpm, tpm, max_concurrency)
        return self._shared.key_limiter(scope, rpm, tpm, max_concurrency)

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
        statuses = [self._actors[ep.name].status() for ep in self.endpoints]
        if self._shared is not None:
            shared = self._shared.describe()
            statuses = [msgspec.structs.replace(status, shared=shared) for status in statuses]
        return statuses

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


class BlockingRuntime:
    """The runtime's methods for code that is not async; made by :meth:`Runtime.blocking`."""

    def __init__(self, runtime: Runtime, portal: BlockingPortal) -> None:
        self.runtime = runtime
        self._portal = portal

    @takes(chat_options)
    def chat(self, *args: Any, **kwargs: Any) -> ChatResponse:
        """Blocking :meth:`Runtime.chat`."""
        return self._portal.call(lambda: self.runtime.chat(*args, **kwargs))

    @takes(embed_options)
    def embed(self, *args: Any, **kwargs: Any) -> EmbeddingResponse:
        """Blocking :meth:`Runtime.embed`."""
        return self._portal.call(lambda: self.runtime.embed(*args, **kwargs))

    @takes(complete_options)
    def complete(self, *args: Any, **kwargs: Any) -> ChatResponse:
        """Blocking :meth:`Runtime.complete`."""
        return self._portal.call(lambda: self.runtime.complete(*args, **kwargs))

    @takes(chat_options)
    @contextmanager
    def stream(self, *args: Any, **kwargs: Any) -> Iterator[BlockingStream]:
        """Blocking :meth:`Runtime.stream`: ``with rt.stream(...) as s: for chunk in s: ...``."""
        with self._blocking_stream(self.runtime.stream, args, kwargs) as stream:
            yield stream

    @takes(complete_options)
    @contextmanager
    def stream_complete(self, *args: Any, **kwargs: Any) -> Iterator[BlockingStream]:
        """Blocking :meth:`Runtime.stream_complete`, as :meth:`stream`."""
        with self._blocking_stream(self.runtime.stream_complete, args, kwargs) as stream:
            yield stream

    @contextmanager
    def _blocking_stream(
        self, open_stream: Callable[..., ReplyStream], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[BlockingStream]:
        cm: AbstractAsyncContextManager[ReplyStream] = self._portal.call(lambda: _open_stream(open_stream, args, kwargs))
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

    @property
    def restarts(self) -> int:
        """:attr:`ReplyStream.restarts`."""
        return self._stream.restarts

    @property
    def continuations(self) -> int:
        """:attr:`ReplyStream.continuations`."""
        return self._stream.continuations


async def _open_stream(
    open_stream: Callable[..., ReplyStream], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> ReplyStream:
    # In the portal's event loop: a stream's deadline is on that loop's clock.
    return open_stream(*args, **kwargs)
