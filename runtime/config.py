"""Configuration from files and the environment, validated into :mod:`runtime.policy` structs.

A file (TOML, or JSON by its ``.json`` suffix) has top-level runtime keys and one
``[[endpoints]]`` table per endpoint::

    timeout = 30
    [retry]
    max_attempts = 3
    [[endpoints]]
    name = "primary"
    provider = "openai"
    model = "gpt-4o-mini"
    api_key_env = "OPENAI_API_KEY"

Every problem is a :class:`~runtime.errors.ConfigError` naming the key (``endpoints[0].rpm``)
and the endpoint, and nothing is half-loaded.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from .cluster.policy import SharedPolicy
from .errors import ConfigError
from .gateway.config import GatewayConfig
from .policy import (
    Budget,
    CachePolicy,
    Endpoint,
    HedgePolicy,
    OnInterrupt,
    RetryPolicy,
    _positive,
    check_types,
    type_rule,
)
from .providers.registry import PROVIDERS as REGISTRY

__all__ = ["RuntimeConfig", "config_error", "endpoints_from_env", "load_config", "parse_config"]


class RuntimeConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole file: runtime-wide settings and the endpoints.

    ``Runtime(...)`` builds one from its arguments too, so a runtime made in Python is
    checked by exactly the rules, and with exactly the messages, of a file.
    """

    endpoints: list[Endpoint]
    timeout: float = 60.0
    shutdown_grace: float = 10.0
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    hedge: HedgePolicy | None = None
    cache: CachePolicy | None = None
    budget: Budget | None = None
    max_restarts: int = 3
    restart_within: float = 60.0
    seed: int | None = None
    # Read by `llm-runtime serve` only; not a Runtime argument.
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    shared: SharedPolicy | None = None
    on_interrupt: OnInterrupt = "raise"

    def __post_init__(self) -> None:
        check_types(self)
        if not self.endpoints:
            raise ConfigError("at least one endpoint is required", key="endpoints")
        seen: set[str] = set()
        for ep in self.endpoints:
            if ep.name in seen:
                raise ConfigError("duplicate endpoint name", key="name", endpoint=ep.name)
            seen.add(ep.name)
        _positive(self.timeout, "timeout")
        _positive(self.shutdown_grace, "shutdown_grace", zero_ok=True)
        _positive(self.restart_within, "restart_within")
        if self.max_restarts < 0:
            raise ConfigError(f"must be >= 0, got {self.max_restarts!r}", key="max_restarts")

    def runtime_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`runtime.Runtime`."""
        return {
            "endpoints": self.endpoints,
            "timeout": self.timeout,
            "shutdown_grace": self.shutdown_grace,
            "retry": self.retry,
            "hedge": self.hedge,
            "cache": self.cache,
            "budget": self.budget,
            "shared": self.shared,
            "on_interrupt": self.on_interrupt,
            "max_restarts": self.max_restarts,
            "restart_within": self.restart_within,
            "seed": self.seed,
        }


_PATH = re.compile(r"`\$(?P<path>[^`]*)`")
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<field>[^`]+)`")


def parse_config(data: Mapping[str, Any], *, source: str = "config") -> RuntimeConfig:
    """Validate already-parsed data (a dict from TOML or JSON) into a :class:`RuntimeConfig`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: the top level must be a table", key="$")
    if "endpoints" not in data:
        raise ConfigError(f"{source}: no [[endpoints]] given", key="endpoints")
    try:
        return msgspec.convert(data, RuntimeConfig, strict=True)
    except ConfigError as exc:
        # Raised by a struct's own checks; say which endpoint when it is one of them.
        if exc.endpoint is None:
            endpoint = _endpoint_of_failure(data, exc)
            if endpoint is not None:
                raise ConfigError(exc.detail, key=exc.key, endpoint=endpoint) from None
        raise
    except msgspec.ValidationError as exc:
        raise config_error(exc, data, source) from None


def _endpoint_of_failure(data: Mapping[str, Any], exc: ConfigError) -> str | None:
    # Re-validate endpoint by endpoint to find the one that failed.
    for raw in data.get("endpoints") or []:
        try:
            msgspec.convert(raw, Endpoint, strict=True)
        except (ConfigError, msgspec.ValidationError):
            return str(raw.get("name")) if isinstance(raw, Mapping) else None
    return None


def config_error(exc: msgspec.ValidationError, data: Mapping[str, Any], source: str) -> ConfigError:
    """msgspec's refusal of ``data`` (read from ``source``) as the :class:`ConfigError` a user
    reads: the key by its path in the file, the endpoint by its name, the rule in words. For
    every file format built on these structs (the runtime's configuration, a harness scenario)."""
    message = str(exc)
    match = _PATH.search(message)
    path = match.group("path") if match else ""
    typed = message.startswith(("Expected `", "Invalid enum value"))
    if typed:
        # A list item or table value of the wrong type: name the list or table, as a
        # struct built in Python does.
        path = _CONTAINED.sub("", path)
    key = path.lstrip(".")
    unknown = _UNKNOWN.search(message)
    if unknown:
        key = f"{key}.{unknown.group('field')}".lstrip(".")
    endpoint = None
    m = re.match(r"\.?endpoints\[(\d+)\]", path)
    if m:
        index = int(m.group(1))
        endpoints = data.get("endpoints") or []
        if index < len(endpoints) and isinstance(endpoints[index], Mapping):
            endpoint = endpoints[index].get("name")
        key = re.sub(r"^endpoints\[\d+\]\.?", "", key) or "endpoints"
    detail = _PATH.sub("", message).rstrip(" -")
    if unknown:
        detail = f"unknown key {unknown.group('field')!r}"
    elif typed:
        detail = _type_detail(path, data) or detail
    return ConfigError(f"{source}: {detail}", key=key or None, endpoint=str(endpoint) if endpoint is not None else None)


_CONTAINED = re.compile(r"(\[(\d+|\.\.\.)\])+$")
_STEP = re.compile(r"\.(?P<field>[^.\[]+)|\[(?P<index>\d+)\]|\[\.\.\.\]")


def _type_detail(path: str, data: Any) -> str | None:
    """The words a struct built in Python uses for a value of the wrong type
    (:func:`~runtime.policy.check_types`), for the value at msgspec's ``path`` in ``data``."""
    info: mi.Type = mi.type_info(RuntimeConfig)
    value: Any = data
    known = True
    for step in _STEP.finditer(path):
        while isinstance(info, mi.UnionType):  # the one member that is not None
            info = next(t for t in info.types if not isinstance(t, mi.NoneType))
        if step.group("field") is not None:
            if not isinstance(info, mi.StructType):
                return None
            field = next((f for f in info.fields if f.encode_name == step.group("field")), None)
            if field is None:
                return None
            info = field.type
            value = value.get(field.encode_name) if known and isinstance(value, Mapping) else None
        elif step.group("index") is not None and isinstance(info, mi.ListType):
            info = info.item_type
            index = int(step.group("index"))
            value = value[index] if known and isinstance(value, list) and index < len(value) else None
        elif isinstance(info, mi.DictType):
            info, known = info.value_type, False  # msgspec does not say which key
        else:
            return None
    rule = f"must be {type_rule(info)}"
    return f"{rule}, got {value!r}" if known else rule


def load_config(path: str | Path) -> RuntimeConfig:
    """Read and validate a TOML (or ``.json``) configuration file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror or exc}", key="path") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    return parse_config(data, source=str(p))


# --- the environment ------------------------------------------------------------------

# Without LLM_BACKEND every provider whose variables are set joins, in this order.
_CHAIN = ("azure", "openai", "anthropic", "deepseek", "ollama", "custom")
_BACKENDS = {"azure", "openai", "anthropic", "deepseek", "ollama", "custom", "openai-compatible"}


def _env_endpoint(kind: str, env: Mapping[str, str], priority: int, *, required: bool) -> Endpoint | None:
    """The endpoint ``kind``'s variables describe; None when they are not set (in the chain).
    The variables and default models are the provider registry's."""

    def need(var: str) -> str | None:
        value = env.get(var)
        if not value and required:
            raise ConfigError(f"LLM_BACKEND={kind} needs {var} to be set", key=var)
        return value or None

    if kind == "ollama":
        return _env_ollama(env, priority, required=required)
    if kind == "custom":
        return _env_custom(env, priority, need, required=required)
    spec = REGISTRY[kind]
    assert spec.key_env is not None and spec.model_env is not None
    # Azure alone has no default URL: its resource URL and deployment must be given.
    named = spec.base_url is None
    if not required and not (env.get(spec.key_env) and (not named or env.get(spec.base_url_env or ""))):
        return None
    need(spec.key_env)
    base = need(spec.base_url_env) if named and spec.base_url_env else env.get(spec.base_url_env or "") or None
    model = (need(spec.model_env) or "") if named else env.get(spec.model_env) or spec.default_model
    return Endpoint(
        name=kind, provider=kind, model=model, base_url=base, api_key_env=spec.key_env, priority=priority,  # type: ignore[arg-type]
        api_version=(env.get("OPENAI_API_VERSION") or None) if kind == "azure" else None,
    )


def _env_ollama(env: Mapping[str, str], priority: int, *, required: bool) -> Endpoint | None:
    spec = REGISTRY["ollama"]
    base = env.get(spec.base_url_env or "") or env.get("OLLAMA_HOST")
    if not required and not base and not env.get(spec.model_env or ""):
        return None
    if base and not base.startswith(("http://", "https://")):
        base = f"http://{base}"  # OLLAMA_HOST is often host:port
    return Endpoint(
        name="ollama", provider="ollama", model=env.get(spec.model_env or "") or spec.default_model,
        base_url=base or None, priority=priority,
    )


def _env_custom(
    env: Mapping[str, str], priority: int, need: Callable[[str], str | None], *, required: bool
) -> Endpoint | None:
    spec = REGISTRY["openai-compatible"]
    url_env, model_env = spec.base_url_env or "", spec.model_env or ""
    if not required and not env.get(url_env):
        return None
    url = need(url_env)
    model = need(model_env)
    if not model:
        # A server may serve several models; guessing one would be a silent surprise.
        raise ConfigError(
            f"{url_env} is set, so {model_env} must name the model to ask for "
            "(one of the ids the server lists at /models)",
            key=model_env,
        )
    headers: dict[str, str] = {}
    raw_headers = env.get("CUSTOM_LLM_HEADERS")
    if raw_headers:
        try:
            headers = msgspec.convert(json.loads(raw_headers), dict[str, str])
        except (ValueError, msgspec.ValidationError):
            raise ConfigError("must be a JSON object of header names to strings", key="CUSTOM_LLM_HEADERS") from None
    return Endpoint(
        name="custom", provider="openai-compatible", model=model,
        base_url=url, api_key_env="CUSTOM_LLM_API_KEY" if env.get("CUSTOM_LLM_API_KEY") else None,
        headers=headers, priority=priority,
    )


def endpoints_from_env(environ: Mapping[str, str] | None = None) -> list[Endpoint]:
    """Endpoints from ``LLM_BACKEND`` and the providers' usual variables.

    With ``LLM_BACKEND`` set (``openai``, ``azure``, ``anthropic``, ``deepseek``,
    ``ollama``, ``custom``) that one provider is used and its variables are required.
    Without it, every provider whose variables are set joins a priority chain:
    Azure, OpenAI, Anthropic, DeepSeek, Ollama, custom.
    """
    env = os.environ if environ is None else environ
    backend = (env.get("LLM_BACKEND") or "").strip().lower()
    if backend:
        if backend not in _BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; one of {', '.join(sorted(_BACKENDS))}", key="LLM_BACKEND")
        kind = "custom" if backend == "openai-compatible" else backend
        endpoint = _env_endpoint(kind, env, 1, required=True)
        assert endpoint is not None
        return [endpoint]
    endpoints: list[Endpoint] = []
    for kind in _CHAIN:
        endpoint = _env_endpoint(kind, env, len(endpoints) + 1, required=False)
        if endpoint is not None:
            endpoints.append(endpoint)
    if not endpoints:
        raise ConfigError(
            "no LLM provider configured: set LLM_BACKEND, or OPENAI_API_KEY, AZURE_OPENAI_API_KEY + "
            "AZURE_OPENAI_ENDPOINT, ANTHROPIC_API_KEY, DEEPSEEK_API_KEY, OLLAMA_BASE_URL/OLLAMA_HOST or CUSTOM_LLM_URL",
            key="LLM_BACKEND",
        )
    return endpoints
