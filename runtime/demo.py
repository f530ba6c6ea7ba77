"""The failover demo: the built-in ``demo`` scenario run through the benchmark harness, shown live.

:func:`run_demo` runs the harness's ``demo`` scenario (three local endpoints, one per
wire dialect — OpenAI, Anthropic, Ollama — at priorities 1, 2 and 3, and llm-runtime in
front of them) with its timeline scaled to the run's duration (at the default 20 s):

====================  ===========================================================
  3 s –  7 s          the primary refuses connections
  7 s – 10 s          the primary answers 503 (its health probes too)
  6 s – 13 s          a 429 storm on the backup, each with ``Retry-After: 1``
  5 s – 15 s          the local endpoint is slow (300–700 ms per answer)
 15 s – 20 s          everything healthy again; traffic back on the primary
====================  ===========================================================

The harness drives the load, plays the faults and records both sides; this module only
presents it. It needs no network and no key. A terminal gets a live view (rich
``Live``, redrawn from the event loop, never from a thread); anything else gets plain
lines: the faults and breaker transitions as they happen and a one-line progress report
every tenth of the run. Both end with the :class:`DemoSummary`. Breaker transitions are
counted from the runtime's own OpenTelemetry transition spans, so the demo shows what a
tracing backend would see.

Every wait uses the event loop's clock, so on
:class:`~runtime.testing.VirtualClockLoop` the whole timeline runs in about a second.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

import anyio
import msgspec
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ._console import PipeConsole
from .endpoint.actor import EndpointStatus
from .harness import LLMRuntime, RunObserver, builtin, run_scenario
from .harness.metrics import percentile, percentiles
from .harness.runner import RequestRecord, Transition
from .harness.scenario import FaultSpec, Scenario
from .harness.systems import Call, Session
from .testing import LocalEndpoints

__all__ = ["DEMO_FLEET", "DemoSummary", "Transition", "demo_scenario", "render_view", "run_demo", "timeline"]

#: The demo's endpoints: (name, dialect), in priority order.
DEMO_FLEET: tuple[tuple[str, str], ...] = (("primary", "openai"), ("backup", "anthropic"), ("local", "ollama"))

#: The length of the built-in scenario's timeline, which :func:`demo_scenario` scales.
_BASE_DURATION = 20.0


def demo_scenario(duration: float = _BASE_DURATION, rate: float | None = None) -> Scenario:
    """The built-in ``demo`` scenario, its timeline stretched to ``duration`` seconds."""
    return builtin("demo").scaled(duration / _BASE_DURATION, rate=rate)


def timeline(duration: float) -> list[FaultSpec]:
    """The faults of a demo lasting ``duration`` seconds, in order of their start."""
    return sorted(demo_scenario(duration).faults, key=lambda f: f.start)


class DemoSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the demo saw: the outcome of every request and every breaker transition.

    ``failed`` counts caller-visible failures: requests that raised instead of
    answering; ``truncated`` answers short of the endpoint's whole text. ``failovers``
    counts replies that came from an endpoint other than the primary or needed more
    than one attempt; ``retried`` those with more than one attempt. Latency percentiles
    are in milliseconds (None when nothing succeeded).
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
    truncated: int = 0

    @property
    def ok(self) -> bool:
        """True when every request was answered whole: zero caller-visible failures."""
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
            f"  truncated answers        {self.truncated:>6}",
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
            lines.append(f"result: {self.requests - self.succeeded} of {self.requests} requests failed")
        return [line[:80] for line in lines]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


# --- traffic and tallies ---------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    """Outcome counters, updated as the harness reports each request and read by the view."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    truncated: int = 0
    failovers: int = 0
    retried: int = 0
    latencies: list[float] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def count(self, r: RequestRecord) -> None:
        """One finished request."""
        if not r.ok:
            self.failed += 1
            self.errors[r.error or "NoAnswer"] += 1
            return
        if r.truncated:
            self.truncated += 1
            return
        self.latencies.append(r.latency)
        self.succeeded += 1
        if r.endpoint is not None:
            self.served[r.endpoint] += 1
        attempts = len(r.attempts or ())
        if attempts > 1:
            self.retried += 1
        if r.endpoint != DEMO_FLEET[0][0] or attempts > 1:
            self.failovers += 1


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
    p50, p95 = percentile(ordered, 50), percentile(ordered, 95)
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


class _Show(RunObserver):
    """The demo's view of a harness run: tallies, event lines, the live view or progress lines."""

    def __init__(self, console: Console, system: LLMRuntime, scenario: Scenario, rate: float, seed: int) -> None:
        self.console = console
        self.live_view = console.is_terminal
        self.system = system
        self.scenario = scenario
        self.rate = rate
        self.seed = seed
        self.tally = _Tally()
        self.events: list[str] = []  # faults and breaker transitions, as shown
        self.active: list[FaultSpec] = []
        self.t0 = 0.0
        self.live: Live | None = None

    def log(self, line: str) -> None:
        self.events.append(line[:80])
        if not self.live_view:
            self.console.print(self.events[-1], markup=False, highlight=False)

    def statuses(self) -> list[EndpointStatus]:
        rt = self.system.runtime
        return rt.status() if rt is not None else []

    def view(self) -> RenderableType:
        elapsed = anyio.current_time() - self.t0
        return render_view(
            self.statuses(), self.tally, elapsed=elapsed, duration=self.scenario.duration,
            active=[f.title for f in self.active], events=self.events,
        )

    def opened(self, session: Session, fleet: LocalEndpoints, t0: float) -> None:
        self.t0 = t0
        s = self.scenario
        out = [f"llm-runtime demo: {s.duration:g} s at {self.rate:g} requests/s (seed {self.seed}), local endpoints only"]
        for priority, ep in enumerate(fleet, 1):
            out.append(f"  {ep.name:<8} {ep.provider:<10} priority {priority}  {ep.base_url}")
        out.append("timeline:")
        for f in timeline(s.duration):
            out.append(f"  {f.start:5.1f}s-{f.end:5.1f}s  {f.title}")
        out.append(f"  {max(f.end for f in s.faults):5.1f}s-{s.duration:5.1f}s  every endpoint healthy again")
        for line in out:
            self.console.print(line[:80], markup=False, highlight=False)
        if self.live_view:
            self.live = Live(self.view(), console=self.console, auto_refresh=False)
            self.live.start()

    def sent(self, call: Call) -> None:
        self.tally.sent += 1

    def done(self, record: RequestRecord) -> None:
        self.tally.count(record)

    def fault(self, at: float, begin: bool, fault: FaultSpec) -> None:
        if begin:
            self.active.append(fault)
        elif fault in self.active:
            self.active.remove(fault)
        self.log(f"{at:5.1f}s  {'fault' if begin else 'fault over'}: {fault.title}")

    def transition(self, t: Transition) -> None:
        if t.kind == "breaker":
            self.log(f"{t.at:5.1f}s  {t.endpoint}: breaker {t.from_state} -> {t.to_state} ({t.reason})")

    def progress(self) -> float:
        now = anyio.current_time()
        line = _progress_line(now - self.t0, self.tally, self.statuses())
        self.console.print(line, markup=False, highlight=False)
        return now

    async def during(self, t0: float) -> None:
        # Redrawn from the loop on the loop's clock: no refresh thread reading actor
        # state behind the loop's back, and time can be fast-forwarded.
        reported = t0  # when the last progress line was printed
        try:
            if self.live is None:
                every = self.scenario.duration / 10
                for k in itertools.count(1):
                    await anyio.sleep(t0 + k * every - anyio.current_time())
                    reported = self.progress()
            else:
                while True:
                    await anyio.sleep(0.25)
                    self.live.update(self.view(), refresh=True)
        finally:
            # The load is over and the runtime still up: the last picture of the show.
            if self.live is not None:
                self.live.update(self.view(), refresh=True)
                self.live.stop()
            elif anyio.current_time() - reported > 0.1:
                self.progress()  # the last requests finished after the last report


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
    console = console if console is not None else PipeConsole()
    scenario = demo_scenario(duration, rate)
    system = LLMRuntime()
    show = _Show(console, system, scenario, rate, seed)
    record = await run_scenario(scenario, system, seed=seed, observer=show, trace=trace)
    summary = _summarise(show.tally, record.transitions, duration, rate, seed, scenario)
    for line in summary.lines():
        style = "" if not line.startswith("result:") else ("bold green" if summary.ok else "bold red")
        console.print(Text(line, style=style), highlight=False)
    return summary


def _summarise(
    tally: _Tally, transitions: list[Transition], duration: float, rate: float, seed: int, scenario: Scenario
) -> DemoSummary:
    latency = percentiles(tally.latencies)
    served = {name: tally.served[name] for name, _ in DEMO_FLEET if tally.served[name]}
    return DemoSummary(
        duration=duration,
        rate=rate,
        seed=seed,
        requests=tally.sent,
        succeeded=tally.succeeded,
        failed=tally.failed,
        truncated=tally.truncated,
        failovers=tally.failovers,
        retried=tally.retried,
        served=served,
        errors=dict(tally.errors),
        breaker_transitions=sum(1 for t in transitions if t.kind == "breaker"),
        endpoint_transitions=sum(1 for t in transitions if t.kind == "endpoint"),
        transitions=list(transitions),
        p50_ms=latency.p50,
        p95_ms=latency.p95,
        p99_ms=latency.p99,
        faults=[f"{f.start:g}-{f.end:g}s {f.title}" for f in timeline(duration)],
    )
