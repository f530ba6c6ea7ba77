"""Gateway keys: who may call, which routes, how fast and how much.

A presented key is hashed once and compared with every configured key's SHA-256 by
:func:`hmac.compare_digest`, all of them each time, so neither the comparison nor the
scan leaks how much of a key matched or which key it was close to. Only digests are
kept in memory after start.

Each key's ``rpm``, ``tpm`` and ``max_concurrency`` are a :class:`~runtime.endpoint.limiter.Limiter`
and its budgets a :class:`~runtime.accounting.BudgetGuard`, the very classes that limit
endpoints and the runtime: reserve before sending, reconcile with the real usage after.
Both come from the runtime (``Runtime.limiter_for``, ``Runtime.budget_guard_for``): with
``[shared]`` they are shared through Redis like the endpoints' (the limiter's ``confirm``
takes the key's share of the cluster's buckets and leases, one round trip per request),
else they are this process's.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..accounting import BudgetGuard
from ..accounting.budget import Reservation as BudgetReservation
from ..endpoint.limiter import Limiter
from ..endpoint.limiter import Reservation as LimiterReservation
from .config import GatewayKey

__all__ = ["ClientKey", "GuardFactory", "Grant", "KeyRing", "LimiterFactory"]

#: Makes a key's budget guard: ``Runtime.budget_guard_for`` (shared with ``[shared]``) or BudgetGuard.
GuardFactory = Callable[..., BudgetGuard]
#: Makes a key's limiter: ``Runtime.limiter_for`` (shared with ``[shared]``) or a local Limiter.
LimiterFactory = Callable[..., Limiter]


def _local_limiter(*, rpm: int | None, tpm: int | None, max_concurrency: int | None, scope: str) -> Limiter:
    return Limiter(rpm, tpm, max_concurrency)


@runtime_checkable
class _Confirming(Protocol):
    """A shared limiter: what its mirror admitted must still be taken from the cluster's."""

    async def confirm(self, reservation: LimiterReservation) -> float | None: ...


class Grant:
    """One admitted request's hold on its key's limiter and budget."""

    __slots__ = ("budget", "limit", "tokens")

    def __init__(self, limit: LimiterReservation, budget: BudgetReservation | None, tokens: int) -> None:
        self.limit = limit
        self.budget = budget
        self.tokens = tokens


class ClientKey:
    """A configured key at run time: its digest, allowed routes, limiter and budget guard."""

    def __init__(self, config: GatewayKey, new_guard: GuardFactory = BudgetGuard, new_limiter: LimiterFactory = _local_limiter) -> None:
        self.name = config.name
        self.digest = config.digest()
        self.routes = frozenset(config.models)
        scope = f"key {config.name}"
        self.limiter = new_limiter(rpm=config.rpm, tpm=config.tpm, max_concurrency=config.max_concurrency, scope=scope)
        self._confirm = self.limiter.confirm if isinstance(self.limiter, _Confirming) else None
        budget = config.budget
        self.budget = new_guard(budget, scope=scope) if budget is not None else None
        # Counting a prompt's tokens costs microseconds: only when a limit reads the count.
        self.counts_tokens = bool(config.tpm) or budget is not None

    def __repr__(self) -> str:
        return f"<ClientKey {self.name!r} {self.limiter!r}>"

    def allows(self, route: str) -> bool:
        """May this key use ``route``?"""
        return not self.routes or route in self.routes

    async def admit(self, tokens: int, now: float) -> Grant | float:
        """Reserve a request of about ``tokens``: a :class:`Grant`, or the seconds to wait
        before the key's limits could take it. Raises BudgetExceeded when a budget is spent
        (and NoEndpointAvailable when shared limits cannot be reached and must not be served around)."""
        held = self.limiter.try_acquire(tokens, now)
        if held is None:
            when = self.limiter.available_at(tokens, now)
            # A full concurrency cap frees on a release, at no known time: try again soon.
            return 1.0 if math.isinf(when) else max(when - now, 0.001)
        if self._confirm is not None:
            wait = await self._confirm(held)
            if wait is not None:
                return max(wait, 0.001)
        budget = self.budget
        reserved = None
        try:
            if budget is not None:
                reserved = budget.reserve(tokens)
                if budget.hold is not None:  # shared totals: the estimate is held on Redis too
                    await budget.hold(reserved)
        except BaseException:
            if reserved is not None and budget is not None:
                budget.release(reserved)
            self.limiter.release(held, 0, now)
            raise
        return Grant(held, reserved, tokens)

    def settle(self, grant: Grant, tokens: int, usd: float, now: float) -> None:
        """The request is done and used ``tokens`` costing ``usd``."""
        self.limiter.release(grant.limit, tokens, now)
        if grant.budget is not None and self.budget is not None:
            self.budget.settle(grant.budget, tokens, usd)

    def release(self, grant: Grant, now: float) -> None:
        """The request failed or was cancelled: give back what it held, as the runtime does."""
        self.limiter.release(grant.limit, None, now)
        if grant.budget is not None and self.budget is not None:
            self.budget.release(grant.budget)

    def headers(self, now: float) -> dict[str, str]:
        """The key's ``x-ratelimit-*`` headers, in OpenAI's names."""
        limiter = self.limiter
        if not limiter.rpm and not limiter.tpm:
            return {}
        requests, tokens = limiter.headroom(now)
        out: dict[str, str] = {}
        if requests is not None:
            out["x-ratelimit-limit-requests"] = str(limiter.rpm)
            out["x-ratelimit-remaining-requests"] = str(max(0, math.floor(requests)))
        if tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(limiter.tpm)
            out["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(tokens)))
        return out


class KeyRing:
    """The configured keys; :meth:`find` looks a presented key up in constant time."""

    def __init__(
        self, keys: Sequence[GatewayKey], new_guard: GuardFactory = BudgetGuard, new_limiter: LimiterFactory = _local_limiter
    ) -> None:
        self.keys = [ClientKey(k, new_guard, new_limiter) for k in keys]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:
        return f"<KeyRing [{', '.join(k.name for k in self.keys)}]>"

    def find(self, presented: str | None) -> ClientKey | None:
        """The key whose secret is ``presented``, or None. Compares against every key."""
        digest = hashlib.sha256((presented or "").encode()).digest()
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest) and presented:
                found = key
        return found
