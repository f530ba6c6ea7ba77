"""The harness end to end on the virtual clock: the catalogue against llm-runtime, scored
against what each scenario implies; a truncating system is caught; the control row."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

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
    run_scenario,
    score,
)

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
