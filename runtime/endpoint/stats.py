"""Latency and outcome statistics of one endpoint.

:class:`LatencyTracker` keeps a peak-sensitive moving average of latency (Finagle's
"peak EWMA": it jumps at once to a higher observation and decays towards lower ones with
a time constant), which the dispatcher uses to prefer fast endpoints and which reacts to
a slowdown on the first slow reply instead of after many; a p95 over a small ring of
recent samples, for hedging; counts by outcome; the last error as a short, redacted
string; and when the endpoint's state last changed.

All of it has fixed size whatever the traffic: one ring of floats, a few counters.
"""

from __future__ import annotations

import math
import re
from array import array

from ..types import FrozenStruct

__all__ = ["DECAY", "LatencyStats", "LatencyTracker", "SAMPLES", "short_error"]

_exp = math.exp

# Finagle's default: a spike fades to a third in 10 s without traffic to confirm it.
DECAY = 10.0
# Enough recent samples for a stable p95 (the 95th percentile is the 7th largest of 128),
# few enough that it follows a change in a minute of moderate traffic; 1 KiB per endpoint.
SAMPLES = 128
# The last error is kept this short: enough to read the cause, never a whole body.
ERROR_CHARS = 200

# Things that look like credentials, should a provider echo one into an error message.
_SECRET = re.compile(
    r"(?i)(bearer\s+)\S+|\b(sk|pk|rk)-[A-Za-z0-9_\-]{8,}|((?:api[_-]?key|token|secret|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
)


def _mask(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1) + "***"
    if match.group(2):
        return match.group(2) + "-***"
    return (match.group(3) or "") + "***"


def short_error(text: str) -> str:
    """``text`` made safe to show: credentials masked, cut to a couple of hundred characters."""
    text = _SECRET.sub(_mask, " ".join(text.split()))
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


class LatencyStats(FrozenStruct, frozen=True):
    """Latency and outcome figures of one endpoint. Times in seconds (loop time).

    ``ewma`` is the peak-sensitive average as of the last sample (0.0 before any);
    ``p50`` and ``p95`` are over the last ``samples`` successful calls (None before any);
    ``counts`` is calls by outcome (``success`` and whatever kinds were counted).
    """

    ewma: float
    p50: float | None
    p95: float | None
    samples: int
    counts: dict[str, int]
    last_error: str | None = None
    last_error_at: float | None = None
    last_sample_at: float | None = None
    state_since: float | None = None


class LatencyTracker:
    """Peak-EWMA latency, a recent-sample p95, outcome counts and the last error.

    ``decay`` is the EWMA's time constant in seconds; ``samples`` the ring size for
    percentiles. ``observe`` takes successful calls only: a failure's duration says how
    long it took to fail, not how fast the endpoint answers.
    """

    __slots__ = (
        "_counts",
        "_decay",
        "_ewma",
        "_last_at",
        "_observed",
        "_rate",
        "_ring",
        "_size",
        "_sorted",
        "_sorted_at",
        "_successes",
        "last_error",
        "last_error_at",
        "state_since",
    )

    def __init__(self, *, decay: float = DECAY, samples: int = SAMPLES) -> None:
        if decay <= 0 or samples < 1:
            raise ValueError("decay must be > 0 and samples >= 1")
        self._decay = decay
        self._rate = 1.0 / decay
        self._ewma = 0.0
        self._last_at: float | None = None
        self._ring = array("d", bytes(8 * samples))
        self._size = samples
        # Samples observed so far: sample k sits at k % samples, and the ring holds
        # min(observed, samples) of them. One counter says where to write, how full the
        # ring is and how many successes there were: a sample costs one add, not four.
        self._observed = 0
        # The sorted ring for percentiles, made when read, as of ``_sorted_at`` samples.
        self._sorted: list[float] = []
        self._sorted_at = 0
        self._successes = 0  # successes counted by count() (observe counts its own)
        self._counts: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.state_since: float | None = None

    # --- recording -------------------------------------------------------------------

    def observe(self, latency: float, now: float) -> None:
        """Record a successful call's latency (seconds), ended at loop time ``now``."""
        ewma = self._ewma
        last = self._last_at
        if latency >= ewma or last is None:
            self._ewma = latency  # peak-sensitive: a slower answer counts in full at once
        else:
            x = (now - last) * self._rate
            if x > 0.0:
                # The weight of the old average is exp(-x). Between the samples of steady traffic
                # x is tiny, and 1 - x + x²/2 is exp(-x) to within x³/6 (< 2e-10): no call.
                weight = 1.0 - x * (1.0 - 0.5 * x) if x < 1e-3 else _exp(-x)
                self._ewma = latency + (ewma - latency) * weight
        self._last_at = now
        n = self._observed
        self._ring[n % self._size] = latency
        self._observed = n + 1

    def count(self, kind: str, n: int = 1) -> None:
        """Count ``n`` calls that ended as ``kind`` (``failure``, ``ignored``, ``throttled``,
        or an error class's name). Use a small fixed set of kinds: each gets a counter."""
        if kind == "success":
            self._successes += n
            return
        counts = self._counts
        counts[kind] = counts.get(kind, 0) + n

    def error(self, message: str, now: float, *, kind: str | None = "failure") -> None:
        """Remember ``message`` as the last error (masked and shortened) and count ``kind``
        (None: count nothing, e.g. when the call was already counted)."""
        self.last_error = short_error(message)
        self.last_error_at = now
        if kind is not None:
            self.count(kind)

    def state_changed(self, now: float) -> None:
        """Note that the endpoint's state changed at loop time ``now``."""
        self.state_since = now

    # --- reading ---------------------------------------------------------------------

    @property
    def ewma(self) -> float:
        """The peak-sensitive average latency as of the last sample (0.0 before any)."""
        return self._ewma

    def cost(self, now: float) -> float:
        """The average decayed towards zero for the time since the last sample.

        As in Finagle, an endpoint that spiked and then got no traffic looks cheaper as
        time passes, so it gets a request again and its true latency is relearned
        instead of being shunned forever on one old peak.
        """
        # (EndpointActor.score has this inline: keep them alike.)
        last = self._last_at
        if last is None or now <= last:
            return self._ewma
        return self._ewma * math.exp(-(now - last) / self._decay)

    @property
    def last_sample_at(self) -> float | None:
        """Loop time of the last successful call (None before any)."""
        return self._last_at

    @property
    def samples(self) -> int:
        """How many samples the percentiles rest on."""
        return min(self._observed, self._size)

    def percentile(self, q: float) -> float | None:
        """The ``q``-quantile (0 < q ≤ 1, nearest rank) of recent latencies; None before any."""
        observed = self._observed
        if not observed:
            return None
        filled = min(observed, self._size)
        ordered = self._sorted
        if self._sorted_at != observed:
            ordered = self._sorted = sorted(self._ring[:filled])
            self._sorted_at = observed
        rank = min(filled, max(1, math.ceil(q * filled)))
        return ordered[rank - 1]

    @property
    def p95(self) -> float | None:
        """The 95th percentile of recent latencies (None before any); the hedging delay."""
        return self.percentile(0.95)

    @property
    def counts(self) -> dict[str, int]:
        """Calls by outcome so far (a copy)."""
        successes = self._observed + self._successes
        if not successes:
            return dict(self._counts)
        return {"success": successes, **self._counts}

    def statistics(self) -> LatencyStats:
        """The figures now."""
        return LatencyStats(
            ewma=self._ewma,
            p50=self.percentile(0.5),
            p95=self.p95,
            samples=self.samples,
            counts=self.counts,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            last_sample_at=self._last_at,
            state_since=self.state_since,
        )

    def __repr__(self) -> str:
        if not self._observed:
            latency = "no samples"
        else:
            latency = f"ewma {self._ewma * 1000:.1f}ms, p95 {(self.p95 or 0.0) * 1000:.1f}ms over {self.samples}"
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "no calls"
        return f"<LatencyTracker [{latency} | {counts}]>"
