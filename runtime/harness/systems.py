"""Systems under test, behind one small interface.

A :class:`System` opens a session against a :class:`Target` (the scenario's fake endpoints,
in priority order, and the budget every system gets) and answers :class:`Call` values
with an :class:`Answer`, or raises. What each system is given is said in its ``mapping``
lines, which the report prints: the same attempts, timeouts and fallbacks for everyone.

- :class:`LLMRuntime`: this package in-process, from the scenario's endpoints and
  ``[runtime]`` policies, or from a user's ``runtime.toml`` mapped onto the fakes;
- :class:`OpenAICompatibleURL`: any OpenAI-compatible server (the gateway, another
  gateway) that the user has pointed at the fakes' fixed ports;
- :class:`OpenAIClient`: the ``openai`` package's client with its built-in retries, plus
  one fallback client (when installed);
- :class:`LiteLLMRouter`: ``litellm.Router`` with retries and fallbacks (when installed);
- :class:`BareAiohttp`: one plain request to the primary, no retry: the control row.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import os
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec

from .._runtime import Runtime
from ..config import load_config
from ..errors import AllEndpointsFailed, ConfigError, StreamInterrupted
from ..policy import Endpoint, RetryPolicy
from ..providers.registry import PROVIDERS
from .scenario import BudgetSpec, RuntimeSpec

__all__ = [
    "Answer",
    "BareAiohttp",
    "Call",
    "LLMRuntime",
    "LiteLLMRouter",
    "OpenAIClient",
    "OpenAICompatibleURL",
    "Session",
    "System",
    "Target",
    "TargetEndpoint",
    "Unsupported",
    "system_from_spec",
]

#: Providers served with the OpenAI wire format, from the registry.
OPENAI_WIRE = tuple(name for name, provider in PROVIDERS.items() if provider.dialect == "openai")


@dataclass(frozen=True, slots=True)
class TargetEndpoint:
    """One fake endpoint as a system sees it."""

    name: str
    provider: str
    model: str
    base_url: str  # what Endpoint(base_url=...) of this provider needs
    priority: int


@dataclass(frozen=True, slots=True)
class Target:
    """What a system under test is pointed at, and the budget it gets."""

    endpoints: list[TargetEndpoint]
    budget: BudgetSpec
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    seed: int = 0

    def first_openai_wire(self) -> list[TargetEndpoint]:
        """The endpoints an OpenAI-only client can reach, in priority order."""
        return [ep for ep in self.endpoints if ep.provider in OPENAI_WIRE]


@dataclass(frozen=True, slots=True)
class Call:
    """One caller request: ``prompt`` carries the request number the fakes read back."""

    index: int
    prompt: str
    stream: bool
    max_tokens: int | None = None


class Answer(msgspec.Struct, frozen=True, kw_only=True):
    """What a caller got: the text, and what the system says about how (None: it does not say)."""

    text: str
    endpoint: str | None = None
    attempts: list[str] | None = None
    ttfc: float | None = None  # seconds to the first chunk with text (streams)


class Unsupported(Exception):
    """The system cannot run this scenario (an OpenAI-only client and no OpenAI-wire endpoint)."""


class Session(abc.ABC):
    """An open system: answers calls until its ``session`` context ends."""

    #: how the target and the budget were given to the system, one line each
    mapping: list[str]
    #: fake endpoint name for each name the system uses (llm-runtime with a user's config)
    names: dict[str, str]

    def __init__(self) -> None:
        self.mapping = []
        self.names = {}

    @abc.abstractmethod
    async def call(self, call: Call) -> Answer:
        """Send one request; return the answer or raise the system's own error."""

    def error_name(self, exc: BaseException) -> str:
        """How a failure shows in the report: the exception's type, by default."""
        return type(exc).__name__

    def attempts_of(self, exc: BaseException) -> list[str] | None:
        """The endpoints a failed request tried, when the system says."""
        return None


class System(abc.ABC):
    """A system under test: ``async with system.session(target) as s: await s.call(c)``."""

    #: the name in reports and on the command line
    name: str = ""
    #: a control row: reported, never gated by the scenario's expectations
    control: bool = False

    @abc.abstractmethod
    def session(self, target: Target) -> contextlib.AbstractAsyncContextManager[Session]:
        """Open the system against ``target``."""


def _timed_text(parts: list[str], ttfc: list[float], started: float, text: str | None) -> None:
    if text:
        if not ttfc:
            ttfc.append(anyio.current_time() - started)
        parts.append(text)


# --- llm-runtime ----------------------------------------------------------------------------------


class LLMRuntime(System):
    """llm-runtime in-process. Without ``config``: the scenario's endpoints in priority
    order with the budget and ``[runtime]`` policies; with it: the user's configuration,
    its endpoints mapped onto the fakes in priority order (same names first), keys replaced."""

    name = "llm-runtime"

    def __init__(self, config: str | Path | None = None) -> None:
        self.config = Path(config) if config is not None else None
        self.name = "llm-runtime" if config is None else f"llm-runtime[{Path(config).name}]"
        self.runtime: Runtime | None = None  # while a session is open (the demo's live view reads it)

    def _build(self, target: Target) -> tuple[Runtime, _RuntimeSession]:
        session = _RuntimeSession()
        b = target.budget
        if self.config is None:
            spec = target.runtime
            extra: dict[str, Any] = {"timeout": b.attempt_timeout, "idle_timeout": b.idle_timeout or b.attempt_timeout}
            if b.first_chunk_timeout is not None:
                extra["first_chunk_timeout"] = b.first_chunk_timeout
            if spec.breaker is not None:
                extra["breaker"] = spec.breaker
            if spec.health is not None:
                extra["health"] = spec.health
            endpoints = [_fake_endpoint(ep, **extra) for ep in target.endpoints]
            retry = msgspec.structs.replace(spec.retry or RetryPolicy(), max_attempts=b.attempts)
            session.mapping = [
                f"endpoints: {', '.join(f'{ep.name} ({ep.provider}) priority {ep.priority}' for ep in target.endpoints)}",
                f"retry: max_attempts {b.attempts}; timeouts: attempt {b.attempt_timeout:g} s, request {b.request_timeout:g} s",
                f"breaker: {spec.breaker or 'defaults'}; health: {spec.health or 'defaults'}",
                f"streams interrupted after content: {spec.on_interrupt or 'raise'}",
            ]
            rt = Runtime(
                endpoints, timeout=b.request_timeout, retry=retry, shutdown_grace=2.0, seed=target.seed,
                on_interrupt=spec.on_interrupt or "raise",
            )
            return rt, session
        config = load_config(self.config)
        pairs = _pair(config.endpoints, target.endpoints)
        endpoints = []
        for user, fake in pairs:
            endpoints.append(
                msgspec.structs.replace(
                    user, base_url=fake.base_url, api_key="test-key" if user.api_key or user.api_key_env else None,
                    api_key_env=None,
                )
            )
            session.names[user.name] = fake.name
            session.mapping.append(f"{user.name} ({user.provider}, priority {user.priority}) -> fake {fake.name}")
        session.mapping.append(f"policies from {self.config.name}; keys replaced by a test key")
        kwargs = {**config.runtime_kwargs(), "endpoints": endpoints, "seed": target.seed}
        return Runtime(**kwargs), session

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        rt, session = self._build(target)
        session.runtime = rt
        async with rt:
            self.runtime = rt
            try:
                yield session
            finally:
                self.runtime = None


def _fake_endpoint(ep: TargetEndpoint, **fields: Any) -> Endpoint:
    key: dict[str, Any] = {"api_key": "test-key"} if PROVIDERS[ep.provider].key_required else {}
    return Endpoint(
        name=ep.name, provider=ep.provider, model=ep.model, base_url=ep.base_url, priority=ep.priority,  # type: ignore[arg-type]
        **key, **fields,
    )


def _pair(users: Sequence[Endpoint], fakes: Sequence[TargetEndpoint]) -> list[tuple[Endpoint, TargetEndpoint]]:
    """Each user endpoint with a fake: the one of the same name, else the next free one in priority order."""
    if len(users) > len(fakes):
        raise ConfigError(
            f"the configuration has {len(users)} endpoints and the scenario only {len(fakes)} fakes to map them onto",
            key="endpoints",
        )
    by_name = {f.name: f for f in fakes}
    taken = {u.name for u in users if u.name in by_name}
    free = [f for f in fakes if f.name not in taken]
    pairs = []
    for user in sorted(users, key=lambda u: u.priority):
        pairs.append((user, by_name[user.name] if user.name in by_name else free.pop(0)))
    return pairs


class _RuntimeSession(Session):
    runtime: Runtime

    async def call(self, call: Call) -> Answer:
        rt = self.runtime
        if not call.stream:
            reply = await rt.chat(call.prompt, max_tokens=call.max_tokens)
        else:
            started = anyio.current_time()
            parts: list[str] = []
            ttfc: list[float] = []
            async with rt.stream(call.prompt, max_tokens=call.max_tokens) as s:
                async for chunk in s:
                    if chunk.restart:  # what came before is void: a new answer begins
                        parts.clear()
                    _timed_text(parts, ttfc, started, chunk.text)
                reply = s.response
            return Answer(
                text="".join(parts), endpoint=self._fake(reply.endpoint),
                attempts=[self._fake(a.endpoint) for a in reply.attempts], ttfc=ttfc[0] if ttfc else None,
            )
        return Answer(text=reply.text, endpoint=self._fake(reply.endpoint), attempts=[self._fake(a.endpoint) for a in reply.attempts])

    def _fake(self, name: str) -> str:
        return self.names.get(name, name)

    def attempts_of(self, exc: BaseException) -> list[str] | None:
        if isinstance(exc, AllEndpointsFailed):
            return [self._fake(a.endpoint) for a in exc.attempts]
        if isinstance(exc, StreamInterrupted) and exc.endpoint is not None:
            return [self._fake(exc.endpoint)]
        return None


# --- plain HTTP: the control row and any OpenAI-compatible URL -----------------------------------


class _OpenAIWireSession(Session):
    """One OpenAI-format request per call, read the way a simple client reads it."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, model: str, timeout: float) -> None:
        super().__init__()
        self._http = http
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._model = model
        self._timeout = timeout

    async def call(self, call: Call) -> Answer:
        body: dict[str, Any] = {"model": self._model, "messages": [{"role": "user", "content": call.prompt}]}
        if call.max_tokens is not None:
            body["max_tokens"] = call.max_tokens
        if call.stream:
            body["stream"] = True
        with anyio.fail_after(self._timeout):
            async with self._http.post(self._url, json=body, headers={"Authorization": "Bearer test-key"}) as resp:
                resp.raise_for_status()
                if not call.stream:
                    data = await resp.json()
                    return Answer(text=data["choices"][0]["message"]["content"] or "")
                return await self._read_stream(resp)

    async def _read_stream(self, resp: aiohttp.ClientResponse) -> Answer:
        # Reads `data:` lines until [DONE] or the end of the body, as a hand-written client
        # does: a stream that ends early is a short success here, which the harness catches.
        started = anyio.current_time()
        parts: list[str] = []
        ttfc: list[float] = []
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            event = msgspec.json.decode(payload)
            if "error" in event:
                raise aiohttp.ClientPayloadError(f"error event: {event['error']}")
            for choice in event.get("choices") or []:
                _timed_text(parts, ttfc, started, (choice.get("delta") or {}).get("content"))
        return Answer(text="".join(parts), ttfc=ttfc[0] if ttfc else None)

    def error_name(self, exc: BaseException) -> str:
        if isinstance(exc, aiohttp.ClientResponseError):
            return f"HTTP {exc.status}"
        return type(exc).__name__


class BareAiohttp(System):
    """The control row: one aiohttp request to the first OpenAI-wire endpoint, no retry, no fallback."""

    name = "aiohttp"
    control = True

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        reachable = target.first_openai_wire()
        if not reachable:
            raise Unsupported("no endpoint speaks the OpenAI wire format")
        primary = reachable[0]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            session = _OpenAIWireSession(http, primary.base_url, primary.model, target.budget.request_timeout)
            session.mapping = [
                f"one attempt to {primary.name} ({primary.provider}); no retry, no fallback",
                f"timeout: request {target.budget.request_timeout:g} s",
            ]
            yield session


class OpenAICompatibleURL(System):
    """Any OpenAI-compatible server at ``url`` (its ``/v1`` base), asked for ``model``.

    The server routes to the fakes itself: configure it with the scenario's fixed ports.
    """

    def __init__(self, url: str, model: str = "default") -> None:
        if not re.match(r"https?://", url):
            raise ConfigError(f"not an http(s) URL: {url!r}", key="system.url")
        self.url = url
        self.model = model
        self.name = f"url:{url}"

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            session = _OpenAIWireSession(http, self.url, self.model, target.budget.request_timeout)
            session.mapping = [
                f"POST {self.url}/chat/completions model {self.model!r}; the server's own retries and fallbacks",
                "fakes on: " + ", ".join(f"{ep.name} {ep.base_url}" for ep in target.endpoints),
            ]
            yield session


# --- other libraries, when installed ---------------------------------------------------------------


class OpenAIClient(System):
    """The ``openai`` client with ``max_retries = attempts - 1``, then one fallback client."""

    name = "openai"

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        try:
            import openai
        except ImportError:
            raise Unsupported("the openai package is not installed") from None
        reachable = target.first_openai_wire()[:2]
        if not reachable:
            raise Unsupported("no endpoint speaks the OpenAI wire format")
        b = target.budget
        clients = [
            openai.AsyncOpenAI(base_url=ep.base_url, api_key="test-key", max_retries=b.attempts - 1, timeout=b.attempt_timeout)
            for ep in reachable
        ]
        session = _OpenAISession(clients, [ep.model for ep in reachable], b.request_timeout)
        session.mapping = [
            f"client for {reachable[0].name}: max_retries {b.attempts - 1}, timeout {b.attempt_timeout:g} s",
            f"one fallback: {reachable[1].name}" if len(reachable) > 1 else "no fallback (one OpenAI-wire endpoint)",
        ]
        try:
            yield session
        finally:
            for client in clients:
                await client.close()


class _OpenAISession(Session):
    def __init__(self, clients: list[Any], models: list[str], timeout: float) -> None:
        super().__init__()
        self._clients = clients
        self._models = models
        self._timeout = timeout

    async def call(self, call: Call) -> Answer:
        with anyio.fail_after(self._timeout):
            for i, (client, model) in enumerate(zip(self._clients, self._models, strict=True)):
                try:
                    return await self._one(client, model, call)
                except Exception:
                    if i == len(self._clients) - 1:
                        raise
        raise AssertionError("unreachable: the last client re-raises")

    @staticmethod
    async def _one(client: Any, model: str, call: Call) -> Answer:
        messages = [{"role": "user", "content": call.prompt}]
        if not call.stream:
            reply = await client.chat.completions.create(model=model, messages=messages, max_tokens=call.max_tokens)
            return Answer(text=reply.choices[0].message.content or "")
        started = anyio.current_time()
        parts: list[str] = []
        ttfc: list[float] = []
        stream = await client.chat.completions.create(model=model, messages=messages, max_tokens=call.max_tokens, stream=True)
        async for chunk in stream:
            for choice in chunk.choices:
                _timed_text(parts, ttfc, started, choice.delta.content)
        return Answer(text="".join(parts), ttfc=ttfc[0] if ttfc else None)


class LiteLLMRouter(System):
    """``litellm.Router``: one deployment group per endpoint, fallbacks in priority order,
    ``num_retries = attempts - 1``, the attempt timeout per call."""

    name = "litellm"

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        # Its price list from the package, not fetched from the network on import.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        try:
            # Not a dependency: typed as Any, found at run time when installed.
            litellm: Any = importlib.import_module("litellm")
        except ImportError:
            raise Unsupported("litellm is not installed") from None
        b = target.budget
        prefix = {"anthropic": "anthropic", "ollama": "ollama_chat"}  # by wire format; litellm's names
        model_list = [
            {
                "model_name": ep.name,
                "litellm_params": {
                    "model": f"{prefix.get(PROVIDERS[ep.provider].dialect, 'openai')}/{ep.model}",
                    "api_base": ep.base_url.removesuffix("/v1") if PROVIDERS[ep.provider].dialect in prefix else ep.base_url,
                    "api_key": "test-key",
                },
            }
            for ep in target.endpoints
        ]
        names = [ep.name for ep in target.endpoints]
        router = litellm.Router(
            model_list=model_list, num_retries=b.attempts - 1, timeout=b.attempt_timeout,
            fallbacks=[{names[0]: names[1:]}] if len(names) > 1 else [],
        )
        session = _LiteLLMSession(router, names[0], b.request_timeout)
        session.mapping = [
            f"Router: {', '.join(names)}; fallbacks {names[0]} -> {', '.join(names[1:]) or 'none'}",
            f"num_retries {b.attempts - 1}, timeout {b.attempt_timeout:g} s per call, request {b.request_timeout:g} s",
        ]
        yield session


class _LiteLLMSession(Session):
    def __init__(self, router: Any, model: str, timeout: float) -> None:
        super().__init__()
        self._router = router
        self._model = model
        self._timeout = timeout

    async def call(self, call: Call) -> Answer:
        messages = [{"role": "user", "content": call.prompt}]
        with anyio.fail_after(self._timeout):
            if not call.stream:
                reply = await self._router.acompletion(model=self._model, messages=messages, max_tokens=call.max_tokens)
                return Answer(text=reply.choices[0].message.content or "")
            started = anyio.current_time()
            parts: list[str] = []
            ttfc: list[float] = []
            stream = await self._router.acompletion(
                model=self._model, messages=messages, max_tokens=call.max_tokens, stream=True
            )
            async for chunk in stream:
                for choice in chunk.choices:
                    _timed_text(parts, ttfc, started, choice.delta.content)
            return Answer(text="".join(parts), ttfc=ttfc[0] if ttfc else None)


# --- by name --------------------------------------------------------------------------------------

_NAMED: dict[str, type[System]] = {
    "llm-runtime": LLMRuntime,
    "aiohttp": BareAiohttp,
    "openai": OpenAIClient,
    "litellm": LiteLLMRouter,
}


def system_from_spec(spec: str, *, config: str | Path | None = None) -> System:
    """A system from its command-line name: ``llm-runtime``, ``aiohttp``, ``openai``,
    ``litellm`` or ``url=URL[,model=M]``; ``config`` goes to llm-runtime."""
    if spec.startswith("url="):
        url, _, rest = spec[4:].partition(",")
        model = rest.removeprefix("model=") if rest.startswith("model=") else "default"
        return OpenAICompatibleURL(url, model)
    if spec == "llm-runtime":
        return LLMRuntime(config)
    cls = _NAMED.get(spec)
    if cls is None:
        raise ConfigError(f"unknown system {spec!r}: one of {', '.join(_NAMED)} or url=URL", key="system")
    return cls()
