"""Run one scenario against one system and record what both sides saw.

The runner starts the scenario's fake endpoints, opens the system against them, plays the
fault timeline, drives the load and records three things, every time on the event loop's
clock relative to the start of the load:

- each caller request (:class:`RequestRecord`): when it started and ended, the answer
  checked against the serving endpoint's known text (a short "success" is *truncated*),
  the typed error, time to first chunk, the attempts when the system reports them;
- each request a fake endpoint saw (:class:`ArrivalRecord`), probes included, with the
  caller request it belongs to (read back from the prompt's ``#N``) and what the faults did;
- each breaker and endpoint state transition llm-runtime reports in its spans
  (:class:`Transition`).

Every wait is on the loop's clock, so on :class:`~runtime.testing.VirtualClockLoop` a
ten-minute scenario runs in seconds while the sockets stay real.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from typing import Any, TextIO

import anyio
import msgspec
from opentelemetry.sdk.trace import ReadableSpan

from .._observability import span_tap
from ..testing import Arrival, FaultyEndpoint, LocalEndpoints
from .scenario import FaultSpec, Scenario
from .systems import Answer, Call, Session, System, Target, TargetEndpoint

__all__ = [
    "ArrivalRecord",
    "RequestRecord",
    "RunObserver",
    "RunRecord",
    "Transition",
    "answer_text",
    "run_scenario",
]

#: How long after its own deadline a system's call is abandoned by the harness (a system
#: that does not keep its deadline is scored with a ``NoAnswer`` failure, never a hang).
_GRACE = 5.0


class RequestRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One caller request. Times are seconds from the start of the load."""

    index: int
    start: float
    end: float
    stream: bool
    ok: bool  # an answer came back (complete or not)
    truncated: bool  # ... but not the endpoint's whole text
    endpoint: str | None  # who served it (reported, or recognised by its text)
    error: str | None  # the caller-visible error's type
    ttfc: float | None  # seconds to the first chunk with text
    attempts: list[str] | None  # endpoints tried, when the system reports them

    @property
    def latency(self) -> float:
        """Seconds from start to answer or error."""
        return self.end - self.start

    @property
    def complete(self) -> bool:
        """Answered with the whole text."""
        return self.ok and not self.truncated


class ArrivalRecord(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One request a fake endpoint saw: ``kind`` chat/embed/probe, ``action`` what the faults did."""

    at: float
    endpoint: str
    kind: str
    request: int | None
    action: str
    status: int


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """A state transition seen in the runtime's spans, ``at`` seconds into the run."""

    at: float
    kind: str  # "breaker" or "endpoint"
    endpoint: str
    from_state: str
    to_state: str
    reason: str = ""


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one run recorded; :func:`runtime.harness.metrics.score` turns it into numbers."""

    scenario: Scenario
    system: str
    control: bool
    seed: int
    mapping: list[str]
    texts: dict[str, str]  # each endpoint's whole answer
    models: dict[str, str]  # each endpoint's model (for its price)
    requests: list[RequestRecord]
    arrivals: list[ArrivalRecord]
    transitions: list[Transition]
    wall_s: float  # real seconds the run took
    observes_breakers: bool


class RunObserver:
    """Hooks into a run as it happens (the demo's live view); every method is optional."""

    def opened(self, session: Session, fleet: LocalEndpoints, t0: float) -> None:
        """The system is open and the load starts at ``t0`` (loop clock)."""

    def sent(self, call: Call) -> None:
        """A request is about to be sent."""

    def done(self, record: RequestRecord) -> None:
        """A request finished."""

    def fault(self, at: float, begin: bool, fault: FaultSpec) -> None:
        """A fault began (``begin``) or was lifted, ``at`` seconds in."""

    def transition(self, transition: Transition) -> None:
        """llm-runtime reported a state transition."""

    async def during(self, t0: float) -> None:
        """Runs beside the load and is cancelled when the load is over (a refresh loop)."""


def answer_text(endpoint: str, words: int) -> str:
    """The whole answer ``endpoint`` gives: ``words`` words no other endpoint's answer begins with."""
    return " ".join(f"{endpoint}-{k}" for k in range(1, words + 1))


_WORD = re.compile(r"\s*\S+")
_REQUEST = re.compile(r"#(\d+)\b")


def _request_of(body: Any) -> int | None:
    """The caller request a fake's request belongs to: the ``#N`` of its last message."""
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    content = messages[-1].get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    match = _REQUEST.search(content) if isinstance(content, str) else None
    return int(match.group(1)) if match else None


class _SpanLog:
    """The run's span sink: keeps the breaker and endpoint transitions, writes every span to ``trace``."""

    def __init__(self, trace: TextIO | None, report: Callable[[Transition], None]) -> None:
        self._trace = trace
        self._report = report
        self.t0 = anyio.current_time()
        self.transitions: list[Transition] = []
        self.names: dict[str, str] = {}

    def __call__(self, span: ReadableSpan) -> None:
        if self._trace is not None:
            self._trace.write(span.to_json(indent=None) + "\n")
        kind = span.name.partition(" ")[0]
        attributes = span.attributes or {}
        if kind not in ("breaker", "endpoint") or "from_state" not in attributes:
            return
        name = str(attributes.get("endpoint", ""))
        transition = Transition(
            at=round(anyio.current_time() - self.t0, 4),
            kind=kind,
            endpoint=self.names.get(name, name),
            from_state=str(attributes["from_state"]),
            to_state=str(attributes.get("to_state", "")),
            reason=str(attributes.get("reason", "")),
        )
        self.transitions.append(transition)
        self._report(transition)


class _Judge:
    """Scores an answer against the endpoints' known texts."""

    def __init__(self, texts: dict[str, str], max_tokens: int | None) -> None:
        if max_tokens is not None:  # the fakes stop after max_tokens words, with finish "length"
            texts = {name: "".join(_WORD.findall(t)[:max_tokens]) for name, t in texts.items()}
        self.expected = texts

    def __call__(self, answer: Answer) -> tuple[str | None, bool]:
        """(who served it, whether it is short of that endpoint's whole text)."""
        if answer.endpoint is not None and self.expected.get(answer.endpoint) == answer.text:
            return answer.endpoint, False
        for name, text in self.expected.items():
            if text == answer.text:
                return name, False
        for name, text in self.expected.items():
            if answer.text and text.startswith(answer.text):
                return answer.endpoint or name, True
        return answer.endpoint, True


async def run_scenario(
    scenario: Scenario,
    system: System,
    *,
    seed: int = 0,
    observer: RunObserver | None = None,
    trace: TextIO | None = None,
) -> RunRecord:
    """Run ``scenario`` against ``system`` once; return what was recorded.

    ``seed`` fixes the load's randomness (which requests stream), the fakes' (jitter,
    error rates) and llm-runtime's. With ``trace`` every span is written to it as a JSON line.
    """
    watch = observer or RunObserver()
    wall = time.perf_counter()
    texts = {ep.name: answer_text(ep.name, scenario.requests.answer_words) for ep in scenario.endpoints}
    fleet = LocalEndpoints(
        *(
            FaultyEndpoint(ep.dialect, name=ep.name, model=ep.model, text=texts[ep.name], port=ep.port, seed=seed + i)
            for i, ep in enumerate(scenario.endpoints)
        )
    )
    arrivals: list[ArrivalRecord] = []
    spans = _SpanLog(trace, watch.transition)
    tap = span_tap()
    tap.sinks.append(spans)
    try:
        async with fleet:
            _listen(scenario, fleet, arrivals, spans)
            priorities = scenario.priorities()
            target = Target(
                endpoints=[
                    TargetEndpoint(ep.name, ep.provider, ep.model, ep.base_url, priorities[ep.name]) for ep in fleet
                ],
                budget=scenario.budget,
                runtime=scenario.runtime,
                seed=seed,
            )
            async with system.session(target) as session:
                spans.names = session.names
                requests = await _drive(scenario, session, fleet, spans, watch, _Judge(texts, scenario.requests.max_tokens), seed)
                mapping = list(session.mapping)
                # Taken before the system closes: its shutdown (endpoints "draining") is not part of the run.
                transitions = list(spans.transitions)
    finally:
        tap.sinks.remove(spans)
    return RunRecord(
        scenario=scenario,
        system=system.name,
        control=system.control,
        seed=seed,
        mapping=mapping,
        texts=texts,
        models={fake.name: fake.model for fake in fleet},
        requests=sorted(requests, key=lambda r: r.index),
        arrivals=arrivals,
        transitions=transitions,
        wall_s=round(time.perf_counter() - wall, 3),
        observes_breakers=bool(transitions) or system.name.startswith("llm-runtime"),
    )


def _listen(scenario: Scenario, fleet: LocalEndpoints, arrivals: list[ArrivalRecord], spans: _SpanLog) -> None:
    """Each fake's base speed, and an observer recording what it sees."""
    for spec, fake in zip(scenario.endpoints, fleet, strict=True):
        fake.faults.latency = spec.latency
        fake.faults.chunk_delay = spec.chunk_delay

        def seen(arrival: Arrival, name: str = fake.name) -> None:
            d = arrival.decision
            arrivals.append(
                ArrivalRecord(
                    at=round(arrival.at - spans.t0, 4), endpoint=name, kind=arrival.kind,
                    request=_request_of(arrival.body), action=d.action, status=d.status,
                )
            )

        fake.observer = seen


async def _drive(
    scenario: Scenario,
    session: Session,
    fleet: LocalEndpoints,
    spans: _SpanLog,
    watch: RunObserver,
    judge: _Judge,
    seed: int,
) -> list[RequestRecord]:
    """The load and the faults, from ``t0``; returns once every request has an outcome."""
    records: list[RequestRecord] = []
    rng = random.Random(seed)
    counter = iter(range(1 << 62))
    mix = scenario.requests
    filler = " ".join(f"w{k}" for k in range(1, mix.prompt_words))
    limit = scenario.budget.request_timeout + _GRACE
    t0 = spans.t0 = anyio.current_time()
    watch.opened(session, fleet, t0)

    async def one() -> None:
        index = next(counter)
        call = Call(index=index, prompt=f"#{index} {filler}".strip(), stream=rng.random() < mix.stream, max_tokens=mix.max_tokens)
        watch.sent(call)
        started = anyio.current_time()
        answer: Answer | None = None
        error: BaseException | None = None
        with anyio.move_on_after(limit):
            try:
                answer = await session.call(call)
            except Exception as exc:  # any system's own error is an outcome to record
                error = exc
        record = _record(call, started - t0, anyio.current_time() - t0, answer, error, session, judge)
        records.append(record)
        watch.done(record)

    async with anyio.create_task_group() as outer:
        outer.start_soon(_play, scenario.faults, fleet, t0, watch)
        outer.start_soon(watch.during, t0)
        async with anyio.create_task_group() as load:
            _start_load(scenario, load, one, t0)
        outer.cancel_scope.cancel()
    return records


def _record(
    call: Call, start: float, end: float, answer: Answer | None, error: BaseException | None, session: Session, judge: _Judge
) -> RequestRecord:
    if answer is not None:
        endpoint, truncated = judge(answer)
        attempts = answer.attempts
        name = None
    else:
        endpoint, truncated = None, False
        attempts = session.attempts_of(error) if error is not None else None
        name = session.error_name(error) if error is not None else "NoAnswer"
    return RequestRecord(
        index=call.index, start=round(start, 4), end=round(end, 4), stream=call.stream, ok=answer is not None,
        truncated=truncated, endpoint=endpoint, error=name,
        ttfc=None if answer is None or answer.ttfc is None else round(answer.ttfc, 4), attempts=attempts,
    )


def _start_load(scenario: Scenario, tg: Any, one: Callable[[], Any], t0: float) -> None:
    load = scenario.load
    if load.rate is not None:
        tg.start_soon(_open_loop, tg, one, t0, scenario.duration, load.rate)
    if load.concurrency is not None:
        for _ in range(load.concurrency):
            tg.start_soon(_closed_loop, one, t0 + scenario.duration, load.think)
    for burst in load.bursts:
        tg.start_soon(_burst, tg, one, t0 + burst.at, burst.n)


async def _open_loop(tg: Any, one: Callable[[], Any], t0: float, duration: float, rate: float) -> None:
    """Request ``i`` starts at ``t0 + i / rate`` whatever the others are doing."""
    for i in range(max(1, math.floor(duration * rate))):
        await _until(t0 + i / rate)
        tg.start_soon(one)


async def _closed_loop(one: Callable[[], Any], until: float, think: float) -> None:
    """One caller: the next request ``think`` seconds after the last one finished."""
    while anyio.current_time() < until:
        await one()
        if think > 0:
            await anyio.sleep(think)


async def _burst(tg: Any, one: Callable[[], Any], at: float, n: int) -> None:
    await _until(at)
    for _ in range(n):
        tg.start_soon(one)


async def _until(at: float) -> None:
    delay = at - anyio.current_time()
    if delay > 0:
        await anyio.sleep(delay)


async def _play(faults: list[FaultSpec], fleet: LocalEndpoints, t0: float, watch: RunObserver) -> None:
    """Apply each fault at its start and lift it at its end, on the loop's clock."""
    events = sorted(
        [(f.start, 1, i) for i, f in enumerate(faults)] + [(f.end, 0, i) for i, f in enumerate(faults) if f.for_],
        key=lambda e: (e[0], e[1]),
    )
    saved: dict[int, dict[str, Any]] = {}
    for at, begin, i in events:
        await _until(t0 + at)
        fault = faults[i]
        knobs = fleet[fault.endpoint].faults
        if begin:
            saved[i] = {name: getattr(knobs, name) for name in fault.knobs}
            for name, value in fault.knobs.items():
                setattr(knobs, name, value)
            if fault.refuse:
                knobs.refuse()
            if fault.outage is not None and fault.for_:
                knobs.outage(fault.for_, status=fault.outage)  # probes fail too; the window ends itself
            if fault.schedule:
                knobs.schedule(*fault.schedule)  # type: ignore[arg-type]
            if fault.fail is not None:
                f = fault.fail
                knobs.fail_next(f.n, f.status, message=f.message, code=f.code, retry_after=f.retry_after)
        else:
            for name, value in saved.pop(i, {}).items():
                setattr(knobs, name, value)
            if fault.refuse:
                knobs.accept()
        watch.fault(at, bool(begin), fault)
