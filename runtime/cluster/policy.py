"""The ``[shared]`` table: where the state shared across processes lives, and what to do without it.

Importing this module does not import redis: a runtime without ``[shared]`` never loads it.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError
from ..policy import _check, _Config, _positive, check_types

__all__ = ["SharedPolicy", "masked_url"]

_SCHEMES = ("redis", "rediss", "unix")


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: what logs, spans, errors and status show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


class SharedPolicy(_Config, frozen=True):
    """State shared by every process that names the same Redis and ``prefix``.

    ``url`` is a redis-py URL (``redis://``, ``rediss://`` or ``unix://``; a password in
    it is never shown). ``prefix`` starts every key, so several deployments can share one
    server. ``on_unavailable`` says what a process does while Redis is down or slow:
    ``"local"`` keeps serving on its own state, ``"refuse"`` refuses requests with
    ``NoEndpointAvailable``. ``timeout`` bounds one Redis call and ``connect_timeout`` one
    connection attempt (seconds); past them Redis counts as unavailable. ``lease_ttl`` is how
    long a concurrency slot is held at most, so a process that died frees its slots by
    then. ``sync_interval`` is how often a process reads the shared breaker states,
    throttles and budgets of every endpoint (what it learns between its own calls), and
    ``reconnect_max`` caps the backoff between reconnection attempts. ``cache`` shares the
    response cache too: a reply one process cached is served by all from their next sync.
    """

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "llm-runtime"
    on_unavailable: Literal["local", "refuse"] = "local"
    timeout: float = 0.25
    connect_timeout: float = 0.5
    lease_ttl: float = 300.0
    sync_interval: float = 0.25
    reconnect_max: float = 5.0
    cache: bool = False

    def __post_init__(self) -> None:
        # By the declared types first, as every policy: SharedPolicy(timeout="1") is a
        # ConfigError naming shared.timeout, not a TypeError from a comparison below.
        check_types(self, "shared")
        scheme = urlsplit(self.url).scheme
        _check(
            scheme in _SCHEMES,
            "shared.url",
            f"must be a redis://, rediss:// or unix:// URL, got {masked_url(self.url)!r}",
        )
        _check(bool(self.prefix) and not any(c in self.prefix for c in "{} "), "shared.prefix",
               f"must be a non-empty name without braces or spaces, got {self.prefix!r}")
        _check(self.on_unavailable in ("local", "refuse"), "shared.on_unavailable",
               f"must be 'local' or 'refuse', got {self.on_unavailable!r}")
        for key in ("timeout", "connect_timeout", "lease_ttl", "sync_interval", "reconnect_max"):
            _positive(getattr(self, key), f"shared.{key}")

    def __repr__(self) -> str:
        return f"SharedPolicy(url={masked_url(self.url)!r}, prefix={self.prefix!r}, on_unavailable={self.on_unavailable!r})"

    @classmethod
    def coerce(cls, value: SharedPolicy | str) -> SharedPolicy:
        """A policy from ``Runtime(shared=...)``: a :class:`SharedPolicy` or just its URL."""
        if isinstance(value, SharedPolicy):
            return value
        if isinstance(value, str):
            return cls(url=value)
        raise ConfigError(f"expected a SharedPolicy or a redis:// URL, got {type(value).__name__}", key="shared")
