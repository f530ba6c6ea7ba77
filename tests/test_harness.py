"""The harness end to end on the virtual clock: the catalogue against llm-runtime, scored
against what each scenario implies; a truncating system is caught; the control row."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime.harness import (
    Answer,
    BareAiohttp,
    Call,
    LLMRuntime,
    RunResult,
    Session,
    System,
    Target,
    builtin,
    catalogue,
    run_scenario,
    score,
)
from runtime.harness.metrics import WindowResult
from runtime.harness.runner import RequestRecord, RunRecord

pytestmark = pytest.mark.anyio


async def _score(name: str, system: System | None = None) -> RunResult:
    return score(await run_scenario(builtin(name), system or LLMRuntime(), seed=1))


async def test_primary_outage_with_healthy_backup(span_exporter: InMemorySpanExporter) -> None:
    """30 s outage of the primary, healthy backup: no caller failure, traffic moves within a
    second and comes back within the breaker's open period plus one probe interval."""
    r = await _score("primary-down-then-healthy")
    assert (r.failed, r.truncated, r.errors) == (0, 0, {}) and r.passed
    window = r.windows[0]
    assert window.serving and window.requests == 150 and window.success_rate == 1.0
    assert window.absorbed == 0  # a refusing port takes no request
    assert window.time_to_detect_s is not None and window.time_to_detect_s < 2.0
    open_for, probe_every = 30.0, 15.0  # the runtime's default breaker and health policies
    assert window.time_to_recover_s is not None and window.time_to_recover_s <= open_for + probe_every
    assert r.endpoints["backup"].served >= 145 and r.endpoints["primary"].served > 250
    assert r.attempts_source == "caller" and r.attempts_per_request_max is not None and r.attempts_per_request_max <= 3
    states = [(t.endpoint, t.to_state) for t in r.series.transitions if t.kind == "breaker"]
    # A trial that lands inside the outage (open_for is jittered +-10 % around its 30 s) reopens it.
    assert {e for e, _ in states} == {"primary"}
    seq = [s for _, s in states]
    assert len(seq) >= 3 and seq == ["open", "half_open"] * (len(seq) // 2) + ["closed"]
    assert r.cost_usd > 0 and r.latency_ms.p99 is not None


def _breaker_opened(r: RunResult, endpoint: str = "primary") -> bool:
    return any(t.kind == "breaker" and t.endpoint == endpoint and t.to_state == "open" for t in r.series.transitions)


def _window(r: RunResult, i: int = 0) -> WindowResult:
    return r.windows[i]


def _quiet_after_429(r: RunResult, retry_after: float) -> bool:
    """Retry-After honoured: after a 429 the primary gets nothing for that long, and when the
    throttle lifts one trial meets the next 429, not every request that waited for it."""
    at = sorted(a.at for a in r.series.arrivals if a.endpoint == "primary" and a.kind != "probe" and a.status == 429)
    return bool(at) and all(b - a >= retry_after * 0.98 for a, b in itertools.pairwise(at))


#: What each scenario implies beyond its own [expect] table, as checks on the result.
_IMPLIED: dict[str, Callable[[RunResult], bool]] = {
    "429-with-retry-after": lambda r: r.failed == 0 and _quiet_after_429(r, 5.0),
    "429-without-retry-after": lambda r: r.failed == 0 and not _breaker_opened(r),  # a 429 is not a breaker failure
    "500-once": lambda r: sum(len(q.attempts or ()) == 2 for q in r.series.requests) == 1,
    "503-persistent": lambda r: _window(r).absorbed <= 10 and _breaker_opened(r),
    "reset-before-headers": lambda r: r.failed == 0 and _breaker_opened(r),
    "no-response": lambda r: r.failed == 0 and (r.latency_ms.p99 or 0) >= 2000,  # the attempt timeout shows
    "slow-first-token": lambda r: r.failed == 0 and r.ttfc_ms.p99 is not None and r.ttfc_ms.p99 < 3000,
    "stream-cut-mid-answer": lambda r: set(r.errors) <= {"StreamInterrupted"} and _breaker_opened(r),
    "stream-cut-restart": lambda r: r.failed == 0 and r.endpoints["backup"].served >= 90,
    "stall-mid-stream": lambda r: set(r.errors) <= {"StreamInterrupted"},
    "malformed-event": lambda r: set(r.errors) <= {"StreamInterrupted"},
    "stream-without-sentinel": lambda r: r.succeeded == r.requests,
    "stream-ends-early": lambda r: set(r.errors) <= {"StreamInterrupted"},
    "context-length-exceeded": lambda r: r.endpoints["backup"].served >= 20 and not _breaker_opened(r),
    "content-filter": lambda r: r.errors == {"ContentFiltered": 10} and not _breaker_opened(r),
    "fallback-rejects-prefill": lambda r: r.failed == 0 and r.endpoints["backup"].served >= 90,
    "failover-accounting": lambda r: (
        sum(e.served for e in r.endpoints.values()) == r.requests
        and r.endpoints["primary"].cost_usd > r.endpoints["backup"].cost_usd > 0
    ),
    "demo": lambda r: all(e.served > 0 for e in r.endpoints.values()),
    "brown-out": lambda r: (r.latency_ms.p99 or 0) >= 1000,
    "429-storm-under-concurrency": lambda r: r.endpoints["local"].served > 0,
    "priority-1-all-down": lambda r: r.endpoints["backup"].served >= _window(r).requests - 10,
    "burst-when-primary-dies": lambda r: r.requests >= 150 and r.endpoints["backup"].served >= 50,
    "primary-down-then-healthy": lambda r: r.endpoints["backup"].served >= 145,
}


def test_every_catalogue_scenario_has_its_implied_checks() -> None:
    """The table below covers the whole catalogue, and nothing that is not in it."""
    assert set(_IMPLIED) == set(catalogue())


@pytest.mark.parametrize("name", sorted(catalogue()))
async def test_catalogue_for_llm_runtime(name: str, span_exporter: InMemorySpanExporter) -> None:
    """Each built-in scenario against llm-runtime's defaults: its expectations met, no
    truncated answer ever, and what the scenario implies about the numbers."""
    r = await _score(name)
    assert r.passed, [x for x in r.expectations if not x.passed]
    assert r.truncated == 0 and r.requests > 0
    assert _IMPLIED[name](r), (r.errors, r.windows, r.endpoints)


def test_endpoints_sharing_a_tier_recover_when_the_tier_takes_the_traffic_back() -> None:
    """Both priority-1 endpoints down for 10-35 s, then back at 40 s and sharing the traffic
    (strictly alternating: neither gets three in a row): each recovers at its first request
    back, from which the tier answers three in a row."""
    def request(i: int, start: float, route: str) -> RequestRecord:
        return RequestRecord(index=i, start=start, end=start + 0.02, stream=False, ok=True, truncated=False,
                             endpoint=route, error=None, ttfc=None, attempts=[route])

    starts = [round(i * 0.25, 2) for i in range(320)]
    routes = ["backup" if 10 <= t < 40 else ("east", "west")[i % 2] for i, t in enumerate(starts)]
    record = RunRecord(
        scenario=builtin("priority-1-all-down"), system="llm-runtime", control=False, seed=0, mapping=[], texts={},
        models={}, requests=[request(i, t, r) for i, (t, r) in enumerate(zip(starts, routes, strict=True))],
        arrivals=[], transitions=[], wall_s=0.0, observes_breakers=True,
    )
    r = score(record)
    assert [(w.endpoint, w.serving, w.time_to_recover_s) for w in r.windows] == [("east", True, 5.0), ("west", True, 5.25)]
    assert r.passed


class _Truncating(System):
    """llm-runtime with the last word of every answer dropped: a short "success"."""

    name = "truncating"

    @contextlib.asynccontextmanager
    async def session(self, target: Target) -> AsyncIterator[Session]:
        async with LLMRuntime().session(target) as inner:
            yield _Cut(inner)


class _Cut(Session):
    def __init__(self, inner: Session) -> None:
        super().__init__()
        self._inner = inner

    async def call(self, call: Call) -> Answer:
        answer = await self._inner.call(call)
        return msgspec.structs.replace(answer, text=answer.text.rsplit(" ", 1)[0])


async def test_truncating_system_is_scored_truncated(span_exporter: InMemorySpanExporter) -> None:
    """Every answer one word short: all truncated, none a success, max_truncated = 0 fails."""
    r = await _score("primary-down-then-healthy", _Truncating())
    assert r.truncated == r.requests and r.succeeded == 0 and r.failed == 0
    assert r.success_rate == 0.0 and not r.passed
    assert {x.name: x.passed for x in r.expectations}["max_truncated"] is False
    assert r.endpoints["primary"].served == 0  # a short answer is never counted as served


async def test_control_row_fails_during_the_outage(span_exporter: InMemorySpanExporter) -> None:
    """Bare aiohttp, one attempt to the primary: every request of the window fails; it never moves."""
    r = await _score("primary-down-then-healthy", BareAiohttp())
    window = r.windows[0]
    assert r.control and window.failed == window.requests == 150 and window.time_to_detect_s is None
    assert r.endpoints["backup"].received == 0 and r.attempts_source == "endpoints"
    assert not r.passed  # reported, but a control row never gates


async def test_same_seed_same_run(span_exporter: InMemorySpanExporter) -> None:
    """Seeded and repeatable: the same seed gives the same requests (which stream), the same
    outcomes and the same endpoint-side counts; another seed another mix."""
    scenario = builtin("500-once")
    scenario = msgspec.structs.replace(scenario, requests=msgspec.structs.replace(scenario.requests, stream=0.5))

    async def run(seed: int) -> tuple[list[tuple[int, bool, bool, str | None]], dict[str, int]]:
        r = score(await run_scenario(scenario, LLMRuntime(), seed=seed))
        outcomes = [(q.index, q.stream, q.complete, q.endpoint) for q in r.series.requests]
        return outcomes, {name: e.received for name, e in r.endpoints.items()}

    first, again, other = await run(7), await run(7), await run(8)
    assert first == again
    assert [s for _, s, _, _ in first[0]] != [s for _, s, _, _ in other[0]]
