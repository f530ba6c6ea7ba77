"""Configuration structs: endpoints and the policies that govern them.

These are the values users write, in Python or under the same keys in a TOML/JSON file
(see :mod:`runtime.config`). They are frozen, reject unknown keys when decoded, and
check their values on construction, raising :class:`~runtime.errors.ConfigError` that
names the key (and the endpoint, where there is one). Every default is documented
here and in the README.
"""

from __future__ import annotations

import functools
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import msgspec
import msgspec.inspect as mi

from .errors import ConfigError
from .providers.registry import PROVIDERS as REGISTRY
from .validation import header_problem

__all__ = [
    "PROVIDERS",
    "BreakerPolicy",
    "Budget",
    "CachePolicy",
    "Endpoint",
    "HealthPolicy",
    "HedgePolicy",
    "ON_INTERRUPT",
    "OnInterrupt",
    "Price",
    "Provider",
    "RetryPolicy",
]

# The names are spelled out for type checkers; a test pins them to the provider registry,
# where everything else about each provider lives.
Provider = Literal["openai", "azure", "anthropic", "ollama", "deepseek", "openai-compatible", "mock"]
PROVIDERS: tuple[str, ...] = tuple(REGISTRY)

OnInterrupt = Literal["raise", "restart", "continue"]
"""What a stream does when its answer fails after content reached the caller: raise
:class:`~runtime.errors.StreamInterrupted`, restart the answer elsewhere, or have another
endpoint continue it (see the README's streams section)."""
ON_INTERRUPT: tuple[OnInterrupt, ...] = ("raise", "restart", "continue")
#: what an error about a bad ``on_interrupt`` says it must be
ON_INTERRUPT_RULE = "must be one of " + ", ".join(repr(v) for v in ON_INTERRUPT)

# The variable each provider's key is read from when the endpoint names none.
DEFAULT_KEY_ENV: dict[str, str] = {name: spec.key_env for name, spec in REGISTRY.items() if spec.key_env}
# Providers that refuse every request without a key; the others run keyless.
KEY_REQUIRED = frozenset(name for name, spec in REGISTRY.items() if spec.key_required)


_URL_BREAKERS = re.compile(r"[\x00-\x20\x7f]")


class _Config(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Shared configuration of every config struct.

    ``_key`` is the table the struct is written under (``breaker``, ``retry``...), the
    prefix of the keys its errors name.
    """

    _key: ClassVar[str] = ""


# --- the type rules: one table, the annotations, for Python construction and files alike ---
#
# A file is converted by msgspec, which checks every value's type against the annotations
# before __post_init__ runs; a struct built in Python is not, so __post_init__ first runs
# check_types, which checks the same annotations. Both say what is wrong the same way
# (type_rule), the file loader translating msgspec's complaint into these words.


def type_rule(info: mi.Type) -> str:
    """What a value of ``info``'s type must be, in words: ``an integer``, ``a list of strings``."""
    if isinstance(info, mi.UnionType):
        kinds = [t for t in info.types if not isinstance(t, mi.NoneType)]
        words = " or ".join(type_rule(t) for t in kinds)
        return f"{words} (or absent)" if len(kinds) < len(info.types) else words
    if isinstance(info, mi.LiteralType):
        return "one of " + ", ".join(repr(v) for v in info.values)
    if isinstance(info, mi.ListType):
        return f"a list of {_plural(info.item_type)}"
    if isinstance(info, mi.DictType):
        return f"a table of {_plural(info.key_type)} to {_plural(info.value_type)}"
    if isinstance(info, mi.StructType):
        return f"a {info.cls.__name__} table"
    return _WORDS.get(type(info), "a value")


_WORDS: dict[type, str] = {
    mi.IntType: "an integer",
    mi.FloatType: "a finite number",
    mi.StrType: "a string",
    mi.BoolType: "true or false",
    mi.NoneType: "absent",
}


def _plural(info: mi.Type) -> str:
    if isinstance(info, mi.StructType):
        return f"{info.cls.__name__} tables"
    word = type_rule(info)
    return {"an integer": "integers", "a finite number": "numbers", "a string": "strings"}.get(word, word)


def fits(info: mi.Type, value: Any) -> bool:
    """Whether ``value`` is of ``info``'s type; numbers must be finite, bools are no numbers."""
    if isinstance(info, mi.UnionType):
        return any(fits(t, value) for t in info.types)
    if isinstance(info, mi.NoneType):
        return value is None
    if isinstance(info, mi.BoolType):
        return isinstance(value, bool)
    if isinstance(info, mi.IntType):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(info, mi.FloatType):
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(info, mi.StrType):
        return isinstance(value, str)
    if isinstance(info, mi.LiteralType):
        return any(value == v and type(value) is type(v) for v in info.values)
    if isinstance(info, mi.ListType):
        return isinstance(value, list | tuple) and all(fits(info.item_type, v) for v in value)
    if isinstance(info, mi.DictType):
        return isinstance(value, Mapping) and all(
            fits(info.key_type, k) and fits(info.value_type, v) for k, v in value.items()
        )
    if isinstance(info, mi.StructType):
        return isinstance(value, info.cls)
    return True


@functools.cache
def _fields(cls: type[msgspec.Struct]) -> tuple[mi.Field, ...]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info.fields


def check_types(obj: msgspec.Struct, key: str = "", endpoint: str | None = None) -> None:
    """Raise :class:`ConfigError` for the first field of ``obj`` whose value is not of its
    annotated type, naming the key (``key`` is the table's prefix) and the endpoint."""
    for field in _fields(type(obj)):
        value = getattr(obj, field.name)
        if not fits(field.type, value):
            name = f"{key}.{field.encode_name}" if key else field.encode_name
            raise ConfigError(f"must be {type_rule(field.type)}, got {value!r}", key=name, endpoint=endpoint)


def _check(ok: bool, key: str, message: str, endpoint: str | None = None) -> None:
    if not ok:
        raise ConfigError(message, key=key, endpoint=endpoint)


def _positive(value: float | None, key: str, endpoint: str | None = None, *, zero_ok: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"must be a number, got {value!r}", key=key, endpoint=endpoint)
    _check(value >= 0 if zero_ok else value > 0, key, f"must be {'>= 0' if zero_ok else '> 0'}, got {value!r}", endpoint)


class BreakerPolicy(_Config, frozen=True):
    """When an endpoint's circuit breaker opens, and for how long.

    It opens on ``failure_threshold`` consecutive failures, or when at least
    ``min_calls`` calls in the last ``window`` seconds failed at ``failure_rate`` or
    more. Calls slower than ``slow_call`` seconds count as failures (off by default).
    It stays open ``open_for`` seconds the first time, twice as long on each trip that
    follows a failed trial (jittered, at most ``max_open_for``), then admits exactly
    ``half_open_calls`` trial calls.
    """

    _key = "breaker"

    failure_threshold: int = 5
    failure_rate: float = 0.5
    min_calls: int = 20
    window: float = 60.0
    slow_call: float | None = None
    open_for: float = 30.0
    max_open_for: float = 300.0
    half_open_calls: int = 1

    def __post_init__(self) -> None:
        check_types(self, self._key)
        _check(self.failure_threshold >= 1, "breaker.failure_threshold", "must be >= 1")
        _check(0.0 < self.failure_rate <= 1.0, "breaker.failure_rate", "must be in (0, 1]")
        _check(self.min_calls >= 1, "breaker.min_calls", "must be >= 1")
        _positive(self.window, "breaker.window")
        _positive(self.slow_call, "breaker.slow_call")
        _positive(self.open_for, "breaker.open_for")
        _positive(self.max_open_for, "breaker.max_open_for")
        _check(self.max_open_for >= self.open_for, "breaker.max_open_for", "must be >= open_for")
        _check(self.half_open_calls >= 1, "breaker.half_open_calls", "must be >= 1")


class HealthPolicy(_Config, frozen=True):
    """The health-probe loop: a token-free probe every ``interval`` seconds (jittered,
    backing off while the endpoint is down), each allowed ``timeout`` seconds."""

    _key = "health"

    interval: float = 15.0
    timeout: float = 5.0
    enabled: bool = True

    def __post_init__(self) -> None:
        check_types(self, self._key)
        _positive(self.interval, "health.interval")
        _positive(self.timeout, "health.timeout")


class Price(_Config, frozen=True):
    """USD per million tokens; overrides the shipped price table for one endpoint."""

    _key = "price"

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        check_types(self, self._key)
        _positive(self.input, "price.input", zero_ok=True)
        _positive(self.output, "price.output", zero_ok=True)
        _positive(self.cached_input, "price.cached_input", zero_ok=True)


class Budget(_Config, frozen=True):
    """Spending limits. Past one, requests are refused with BudgetExceeded before sending.

    Daily limits reset at midnight UTC, monthly ones on the first of the month. A
    warning span and log line fire once per period when ``warn_at`` of a limit is used.
    """

    _key = "budget"

    daily_tokens: int | None = None
    daily_usd: float | None = None
    monthly_tokens: int | None = None
    monthly_usd: float | None = None
    warn_at: float = 0.8

    def __post_init__(self) -> None:
        check_types(self, self._key)
        for key in ("daily_tokens", "daily_usd", "monthly_tokens", "monthly_usd"):
            _positive(getattr(self, key), f"budget.{key}")
        _check(0.0 < self.warn_at <= 1.0, "budget.warn_at", "must be in (0, 1]")


class Endpoint(_Config, frozen=True):
    """One LLM endpoint: where it is, how to reach it, and the policies it runs under.

    The key comes from ``api_key``, else the variable ``api_key_env`` names, else the
    provider's usual variable (``OPENAI_API_KEY``, ``AZURE_OPENAI_API_KEY``,
    ``ANTHROPIC_API_KEY``, ``DEEPSEEK_API_KEY``). It never appears in a repr.
    ``timeout`` bounds one attempt; ``first_chunk_timeout`` (default: ``timeout``) and
    ``idle_timeout`` bound a stream's wait for its first and each following chunk.
    """

    name: str
    provider: Provider
    model: str = ""
    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    priority: int = 1
    weight: float = 1.0
    groups: list[str] = msgspec.field(default_factory=list)
    timeout: float = 60.0
    first_chunk_timeout: float | None = None
    idle_timeout: float = 30.0
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    context_window: int | None = None
    price: Price | None = None
    budget: Budget | None = None
    breaker: BreakerPolicy = msgspec.field(default_factory=BreakerPolicy)
    health: HealthPolicy = msgspec.field(default_factory=HealthPolicy)
    #: drop request parameters this provider has no equivalent for, instead of refusing them
    drop_unsupported: bool = False
    #: whether this endpoint can continue a trailing assistant message (stream recovery with
    #: ``on_interrupt="continue"``); None: the provider's default (anthropic and ollama can,
    #: the OpenAI family cannot). True on an OpenAI-dialect endpoint (vLLM and servers like it)
    #: sends ``continue_final_message: true, add_generation_prompt: false``.
    prefill: bool | None = None
    #: ``chat()`` reads this endpoint's reply as a stream and assembles it, so that
    #: ``first_chunk_timeout`` and ``idle_timeout`` catch a silent or stalled provider and a
    #: long answer that keeps coming is not cut by ``timeout`` (the cost: see the README)
    stream_chat: bool = False

    def __post_init__(self) -> None:
        name = self.name
        _check(isinstance(name, str) and bool(name.strip()), "name", f"must be a non-empty string, got {name!r}")
        check_types(self, endpoint=name)
        for header, value in self.headers.items():
            problem = header_problem(header, value)
            _check(problem is None, f"headers[{header!r}]", str(problem), name)
        _check(self.provider in PROVIDERS, "provider", f"must be one of {', '.join(PROVIDERS)}; got {self.provider!r}", name)
        _check(self.provider in ("mock", "azure") or bool(self.model), "model", "is required", name)
        if self.provider == "azure":
            _check(bool(self.base_url), "base_url", "is required for azure (https://RESOURCE.openai.azure.com)", name)
            _check(bool(self.model), "model", "is required for azure (the deployment name)", name)
        if self.base_url is not None:
            _check(self.base_url.startswith(("http://", "https://")), "base_url", f"must start with http:// or https://; got {self.base_url!r}", name)
            # A space or control character would fail every request inside the HTTP client.
            _check(
                bool(urllib.parse.urlsplit(self.base_url).netloc) and not _URL_BREAKERS.search(self.base_url),
                "base_url", f"must be a URL with a host and no spaces or control characters; got {self.base_url!r}", name,
            )
        if self.api_key is not None:
            # Never echoed: the key itself must not reach an error message.
            _check(header_problem("Authorization", self.api_key) is None, "api_key", "has a newline or control character", name)
        _check(self.weight > 0, "weight", "must be > 0", name)
        for key in ("timeout", "first_chunk_timeout", "idle_timeout", "rpm", "tpm", "max_concurrency", "context_window"):
            _positive(getattr(self, key), key, name)

    def __repr__(self) -> str:
        fields = [f"name={self.name!r}", f"provider={self.provider!r}", f"model={self.model!r}"]
        if self.base_url:
            fields.append(f"base_url={self.base_url!r}")
        if self.api_key is not None:
            fields.append("api_key='***'")
        if self.api_key_env:
            fields.append(f"api_key_env={self.api_key_env!r}")
        fields.append(f"priority={self.priority}")
        return f"Endpoint({', '.join(fields)})"

    def __rich_repr__(self) -> Any:
        yield "name", self.name
        yield "provider", self.provider
        yield "model", self.model
        yield "priority", self.priority

    @property
    def key_env(self) -> str | None:
        """The environment variable the key is read from, if any."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)

    def resolve_key(self) -> str | None:
        """The API key, from the field or the environment; None when there is none."""
        if self.api_key:
            return self.api_key
        env = self.key_env
        return os.environ.get(env) or None if env else None

    def key_problem(self) -> str | None:
        """Why this endpoint cannot authenticate, or None when it can (or needs no key)."""
        if self.api_key or (self.provider not in KEY_REQUIRED and not self.api_key_env):
            return None
        env = self.key_env
        if env and not os.environ.get(env):
            return f"no API key: environment variable {env} is not set"
        return None

    def masked(self) -> dict[str, Any]:
        """The endpoint as plain data with the key masked, for display."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        if self.api_key is not None:
            data["api_key"] = "***"
        data["headers"] = {k: ("***" if _secret_header(k) else v) for k, v in self.headers.items()}
        return data


def _secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in ("key", "auth", "token", "secret"))


class RetryPolicy(_Config, frozen=True):
    """How a request moves on after a failed attempt.

    At most ``max_attempts`` attempts per request, across endpoints. Failing over is
    not retrying: the first attempt of a request on each endpoint that admits it with
    its breaker closed is free. A repeated attempt on an endpoint, or one on an
    endpoint whose breaker is half-open, is a retry: it waits ``backoff_base * 2**n``
    seconds for that endpoint first (full jitter, at most ``backoff_max``) and spends
    the retry budget, which allows at most ``budget_ratio`` of the requests of the last
    10 seconds plus ``budget_floor`` per second. So in an outage each endpoint sees at
    most one attempt per request plus its part of the budget, however many requests
    fail at once, and breakers and limiters protect each endpoint on top.

    A lower priority tier is a degraded choice, so the dispatcher may wait up to
    ``tier_wait`` seconds, once per tier and request, for a preferred endpoint that
    cannot take the request now (a transient failure's backoff, a 429's Retry-After, a
    spent rate limit) before it drops to a lower tier: never past the deadline, never
    after a timeout (that cost a whole attempt already), and only while an attempt is
    left for the lower tier. The default, 1 s, covers a backoff after a blip and the
    sub-second Retry-After of a token limit, and is short beside a reply; a longer
    Retry-After drops the tier at once. 0 drops a tier as soon as the preferred one
    cannot take the request.
    """

    _key = "retry"

    max_attempts: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    budget_ratio: float = 0.2
    budget_floor: float = 10.0
    tier_wait: float = 1.0

    def __post_init__(self) -> None:
        check_types(self, self._key)
        _check(self.max_attempts >= 1, "retry.max_attempts", "must be >= 1")
        _positive(self.backoff_base, "retry.backoff_base", zero_ok=True)
        _positive(self.backoff_max, "retry.backoff_max", zero_ok=True)
        _positive(self.budget_ratio, "retry.budget_ratio", zero_ok=True)
        _positive(self.budget_floor, "retry.budget_floor", zero_ok=True)
        _positive(self.tier_wait, "retry.tier_wait", zero_ok=True)


class HedgePolicy(_Config, frozen=True):
    """Hedged requests (off unless given): when the first attempt has not answered after
    ``after`` seconds (or the endpoint's observed p95 latency, ``"p95"``), up to
    ``max_extra`` more attempts go to other endpoints; the first answer wins. Hedges
    are rationed to ``budget_ratio`` of recent requests."""

    _key = "hedge"

    after: float | Literal["p95"] = "p95"
    max_extra: int = 1
    budget_ratio: float = 0.1

    def __post_init__(self) -> None:
        check_types(self, self._key)
        if self.after != "p95":
            _positive(self.after, "hedge.after")
        _check(self.max_extra >= 1, "hedge.max_extra", "must be >= 1")
        _positive(self.budget_ratio, "hedge.budget_ratio")


class CachePolicy(_Config, frozen=True):
    """The response cache: at most ``max_entries`` replies, each kept ``ttl`` seconds.

    Only deterministic requests (temperature 0) are cached unless a request passes
    ``cache=True``. With ``serve_stale``, when every endpoint fails the last good reply
    to the same request is returned marked ``stale``, however old.
    """

    _key = "cache"

    max_entries: int = 1024
    ttl: float = 3600.0
    serve_stale: bool = False

    def __post_init__(self) -> None:
        check_types(self, self._key)
        _check(self.max_entries >= 1, "cache.max_entries", "must be >= 1")
        _positive(self.ttl, "cache.ttl")
