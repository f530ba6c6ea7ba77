"""The ``[gateway]`` table of a config file: where the gateway listens, its edge limits, its keys.

::

    [gateway]
    host = "127.0.0.1"
    port = 4000
    max_body_bytes = 4194304
    [[gateway.keys]]
    name = "team-a"
    key_env = "TEAM_A_KEY"            # or key = "...", or key_sha256 = "<hex>"
    models = ["gpt-4o-mini", "fast"]  # routes this key may use (empty: all)
    rpm = 600
    daily_usd = 20.0

These structs are plain data with their checks; they import nothing of the gateway's
server, so the config loader can validate the table with the rest of the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import msgspec

from ..errors import ConfigError
from ..policy import Budget, _check, _Config, _positive, check_types

__all__ = ["GatewayConfig", "GatewayKey"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class GatewayKey(_Config, frozen=True):
    """One client key of the gateway and what it may do.

    Exactly one of ``key`` (the key itself), ``key_env`` (the variable holding it) or
    ``key_sha256`` (its SHA-256, hex) says what the client must send. ``models`` lists
    the routes (groups, models, endpoint names) the key may use; empty means all.
    ``rpm``, ``tpm`` and ``max_concurrency`` limit it the way an endpoint's limits do;
    the budget fields refuse it once spent, like the runtime's budget.
    """

    name: str
    key: str | None = None
    key_env: str | None = None
    key_sha256: str | None = None
    models: list[str] = msgspec.field(default_factory=list)
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    daily_tokens: int | None = None
    daily_usd: float | None = None
    monthly_tokens: int | None = None
    monthly_usd: float | None = None

    def __post_init__(self) -> None:
        # Built in Python, a struct's values are not checked against its annotations as a
        # file's are: check them first, the name before it is used in every other key.
        _check(isinstance(self.name, str), "gateway.keys.name", f"must be a string, got {self.name!r}")
        where = f"gateway.keys[{self.name}]"
        check_types(self, where)
        given = [k for k in ("key", "key_env", "key_sha256") if getattr(self, k)]
        _check(len(given) == 1, f"{where}.key", "give exactly one of key, key_env, key_sha256")
        if self.key_sha256 is not None:
            _check(bool(_SHA256.fullmatch(self.key_sha256)), f"{where}.key_sha256", "must be 64 lowercase hex digits")
        for field in ("rpm", "tpm", "max_concurrency", "daily_tokens", "daily_usd", "monthly_tokens", "monthly_usd"):
            _positive(getattr(self, field), f"{where}.{field}")

    def __repr__(self) -> str:
        # The key (or its digest) never shows: only where it comes from.
        source = "key_env=" + repr(self.key_env) if self.key_env else "key_sha256=…" if self.key_sha256 else "key=…"
        return f"GatewayKey(name={self.name!r}, {source}, models={self.models!r})"

    def masked(self) -> dict[str, Any]:
        """The key's settings as plain data, the key and its digest masked, for display."""
        data: dict[str, Any] = msgspec.to_builtins(self)
        for field in ("key", "key_sha256"):
            if data.get(field) is not None:
                data[field] = "***"
        return data

    def digest(self) -> bytes:
        """The SHA-256 of the key a client must send; ConfigError when its variable is unset."""
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        secret = self.key if self.key is not None else os.environ.get(self.key_env or "")
        if not secret:
            raise ConfigError(f"environment variable {self.key_env} is not set", key=f"gateway.keys[{self.name}].key_env")
        return hashlib.sha256(secret.encode()).digest()

    @property
    def budget(self) -> Budget | None:
        """The key's budget as the runtime's :class:`~runtime.policy.Budget`, None when it sets no limit."""
        if self.daily_tokens is None and self.daily_usd is None and self.monthly_tokens is None and self.monthly_usd is None:
            return None
        return Budget(
            daily_tokens=self.daily_tokens, daily_usd=self.daily_usd,
            monthly_tokens=self.monthly_tokens, monthly_usd=self.monthly_usd,
        )


class GatewayConfig(_Config, frozen=True):
    """Where ``llm-runtime serve`` listens and how its edge is hardened.

    ``max_body_bytes`` refuses larger bodies with 413. ``header_timeout`` closes a
    connection that has not sent a whole request head that long after connecting or
    after its previous response (so it is also the keep-alive idle time);
    ``body_timeout`` bounds reading a body. ``max_concurrency`` caps the requests one
    process serves at once (more get 503 with ``Retry-After``). ``keys`` empty: no
    authentication, and the gateway listens on loopback only.
    """

    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = 4 * 1024 * 1024
    header_timeout: float = 30.0
    body_timeout: float = 30.0
    max_concurrency: int = 1024
    keys: list[GatewayKey] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        check_types(self, "gateway")
        _check(0 <= self.port <= 65535, "gateway.port", f"must be in 0..65535, got {self.port}")
        _positive(self.max_body_bytes, "gateway.max_body_bytes")
        _positive(self.header_timeout, "gateway.header_timeout")
        _positive(self.body_timeout, "gateway.body_timeout")
        _positive(self.max_concurrency, "gateway.max_concurrency")
        names = [k.name for k in self.keys]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        _check(duplicate is None, "gateway.keys", f"duplicate key name {duplicate!r}")
