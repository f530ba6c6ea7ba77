"""Client-side admission by rate and concurrency for one endpoint.

Request-rate (RPM) and token-rate (TPM) limits are :class:`TokenBucket` objects over a
60-second period; a concurrency cap, a 429 throttle and the provider's own rate-limit
headers sit beside them. :meth:`Limiter.try_acquire` answers "can you take this request
now?" without waiting, and reserves when the answer is yes.

The buckets are ours, a few lines of arithmetic, rather than aiolimiter's
``AsyncLimiter``: admission here must reserve *without waiting* (aiolimiter only offers
``has_capacity`` and an ``acquire`` that waits), give tokens back when a request used
less than its estimate (aiolimiter cannot refund), and say when capacity returns so the
dispatcher can wait for the soonest endpoint (aiolimiter cannot tell). Driving its
``acquire`` coroutine by hand or mirroring its internal level would depend on internals
it is free to change. A request reserves its estimate (prompt + ``max_tokens``) and is
reconciled with the real usage at release: the difference is refunded (or, when it used
more, charged), so the bucket's level is real usage and no shadow ledger is needed.

And a bucket is not fair for mixed amounts: small requests keep fitting into capacity a
large one waits for. When a request is refused for tokens, its size is remembered as the
head-of-line demand; smaller requests are then admitted only if they leave room for it,
until a request at least that large is admitted or, at the latest, shortly after the time
it should have fitted (:data:`HEAD_OF_LINE_GRACE`), so a large request the dispatcher sent
elsewhere cannot hold the bucket for long.

A throttle that lifts lets one request through first (the trial): the others are
refused (``throttle_trial``) until it is released, so requests that waited for the same
``Retry-After`` do not all meet the next 429 in the same millisecond. If the trial is
throttled again, the next lift has a trial of its own.

Nothing here reads a clock: ``now`` is the event loop's time, passed in.
"""

from __future__ import annotations

import math
import sys

import msgspec

from ..types import FrozenStruct, RateLimitSnapshot

__all__ = ["HEAD_OF_LINE_GRACE", "Limiter", "LimiterStats", "Reservation", "TokenBucket"]

MINUTE = 60.0
# How long past its expected fit a head-of-line demand is kept: time for the dispatcher
# to come back for it, short enough that an abandoned demand does not block others long.
HEAD_OF_LINE_GRACE = 2.0
# Provider headers below this share of the provider's limit switch on a gate that
# follows the provider's count until its reset; above it, they cannot bind soon.
LOW_REMAINING = 0.2


class Reservation(msgspec.Struct, eq=False, gc=False):
    """One admitted request's hold on the limiter; give it back with :meth:`Limiter.release`.
    (A struct made in C, one Python ``__init__`` less per admission; compared by identity;
    untracked by the collector: it holds only numbers and flags, so it is in no cycle.)"""

    tokens: int
    released: bool = False

    def __repr__(self) -> str:
        return f"<Reservation {self.tokens} tokens{' released' if self.released else ''}>"


class LimiterStats(FrozenStruct, frozen=True):
    """A limiter's figures at one moment.

    ``tokens_in_bucket`` is the TPM bucket's level as of the last call that passed ``now``:
    what reservations and real usage put in and has not leaked out (above ``tpm``: a debt).
    ``head_of_line`` is the token demand small requests currently leave room for (0: none).
    ``provider_*_left`` is the provider's own count while its headers run low (None: not
    binding). ``refused`` counts refusals by reason: throttled, throttle_trial,
    concurrency, rpm, tpm, head_of_line, provider_requests, provider_tokens.
    """

    rpm: int | None
    tpm: int | None
    max_concurrency: int | None
    in_flight: int
    admitted: int
    refused: dict[str, int]
    throttled_until: float | None
    tokens_reserved: float
    tokens_used: int
    tokens_in_bucket: float
    head_of_line: float
    provider_requests_left: float | None = None
    provider_tokens_left: float | None = None


class _ProviderWindow:
    """The provider's own count from its headers: ``remaining`` at ``observed_at``,
    refilling linearly to ``limit`` (when known) by ``observed_at + reset``, minus what
    this limiter took since. Past the reset it no longer binds."""

    __slots__ = ("limit", "observed_at", "remaining", "reset", "taken")

    def __init__(self, remaining: int, limit: int | None, observed_at: float, reset: float) -> None:
        self.remaining = float(remaining)
        self.limit = limit
        self.observed_at = observed_at
        self.reset = reset
        self.taken = 0.0

    def _rate(self) -> float:
        limit = self.limit
        return (limit - self.remaining) / self.reset if limit is not None and limit > self.remaining else 0.0

    def room(self, now: float) -> float:
        """What the provider would still take now; ``inf`` once its reset has passed."""
        elapsed = now - self.observed_at
        if elapsed >= self.reset:
            return math.inf
        return self.remaining + self._rate() * max(elapsed, 0.0) - self.taken

    def ready_at(self, amount: float, now: float) -> float:
        """When ``amount`` fits, by the refill (at the latest when the count resets)."""
        end = self.observed_at + self.reset
        rate = self._rate()
        if rate > 0:
            end = min(end, self.observed_at + (amount + self.taken - self.remaining) / rate)
        return max(now, end)


class TokenBucket:
    """A leaky bucket of ``capacity`` that drains at ``rate`` per second; pure arithmetic on ``now``.

    The level is what was taken and has not leaked out yet. An amount larger than the
    whole bucket counts as a full bucket (it fits once the bucket is empty). A level above
    the capacity (a request used more than it reserved) is a debt the next ones wait out.
    """

    __slots__ = ("at", "capacity", "level", "rate")

    def __init__(self, capacity: float, period: float = MINUTE) -> None:
        self.capacity = float(capacity)
        self.rate = self.capacity / period
        self.level = 0.0
        self.at = -math.inf

    def __repr__(self) -> str:
        return f"<TokenBucket {self.level:.1f}/{self.capacity:g} at {self.at:.3f}>"

    def _leak(self, now: float) -> float:
        elapsed = now - self.at
        if elapsed > 0.0:
            level = self.level - elapsed * self.rate
            self.level = level if level > 0.0 else 0.0
            self.at = now
        return self.level

    def fits(self, amount: float, now: float) -> bool:
        """Would ``amount`` fit now?"""
        return self._leak(now) + min(amount, self.capacity) <= self.capacity

    def reserve(self, amount: float, now: float) -> bool:
        """Take ``amount`` if it fits now; False (and nothing taken) if not."""
        if not self.fits(amount, now):
            return False
        self.level += min(amount, self.capacity)
        return True

    def reconcile(self, reserved: float, actual: float, now: float) -> None:
        """Correct a reservation of ``reserved`` to what was really used: refund or charge the difference."""
        level = self._leak(now) + actual - reserved
        self.level = level if level > 0.0 else 0.0

    def available_at(self, amount: float, now: float) -> float:
        """Loop time at which ``amount`` fits, if nothing else is taken meanwhile."""
        over = self._leak(now) + min(amount, self.capacity) - self.capacity
        return now + over / self.rate if over > 0.0 else now


class Limiter:
    """RPM and TPM leaky buckets (our own, see the module docstring), a concurrency cap, throttling and provider headers.

    ``rpm``, ``tpm`` and ``max_concurrency`` are None when unlimited; with all three
    None and no throttle or provider gate active, admission is a couple of comparisons.
    A request larger than the whole TPM bucket is admitted against a full bucket (it
    waits for the bucket to be empty): the provider is the judge of "too large".
    """

    __slots__ = (
        "_admitted",
        "_counts_only",
        "_free",
        "_gate_requests",
        "_gate_tokens",
        "_hol_tokens",
        "_hol_until",
        "_last_refusal",
        "_max_in_flight",
        "_plain",
        "_refused",
        "_released",
        "_requests",
        "_reserved",
        "_throttled_until",
        "_tokens",
        "_trial",
        "_trial_due",
        "_used",
        "max_concurrency",
        "rpm",
        "tpm",
    )

    def __init__(self, rpm: int | None = None, tpm: int | None = None, max_concurrency: int | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self._requests = TokenBucket(rpm) if rpm else None
        self._tokens = TokenBucket(tpm) if tpm else None
        self._max_in_flight = max_concurrency if max_concurrency else sys.maxsize
        self._throttled_until = -math.inf
        self._trial_due = False  # the next admission after the throttle is its trial
        self._trial: Reservation | None = None
        self._hol_tokens = 0.0
        self._hol_until = -math.inf
        self._gate_requests: _ProviderWindow | None = None
        self._gate_tokens: _ProviderWindow | None = None
        self._plain = not rpm and not tpm
        # A subclass that does more on acquire or release (shared state's) is never free: the
        # endpoint actor counts a free limiter's admissions and releases itself.
        self._counts_only = type(self).try_acquire is Limiter.try_acquire and type(self).release is Limiter.release
        # Plain and uncapped: an admission is one count, a release one more (see _replain).
        self._free = self._plain and not max_concurrency and self._counts_only
        # In flight is admitted - released: two counts per request, where a count of its
        # own would take a third.
        self._admitted = 0
        self._released = 0
        self._refused: dict[str, int] = {}
        self._last_refusal: str | None = None
        self._reserved = 0.0
        self._used = 0

    # --- reading ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._admitted - self._released  # (EndpointActor.score reads the two counts itself)

    @property
    def throttled_until(self) -> float:
        """Loop time until which everything is refused (``-inf`` when never throttled)."""
        return self._throttled_until

    @property
    def last_refusal(self) -> str | None:
        """Why the last refused request was refused (a ``refused`` key of the statistics)."""
        return self._last_refusal

    def statistics(self) -> LimiterStats:
        """The limiter's figures now (token levels as of the last call that passed ``now``)."""
        gate_r, gate_t = self._gate_requests, self._gate_tokens
        return LimiterStats(
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrency=self.max_concurrency,
            in_flight=self._admitted - self._released,
            admitted=self._admitted,
            refused=dict(self._refused),
            throttled_until=None if self._throttled_until == -math.inf else self._throttled_until,
            tokens_reserved=self._reserved,
            tokens_used=self._used,
            tokens_in_bucket=0.0 if self._tokens is None else round(self._tokens.level, 6),
            head_of_line=self._hol_tokens,
            provider_requests_left=None if gate_r is None else gate_r.remaining - gate_r.taken,
            provider_tokens_left=None if gate_t is None else gate_t.remaining - gate_t.taken,
        )

    def __repr__(self) -> str:
        cap = "∞" if self.max_concurrency is None else str(self.max_concurrency)
        parts = [f"in-flight {self._admitted - self._released}/{cap}"]
        if self.rpm:
            parts.append(f"rpm {self.rpm}")
        if self.tpm:
            parts.append(f"tpm {self.tpm} ({self._tokens.level if self._tokens else 0.0:.0f} in bucket)")
        if self._hol_tokens:
            parts.append(f"head-of-line {self._hol_tokens:.0f} until {self._hol_until:.3f}")
        if self._throttled_until != -math.inf:
            parts.append(f"throttled until {self._throttled_until:.3f}")
        return f"<Limiter [{' | '.join(parts)}]>"

    # --- the hot path ------------------------------------------------------------------

    def try_acquire(self, tokens: int, now: float) -> Reservation | None:
        """Reserve a request of ``tokens`` (estimated prompt + ``max_tokens``) now, or
        refuse it at once (None; :attr:`last_refusal` says why). Never waits."""
        # (EndpointActor.try_admit and Permit.settle count a free limiter themselves, a call
        # less each per request: the free paths of try_acquire and release are theirs too.)
        if self._free:  # no limit, cap, throttle or trial (see _replain): nothing to check
            self._admitted += 1
            return Reservation(tokens)
        if now < self._throttled_until:
            return self._refuse("throttled")
        if self._admitted - self._released >= self._max_in_flight:
            return self._refuse("concurrency")
        if self._plain:
            self._admitted += 1
            return Reservation(tokens)
        return self._acquire_limited(tokens, now)

    def release(self, reservation: Reservation, actual_tokens: int | None, now: float) -> None:
        """Give back a reservation: the concurrency slot, and the TPM estimate reconciled
        with ``actual_tokens`` (input + output as the provider reported them).

        None means "unknown" and leaves the estimate charged (a cancelled stream may have
        used any part of it); pass 0 when the request certainly used nothing. Releasing
        twice is harmless.
        """
        if reservation.released:
            return
        reservation.released = True
        self._released += 1
        if actual_tokens is not None:
            self._used += actual_tokens
        if self._free:  # no trial out, no TPM bucket (see _replain)
            return
        if reservation is self._trial:
            self._trial = None  # had it met a 429, the throttle that follows makes the next trial due
            self._replain()
        bucket = self._tokens
        if bucket is not None:
            need = self._need(reservation.tokens)
            self._reserved -= need
            if actual_tokens is not None:
                bucket.reconcile(need, actual_tokens, now)

    # --- commands ----------------------------------------------------------------------

    def throttle(self, until: float) -> None:
        """Refuse everything until loop time ``until`` (after a 429). Only ever extends:
        a shorter Retry-After arriving late does not cut a longer throttle short. When it
        lifts, one request goes first (see the module docstring)."""
        if until > self._throttled_until:
            self._throttled_until = until
        self._trial_due = True
        self._plain = self._free = False  # admission takes the slow path, which knows about the trial

    def unthrottle(self) -> None:
        """End any throttle now (a manual reset): no trial either."""
        self._throttled_until = -math.inf
        self._trial_due = False
        self._trial = None
        self._replain()

    def observe(self, snapshot: RateLimitSnapshot, now: float) -> bool:
        """Adjust admission to the provider's rate-limit headers; True when the limiter is
        throttled past ``now`` afterwards (by these headers or an earlier 429).

        A count at 0 with a reset in N seconds throttles until ``now + N``. A count
        running low (under 20 % of the provider's limit, or any count when the limit is
        not given) switches on a gate that follows the provider's count, refilling
        towards its limit until the reset, so the limiter stops before the provider
        starts answering 429. A healthy count switches the gate off.
        """
        if self._gate_requests is None and self._gate_tokens is None:
            # Nearly every reply: healthy counts and no gate on, so admission stays as it was
            # (what _gate would find for each count, without its two calls).
            remaining = snapshot.remaining_requests
            if remaining is None or (
                remaining > 0 and (limit := snapshot.limit_requests) is not None and remaining >= LOW_REMAINING * limit
            ):
                remaining = snapshot.remaining_tokens
                if remaining is None or (
                    remaining > 0 and (limit := snapshot.limit_tokens) is not None and remaining >= LOW_REMAINING * limit
                ):
                    return now < self._throttled_until
        requests = self._gate(snapshot.remaining_requests, snapshot.limit_requests, snapshot.reset_requests, now)
        tokens = self._gate(snapshot.remaining_tokens, snapshot.limit_tokens, snapshot.reset_tokens, now)
        if requests is not None or tokens is not None or self._gate_requests is not None or self._gate_tokens is not None:
            self._gate_requests, self._gate_tokens = requests, tokens
            self._replain()
        return now < self._throttled_until

    def headroom(self, now: float) -> tuple[float | None, float | None]:
        """Requests and tokens the RPM and TPM buckets would take now (None: no such limit),
        for ``x-ratelimit-remaining-*`` headers."""
        requests = None if self._requests is None else self._requests.capacity - self._requests._leak(now)
        tokens = None if self._tokens is None else self._tokens.capacity - self._tokens._leak(now)
        return requests, tokens

    def available_at(self, tokens: int, now: float) -> float:
        """Estimated loop time at which a request of ``tokens`` could be admitted, if no
        other request arrives first (``now``: at once). ``inf`` when only a release can
        make room (the concurrency cap is full): no estimate is possible for that."""
        if self._admitted - self._released >= self._max_in_flight:
            return math.inf
        when = max(now, self._throttled_until)
        for gate, amount in ((self._gate_requests, 1.0), (self._gate_tokens, float(tokens))):
            if gate is not None and gate.room(now) < amount:
                when = max(when, gate.ready_at(amount, now))
        if self._requests is not None:
            when = max(when, self._requests.available_at(1.0, now))
        if self._tokens is not None:
            need = self._need(tokens)
            when = max(when, self._tokens.available_at(need + self._hol_for(need, now), now))
        return when

    # --- internals -----------------------------------------------------------------------

    def _refuse(self, reason: str) -> Reservation | None:
        """Count a refusal; returns None, for ``return self._refuse(...)``."""
        self._refused[reason] = self._refused.get(reason, 0) + 1
        self._last_refusal = reason
        return None

    def _need(self, tokens: int) -> float:
        tpm = self.tpm or 0
        return float(min(max(tokens, 0), tpm))

    def _hol_for(self, need: float, now: float) -> float:
        """The head-of-line demand a request of ``need`` must leave room for (0: none)."""
        hol = self._hol_tokens
        if hol and now >= self._hol_until:
            self._hol_tokens = hol = 0.0
        return hol if need < hol else 0.0

    def _acquire_limited(self, tokens: int, now: float) -> Reservation | None:
        if self._trial is not None:
            return self._refuse("throttle_trial")
        reservation = self._take(tokens, now)
        if reservation is not None and self._trial_due:
            self._trial_due = False
            self._trial = reservation
        return reservation

    def _take(self, tokens: int, now: float) -> Reservation | None:
        gate_r, gate_t = self._gate_requests, self._gate_tokens
        if gate_r is not None or gate_t is not None:
            refusal = self._check_gates(tokens, now)
            if refusal is not None:
                return self._refuse(refusal)
        requests = self._requests
        if requests is not None and not requests.fits(1.0, now):
            return self._refuse("rpm")
        bucket = self._tokens
        if bucket is not None:
            need = self._need(tokens)
            hol = self._hol_for(need, now)
            if hol and (need + hol > bucket.capacity or not bucket.fits(need + hol, now)):
                return self._refuse("head_of_line")
            if not bucket.reserve(need, now):
                if need >= self._hol_tokens:
                    # Remember the largest waiting demand, until shortly after it should fit.
                    self._hol_tokens = need
                    self._hol_until = min(bucket.available_at(need, now), now + MINUTE) + HEAD_OF_LINE_GRACE
                return self._refuse("tpm")
            self._reserved += need
            if self._hol_tokens and need >= self._hol_tokens:
                self._hol_tokens = 0.0  # the demand it was waiting for is served
        if requests is not None:
            requests.reserve(1.0, now)
        if gate_r is not None:
            gate_r.taken += 1.0
        if gate_t is not None:
            gate_t.taken += tokens
        self._admitted += 1
        return Reservation(tokens)

    def _check_gates(self, tokens: int, now: float) -> str | None:
        gate = self._gate_requests
        if gate is not None:
            room = gate.room(now)
            if room == math.inf:
                self._gate_requests = None
            elif room < 1.0:
                return "provider_requests"
        gate = self._gate_tokens
        if gate is not None:
            room = gate.room(now)
            if room == math.inf:
                self._gate_tokens = None
            elif room < tokens:
                return "provider_tokens"
        self._replain()
        return None

    def _gate(
        self, remaining: int | None, limit: int | None, reset: float | None, now: float
    ) -> _ProviderWindow | None:
        if remaining is None or reset is None or reset <= 0:
            return None
        if remaining <= 0:
            self.throttle(now + reset)
            return None
        if limit is not None and remaining >= LOW_REMAINING * limit:
            return None
        return _ProviderWindow(remaining, limit, now, reset)

    def _replain(self) -> None:
        # Plain: no bucket, gate, throttle or trial to consult. A throttle sets the trial due
        # and only an admission past its end (or unthrottle) clears that, so a plain limiter
        # is never throttled at a later ``now``: admission need not compare the clock.
        self._plain = plain = (
            self._requests is None
            and self._tokens is None
            and self._gate_requests is None
            and self._gate_tokens is None
            and not self._trial_due
            and self._trial is None
        )
        self._free = plain and self._max_in_flight == sys.maxsize and self._counts_only
