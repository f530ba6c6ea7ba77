"""One endpoint's shared state: its limiter and breaker record on Redis, mirrored locally.

Each process keeps the endpoint's :class:`~runtime.endpoint.limiter.Limiter` and
:class:`~runtime.endpoint.breaker.BreakerStorage` as a *mirror*: the synchronous
admission the dispatcher runs reads it, and a refusal there costs no round trip. What
must be decided cluster-wide is decided by one Lua script on Redis:

- :meth:`EndpointShare.confirm` (awaited by the dispatcher after the local admission):
  for an endpoint with an RPM, TPM or concurrency limit, or whose breaker is not closed,
  one ``admit`` call takes the RPM token, the TPM estimate, a concurrency lease and (in
  half-open) a trial permit, all or nothing, after checking the shared throttle and the
  breaker record. An endpoint without limits and with a closed breaker needs no call.
  A refusal holds the endpoint locally until the time the script says capacity returns.
- what happens after the answer (the lease back, TPM reconciled with the real usage, a
  429's throttle, a trip, a trial's outcome, isolate/reset/probe) is queued and sent in
  batches by :class:`~runtime.cluster._state.SharedState`'s writer, off the request path.

The failure counting that leads to a trip (consecutive failures, the failure-rate window)
stays per process: the first process to see enough failures trips the shared record,
and every process honours it. A transition's span is emitted by the process whose script
call made it, when the answer arrives. While Redis is unavailable, the mirror is the
state: every step runs locally, exactly as without ``[shared]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from ..endpoint.breaker import (
    S_CLOSED,
    S_HALF_OPEN,
    S_OPEN,
    WINDOW_BUCKETS,
    BreakerRecord,
    BreakerStorage,
    Outcome,
    Transition,
    step_admit,
    step_isolate,
    step_probe_succeeded,
    step_reset,
    step_settle,
    step_trip,
)
from ..endpoint.limiter import Limiter, Reservation
from ..errors import NoEndpointAvailable
from ..policy import BreakerPolicy, Endpoint
from ._link import PROCESS, Call, Unavailable

if TYPE_CHECKING:
    from ..endpoint.actor import EndpointActor, Permit
    from ._state import SharedState

__all__ = ["EndpointShare", "Share", "SharedBreakerStorage", "SharedLimiter", "SharedReservation", "endpoint_keys", "new_lease"]

# Lease ids are unique across processes and machines: the process, then a counter.
_LEASES = itertools.count(1)


def new_lease() -> str:
    """A concurrency lease id no other process or machine uses."""
    return f"{PROCESS}:{next(_LEASES)}"


def endpoint_keys(prefix: str, endpoint: str) -> tuple[str, str]:
    """The endpoint's state hash and lease set; one hash tag keeps them in one cluster slot."""
    tag = "{" + f"{prefix}:{endpoint}".replace("{", "(").replace("}", ")") + "}"
    return f"{tag}:state", f"{tag}:leases"


class SharedReservation(Reservation):
    """A reservation that Redis confirmed: its lease and the TPM estimate it holds there."""

    confirmed: bool = False
    lease: str = ""
    need: float = 0.0


class Share(Protocol):
    """What a shared limiter needs of its owner: the keys of its Redis hash and lease set,
    the writer's queue, and whether Redis answers."""

    keys: tuple[str, str]

    @property
    def available(self) -> bool: ...
    def send(self, call: Call, done: Callable[[list[str] | None], None] | None = None) -> None: ...
    def throttle_everywhere(self, until: float) -> None: ...


class SharedLimiter(Limiter):
    """An endpoint's (or a gateway key's) limiter, mirroring the shared one: refuses locally
    while Redis said no."""

    __slots__ = ("_held_reason", "_held_until", "_share")

    def __init__(self, rpm: int | None, tpm: int | None, max_concurrency: int | None, share: Share) -> None:
        super().__init__(rpm, tpm, max_concurrency)
        self._share = share
        self._held_until = -math.inf
        self._held_reason = "shared"

    @property
    def limited(self) -> bool:
        """True when admission needs the shared buckets or leases."""
        return bool(self.rpm or self.tpm or self.max_concurrency)

    def try_acquire(self, tokens: int, now: float) -> Reservation | None:
        """As :meth:`Limiter.try_acquire`, refusing at once while a shared refusal holds."""
        if now < self._held_until:
            return self._refuse(self._held_reason)
        reservation = super().try_acquire(tokens, now)
        if reservation is None:
            return None
        shared = SharedReservation(reservation.tokens)
        if self._trial is reservation:
            self._trial = shared  # the trial ends when the reservation the permit holds is released
        return shared

    def available_at(self, tokens: int, now: float) -> float:
        """As :meth:`Limiter.available_at`, no sooner than the shared refusal ends."""
        return max(super().available_at(tokens, now), self._held_until)

    def hold(self, until: float, reason: str) -> None:
        """Redis refused (``reason``): refuse locally until loop time ``until``."""
        self._held_until = until
        self._held_reason = reason

    def release(self, reservation: Reservation, actual_tokens: int | None, now: float) -> None:
        """As :meth:`Limiter.release`; a confirmed reservation also gives its lease back and
        reconciles the shared TPM bucket (queued, not awaited)."""
        if reservation.released:
            return
        super().release(reservation, actual_tokens, now)
        if isinstance(reservation, SharedReservation) and reservation.confirmed:
            used = -1 if actual_tokens is None else actual_tokens
            self._share.send(("release", self._share.keys, [reservation.lease, self.tpm or 0, reservation.need, used]))

    def throttle(self, until: float) -> None:
        """As :meth:`Limiter.throttle`, and the same throttle for every process."""
        super().throttle(until)
        self._share.throttle_everywhere(until)

    def unthrottle(self) -> None:
        """As :meth:`Limiter.unthrottle`, for every process (a reset by hand)."""
        super().unthrottle()
        if self._share.available:
            self._share.send(("throttle", self._share.keys[:1], [0]))

    def throttle_here(self, until: float) -> None:
        """Throttle this process only: what another process's 429 told Redis."""
        super().throttle(until)

    def unthrottle_here(self) -> None:
        """End this process's throttle only: Redis holds none (it ended, or was reset by hand)."""
        super().unthrottle()


class SharedBreakerStorage(BreakerStorage):
    """The breaker's record, mirroring the shared one; its steps go to Redis while it is there.

    Each step still runs on the mirror at once (so this process stops sending the moment
    it trips), but its transition is not announced here: the shared step is queued and the
    transition Redis made (if any) is announced when its answer arrives. If Redis is gone
    by then, the local transition is announced instead.
    """

    def __init__(self, share: EndpointShare) -> None:
        super().__init__(name="redis")
        self._share = share
        # Trial permits Redis gave this process and not yet settled: only their outcomes
        # are the cluster's trials (a permit refused by Redis, or a call admitted while
        # closed, settles here without touching the shared permits).
        self.trials_held = 0

    def _shared(self, step: str, transition: Transition | None, policy: BreakerPolicy | None = None,
                *, reason: str = "", retry_after: float | None = None, jitter: float = 0.5,
                outcome: Outcome | None = None) -> Transition | None:
        if not self._share.available:
            return transition
        self._share.breaker_step(step, transition, policy, reason, retry_after, jitter, outcome)
        return None

    def admit(self, policy: BreakerPolicy, now: float) -> tuple[bool, Transition | None]:
        """The local view; in a shared world :meth:`EndpointShare.confirm` decides (and announces)."""
        admitted, moved = step_admit(self.record, policy, now)
        return admitted, (moved if not self._share.available else None)

    def settle(
        self, policy: BreakerPolicy, outcome: Outcome, now: float, retry_after: float | None, jitter: float
    ) -> Transition | None:
        """Count locally; a trip or a trial's outcome goes to the shared record."""
        if not self._share.available:
            return super().settle(policy, outcome, now, retry_after, jitter)
        if self.record.state == S_HALF_OPEN:
            if self.trials_held <= 0:
                return None  # not one of the cluster's trials: its outcome decides nothing
            self.trials_held -= 1
            moved = step_settle(self.record, policy, outcome, now, retry_after, jitter)
            return self._shared("trial", moved, policy, retry_after=retry_after, jitter=jitter, outcome=outcome)
        moved = step_settle(self.record, policy, outcome, now, retry_after, jitter)
        if moved is not None and moved[1] == S_OPEN:
            return self._shared("trip", moved, policy, reason=moved[2], retry_after=retry_after, jitter=jitter)
        return moved

    def tick(self, policy: BreakerPolicy, now: float) -> Transition | None:
        """Open → half-open once the period is over, decided by the shared record."""
        if self.record.state != S_OPEN:
            return None
        if not self._share.available:
            return super().tick(policy, now)
        until = self.record.open_until
        if not self.record.isolated and (until is None or now >= until):
            self._share.breaker_step("tick", None, policy, "", None, 0.5, None)
        return None

    def trip(
        self, policy: BreakerPolicy, now: float, reason: str, retry_after: float | None, jitter: float
    ) -> Transition | None:
        """:func:`step_trip`, shared."""
        moved = step_trip(self.record, policy, now, reason, retry_after, jitter)
        return self._shared("trip", moved, policy, reason=reason, retry_after=retry_after, jitter=jitter)

    def isolate(self) -> Transition | None:
        """:func:`step_isolate`, shared."""
        return self._shared("isolate", step_isolate(self.record))

    def reset(self) -> Transition | None:
        """:func:`step_reset`, shared."""
        return self._shared("reset", step_reset(self.record))

    def probe_succeeded(self) -> Transition | None:
        """:func:`step_probe_succeeded`, shared."""
        return self._shared("probe", step_probe_succeeded(self.record))


def _adopt(rec: BreakerRecord, view: list[str], now: float) -> float:
    """Copy the shared record's ``view`` (see the scripts) onto the mirror; the throttle left."""
    state, left, open_for, trips, streak, isolated, permits, successes, throttle = view[:9]
    before = rec.state
    rec.state = state
    rec.open_until = now + float(left) if left else None
    rec.open_for = float(open_for) if open_for else rec.open_for
    rec.trips = int(trips)
    rec.streak = int(streak)
    rec.isolated = isolated == "1"
    rec.trial_permits = int(permits)
    rec.trial_successes = int(successes)
    if state != before:
        if state == S_CLOSED:
            rec.consecutive = 0
            rec.window_calls[:] = [0] * WINDOW_BUCKETS
            rec.window_fails[:] = [0] * WINDOW_BUCKETS
        elif state == S_OPEN:
            rec.opened_at = datetime.now(UTC)
    return float(throttle)


class EndpointShare:
    """Everything one endpoint shares: keys, mirror limiter and storage, the admission call."""

    def __init__(self, state: SharedState, endpoint: Endpoint) -> None:
        self.state = state
        self.endpoint = endpoint
        self.keys = endpoint_keys(state.policy.prefix, endpoint.name)
        self.storage = SharedBreakerStorage(self)
        self.limiter = SharedLimiter(endpoint.rpm, endpoint.tpm, endpoint.max_concurrency, self)
        self.actor: EndpointActor | None = None

    @property
    def available(self) -> bool:
        """True while Redis answers."""
        return self.state.link.available

    def new_limiter(self) -> SharedLimiter:
        """A fresh limiter mirror for a (re)started actor (restarts get fresh runtime state)."""
        self.limiter = SharedLimiter(self.endpoint.rpm, self.endpoint.tpm, self.endpoint.max_concurrency, self)
        return self.limiter

    def attach(self, actor: EndpointActor) -> None:
        """Bind a (re)started actor: transitions are announced through its breaker, and the
        dispatcher confirms its admissions here."""
        self.actor = actor
        actor.confirm = self.confirm

    def send(self, call: Call, done: Callable[[list[str] | None], None] | None = None) -> None:
        """Queue a call for the writer; ``done`` gets its reply (None if Redis was gone)."""
        self.state.send(call, done)

    # --- admission ---------------------------------------------------------------------

    async def confirm(self, permit: Permit) -> bool:
        """Take the shared capacity for an admitted ``permit``: one round trip, or none when
        the endpoint has no limits and its breaker is closed. False: refused, undone here."""
        limiter = self.limiter
        trial = self.storage.record.state != S_CLOSED
        if not limiter.limited and not trial:
            return True
        reservation = permit.reservation
        assert isinstance(reservation, SharedReservation)  # the actor's limiter is this share's
        link = self.state.link
        if not link.available:
            return self._without_redis(permit, link.cause)
        policy = self.endpoint.breaker
        lease = new_lease() if limiter.max_concurrency else ""
        need = float(min(max(reservation.tokens, 0), limiter.tpm or 0))
        try:
            reply = await self.state.call(("admit", self.keys, [
                limiter.rpm or 0, limiter.tpm or 0, need, limiter.max_concurrency or 0, lease,
                self.state.policy.lease_ttl, int(trial), policy.open_for, policy.max_open_for, policy.half_open_calls,
            ]))
        except Unavailable as exc:
            return self._without_redis(permit, exc.cause)
        now = self.state.now()
        self.adopt(reply[3:], now, announce=reply[12:15] if len(reply) >= 15 else None)
        if reply[0] == "1":
            if reply[3] == S_HALF_OPEN:  # admitted in half-open: Redis gave this call a trial permit
                self.storage.trials_held += 1
            reservation.confirmed = True
            reservation.lease = lease
            reservation.need = need
            return True
        wait = float(reply[2])
        if reply[1] in ("tpm", "concurrency"):
            # Another process's refund or release can make room sooner than the leak would:
            # ask again after a sync interval at the latest.
            wait = min(wait, self.state.policy.sync_interval)
        limiter.hold(now + wait, f"shared_{reply[1]}")
        limiter.release(reservation, 0, now)  # not confirmed: only the local hold goes back
        return False

    def _without_redis(self, permit: Permit, cause: str | None) -> bool:
        if self.state.policy.on_unavailable == "local":
            return True
        self.limiter.release(permit.reservation, 0, self.state.now())
        raise NoEndpointAvailable(
            f"shared state at {self.state.link.url} is unavailable ({cause}) and [shared] on_unavailable = 'refuse'",
            route=self.endpoint.name,
        )

    # --- what Redis said -----------------------------------------------------------------

    def adopt(self, view: list[str], now: float, *, announce: list[str] | None = None,
              figures: dict[str, Any] | None = None) -> None:
        """Make the mirror what Redis holds; announce the transition this process's call made."""
        before = self.storage.record.state
        throttle = _adopt(self.storage.record, view, now)
        if self.storage.record.state != S_HALF_OPEN:
            self.storage.trials_held = 0  # a new period: permits from the last one are void there too
        limiter = self.limiter
        throttled = limiter.throttled_until > now
        if throttle > 0:
            limiter.throttle_here(now + throttle)
        elif throttled:
            limiter.unthrottle_here()
        actor = self.actor
        if announce and actor is not None:
            record = self.storage.record
            facts = dict(figures or {})
            facts.setdefault("failure_count", record.consecutive)
            facts.setdefault("failure_rate", 0.0)
            facts["open_for"] = None if record.open_for is None or record.state != S_OPEN else round(record.open_for, 6)
            facts.setdefault("retry_after", None)
            actor.breaker.announce((announce[0], announce[1], announce[2], facts))
        if actor is not None and (self.storage.record.state != before or throttled != (throttle > 0)):
            actor.notice()

    def breaker_step(self, step: str, local: Transition | None, policy: BreakerPolicy | None, reason: str,
                     retry_after: float | None, jitter: float, outcome: Outcome | None) -> None:
        """Queue a breaker step; announce what Redis decided, or ``local`` if Redis is gone."""
        p = policy or self.endpoint.breaker
        args: list[str | int | float] = [
            step, p.open_for, p.max_open_for, p.half_open_calls, reason,
            "" if retry_after is None else retry_after, jitter, "" if outcome is None else outcome.value,
        ]
        figures = dict(local[3]) if local is not None else None

        def done(reply: list[str] | None) -> None:
            if reply is None:
                if local is not None and self.actor is not None:
                    self.actor.breaker.announce(local)
                return
            self.adopt(reply[3:], self.state.now(), announce=reply[12:15] if len(reply) >= 15 else None,
                       figures=figures)

        self.send(("breaker", self.keys[:1], args), done)

    def throttle_everywhere(self, until: float) -> None:
        """Queue the throttle for every process (seconds from now on Redis's clock)."""
        seconds = until - self.state.now()
        if seconds > 0 and self.available:
            self.send(("throttle", self.keys[:1], [seconds]))

    def resync(self) -> list[Call]:
        """What this process learnt alone while Redis was away, as calls to replay."""
        calls: list[Call] = []
        now = self.state.now()
        record = self.storage.record
        if record.state == S_OPEN and not record.isolated and record.open_until is not None and record.open_until > now:
            p = self.endpoint.breaker
            calls.append(("breaker", self.keys[:1], [
                "trip", p.open_for, p.max_open_for, p.half_open_calls, "tripped while shared state was away",
                record.open_until - now, 0.0, "",
            ]))
        throttled = self.limiter.throttled_until - now
        if throttled > 0:
            calls.append(("throttle", self.keys[:1], [throttled]))
        return calls

