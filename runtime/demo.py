"""The failover demo: three local endpoints, scripted faults, steady traffic, zero failures.

:func:`run_demo` starts three fault-injecting endpoints on 127.0.0.1, one per wire
dialect (OpenAI, Anthropic, Ollama) at priorities 1, 2 and 3, puts a :class:`Runtime`
in front of them and sends a steady stream of requests while faults follow a timeline
scaled to the run's duration (at the default 20 s):

====================  ===========================================================
  3 s –  7 s          the primary refuses connections
  7 s – 10 s          the primary answers 503 (its health probes too)
  6 s – 13 s          a 429 storm on the backup, each with ``Retry-After: 1``
  5 s – 15 s          the local endpoint is slow (300–700 ms per answer)
 15 s – 20 s          everything healthy again; traffic back on the primary
====================  ===========================================================

It needs no network and no key. A terminal gets a live view (rich ``Live``, redrawn
from the event loop, never from a thread); anything else gets plain lines: the faults
and breaker transitions as they happen and a one-line progress report every tenth of
the run. Both end with the :class:`DemoSummary`. Breaker transitions are counted from
the runtime's own OpenTelemetry transition spans, so the demo shows what a tracing
backend would see.

Every wait uses the event loop's clock, so on
:class:`~runtime.testing.VirtualClockLoop` the whole timeline runs in about a second.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TextIO

import anyio
import msgspec
from opentelemetry.sdk.trace import ReadableSpan
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._observability import span_tap
from ._runtime import Runtime
from .endpoint.actor import EndpointStatus
from .errors import LLMError
from .policy import BreakerPolicy, Endpoint, HealthPolicy, RetryPolicy
from .testing import FaultyEndpoint, LocalEndpoints

__all__ = ["DEMO_FLEET", "DemoSummary", "ScriptedFault", "Transition", "render_view", "run_demo", "timeline"]

#: The demo's endpoints: (name, dialect), in priority order.
DEMO_FLEET: tuple[tuple[str, str], ...] = (("primary", "openai"), ("backup", "anthropic"), ("local", "ollama"))

# The policies are tuned for a 20-second show rather than production: a breaker that
# opens on 3 failures in a row and retries after 2 s (4 s at most), probes every second.
# The per-attempt timeout is well above the slow endpoint's worst answer (0.7 s), so
# slowness costs latency, never a failure; the request deadline leaves room to wait out
# a moment when every endpoint is busy being unwell.
_BREAKER = BreakerPolicy(failure_threshold=3, window=10.0, open_for=2.0, max_open_for=4.0)
_HEALTH = HealthPolicy(interval=1.0, timeout=0.5)
_ATTEMPT_TIMEOUT = 2.0
_REQUEST_TIMEOUT = 10.0
_RETRY = RetryPolicy(max_attempts=4, backoff_base=0.05, backoff_max=0.5)

FaultKind = Literal["refused", "503", "429", "slow"]

# (endpoint, kind, start, end) as fractions of the run: a short run keeps every phase.
_SCRIPT: tuple[tuple[str, FaultKind, float, float], ...] = (
    ("primary", "refused", 0.15, 0.35),
    ("primary", "503", 0.35, 0.50),
    ("backup", "429", 0.30, 0.65),
    ("local", "slow", 0.25, 0.75),
)
_SLOW_LATENCY = 0.3
_SLOW_JITTER = 0.4
_STORM_RETRY_AFTER = 1.0

_LABELS: dict[FaultKind, str] = {
    "refused": "refuses connections",
    "503": "answers 503 Service Unavailable",
    "429": f"429 storm (Retry-After: {_STORM_RETRY_AFTER:g} s)",
    "slow": f"slow ({_SLOW_LATENCY * 1000:.0f}-{(_SLOW_LATENCY + _SLOW_JITTER) * 1000:.0f} ms per answer)",
}


@dataclass(frozen=True, slots=True)
class ScriptedFault:
    """One fault of the timeline: ``endpoint`` misbehaves from ``start`` to ``end`` seconds into the run."""

    endpoint: str
    kind: FaultKind
    start: float
    end: float

    @property
    def label(self) -> str:
        """What the endpoint does wrong, in a few words."""
        return f"{self.endpoint} {_LABELS[self.kind]}"


def timeline(duration: float) -> list[ScriptedFault]:
    """The faults of a demo lasting ``duration`` seconds, in order of their start."""
    faults = [ScriptedFault(ep, kind, round(a * duration, 3), round(b * duration, 3)) for ep, kind, a, b in _SCRIPT]
    return sorted(faults, key=lambda f: f.start)


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A state transition seen in the runtime's spans, ``at`` seconds into the run."""

    at: float
    kind: str  # "breaker" or "endpoint"
    endpoint: str
    from_state: str
    to_state: str
    reason: str = ""


class DemoSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the demo saw: the outcome of every request and every breaker transition.

    ``failed`` counts caller-visible failures: requests that raised instead of
    answering. ``failovers`` counts replies that came from an endpoint other than the
    primary or needed more than one attempt; ``retried`` those with more than one attempt.
    Latency percentiles are in milliseconds (None when nothing succeeded).
    """

    duration: float
    rate: float
    seed: int
    requests: int
    succeeded: int
    failed: int
    failovers: int
    retried: int
    served: dict[str, int]
    errors: dict[str, int]
    breaker_transitions: int
    endpoint_transitions: int
    transitions: list[Transition]
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    faults: list[str] = msgspec.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every request was answered: zero caller-visible failures."""
        return self.failed == 0 and self.succeeded == self.requests

    def lines(self) -> list[str]:
        """The summary as plain lines of at most 80 characters."""
        served = ", ".join(f"{name} {n}" for name, n in self.served.items()) or "nothing"
        to_state = Counter(t.to_state for t in self.transitions if t.kind == "breaker")
        breaker = ", ".join(f"{n} to {state}" for state, n in sorted(to_state.items()))
        errors = ", ".join(f"{name} {n}" for name, n in sorted(self.errors.items())) or "none"
        lines = [
            f"summary: {self.requests} requests in {self.duration:g} s at {self.rate:g}/s (seed {self.seed})",
            f"  succeeded                {self.succeeded:>6}",
            f"  caller-visible failures  {self.failed:>6}",
            f"  failovers                {self.failovers:>6}  (not the primary, or >1 attempt)",
            f"  retried                  {self.retried:>6}  (more than one attempt)",
            f"  breaker transitions      {self.breaker_transitions:>6}" + (f"  ({breaker})" if breaker else ""),
            f"  endpoint transitions     {self.endpoint_transitions:>6}",
            f"  served by                {served}",
            f"  latency p50/p95/p99      {_ms(self.p50_ms)} / {_ms(self.p95_ms)} / {_ms(self.p99_ms)}",
            f"  errors seen by callers   {errors}",
        ]
        if self.ok:
            lines.append(f"result: zero caller-visible failures in {self.requests} requests")
        else:
            lines.append(f"result: {self.failed} of {self.requests} requests failed")
        return [line[:80] for line in lines]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _percentile(ordered: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


# --- spans -----------------------------------------------------------------------------


class _Recorder:
    """A demo run's span sink: keeps the transitions, reports each one, writes every span to ``trace``."""

    def __init__(
        self, clock: Callable[[], float], trace_file: TextIO | None, report: Callable[[Transition], None]
    ) -> None:
        self._clock = clock
        self._trace = trace_file
        self._report = report
        self.t0 = clock()
        self.transitions: list[Transition] = []

    def __call__(self, span: ReadableSpan) -> None:
        if self._trace is not None:
            self._trace.write(span.to_json(indent=None) + "\n")
        kind = span.name.partition(" ")[0]
        attributes = span.attributes or {}
        if kind not in ("breaker", "endpoint") or "from_state" not in attributes:
            return
        transition = Transition(
            at=round(self._clock() - self.t0, 3),
            kind=kind,
            endpoint=str(attributes.get("endpoint", "")),
            from_state=str(attributes["from_state"]),
            to_state=str(attributes.get("to_state", "")),
            reason=str(attributes.get("reason", "")),
        )
        self.transitions.append(transition)
        self._report(transition)


# --- traffic and tallies ---------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    """Outcome counters, updated by the request tasks and read by the view."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    failovers: int = 0
    retried: int = 0
    latencies: list[float] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def _request(rt: Runtime, tally: _Tally, prompt: str) -> None:
    """One caller: a chat request, its outcome counted."""
    tally.sent += 1
    started = anyio.current_time()
    try:
        reply = await rt.chat(prompt, max_tokens=32)
    except LLMError as exc:
        tally.failed += 1
        tally.errors[type(exc).__name__] += 1
        return
    tally.latencies.append(anyio.current_time() - started)
    tally.succeeded += 1
    tally.served[reply.endpoint] += 1
    if len(reply.attempts) > 1:
        tally.retried += 1
    if reply.endpoint != DEMO_FLEET[0][0] or len(reply.attempts) > 1:
        tally.failovers += 1


async def _traffic(rt: Runtime, tally: _Tally, t0: float, duration: float, rate: float, rng: random.Random) -> None:
    """Open-loop load: request ``i`` starts at ``t0 + i / rate`` whatever the others are doing."""
    count = max(1, round(duration * rate))
    async with anyio.create_task_group() as tg:
        for i in range(count):
            delay = t0 + i / rate - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            a, b = rng.randint(2, 99), rng.randint(2, 99)
            tg.start_soon(_request, rt, tally, f"Request {i}: what is {a} + {b}?")


async def _play(script: list[ScriptedFault], fleet: LocalEndpoints, t0: float, log: Callable[[str], None]) -> None:
    """Apply each fault at its start and lift it at its end, on the loop's clock."""
    events: list[tuple[float, bool, ScriptedFault]] = sorted(
        [(f.start, True, f) for f in script] + [(f.end, False, f) for f in script], key=lambda e: (e[0], e[1])
    )
    for at, begin, fault in events:
        delay = t0 + at - anyio.current_time()
        if delay > 0:
            await anyio.sleep(delay)
        faults = fleet[fault.endpoint].faults
        match fault.kind, begin:
            case "refused", True:
                faults.refuse()
            case "refused", False:
                faults.accept()
            case "503", True:
                # An outage window fails the health probes as well as the requests.
                faults.outage(fault.end - fault.start, status=503)
            case "503", False:
                pass  # the outage window ends by itself
            case "429", True:
                faults.error_rate, faults.error_status, faults.retry_after = 1.0, 429, _STORM_RETRY_AFTER
            case "429", False:
                faults.error_rate = 0.0
            case "slow", True:
                faults.latency, faults.jitter = _SLOW_LATENCY, _SLOW_JITTER
            case "slow", False:
                faults.latency, faults.jitter = 0.0, 0.0
        log(f"{at:5.1f}s  {'fault' if begin else 'fault over'}: {fault.label}")


# --- the view ----------------------------------------------------------------------------

_STATE_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "throttled": "yellow",
    "unhealthy": "red",
    "misconfigured": "red",
    "failed": "red",
    "draining": "dim",
}
_BREAKER_STYLE = {"closed": "green", "half_open": "yellow", "open": "red"}


def render_view(
    statuses: list[EndpointStatus],
    tally: _Tally,
    *,
    elapsed: float,
    duration: float,
    active: list[str],
    events: list[str],
) -> RenderableType:
    """The live view: one row per endpoint, the faults in force, the counters, recent events.

    Sized for an 80-column terminal.
    """
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
    table.add_column("endpoint", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("breaker", no_wrap=True)
    table.add_column("in-flight", justify="right", no_wrap=True)
    table.add_column("latency", justify="right", no_wrap=True)
    table.add_column("served", justify="right", no_wrap=True)
    for s in statuses:
        latency = "-" if s.latency_ms is None else f"{s.latency_ms:.0f} ms"
        table.add_row(
            f"{s.name} ({s.provider})",
            Text(s.state, style=_STATE_STYLE.get(s.state, "")),
            Text(s.breaker, style=_BREAKER_STYLE.get(s.breaker, "")),
            str(s.in_flight),
            latency,
            str(tally.served.get(s.name, 0)),
        )
    ordered = sorted(tally.latencies)
    p50, p95 = _percentile(ordered, 50), _percentile(ordered, 95)
    header = Text.assemble(
        ("llm-runtime demo ", "bold"),
        f" {min(elapsed, duration):5.1f} / {duration:g} s   ",
        ("no network, no keys", "dim"),
    )
    counters = Text.assemble(
        f"sent {tally.sent}  ok {tally.succeeded}  ",
        ("failed ", ""),
        (str(tally.failed), "bold green" if tally.failed == 0 else "bold red"),
        f"  failovers {tally.failovers}  retried {tally.retried}",
    )
    percentiles = Text(f"latency p50 {_ms(None if p50 is None else p50 * 1000)}  p95 {_ms(None if p95 is None else p95 * 1000)}")
    faults = Text("faults now: " + ("; ".join(active) if active else "none"), style="yellow" if active else "green")
    recent = Text("\n".join(events[-6:]), style="dim") if events else Text("")
    return Group(header, table, faults, counters, percentiles, Text(""), recent)


def _progress_line(elapsed: float, tally: _Tally, statuses: list[EndpointStatus]) -> str:
    unwell = [f"{s.name}={s.state}" for s in statuses if s.state != "healthy"]
    where = " ".join(unwell) if unwell else "all healthy"
    in_flight = tally.sent - tally.succeeded - tally.failed
    return f"{elapsed:5.1f}s  {tally.succeeded}/{tally.sent} ok  {in_flight} in flight  {tally.failed} failed  {where}"[:80]


# --- the run -----------------------------------------------------------------------------


async def run_demo(
    duration: float = 20.0,
    rate: float = 20.0,
    seed: int = 0,
    trace: TextIO | None = None,
    console: Console | None = None,
) -> DemoSummary:
    """Run the failover demo for ``duration`` seconds at ``rate`` requests per second.

    ``seed`` fixes the faults' randomness (latency jitter) and the runtime's (endpoint
    choice, backoff, breaker jitter). With ``trace`` every span is written to it as one
    JSON line. The live view goes to ``console`` when it is a terminal, plain lines
    otherwise (the default console writes to stdout). Installs an OpenTelemetry SDK
    tracer provider globally if none is installed yet (to count breaker transitions).
    """
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate!r}")
    console = console if console is not None else Console()
    live_view = console.is_terminal
    script = timeline(duration)
    tally = _Tally()
    rng = random.Random(seed)
    events: list[str] = []  # faults and breaker transitions, as shown

    def log(line: str) -> None:
        events.append(line[:80])
        if not live_view:
            console.print(events[-1], markup=False, highlight=False)

    def on_transition(t: Transition) -> None:
        if t.kind == "breaker":
            log(f"{t.at:5.1f}s  {t.endpoint}: breaker {t.from_state} -> {t.to_state} ({t.reason})")

    fleet = LocalEndpoints(
        *(FaultyEndpoint(dialect, name=name, seed=seed + i) for i, (name, dialect) in enumerate(DEMO_FLEET))
    )
    tap = span_tap()
    recorder = _Recorder(anyio.current_time, trace, on_transition)
    tap.sinks.append(recorder)
    try:
        async with fleet:
            endpoints = [
                ep.endpoint(priority=i, timeout=_ATTEMPT_TIMEOUT, breaker=_BREAKER, health=_HEALTH)
                for i, ep in enumerate(fleet, 1)
            ]
            _print_intro(console, endpoints, script, duration, rate, seed)
            async with Runtime(endpoints, timeout=_REQUEST_TIMEOUT, retry=_RETRY, shutdown_grace=2.0, seed=seed) as rt:
                t0 = recorder.t0 = anyio.current_time()

                def view() -> RenderableType:
                    elapsed = anyio.current_time() - t0
                    active = [f.label for f in script if f.start <= elapsed < f.end]
                    return render_view(
                        rt.status(), tally, elapsed=elapsed, duration=duration, active=active, events=events
                    )

                reported = [t0]  # when the last progress line was printed

                def progress() -> None:
                    reported[0] = anyio.current_time()
                    line = _progress_line(reported[0] - t0, tally, rt.status())
                    console.print(line, markup=False, highlight=False)

                async def refresh(live: Live | None) -> None:
                    # Redrawn from the loop on the loop's clock: no refresh thread reading
                    # actor state behind the loop's back, and time can be fast-forwarded.
                    if live is None:
                        every = duration / 10
                        for k in itertools.count(1):
                            await anyio.sleep(t0 + k * every - anyio.current_time())
                            progress()
                    else:
                        while True:
                            await anyio.sleep(0.25)
                            live.update(view(), refresh=True)

                live = Live(view(), console=console, auto_refresh=False) if live_view else None
                with live if live is not None else contextlib.nullcontext():
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_play, script, fleet, t0, log)
                        tg.start_soon(refresh, live)
                        await _traffic(rt, tally, t0, duration, rate, rng)
                        tg.cancel_scope.cancel()
                    if live is not None:
                        live.update(view(), refresh=True)
                    elif anyio.current_time() - reported[0] > 0.1:
                        progress()  # the last requests finished after the last report
                # Taken before leaving the runtime: its shutdown (every endpoint
                # "draining") is not part of the show.
                summary = _summarise(tally, list(recorder.transitions), duration, rate, seed, script)
    finally:
        tap.sinks.remove(recorder)
    for line in summary.lines():
        style = "" if not line.startswith("result:") else ("bold green" if summary.ok else "bold red")
        console.print(Text(line, style=style), highlight=False)
    return summary


def _print_intro(
    console: Console, endpoints: list[Endpoint], script: list[ScriptedFault], duration: float, rate: float, seed: int
) -> None:
    out = [f"llm-runtime demo: {duration:g} s at {rate:g} requests/s (seed {seed}), local endpoints only"]
    for ep in endpoints:
        out.append(f"  {ep.name:<8} {ep.provider:<10} priority {ep.priority}  {ep.base_url}")
    out.append("timeline:")
    for f in script:
        out.append(f"  {f.start:5.1f}s-{f.end:5.1f}s  {f.label}")
    out.append(f"  {max(f.end for f in script):5.1f}s-{duration:5.1f}s  every endpoint healthy again")
    for line in out:
        console.print(line[:80], markup=False, highlight=False)


def _summarise(
    tally: _Tally, transitions: list[Transition], duration: float, rate: float, seed: int, script: list[ScriptedFault]
) -> DemoSummary:
    ordered = sorted(tally.latencies)

    def pct(p: float) -> float | None:
        value = _percentile(ordered, p)
        return None if value is None else round(value * 1000.0, 3)

    served = {name: tally.served[name] for name, _ in DEMO_FLEET if tally.served[name]}
    return DemoSummary(
        duration=duration,
        rate=rate,
        seed=seed,
        requests=tally.sent,
        succeeded=tally.succeeded,
        failed=tally.failed,
        failovers=tally.failovers,
        retried=tally.retried,
        served=served,
        errors=dict(tally.errors),
        breaker_transitions=sum(1 for t in transitions if t.kind == "breaker"),
        endpoint_transitions=sum(1 for t in transitions if t.kind == "endpoint"),
        transitions=list(transitions),
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        faults=[f"{f.start:g}-{f.end:g}s {f.label}" for f in script],
    )
