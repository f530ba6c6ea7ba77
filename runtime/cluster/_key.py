"""A gateway key's rpm, tpm and concurrency shared by every process, as an endpoint's are.

A :class:`SharedKeyLimiter` is the key's :class:`~runtime.endpoint.limiter.Limiter` as a
mirror (a local refusal costs no round trip) plus :meth:`~SharedKeyLimiter.confirm`, one
``admit`` script call on the key's own hash and lease set that takes the RPM token, the
TPM estimate and a lease all or nothing, on Redis's clock. Releasing gives the lease back
and reconciles the TPM estimate with the real usage, queued off the request path. These
are the endpoint scripts, run without a breaker: a key has none. While Redis is away the
mirror is the limit (``on_unavailable = "local"``), or the key refuses (``"refuse"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..endpoint.limiter import Reservation
from ..errors import NoEndpointAvailable
from ._endpoint import SharedLimiter, SharedReservation, endpoint_keys, new_lease
from ._link import Call, Unavailable

if TYPE_CHECKING:
    from ._state import SharedState

__all__ = ["SharedKeyLimiter"]


class SharedKeyLimiter(SharedLimiter):
    """The limits of one scope (a gateway key) on Redis; its own :class:`~runtime.cluster._endpoint.Share`."""

    __slots__ = ("keys", "scope", "state")

    def __init__(self, state: SharedState, scope: str, rpm: int | None, tpm: int | None, max_concurrency: int | None) -> None:
        super().__init__(rpm, tpm, max_concurrency, self)
        self.state = state
        self.scope = scope
        # Under "limits:", so no endpoint's hash (tagged by the bare endpoint name) is this one.
        self.keys = endpoint_keys(state.policy.prefix, f"limits:{scope}")

    @property
    def available(self) -> bool:
        """True while Redis answers."""
        return self.state.link.available

    def send(self, call: Call, done: Callable[[list[str] | None], None] | None = None) -> None:
        """Queue a call for the writer."""
        self.state.send(call, done)

    def throttle_everywhere(self, until: float) -> None:
        """Nothing: no upstream's 429 throttles a key."""

    async def confirm(self, reservation: Reservation) -> float | None:
        """Take the shared capacity for a ``reservation`` the mirror admitted: None when
        taken, else the seconds until the shared limits could take it (the reservation is
        then released here). One round trip, or none when the key has no limits."""
        if not self.limited:
            return None
        assert isinstance(reservation, SharedReservation)  # made by this limiter's try_acquire
        if not self.available:
            self._without_redis(reservation, self.state.link.cause)
            return None
        lease = new_lease() if self.max_concurrency else ""
        need = float(min(max(reservation.tokens, 0), self.tpm or 0))
        # The breaker arguments are for the endpoint's breaker step, which a key never runs.
        args: list[str | int | float] = [self.rpm or 0, self.tpm or 0, need, self.max_concurrency or 0, lease, self.state.policy.lease_ttl, 0, 1, 1, 1]
        try:
            reply = await self.state.call(("admit", self.keys, args))
        except Unavailable as exc:
            self._without_redis(reservation, exc.cause)
            return None
        if reply[0] == "1":
            reservation.confirmed, reservation.lease, reservation.need = True, lease, need
            return None
        wait = float(reply[2])
        if reply[1] in ("tpm", "concurrency"):
            # Another process's refund or release can make room sooner: ask again by then.
            wait = min(wait, self.state.policy.sync_interval)
        now = self.state.now()
        self.hold(now + wait, f"shared_{reply[1]}")
        self._refuse(f"shared_{reply[1]}")
        self.release(reservation, 0, now)
        return wait

    def _without_redis(self, reservation: Reservation, cause: str | None) -> None:
        """Redis is away: the mirror's admission stands (``local``), or the key refuses."""
        if self.state.policy.on_unavailable == "local":
            return
        self.release(reservation, 0, self.state.now())
        raise NoEndpointAvailable(
            f"shared state at {self.state.link.url} is unavailable ({cause}) and [shared] on_unavailable = 'refuse'",
            route=self.scope,
        )
