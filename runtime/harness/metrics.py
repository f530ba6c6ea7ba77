"""From a run's records to the numbers of the report.

Definitions (the README's "Failover benchmark harness" section says the same):

- a request *succeeded* when its answer is the serving endpoint's whole text; an answer
  short of it is a *truncated* success, counted apart and never as a success;
- a request's *route* is the first endpoint it went to: its first attempt when the system
  reports attempts, else the first fake that saw it, else the one that served it (a
  request that failed and reached no fake has no known route: it never counts as moved);
- a fault window's endpoint is *serving* when at least a third of the last 50 requests
  before the fault were routed to it (a priority-1 endpoint, for a fault at the very start);
- *time to detect*: fault start → the first request (started inside the window) from which
  three in a row were routed elsewhere; *time to recover*: fault end → the first request
  routed back to it from which three in a row were routed to its priority tier and
  answered whole (for an endpoint alone in its tier: three in a row back to it; endpoints
  sharing a tier share its traffic, so none of them need get three in a row). Both only
  for windows with a length on a serving endpoint; None when it never happened;
- *absorbed*: requests (not probes) the failing endpoint received during its window;
- latency percentiles are nearest-rank over the answered requests, in milliseconds;
- cost is what each endpoint would bill: every answer it sent, at its model's price.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import msgspec

from ..accounting.cost import cost_usd
from ..types import Usage
from .runner import ArrivalRecord, RequestRecord, RunRecord, Transition
from .scenario import Expectations, FaultSpec

__all__ = [
    "EndpointResult",
    "ExpectationResult",
    "Percentiles",
    "RunResult",
    "Series",
    "WindowResult",
    "percentile",
    "percentiles",
    "score",
]

_STREAK = 3  # requests in a row that make a move (or a return) count


class Percentiles(msgspec.Struct, frozen=True, kw_only=True):
    """Nearest-rank percentiles in milliseconds (None: no sample)."""

    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class WindowResult(msgspec.Struct, frozen=True, kw_only=True):
    """What happened while one fault was in force."""

    endpoint: str
    kind: str
    label: str
    start: float
    end: float
    requests: int
    succeeded: int
    failed: int
    truncated: int
    success_rate: float | None
    absorbed: int
    latency_ms: Percentiles
    serving: bool
    time_to_detect_s: float | None
    time_to_recover_s: float | None


class EndpointResult(msgspec.Struct, frozen=True, kw_only=True):
    """One fake endpoint: what it saw and what it served."""

    priority: int
    received: int  # chat requests that reached it (attempts)
    probes: int
    injected: int  # requests that got a fault
    answered: int  # answers it sent
    served: int  # caller requests answered whole from it
    attempts: int | None  # caller-side attempts at it, when the system reports them
    cost_usd: float


class ExpectationResult(msgspec.Struct, frozen=True, kw_only=True):
    """One expectation of the scenario, met or not."""

    name: str
    limit: float
    actual: float | None
    passed: bool


class Series(msgspec.Struct, frozen=True, kw_only=True):
    """The raw timeline, enough to draw the plots again from the JSON alone."""

    requests: list[RequestRecord]
    arrivals: list[ArrivalRecord]
    transitions: list[Transition]


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """One scenario run against one system: the row of the report."""

    scenario: str
    description: str
    system: str
    control: bool
    seed: int
    mapping: list[str]
    duration_s: float
    wall_s: float
    endpoint_names: list[str]
    faults: list[FaultSpec]
    requests: int
    succeeded: int
    failed: int
    truncated: int
    success_rate: float | None
    errors: dict[str, int]
    latency_ms: Percentiles
    ttfc_ms: Percentiles
    attempts_per_request_mean: float | None
    attempts_per_request_max: int | None
    attempts_source: str  # "caller" (the system reports them) or "endpoints" (what the fakes saw)
    endpoints: dict[str, EndpointResult]
    windows: list[WindowResult]
    time_to_detect_s: float | None
    time_to_recover_s: float | None
    cost_usd: float
    observes_breakers: bool
    expectations: list[ExpectationResult]
    passed: bool
    series: Series


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not ordered:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def percentiles(seconds: Iterable[float]) -> Percentiles:
    """p50, p95 and p99 of ``seconds`` (in any order), nearest rank, in milliseconds."""
    ordered = sorted(seconds)

    def ms(p: float) -> float | None:
        value = percentile(ordered, p)
        return None if value is None else round(value * 1000.0, 3)

    return Percentiles(p50=ms(50), p95=ms(95), p99=ms(99))


def _rate(good: int, total: int) -> float | None:
    return round(good / total, 4) if total else None


class _Routes:
    """Each request's route and attempt count, from the caller's side when reported, else the fakes'."""

    def __init__(self, run: RunRecord) -> None:
        self.first: dict[int, str] = {}
        self.seen: Counter[int] = Counter()
        for a in sorted(run.arrivals, key=lambda a: a.at):
            if a.kind != "probe" and a.request is not None:
                self.first.setdefault(a.request, a.endpoint)
                self.seen[a.request] += 1
        self.caller = any(r.attempts for r in run.requests)

    def route(self, r: RequestRecord) -> str | None:
        if r.attempts:
            return r.attempts[0]
        return self.first.get(r.index, r.endpoint)

    def attempts(self, r: RequestRecord) -> int:
        return len(r.attempts) if self.caller and r.attempts is not None else self.seen.get(r.index, 0)


def _window(
    fault: FaultSpec, run: RunRecord, routes: _Routes, names: list[str]
) -> WindowResult:
    inside = [r for r in run.requests if fault.start <= r.start < fault.end]
    before = [r for r in run.requests if r.start < fault.start]
    if before:
        recent = before[-50:]
        serving = 3 * sum(routes.route(r) == fault.endpoint for r in recent) >= len(recent)
    else:
        serving = run.scenario.priorities()[fault.endpoint] == min(run.scenario.priorities().values())
    detect = recover = None
    if serving and fault.for_:
        detect = _streak(inside, lambda r: routes.route(r) not in (None, fault.endpoint), fault.start)
        after = [r for r in run.requests if r.start >= fault.end]
        priorities = run.scenario.priorities()
        tier = {name for name, p in priorities.items() if p == priorities[fault.endpoint]}
        recover = _streak(
            after, lambda r: routes.route(r) in tier and r.complete, fault.end,
            first=lambda r: routes.route(r) == fault.endpoint,
        )
    return WindowResult(
        endpoint=fault.endpoint,
        kind=fault.name,
        label=fault.label or fault.name,
        start=fault.start,
        end=fault.end,
        requests=len(inside),
        succeeded=sum(r.complete for r in inside),
        failed=sum(not r.ok for r in inside),
        truncated=sum(r.ok and r.truncated for r in inside),
        success_rate=_rate(sum(r.complete for r in inside), len(inside)),
        absorbed=sum(
            1 for a in run.arrivals
            if a.endpoint == fault.endpoint and a.kind != "probe" and fault.start <= a.at < fault.end
        ),
        latency_ms=percentiles(r.latency for r in inside if r.ok),
        serving=serving,
        time_to_detect_s=detect,
        time_to_recover_s=recover,
    )


def _streak(
    requests: list[RequestRecord],
    good: Callable[[RequestRecord], bool],
    since: float,
    first: Callable[[RequestRecord], bool] | None = None,
) -> float | None:
    """Seconds from ``since`` to the start of the first run of ``_STREAK`` good requests (fewer
    at the end) whose first request is also ``first``."""
    ordered = sorted(requests, key=lambda r: r.start)
    for k in range(len(ordered)):
        run = ordered[k : k + _STREAK]
        if (first is None or first(run[0])) and all(good(r) for r in run):
            return round(max(0.0, run[0].start - since), 4)
    return None


def _endpoints(run: RunRecord, routes: _Routes, names: list[str]) -> dict[str, EndpointResult]:
    mix = run.scenario.requests
    words = mix.answer_words if mix.max_tokens is None else min(mix.answer_words, mix.max_tokens)
    out = {}
    priorities = run.scenario.priorities()
    for name in names:
        seen = [a for a in run.arrivals if a.endpoint == name]
        chat = [a for a in seen if a.kind != "probe"]
        answered = sum(1 for a in chat if a.action in ("answer", "malformed"))
        spec = run.scenario.endpoint(name)
        cost = cost_usd(
            Usage(input_tokens=answered * mix.prompt_words, output_tokens=answered * words),
            run.models.get(name, ""), spec.dialect, spec.price,
        )
        out[name] = EndpointResult(
            priority=priorities[name],
            received=len(chat),
            probes=len(seen) - len(chat),
            injected=sum(1 for a in chat if a.action != "answer"),
            answered=answered,
            served=sum(1 for r in run.requests if r.complete and r.endpoint == name),
            attempts=sum(r.attempts.count(name) for r in run.requests if r.attempts) if routes.caller else None,
            cost_usd=round(cost, 8),
        )
    return out


def score(run: RunRecord) -> RunResult:
    """The numbers of one run, its expectations checked."""
    s = run.scenario
    names = [ep.name for ep in s.endpoints]
    routes = _Routes(run)
    reqs = run.requests
    windows = [_window(f, run, routes, names) for f in s.faults]
    attempts = [routes.attempts(r) for r in reqs]
    detects = [w.time_to_detect_s for w in windows if w.time_to_detect_s is not None]
    recovers = [w.time_to_recover_s for w in windows if w.time_to_recover_s is not None]
    endpoints = _endpoints(run, routes, names)
    succeeded = sum(r.complete for r in reqs)
    result = RunResult(
        scenario=s.name,
        description=s.description,
        system=run.system,
        control=run.control,
        seed=run.seed,
        mapping=run.mapping,
        duration_s=s.duration,
        wall_s=run.wall_s,
        endpoint_names=names,
        faults=s.faults,
        requests=len(reqs),
        succeeded=succeeded,
        failed=sum(not r.ok for r in reqs),
        truncated=sum(r.ok and r.truncated for r in reqs),
        success_rate=_rate(succeeded, len(reqs)),
        errors=dict(sorted(Counter(r.error for r in reqs if r.error is not None).items())),
        latency_ms=percentiles(r.latency for r in reqs if r.ok),
        ttfc_ms=percentiles(r.ttfc for r in reqs if r.ttfc is not None),
        attempts_per_request_mean=round(sum(attempts) / len(attempts), 3) if attempts else None,
        attempts_per_request_max=max(attempts) if attempts else None,
        attempts_source="caller" if routes.caller else "endpoints",
        endpoints=endpoints,
        windows=windows,
        time_to_detect_s=max(detects) if detects else None,
        time_to_recover_s=max(recovers) if recovers else None,
        cost_usd=round(sum(e.cost_usd for e in endpoints.values()), 8),
        observes_breakers=run.observes_breakers,
        expectations=[],
        passed=True,
        series=Series(requests=reqs, arrivals=run.arrivals, transitions=run.transitions),
    )
    checks = _expectations(result, windows, s.expect)
    return msgspec.structs.replace(result, expectations=checks, passed=all(c.passed for c in checks))


def _expectations(r: RunResult, windows: list[WindowResult], e: Expectations) -> list[ExpectationResult]:
    """Each limit the scenario sets, against the run. A detect or recover limit fails when a
    serving endpoint's window never saw the move (or the return) at all."""
    timed = [w for w in windows if w.serving and w.end > w.start]

    def worst(values: list[float | None]) -> float | None:
        return None if not values or any(v is None for v in values) else max(v for v in values if v is not None)

    actual: dict[str, tuple[float | None, bool]] = {  # name -> (value, lower is better)
        "max_failures": (r.failed, True),
        "max_truncated": (r.truncated, True),
        "min_success_rate": (r.success_rate, False),
        "max_time_to_detect_s": (worst([w.time_to_detect_s for w in timed]), True),
        "max_time_to_recover_s": (worst([w.time_to_recover_s for w in timed]), True),
        "max_attempts_per_request": (r.attempts_per_request_max, True),
        "max_p99_ms": (r.latency_ms.p99, True),
    }
    out = []
    for name, (value, lower) in actual.items():
        limit = getattr(e, name)
        if limit is None:
            continue
        passed = value is not None and (value <= limit if lower else value >= limit)
        out.append(ExpectationResult(name=name, limit=float(limit), actual=None if value is None else float(value), passed=passed))
    return out
