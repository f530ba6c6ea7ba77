"""Client-side admission by rate and concurrency for one endpoint.

Request-rate (RPM) and token-rate (TPM) buckets are aiolimiter ``AsyncLimiter`` objects over a
60-second period; a concurrency cap, a 429 throttle and the provider's own rate-limit
headers sit beside them. :meth:`Limiter.try_acquire` answers "can you take this request
now?" without waiting, and reserves when the answer is yes.

Two known limits of aiolimiter are designed around here (DESIGN.md, "Known limits"):

- **No non-blocking reserve.** aiolimiter offers ``has_capacity(amount)`` (a check) and
  ``await acquire(amount)`` (which waits). A reservation is a ``has_capacity`` check
  followed by driving ``acquire`` by hand (``coro.send(None)``): with the capacity known
  to be there and nothing in between (one thread, no ``await``), ``acquire`` completes
  without suspending, so the bucket is charged through its documented API and no private
  attribute is touched. Should it ever want to suspend, the coroutine is closed and the
  request refused.
- **No refund or adjustment after the fact.** A request reserves its estimate (prompt +
  ``max_tokens``) and usually uses less. Instead of editing the bucket, the limiter keeps
  two shadows of the TPM bucket, leaked at the same rate: the *charged* level (a mirror
  of what aiolimiter holds) and the *true* level (the same bucket fed with real usage:
  the estimate at reservation, corrected by ``actual - estimate`` at release). Their
  difference is a ledger: positive, aiolimiter holds more than was really used (a credit);
  negative, less (a debt). Each new reservation is charged ``estimate - ledger`` (at
  least 0, at most the bucket), which puts aiolimiter's level back on the true level at
  every admission. Because both shadows leak, a credit cannot outlive the tokens it
  stands for (once the bucket has drained, the overcharge would have leaked anyway), so
  an idle spell does not bank a burst. The shadows are also what :meth:`available_at`
  reads. A debt beyond a whole bucket is carried over to the reservations that follow.

And aiolimiter is not fair for mixed amounts: small requests keep fitting into capacity a
large one waits for. When a request is refused for tokens, its size is remembered as the
head-of-line demand; smaller requests are then admitted only if they leave room for it,
until a request at least that large is admitted or, at the latest, shortly after the time
it should have fitted (:data:`HEAD_OF_LINE_GRACE`), so a large request the dispatcher sent
elsewhere cannot hold the bucket for long.

Nothing here reads a clock: ``now`` is the event loop's time, passed in. aiolimiter reads
the loop's clock itself, so calls must be made on the loop, with ``now`` equal to
``loop.time()`` (``anyio.current_time()``) for the shadows to track it exactly.
"""

from __future__ import annotations

import math
import sys

from aiolimiter import AsyncLimiter

from ..types import FrozenStruct, RateLimitSnapshot

__all__ = ["HEAD_OF_LINE_GRACE", "Limiter", "LimiterStats", "Reservation"]

MINUTE = 60.0
# How long past its expected fit a head-of-line demand is kept: time for the dispatcher
# to come back for it, short enough that an abandoned demand does not block others long.
HEAD_OF_LINE_GRACE = 2.0
# Provider headers below this share of the provider's limit switch on a gate that
# follows the provider's count until its reset; above it, they cannot bind soon.
LOW_REMAINING = 0.2


class Reservation:
    """One admitted request's hold on the limiter; give it back with :meth:`Limiter.release`."""

    __slots__ = ("released", "tokens")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.released = False

    def __repr__(self) -> str:
        return f"<Reservation {self.tokens} tokens{' released' if self.released else ''}>"


class LimiterStats(FrozenStruct, frozen=True):
    """A limiter's figures at one moment.

    ``token_ledger`` is how many tokens the TPM bucket holds beyond true usage (positive:
    a credit the next reservations get back; negative: a debt they pay).
    ``head_of_line`` is the token demand small requests currently leave room for (0: none).
    ``provider_*_left`` is the provider's own count while its headers run low (None: not
    binding). ``refused`` counts refusals by reason: throttled, concurrency, rpm, tpm,
    head_of_line, provider_requests, provider_tokens.
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
    token_ledger: float
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


def _take(bucket: AsyncLimiter, amount: float) -> bool:
    """Charge ``amount`` to ``bucket`` through ``acquire`` without waiting (see module doc)."""
    coro = bucket.acquire(amount)
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()  # it wanted to wait: not a reservation we can make now
    return False


class Limiter:
    """RPM and TPM buckets (aiolimiter), a concurrency cap, throttling and provider headers.

    ``rpm``, ``tpm`` and ``max_concurrency`` are None when unlimited; with all three
    None and no throttle or provider gate active, admission is a couple of comparisons.
    A request larger than the whole TPM bucket is admitted against a full bucket (it
    waits for the bucket to be empty): the provider is the judge of "too large".
    """

    __slots__ = (
        "_admitted",
        "_charged",
        "_gate_requests",
        "_gate_tokens",
        "_hol_tokens",
        "_hol_until",
        "_in_flight",
        "_last_refusal",
        "_max_in_flight",
        "_plain",
        "_refused",
        "_req_at",
        "_req_level",
        "_req_rate",
        "_requests",
        "_reserved",
        "_throttled_until",
        "_tok_at",
        "_tok_rate",
        "_tokens",
        "_true",
        "_used",
        "max_concurrency",
        "rpm",
        "tpm",
    )

    def __init__(self, rpm: int | None = None, tpm: int | None = None, max_concurrency: int | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self.max_concurrency = max_concurrency
        self._requests = AsyncLimiter(rpm, MINUTE) if rpm else None
        self._tokens = AsyncLimiter(tpm, MINUTE) if tpm else None
        self._req_rate = rpm / MINUTE if rpm else 0.0
        self._tok_rate = tpm / MINUTE if tpm else 0.0
        self._max_in_flight = max_concurrency if max_concurrency else sys.maxsize
        self._in_flight = 0
        self._throttled_until = -math.inf
        # Shadows of the buckets as of ``_req_at`` / ``_tok_at`` (see the module doc).
        self._req_level = 0.0
        self._req_at = -math.inf
        self._charged = 0.0
        self._true = 0.0
        self._tok_at = -math.inf
        self._hol_tokens = 0.0
        self._hol_until = -math.inf
        self._gate_requests: _ProviderWindow | None = None
        self._gate_tokens: _ProviderWindow | None = None
        self._plain = not rpm and not tpm
        self._admitted = 0
        self._refused: dict[str, int] = {}
        self._last_refusal: str | None = None
        self._reserved = 0.0
        self._used = 0

    # --- reading ---------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests admitted and not yet released."""
        return self._in_flight

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
            in_flight=self._in_flight,
            admitted=self._admitted,
            refused=dict(self._refused),
            throttled_until=None if self._throttled_until == -math.inf else self._throttled_until,
            tokens_reserved=self._reserved,
            tokens_used=self._used,
            token_ledger=round(self._charged - self._true, 6),
            head_of_line=self._hol_tokens,
            provider_requests_left=None if gate_r is None else gate_r.remaining - gate_r.taken,
            provider_tokens_left=None if gate_t is None else gate_t.remaining - gate_t.taken,
        )

    def __repr__(self) -> str:
        cap = "∞" if self.max_concurrency is None else str(self.max_concurrency)
        parts = [f"in-flight {self._in_flight}/{cap}"]
        if self.rpm:
            parts.append(f"rpm {self.rpm}")
        if self.tpm:
            parts.append(f"tpm {self.tpm} (ledger {self._charged - self._true:+.0f})")
        if self._hol_tokens:
            parts.append(f"head-of-line {self._hol_tokens:.0f} until {self._hol_until:.3f}")
        if self._throttled_until != -math.inf:
            parts.append(f"throttled until {self._throttled_until:.3f}")
        return f"<Limiter [{' | '.join(parts)}]>"

    # --- the hot path ------------------------------------------------------------------

    def try_acquire(self, tokens: int, now: float) -> Reservation | None:
        """Reserve a request of ``tokens`` (estimated prompt + ``max_tokens``) now, or
        refuse it at once (None; :attr:`last_refusal` says why). Never waits."""
        if now < self._throttled_until:
            return self._refuse("throttled")
        if self._in_flight >= self._max_in_flight:
            return self._refuse("concurrency")
        if self._plain:
            self._in_flight += 1
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
        self._in_flight -= 1
        if actual_tokens is not None:
            self._used += actual_tokens
        tpm = self.tpm
        if self._tokens is not None and tpm is not None:
            estimate = reservation.tokens
            need = float(estimate if estimate < tpm else tpm)
            self._reserved -= need
            if actual_tokens is not None:
                self._leak_tokens(now)
                level = self._true + (actual_tokens - need)
                self._true = level if level > 0.0 else 0.0

    # --- commands ----------------------------------------------------------------------

    def throttle(self, until: float) -> None:
        """Refuse everything until loop time ``until`` (after a 429). Only ever extends:
        a shorter Retry-After arriving late does not cut a longer throttle short."""
        if until > self._throttled_until:
            self._throttled_until = until

    def unthrottle(self) -> None:
        """End any throttle now (a manual reset)."""
        self._throttled_until = -math.inf

    def observe(self, snapshot: RateLimitSnapshot, now: float) -> None:
        """Adjust admission to the provider's rate-limit headers.

        A count at 0 with a reset in N seconds throttles until ``now + N``. A count
        running low (under 20 % of the provider's limit, or any count when the limit is
        not given) switches on a gate that follows the provider's count, refilling
        towards its limit until the reset, so the limiter stops before the provider
        starts answering 429. A healthy count switches the gate off.
        """
        self._gate_requests = self._gate(
            snapshot.remaining_requests, snapshot.limit_requests, snapshot.reset_requests, now
        )
        self._gate_tokens = self._gate(snapshot.remaining_tokens, snapshot.limit_tokens, snapshot.reset_tokens, now)
        self._replain()

    def available_at(self, tokens: int, now: float) -> float:
        """Estimated loop time at which a request of ``tokens`` could be admitted, if no
        other request arrives first (``now``: at once). ``inf`` when only a release can
        make room (the concurrency cap is full): no estimate is possible for that."""
        if self._in_flight >= self._max_in_flight:
            return math.inf
        when = max(now, self._throttled_until)
        for gate, amount in ((self._gate_requests, 1.0), (self._gate_tokens, float(tokens))):
            if gate is not None and gate.room(now) < amount:
                when = max(when, gate.ready_at(amount, now))
        if self._requests is not None:
            self._leak_requests(now)
            over = self._req_level + 1.0 - self._req_rate * MINUTE
            if over > 0:
                when = max(when, now + over / self._req_rate)
        if self._tokens is not None:
            when = max(when, now + self._token_wait(self._need(tokens), now, self._hol_for(self._need(tokens), now)))
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
        gate_r, gate_t = self._gate_requests, self._gate_tokens
        if gate_r is not None or gate_t is not None:
            refusal = self._check_gates(tokens, now)
            if refusal is not None:
                return self._refuse(refusal)
        requests = self._requests
        if requests is not None and not requests.has_capacity(1):
            return self._refuse("rpm")
        bucket = self._tokens
        need = charge = 0.0
        if bucket is not None:
            tpm = float(self.tpm or 0)
            need = self._need(tokens)
            self._leak_tokens(now)
            charge = need - (self._charged - self._true)
            charge = 0.0 if charge < 0.0 else (tpm if charge > tpm else charge)
            hol = self._hol_for(need, now)
            if hol:
                room = charge + hol
                if room > tpm or not bucket.has_capacity(room):
                    return self._refuse("head_of_line")
            if not bucket.has_capacity(charge):
                if need >= self._hol_tokens:
                    # Remember the largest waiting demand, until shortly after it should fit.
                    self._hol_tokens = need
                    self._hol_until = now + min(self._token_wait(need, now, 0.0), MINUTE) + HEAD_OF_LINE_GRACE
                return self._refuse("tpm")
        # Everything said yes; charge the buckets (nothing can change in between).
        if requests is not None:
            if not _take(requests, 1.0):
                return self._refuse("rpm")
            self._leak_requests(now)
            self._req_level += 1.0
        if bucket is not None:
            if charge > 0.0 and not _take(bucket, charge):
                return self._refuse("tpm")
            self._charged += charge
            self._true += need
            self._reserved += need
            if self._hol_tokens and need >= self._hol_tokens:
                self._hol_tokens = 0.0  # the demand it was waiting for is served
        if gate_r is not None:
            gate_r.taken += 1.0
        if gate_t is not None:
            gate_t.taken += tokens
        self._in_flight += 1
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
        self._plain = (
            self._requests is None
            and self._tokens is None
            and self._gate_requests is None
            and self._gate_tokens is None
        )

    def _token_wait(self, need: float, now: float, hol: float) -> float:
        """Seconds until ``need`` tokens (plus a head-of-line demand) fit, by the shadows."""
        self._leak_tokens(now)
        tpm = float(self.tpm or 0)
        over = self._true + need + hol - tpm
        if need - (self._charged - self._true) > tpm:
            # A debt larger than the bucket: the charge is capped at a whole bucket, which
            # fits only once aiolimiter's level has drained to zero.
            over = max(over, self._charged + hol)
        return over / self._tok_rate if over > 0 else 0.0

    def _leak_tokens(self, now: float) -> None:
        elapsed = now - self._tok_at
        if elapsed > 0.0:
            drip = elapsed * self._tok_rate
            charged = self._charged - drip
            true = self._true - drip
            self._charged = charged if charged > 0.0 else 0.0
            self._true = true if true > 0.0 else 0.0
            self._tok_at = now

    def _leak_requests(self, now: float) -> None:
        elapsed = now - self._req_at
        if elapsed > 0.0:
            level = self._req_level - elapsed * self._req_rate
            self._req_level = level if level > 0.0 else 0.0
            self._req_at = now
