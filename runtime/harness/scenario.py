"""Scenarios as data: fault-injecting endpoints, a fault timeline, a load, expectations.

A scenario is a TOML file::

    name = "primary-outage"
    description = "The primary refuses connections for 30 s; the backup is healthy."
    duration = 90                      # seconds of load

    [[endpoints]]                      # in priority order; each is a runtime.testing.FaultyEndpoint
    name = "primary"
    dialect = "openai"                 # openai, anthropic, ollama, azure, deepseek, openai-compatible
    [[endpoints]]
    name = "backup"
    dialect = "anthropic"

    [[faults]]                         # at t, on endpoint E, for D seconds
    endpoint = "primary"
    at = 20
    for = 30
    refuse = true                      # or outage = 503, schedule = [500, "reset"], fail = {...},
                                       # or any runtime.testing.Faults knob: error_rate = 1.0, ...

    [load]
    rate = 10                          # open loop, requests/s; or concurrency = C (closed loop, think = S)
    bursts = [{at = 40, n = 50}]       # N requests at once

    [requests]
    stream = 0.5                       # the share of requests that stream
    prompt_words = 12
    answer_words = 24

    [budget]                           # the same for every system under test
    attempts = 3
    attempt_timeout = 10
    request_timeout = 30

    [expect]
    max_failures = 0
    max_time_to_recover_s = 40

A fault's knobs are the public attributes of :class:`runtime.testing.Faults` (``latency``,
``error_rate``, ``cut_after``, ...): set at ``at``, put back at ``at + for`` (or left until
the end without ``for``). ``false`` turns off a knob whose off value is None
(``retry_after = false``: a 429 without ``Retry-After``). ``refuse`` closes the port,
``outage = STATUS`` answers every request and probe with that status, ``schedule`` and
``fail`` are one-shot behaviours consumed by the next requests.

``[runtime]`` tunes llm-runtime when it is the system under test without a ``--config``
(``breaker``, ``health``, ``retry`` tables and ``on_interrupt`` as in a ``runtime.toml``). Every problem is a
:class:`~runtime.errors.ConfigError` naming the key (``faults[1].error_rat``), as the
config loader does; nothing is half-loaded.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from ..config import config_error
from ..errors import ConfigError
from ..policy import BreakerPolicy, HealthPolicy, OnInterrupt, Price, Provider, RetryPolicy
from ..providers.registry import PROVIDERS
from ..testing import Faults

__all__ = [
    "BudgetSpec",
    "BurstSpec",
    "EndpointSpec",
    "Expectations",
    "FailSpec",
    "FaultSpec",
    "LoadSpec",
    "RequestSpec",
    "RuntimeSpec",
    "Scenario",
    "knob_names",
    "load_scenario",
    "parse_scenario",
]

class _Spec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Shared config of every scenario table: keyword-only, immutable, unknown keys refused."""


class EndpointSpec(_Spec, frozen=True):
    """One fault-injecting endpoint; the list's order is the priority order."""

    name: str
    #: a provider of the registry (runtime.providers.registry) served on its wire format
    dialect: Provider = "openai"
    #: default: its place in the list (1, 2, ...); equal priorities share the traffic
    priority: int | None = None
    model: str | None = None
    #: seconds before every answer when no fault says otherwise (a provider's normal speed)
    latency: float = 0.0
    #: seconds between stream chunks
    chunk_delay: float = 0.0
    #: a fixed port (0: any free one); for systems reached over a URL, configured to match
    port: int = 0
    #: USD per million tokens; default: the shipped price table for the model
    price: Price | None = None


class FailSpec(_Spec, frozen=True):
    """The next ``n`` requests fail with ``status`` (and the provider's error ``code``/``message``)."""

    status: int
    n: int = 1
    code: str | None = None
    message: str | None = None
    retry_after: float | None = None


class FaultSpec(_Spec, frozen=True):
    """On ``endpoint`` from ``at`` for ``for_`` seconds (None: until the end, or one-shot)."""

    endpoint: str
    at: float
    for_: float | None = msgspec.field(default=None, name="for")
    #: a short name for legends and the report (default: made from what the fault does)
    kind: str = ""
    #: what the endpoint does wrong, in a few words
    label: str = ""
    refuse: bool = False
    outage: int | None = None
    schedule: list[int | str] = msgspec.field(default_factory=list)
    fail: FailSpec | None = None
    #: ``Faults`` attributes to set for the window (the flat keys of the TOML table)
    knobs: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def start(self) -> float:
        """Seconds into the run when the fault begins."""
        return self.at

    @property
    def end(self) -> float:
        """Seconds into the run when it is lifted (``at`` for a one-shot fault)."""
        return self.at + (self.for_ or 0.0)

    @property
    def name(self) -> str:
        """``kind``, or a short name made from what the fault sets."""
        if self.kind:
            return self.kind
        parts = ["refused"] if self.refuse else []
        if self.outage is not None:
            parts.append(f"outage {self.outage}")
        if self.schedule:
            parts.append("schedule " + " ".join(str(s) for s in self.schedule))
        if self.fail is not None:
            parts.append(f"{self.fail.status}" + (f" {self.fail.code}" if self.fail.code else ""))
        parts.extend(f"{k}={v}" for k, v in self.knobs.items())
        return ", ".join(parts)

    @property
    def title(self) -> str:
        """``endpoint: label`` for logs and legends."""
        return f"{self.endpoint} {self.label or self.name}"


class BurstSpec(_Spec, frozen=True):
    """``n`` requests started at once, ``at`` seconds into the run."""

    at: float
    n: int


class LoadSpec(_Spec, frozen=True):
    """Open loop at ``rate`` requests/s, or closed loop with ``concurrency`` callers; plus bursts."""

    rate: float | None = None
    concurrency: int | None = None
    #: seconds a closed-loop caller waits between its requests (so fast failures do not spin)
    think: float = 0.0
    bursts: list[BurstSpec] = msgspec.field(default_factory=list)


class RequestSpec(_Spec, frozen=True):
    """The request mix: which share streams, and how long prompts and answers are."""

    stream: float = 0.0
    prompt_words: int = 8
    answer_words: int = 16
    max_tokens: int | None = None


class BudgetSpec(_Spec, frozen=True):
    """What every system under test gets: attempts per request and its timeouts."""

    attempts: int = 3
    attempt_timeout: float = 10.0
    request_timeout: float = 30.0
    #: seconds to the first chunk of a stream, and between chunks (None: attempt_timeout)
    first_chunk_timeout: float | None = None
    idle_timeout: float | None = None


class RuntimeSpec(_Spec, frozen=True):
    """llm-runtime's policies when no ``--config`` is given (the runtime's defaults otherwise)."""

    breaker: BreakerPolicy | None = None
    health: HealthPolicy | None = None
    retry: RetryPolicy | None = None
    #: what a stream that fails after content reached the caller does (the runtime's default: raise)
    on_interrupt: OnInterrupt | None = None


class Expectations(_Spec, frozen=True):
    """Limits the run must meet; a miss makes ``bench run`` exit 1."""

    max_failures: int | None = None
    max_truncated: int | None = None
    min_success_rate: float | None = None
    max_time_to_detect_s: float | None = None
    max_time_to_recover_s: float | None = None
    max_attempts_per_request: float | None = None
    max_p99_ms: float | None = None


class Scenario(_Spec, frozen=True):
    """One scenario: endpoints, faults, load, request mix, budget, expectations."""

    name: str
    endpoints: list[EndpointSpec]
    duration: float
    description: str = ""
    faults: list[FaultSpec] = msgspec.field(default_factory=list)
    load: LoadSpec = msgspec.field(default_factory=LoadSpec)
    requests: RequestSpec = msgspec.field(default_factory=RequestSpec)
    budget: BudgetSpec = msgspec.field(default_factory=BudgetSpec)
    runtime: RuntimeSpec = msgspec.field(default_factory=RuntimeSpec)
    expect: Expectations = msgspec.field(default_factory=Expectations)

    def priorities(self) -> dict[str, int]:
        """Each endpoint's priority: as given, else its place in the list."""
        return {ep.name: ep.priority or i for i, ep in enumerate(self.endpoints, 1)}

    def endpoint(self, name: str) -> EndpointSpec:
        """The endpoint called ``name``."""
        for ep in self.endpoints:
            if ep.name == name:
                return ep
        raise KeyError(name)

    def scaled(self, factor: float, *, rate: float | None = None) -> Scenario:
        """The same scenario with every time stretched by ``factor`` (and another rate)."""
        faults = [
            msgspec.structs.replace(
                f, at=round(f.at * factor, 3), for_=None if f.for_ is None else round(f.for_ * factor, 3)
            )
            for f in self.faults
        ]
        bursts = [msgspec.structs.replace(b, at=round(b.at * factor, 3)) for b in self.load.bursts]
        load = msgspec.structs.replace(self.load, bursts=bursts, rate=rate if rate is not None else self.load.rate)
        return msgspec.structs.replace(self, duration=self.duration * factor, faults=faults, load=load)


def knob_names() -> dict[str, Any]:
    """The knobs a fault may set: every public data attribute of a fresh :class:`Faults`, with its default."""
    return {k: v for k, v in vars(Faults()).items() if not k.startswith("_")}


_STEPS = ("ok", "hang", "reset", "malformed")


def parse_scenario(data: Mapping[str, Any], *, source: str = "scenario") -> Scenario:
    """Validate already-parsed data (a dict from TOML) into a :class:`Scenario`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a table", key="$")
    for key in ("name", "endpoints", "duration"):
        if key not in data:
            raise ConfigError(f"{source}: missing {key!r}", key=key)
    raw = dict(data)
    faults = raw.get("faults", [])
    if not isinstance(faults, list):
        raise ConfigError(f"{source}: must be an array of tables ([[faults]])", key="faults")
    raw["faults"] = [_split_knobs(f, i, source) for i, f in enumerate(faults)]
    try:
        scenario = msgspec.convert(raw, Scenario, strict=True)
    except ConfigError as exc:  # a policy's own checks (breaker, health, retry, price)
        raise ConfigError(f"{source}: {exc.message}", key=exc.key, endpoint=exc.endpoint) from None
    except msgspec.ValidationError as exc:
        raise config_error(exc, raw, source) from None
    _check(scenario, source)
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file (TOML)."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}", key="path") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return parse_scenario(data, source=str(p))


def _split_knobs(raw: Any, index: int, source: str) -> Any:
    """Move a fault table's ``Faults`` knobs into ``knobs``, checking each value's type."""
    if not isinstance(raw, Mapping):
        return raw  # msgspec names the wrong type
    where = f"faults[{index}]"
    if "knobs" in raw:
        raise ConfigError(f"{source}: unknown key 'knobs' (write the knobs in the fault's own table)", key=f"{where}.knobs")
    defaults = knob_names()
    fields = set(FaultSpec.__struct_encode_fields__)
    out: dict[str, Any] = {}
    knobs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in fields or key not in defaults:
            out[key] = value  # a field, or unknown: msgspec refuses it naming the key
            continue
        knobs[key] = _knob_value(key, value, defaults[key], f"{where}.{key}", source)
    out["knobs"] = knobs
    return out


def _knob_value(name: str, value: Any, default: Any, key: str, source: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}", key=key)
        return value
    if value is False and (default is None or name == "retry_after"):
        return None  # TOML has no null: false turns the knob off
    if isinstance(value, bool) or not isinstance(value, int | float):
        # Knobs that are not numbers or switches (``body``) are for tests written in Python.
        raise ConfigError(f"{source}: {name} must be a number, got {value!r}", key=key)
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{source}: {name} must be a finite number >= 0, got {value!r}", key=key)
    if isinstance(default, int) and not isinstance(value, int):
        raise ConfigError(f"{source}: {name} must be a whole number, got {value!r}", key=key)
    if name == "error_rate" and value > 1:
        raise ConfigError(f"{source}: error_rate must be between 0 and 1, got {value!r}", key=key)
    return value


def _check(s: Scenario, source: str) -> None:
    """The rules a struct's types cannot say: names, times, one load shape, a fault that does something."""

    def bad(key: str, message: str, endpoint: str | None = None) -> ConfigError:
        return ConfigError(f"{source}: {message}", key=key, endpoint=endpoint)

    if not s.endpoints:
        raise bad("endpoints", "at least one endpoint is required")
    names = [ep.name for ep in s.endpoints]
    for i, ep in enumerate(s.endpoints):
        if not ep.name or names.index(ep.name) != i:
            raise bad("name", "endpoint names must be unique and not empty", ep.name)
        if PROVIDERS[ep.dialect].dialect == "mock":
            raise bad("dialect", f"{ep.dialect!r} has no wire format to serve: give a provider that has one", ep.name)
        if ep.priority is not None and ep.priority < 1:
            raise bad("priority", f"must be at least 1, got {ep.priority}", ep.name)
        if ep.latency < 0 or ep.chunk_delay < 0 or not 0 <= ep.port < 65536:
            raise bad("latency", "latency and chunk_delay must be >= 0 and port 0-65535", ep.name)
    if not (math.isfinite(s.duration) and s.duration > 0):
        raise bad("duration", f"must be a positive number of seconds, got {s.duration!r}")
    for i, f in enumerate(s.faults):
        where = f"faults[{i}]"
        if f.endpoint not in names:
            raise bad(f"{where}.endpoint", f"no endpoint {f.endpoint!r} (endpoints: {', '.join(names)})")
        if not (math.isfinite(f.at) and 0 <= f.at <= s.duration):
            raise bad(f"{where}.at", f"must be between 0 and the duration ({s.duration:g} s), got {f.at!r}")
        if f.for_ is not None and not (math.isfinite(f.for_) and f.for_ > 0):
            raise bad(f"{where}.for", f"must be a positive number of seconds, got {f.for_!r}")
        if f.outage is not None and f.for_ is None:
            raise bad(f"{where}.for", "an outage needs its length (for = seconds)")
        if not (f.refuse or f.outage is not None or f.schedule or f.fail is not None or f.knobs):
            raise bad(where, "the fault does nothing: give refuse, outage, schedule, fail or a Faults knob")
        for j, step in enumerate(f.schedule):
            if isinstance(step, str) and step not in _STEPS:
                raise bad(f"{where}.schedule[{j}]", f"unknown step {step!r}: a status or one of {', '.join(_STEPS)}")
        if f.fail is not None and f.fail.n < 1:
            raise bad(f"{where}.fail.n", f"must be at least 1, got {f.fail.n}")
    _check_load(s, bad)
    r = s.requests
    if not 0 <= r.stream <= 1:
        raise bad("requests.stream", f"must be a share between 0 and 1, got {r.stream!r}")
    if r.prompt_words < 1 or r.answer_words < 1 or (r.max_tokens is not None and r.max_tokens < 1):
        raise bad("requests", "prompt_words, answer_words and max_tokens must be at least 1")
    b = s.budget
    if b.attempts < 1:
        raise bad("budget.attempts", f"must be at least 1, got {b.attempts}")
    for key in ("attempt_timeout", "request_timeout", "first_chunk_timeout", "idle_timeout"):
        value = getattr(b, key)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise bad(f"budget.{key}", f"must be a positive number of seconds, got {value!r}")


def _check_load(s: Scenario, bad: Any) -> None:
    load = s.load
    if load.rate is not None and load.concurrency is not None:
        raise bad("load", "give rate (open loop) or concurrency (closed loop), not both")
    if load.rate is None and load.concurrency is None and not load.bursts:
        raise bad("load", "no load: give rate, concurrency or bursts")
    if load.rate is not None and not (math.isfinite(load.rate) and load.rate > 0):
        raise bad("load.rate", f"must be a positive number of requests per second, got {load.rate!r}")
    if not (math.isfinite(load.think) and load.think >= 0):
        raise bad("load.think", f"must be a number of seconds >= 0, got {load.think!r}")
    if load.concurrency is not None and load.concurrency < 1:
        raise bad("load.concurrency", f"must be at least 1, got {load.concurrency}")
    for i, burst in enumerate(load.bursts):
        if burst.n < 1 or not 0 <= burst.at <= s.duration:
            raise bad(f"load.bursts[{i}]", f"n must be >= 1 and at within the duration, got n={burst.n}, at={burst.at}")
