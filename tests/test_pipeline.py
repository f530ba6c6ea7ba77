"""One pipeline: chat, stream and embed get the same span, metrics, budget and attempt counting."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otel_fixtures import collect, value

from runtime import (
    AllEndpointsFailed,
    BlockingRuntime,
    BreakerPolicy,
    Budget,
    BudgetExceeded,
    HealthPolicy,
    RetryPolicy,
    Runtime,
    StreamInterrupted,
)
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

QUIET = HealthPolicy(enabled=False)


def runtime_of(*endpoints: FaultyEndpoint, **kwargs: Any) -> Runtime:
    # A failed primary fails over at once (no wait for the preferred tier): these tests count failovers.
    kwargs.setdefault("retry", RetryPolicy(tier_wait=0.0))
    return Runtime([ep.endpoint(health=QUIET, priority=i) for i, ep in enumerate(endpoints, 1)], **kwargs)


def counter(reader: InMemoryMetricReader) -> Callable[..., float]:
    """What an instrument gained, for the given attributes, since this call."""
    before = collect(reader)

    def delta(name: str, **attributes: Any) -> float:
        return value(collect(reader).get(name, []), **attributes) - value(before.get(name, []), **attributes)

    return delta


async def test_blocking_methods_have_the_async_signatures() -> None:
    """BlockingRuntime's chat, stream and embed take exactly Runtime's parameters, with real names."""
    assert inspect.signature(BlockingRuntime.chat) == inspect.signature(Runtime.chat)
    for name in ("stream", "embed"):
        blocking, native = inspect.signature(getattr(BlockingRuntime, name)), inspect.signature(getattr(Runtime, name))
        assert blocking.parameters == native.parameters
    chat = inspect.signature(Runtime.chat).parameters
    assert {"messages", "system", "model", "max_tokens", "timeout", "endpoint", "cache", "hedge", "trim"} <= chat.keys()
    assert chat["max_tokens"].kind is inspect.Parameter.KEYWORD_ONLY
    assert inspect.signature(Runtime.stream).parameters == chat


async def test_failed_attempts_are_counted_per_endpoint(
    pair: tuple[FaultyEndpoint, FaultyEndpoint], metric_reader: InMemoryMetricReader
) -> None:
    """A request that fails over adds one error under the endpoint that failed and one ok request."""
    primary, backup = pair
    primary.faults.fail_next(1, 500)
    delta = counter(metric_reader)
    async with runtime_of(primary, backup) as rt:
        reply = await rt.chat("hi")
    assert reply.endpoint == "backup"
    assert delta("llm_runtime.errors", endpoint="primary", provider="openai", **{"error.type": "ServerError"}) == 1
    assert delta("llm_runtime.errors", endpoint="backup") == 0
    assert delta("llm_runtime.requests", endpoint="backup", outcome="ok", **{"gen_ai.operation.name": "chat"}) == 1


async def test_failed_stream_is_counted_and_traced_with_its_attempts(
    pair: tuple[FaultyEndpoint, FaultyEndpoint],
    metric_reader: InMemoryMetricReader,
    span_exporter: InMemorySpanExporter,
) -> None:
    """A stream cut after content: its attempts count in llm_runtime.errors, the request counts
    as a StreamInterrupted failure, and its span carries the attempts and the error."""
    primary, backup = pair
    primary.faults.fail_next(1, 503)
    backup.faults.stream_error_after = 1
    delta = counter(metric_reader)
    async with runtime_of(primary, backup) as rt:
        with pytest.raises(StreamInterrupted):
            async with rt.stream("tell me a story") as stream:
                async for _ in stream:
                    pass
        assert rt.status()[1].in_flight == 0
    assert delta("llm_runtime.errors", endpoint="primary") == 1
    assert delta("llm_runtime.errors", endpoint="backup") == 1
    assert delta("llm_runtime.requests", outcome="error", **{"error.type": "StreamInterrupted"}) == 1
    assert delta("llm_runtime.time_to_first_chunk", endpoint="backup", provider="openai", model="gpt-4o") == 1
    spans = span_exporter.get_finished_spans()
    (request,) = [s for s in spans if s.name.startswith("stream")]
    attrs = dict(request.attributes or {})
    assert attrs["attempts"] == 2 and attrs["error.type"] == "StreamInterrupted"
    assert attrs["gen_ai.operation.name"] == "stream"
    children = [s.name for s in spans if s.parent is not None and s.parent.span_id == request.context.span_id]
    assert sorted(n for n in children if n.startswith("attempt")) == ["attempt backup", "attempt primary"]


async def test_stream_success_is_traced_and_counted_like_a_chat(
    pair: tuple[FaultyEndpoint, FaultyEndpoint],
    metric_reader: InMemoryMetricReader,
    span_exporter: InMemorySpanExporter,
) -> None:
    """A whole stream ends its span with usage and the endpoint's model, and counts as an ok stream request."""
    primary, backup = pair
    delta = counter(metric_reader)
    async with runtime_of(primary, backup) as rt, rt.stream("hi") as stream:
        text = "".join([chunk.text async for chunk in stream])
    assert text == stream.response.text and stream.response.endpoint == "primary"
    assert delta("llm_runtime.requests", endpoint="primary", outcome="ok", **{"gen_ai.operation.name": "stream"}) == 1
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name.startswith("stream")]
    attrs = dict(span.attributes or {})
    assert span.name == "stream gpt-4o-mini"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini" and attrs["outcome"] == "ok"
    assert attrs["gen_ai.usage.output_tokens"] == stream.response.usage.output_tokens > 0


async def test_request_model_is_the_endpoints_when_none_was_given(
    pair: tuple[FaultyEndpoint, FaultyEndpoint], span_exporter: InMemorySpanExporter
) -> None:
    """gen_ai.request.model names the model the endpoint was configured with when the caller named none."""
    primary, backup = pair
    async with runtime_of(primary, backup) as rt:
        await rt.chat("hi")
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name.startswith("chat")]
    assert span.name == "chat gpt-4o-mini"
    assert dict(span.attributes or {})["gen_ai.request.model"] == "gpt-4o-mini"


async def test_embed_has_span_metrics_and_budget(
    pair: tuple[FaultyEndpoint, FaultyEndpoint],
    metric_reader: InMemoryMetricReader,
    span_exporter: InMemorySpanExporter,
) -> None:
    """embed() opens a request span, counts in the request metrics and spends (then respects) the budget."""
    primary, backup = pair
    primary.faults.fail_next(1, 500)
    delta = counter(metric_reader)
    async with runtime_of(primary, backup, budget=Budget(daily_tokens=40)) as rt:
        reply = await rt.embed(["alpha beta", "gamma"])
        assert reply.endpoint == "backup" and len(reply.vectors) == 2
        guard = rt.budget_guard
        assert guard is not None
        spent = guard.statistics().used["daily_tokens"]
        assert spent == reply.usage.input_tokens + reply.usage.output_tokens > 0
        assert guard.statistics().in_flight == 0
        with pytest.raises(BudgetExceeded):
            await rt.embed("x" * 400)
    ops = {"gen_ai.operation.name": "embeddings"}
    assert delta("llm_runtime.requests", endpoint="backup", outcome="ok", **ops) == 1
    assert delta("llm_runtime.requests", outcome="error", **ops, **{"error.type": "BudgetExceeded"}) == 1
    assert delta("llm_runtime.errors", endpoint="primary") == 1
    spans = [dict(s.attributes or {}) for s in span_exporter.get_finished_spans() if s.name.startswith("embeddings")]
    assert [a["outcome"] for a in spans] == ["ok", "BudgetExceeded"]
    assert spans[0]["endpoint"] == "backup" and spans[0]["attempts"] == 2


@pytest.mark.parametrize(
    ("configured", "served", "priced_as", "known"),
    [
        ("gpt-4o-mini", "fake-model", "gpt-4o-mini", True),  # the reply's model is unknown: the endpoint's
        ("my-local-model", "gpt-4o", "gpt-4o", True),  # the reply's model is known: it wins
        ("my-local-model", "fake-model", None, False),  # neither: 0, marked unknown
    ],
)
async def test_cost_prices_the_reply_model_then_the_configured_one(
    configured: str, served: str, priced_as: str | None, known: bool
) -> None:
    """Cost uses the model that answered when the table knows it, else the endpoint's configured
    model, else 0 with cost_known False (counted as unpriced in the usage report)."""
    async with FaultyEndpoint("openai-compatible", name="compat") as ep:
        ep.served_model = served
        async with Runtime([ep.endpoint(health=QUIET, model=configured)]) as rt:
            reply = await rt.chat("hi")
            report = rt.usage()
    assert reply.model == served and reply.cost_known is known
    if priced_as is None:
        assert reply.cost_usd == 0.0 and report.total.unpriced == 1
    else:
        assert reply.cost_usd == rt.prices.cost_usd(reply.usage, priced_as, "openai") > 0
        assert report.total.unpriced == 0


async def test_breaker_state_round_trips_across_an_actor_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """An actor that crashes is rebuilt on the same breaker state: its whole breaker state
    (failure window, streak, trips) is what the old actor had, and the next failure trips it by
    the window the old actor filled."""
    policy = BreakerPolicy(failure_threshold=100, failure_rate=0.5, min_calls=4, window=600)
    async with FaultyEndpoint("openai", name="flaky") as ep:
        endpoint = ep.endpoint(health=HealthPolicy(interval=5.0), breaker=policy)
        async with Runtime([endpoint], retry=RetryPolicy(max_attempts=1)) as rt:
            ep.faults.schedule(500, "ok", 500)
            for fails in (True, False, True):
                if fails:
                    with pytest.raises(AllEndpointsFailed):
                        await rt.chat("hi")
                else:
                    await rt.chat("hi")
            old = rt.actor("flaky")
            before = old.breaker.statistics()
            assert (before.calls_in_window, before.failures_in_window, before.state) == (3, 2, "closed")
            # A message the actor has no handler for crashes it (a probe cannot: a failed
            # probe is a failed probe); the supervisor restarts it.
            old.tell("no such message")
            await anyio.sleep(1)
            new = rt.actor("flaky")
            assert new is not old
            assert new.breaker.statistics() == before
            ep.faults.schedule(500)
            with pytest.raises(AllEndpointsFailed):
                await rt.chat("hi")
            assert new.breaker.statistics().state == "open"  # 3 of 4 calls in the window failed
