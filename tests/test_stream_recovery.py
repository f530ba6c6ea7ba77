"""Streams that recover after content reached the caller: ``on_interrupt`` = raise | restart | continue.

Every scenario runs end to end on the virtual clock against the local fault-injecting
endpoints, in each dialect: a primary whose stream fails after two words (cut, stall,
one malformed event, an error event, a clean end before the finish reason) and a
backup. With ``restart`` the caller's chunks after the one ``restart`` marker are the
backup's whole answer; with ``continue`` on a backup that can continue an assistant
message the caller's text is one answer (the partial, then only the rest); a backup
that refuses the prefill restarts instead, and its 400 is never what the caller sees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import (
    BadRequest,
    ConfigError,
    ConnectionFailed,
    HealthPolicy,
    InvalidRequest,
    ProtocolError,
    RetryPolicy,
    Runtime,
    StreamInterrupted,
    Timeout,
)
from runtime.config import parse_config
from runtime.testing import FaultyEndpoint
from runtime.types import StreamChunk

pytestmark = pytest.mark.anyio

DIALECTS = ["openai", "anthropic", "ollama"]
QUIET = HealthPolicy(enabled=False)
PRIMARY = "alpha beta gamma delta epsilon"
BACKUP = "the backup answers in full"
# Each fault after two content chunks, and the error class it surfaces as.
FAULTS: dict[str, tuple[str, type[Exception]]] = {
    "cut": ("cut_after", ConnectionFailed),
    "stall": ("stall_after", Timeout),
    "malformed event": ("malformed_after", ProtocolError),
    "error event": ("stream_error_after", Exception),
    "missing end": ("end_after", ProtocolError),
}


def runtime_for(*eps: FaultyEndpoint, on_interrupt: str | None = None, **kwargs: Any) -> Runtime:
    endpoint_kwargs = kwargs.pop("endpoint_kwargs", {})
    endpoints = [
        ep.endpoint(priority=i + 1, idle_timeout=5.0, health=QUIET, **endpoint_kwargs.get(ep.name, {}))
        for i, ep in enumerate(eps)
    ]
    if on_interrupt is not None:
        kwargs["on_interrupt"] = on_interrupt
    return Runtime(endpoints, seed=11, **kwargs)


async def collect(rt: Runtime, **kwargs: Any) -> tuple[list[StreamChunk], Any]:
    chunks: list[StreamChunk] = []
    async with rt.stream("tell me", **kwargs) as stream:
        async for chunk in stream:
            chunks.append(chunk)
    return chunks, stream


def after_marker(chunks: list[StreamChunk]) -> tuple[str, str]:
    """The text before the (single) restart marker and after it."""
    marks = [i for i, c in enumerate(chunks) if c.restart]
    assert len(marks) == 1, f"expected one restart marker, got {len(marks)}"
    mark = chunks[marks[0]]
    assert mark.text == "" and not mark.tool_calls and mark.finish_reason is None and mark.usage is None
    before = "".join(c.text for c in chunks[: marks[0]])
    return before, "".join(c.text for c in chunks[marks[0] + 1 :])


@pytest.fixture(params=DIALECTS)
async def pair(request: pytest.FixtureRequest) -> Any:
    """A primary and a backup of one dialect, with different answers."""
    async with (
        FaultyEndpoint(request.param, name="primary", text=PRIMARY) as primary,
        FaultyEndpoint(request.param, name="backup", text=BACKUP) as backup,
    ):
        yield primary, backup


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_restart_after_content_streams_the_backups_whole_answer(pair: Any, fault: str) -> None:
    """restart: one marker, then exactly the backup's whole answer; response, trail and restarts agree."""
    primary, backup = pair
    knob, cause = FAULTS[fault]
    setattr(primary.faults, knob, 2)
    async with runtime_for(primary, backup, on_interrupt="restart") as rt:
        chunks, stream = await collect(rt)
        assert rt.status()[0].in_flight == 0 and rt.status()[1].in_flight == 0
    before, after = after_marker(chunks)
    assert before == "alpha beta" and after == BACKUP
    reply = stream.response
    assert reply.text == BACKUP and reply.endpoint == "backup" and stream.restarts == 1
    assert [a.endpoint for a in reply.attempts] == ["primary", "backup"]
    assert isinstance(reply.attempts[0].error, cause) and reply.attempts[1].error is None
    assert reply.attempts[1].recovery == "restart"
    assert reply.usage.output_tokens == len(BACKUP.split())


@pytest.mark.parametrize("fault", ["cut", "stall", "malformed event", "error event"])
async def test_raise_is_unchanged(pair: Any, fault: str) -> None:
    """raise (the default): StreamInterrupted with the partial text; the backup is never asked."""
    primary, backup = pair
    setattr(primary.faults, FAULTS[fault][0], 2)
    async with runtime_for(primary, backup) as rt:
        with pytest.raises(StreamInterrupted) as info:
            await collect(rt)
    assert info.value.partial == "alpha beta" and backup.stats.requests == 0


PREFILL = {"openai": {"prefill": True}, "anthropic": {}, "ollama": {}}


@pytest.fixture(params=DIALECTS)
async def twins(request: pytest.FixtureRequest) -> Any:
    """A primary and a prefill-capable backup that would give the same answer."""
    async with (
        FaultyEndpoint(request.param, name="primary", text=PRIMARY) as primary,
        FaultyEndpoint(request.param, name="backup", text=PRIMARY) as backup,
    ):
        yield primary, backup, {"backup": PREFILL[request.param]}


@pytest.mark.parametrize("fault", ["cut", "stall", "malformed event", "error event"])
async def test_continue_makes_one_coherent_answer(twins: Any, fault: str) -> None:
    """continue: the caller's text end to end is one answer, and the backup saw the partial as an assistant message."""
    primary, backup, endpoint_kwargs = twins
    setattr(primary.faults, FAULTS[fault][0], 2)
    async with runtime_for(primary, backup, on_interrupt="continue", endpoint_kwargs=endpoint_kwargs) as rt:
        chunks, stream = await collect(rt)
    assert not any(c.restart for c in chunks) and stream.restarts == 0
    assert "".join(c.text for c in chunks) == PRIMARY == stream.response.text
    messages = backup.last_request["messages"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] == "alpha beta"
    assert [a.recovery for a in stream.response.attempts] == [None, "continue"]


async def test_continue_falls_back_to_restart_when_the_backup_rejects_prefill(twins: Any) -> None:
    """A backup that answers the prefill with a 400: a restart on it, never the 400."""
    primary, backup, endpoint_kwargs = twins
    primary.faults.cut_after = 2
    backup.faults.reject_prefill = True
    async with runtime_for(primary, backup, on_interrupt="continue", endpoint_kwargs=endpoint_kwargs) as rt:
        chunks, stream = await collect(rt)
        assert rt.status()[1].breaker == "closed"
    before, after = after_marker(chunks)
    assert before == "alpha beta" and after == PRIMARY == stream.response.text
    trail = stream.response.attempts
    assert [(a.endpoint, a.recovery) for a in trail] == [("primary", None), ("backup", "continue"), ("backup", "restart")]
    assert isinstance(trail[1].error, BadRequest) and trail[2].error is None


async def test_continue_restarts_where_the_provider_cannot_prefill() -> None:
    """An OpenAI backup without the prefill flag cannot continue: a restart, its request has no assistant turn."""
    async with (
        FaultyEndpoint("anthropic", name="primary", text=PRIMARY) as primary,
        FaultyEndpoint("openai", name="backup", text=BACKUP) as backup,
    ):
        primary.faults.cut_after = 2
        async with runtime_for(primary, backup, on_interrupt="continue") as rt:
            chunks, stream = await collect(rt)
    assert after_marker(chunks) == ("alpha beta", BACKUP) and stream.restarts == 1
    assert backup.last_request["messages"][-1]["role"] == "user"
    assert "continue_final_message" not in backup.last_request


async def test_continue_on_anthropic_drops_the_whitespace_the_prefill_could_not_end_with() -> None:
    """Anthropic refuses a prefill ending in whitespace: it is sent stripped and the text stays seamless."""
    async with (
        FaultyEndpoint("ollama", name="primary", text="one two  three four") as primary,
        FaultyEndpoint("anthropic", name="backup", text="one two  three four") as backup,
    ):
        primary.faults.malformed_after = 2
        async with runtime_for(primary, backup, on_interrupt="continue") as rt:
            chunks, stream = await collect(rt)
    assert "".join(c.text for c in chunks) == "one two  three four" == stream.response.text
    assert backup.last_request["messages"][-1]["content"] == "one two"


async def test_no_candidate_left_raises_with_the_last_attempts_partial() -> None:
    """One endpoint that cuts every stream: restarts on it after backoff until max_attempts, then StreamInterrupted."""
    async with FaultyEndpoint("openai", name="only", text=PRIMARY) as only:
        only.faults.cut_after = 2
        rt = runtime_for(only, on_interrupt="restart", retry=RetryPolicy(max_attempts=3, backoff_base=0.5))
        async with rt:
            chunks: list[StreamChunk] = []
            with pytest.raises(StreamInterrupted) as info:
                async with rt.stream("tell me") as stream:
                    async for chunk in stream:
                        chunks.append(chunk)
            assert rt.status()[0].in_flight == 0
    assert info.value.partial == "alpha beta" and isinstance(info.value.cause, ConnectionFailed)
    assert stream.restarts == 2 and sum(c.restart for c in chunks) == 2
    assert only.stats.requests == 3


async def test_restart_prefers_another_endpoint_over_the_one_that_failed() -> None:
    """Failover first: with two healthy candidates the restart never goes back to the failed one."""
    async with (
        FaultyEndpoint("openai", name="primary", text=PRIMARY) as primary,
        FaultyEndpoint("openai", name="backup", text=BACKUP) as backup,
    ):
        primary.faults.cut_after = 2
        async with runtime_for(primary, backup, on_interrupt="restart") as rt:
            for _ in range(5):
                await collect(rt)
    assert primary.stats.requests == 5 and backup.stats.requests == 5


async def test_restart_keeps_the_deadline() -> None:
    """A restart cannot outlive the request's deadline: a stalled backup ends at the deadline, typed."""
    async with (
        FaultyEndpoint("openai", name="primary", text=PRIMARY) as primary,
        FaultyEndpoint("openai", name="backup", text=BACKUP) as backup,
    ):
        primary.faults.cut_after = 2
        backup.faults.hang = True
        async with runtime_for(primary, backup, on_interrupt="restart") as rt:
            start = anyio.current_time()
            with pytest.raises(StreamInterrupted) as info:
                await collect(rt, timeout=8)
            assert anyio.current_time() - start <= 8.5
    assert info.value.partial == "alpha beta"


async def test_a_tool_call_half_streamed_is_restarted_not_continued() -> None:
    """A partial tool call cannot be prefilled: continue falls back to restart."""
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}}]
    async with (
        FaultyEndpoint("anthropic", name="primary") as primary,
        FaultyEndpoint("anthropic", name="backup") as backup,
    ):
        primary.faults.cut_after = 2
        async with runtime_for(primary, backup, on_interrupt="continue") as rt:
            chunks, stream = await collect(rt, tools=tools)
    assert sum(c.restart for c in chunks) == 1 and stream.restarts == 1
    call = stream.response.tool_calls[0]
    assert call.name == "lookup" and call.id.startswith("toolu_backup")
    assert backup.last_request["messages"][-1]["role"] == "user"


async def test_per_call_option_overrides_the_runtime_default(pair: Any) -> None:
    """Runtime(on_interrupt="restart") is the default; stream(on_interrupt="raise") overrides it."""
    primary, backup = pair
    primary.faults.cut_after = 2
    async with runtime_for(primary, backup, on_interrupt="restart") as rt:
        with pytest.raises(StreamInterrupted):
            await collect(rt, on_interrupt="raise")


async def test_restarts_are_recorded_in_span_and_metrics(
    span_exporter: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    """The request span carries each restart as an event and a count; a counter counts them per endpoint."""
    async with (
        FaultyEndpoint("openai", name="primary", text=PRIMARY) as primary,
        FaultyEndpoint("openai", name="backup", text=BACKUP) as backup,
    ):
        primary.faults.cut_after = 2
        async with runtime_for(primary, backup, on_interrupt="restart") as rt:
            await collect(rt)
    request = next(s for s in span_exporter.get_finished_spans() if s.name.startswith("stream"))
    assert request.attributes is not None and request.attributes["llm_runtime.stream.restarts"] == 1
    events = [e for e in request.events if e.name == "stream.restart"]
    assert len(events) == 1 and events[0].attributes is not None and events[0].attributes["endpoint"] == "primary"
    assert {s.name for s in span_exporter.get_finished_spans()} >= {"attempt primary", "attempt backup"}
    assert restart_count(metric_reader, "primary") >= 1


def restart_count(reader: InMemoryMetricReader, endpoint: str) -> float:
    data = reader.get_metrics_data()
    total = 0.0
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "llm_runtime.stream.restarts":
                    total += sum(p.value for p in metric.data.data_points if p.attributes.get("endpoint") == endpoint)
    return total


async def test_bad_values_are_refused() -> None:
    """on_interrupt outside raise/restart/continue: ConfigError from Runtime(...), InvalidRequest from stream()."""
    async with FaultyEndpoint("openai", name="ep") as ep:
        with pytest.raises(ConfigError, match="on_interrupt"):
            runtime_for(ep, on_interrupt="retry")
        async with runtime_for(ep) as rt:
            with pytest.raises(InvalidRequest, match="on_interrupt"):
                rt.stream("hi", on_interrupt="sometimes")  # type: ignore[arg-type]


def test_config_key_sets_the_runtime_default() -> None:
    """`on_interrupt = "continue"` at the top of the config file reaches Runtime(...)."""
    config = parse_config(
        {"on_interrupt": "continue", "endpoints": [{"name": "m", "provider": "mock", "model": "m"}]}
    )
    assert Runtime(**config.runtime_kwargs()).on_interrupt == "continue"
    with pytest.raises(ConfigError, match="on_interrupt"):
        parse_config({"on_interrupt": "maybe", "endpoints": [{"name": "m", "provider": "mock", "model": "m"}]})


@pytest.fixture
def blocking_pair() -> Iterator[tuple[Any, Any]]:
    """A primary that cuts after two words and a backup, served from a background thread."""
    from anyio.from_thread import start_blocking_portal

    from runtime.testing import LocalEndpoints

    fleet = LocalEndpoints(
        FaultyEndpoint("openai", name="primary", text=PRIMARY), FaultyEndpoint("openai", name="backup", text=BACKUP)
    )
    with start_blocking_portal() as portal:
        portal.call(fleet.start)
        portal.call(setattr, fleet["primary"].faults, "cut_after", 2)
        # Real threads and sockets: spaced chunks so the client has read each one before the cut arrives.
        portal.call(setattr, fleet["primary"].faults, "chunk_delay", 0.05)
        try:
            yield fleet["primary"], fleet["backup"]
        finally:
            portal.call(fleet.aclose)


def test_blocking_facade_restarts_too(blocking_pair: tuple[Any, Any]) -> None:
    """rt.blocking().stream(..., on_interrupt="restart") yields the marker and the backup's answer."""
    primary, backup = blocking_pair
    rt = Runtime([primary.endpoint(priority=1, health=QUIET), backup.endpoint(priority=2, health=QUIET)])
    with rt.blocking() as brt, brt.stream("tell me", on_interrupt="restart") as stream:
        chunks = list(stream)
    assert after_marker(chunks) == ("alpha beta", BACKUP)
    assert stream.restarts == 1 and stream.response.text == BACKUP


def test_cli_chat_stream_on_interrupt_restart(
    blocking_pair: tuple[Any, Any], tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-runtime chat --stream --on-interrupt restart`: the void text ends its line, stderr says so,
    the backup's whole answer follows; exit 0. Without --stream the flag is a usage error."""
    from runtime.cli import main

    primary, backup = blocking_pair
    config = tmp_path / "two.toml"
    config.write_text("".join(
        f'[[endpoints]]\nname = "{ep.name}"\nprovider = "openai-compatible"\nmodel = "m"\nbase_url = "{ep.base_url}"\n'
        f"priority = {i}\n[endpoints.health]\nenabled = false\n"
        for i, ep in enumerate((primary, backup), 1)
    ))
    code = main(["chat", "tell me", "--stream", "--on-interrupt", "restart", "--config", str(config)])
    out, err = capsys.readouterr()
    assert code == 0 and out == f"alpha beta\n{BACKUP}\n"
    assert "restarted on 'backup'" in err and "void" in err and "Traceback" not in err
    assert main(["chat", "tell me", "--on-interrupt", "restart", "--config", str(config)]) == 2
    assert "--on-interrupt is for --stream" in capsys.readouterr().err


async def test_leaving_during_a_restart_releases_everything() -> None:
    """A caller cancelled while the stream restarts on a hung backup: no slot stays taken anywhere."""
    async with (
        FaultyEndpoint("openai", name="primary", text=PRIMARY) as primary,
        FaultyEndpoint("openai", name="backup", text=BACKUP) as backup,
    ):
        primary.faults.cut_after = 2
        backup.faults.hang = True
        async with runtime_for(primary, backup, on_interrupt="restart") as rt:
            with anyio.move_on_after(3) as scope:
                await collect(rt)
            assert scope.cancelled_caught
            assert [s.in_flight for s in rt.status()] == [0, 0]
            assert rt.status()[1].breaker == "closed"


async def test_a_failure_before_any_content_is_plain_failover_without_a_marker(pair: Any) -> None:
    """Nothing reached the caller yet: the usual transparent failover, no marker, no restart counted."""
    primary, backup = pair
    primary.faults.cut_after = 0
    async with runtime_for(primary, backup, on_interrupt="restart") as rt:
        chunks, stream = await collect(rt)
    assert not any(c.restart for c in chunks) and stream.restarts == 0
    assert "".join(c.text for c in chunks) == BACKUP
    assert stream.response.attempts[1].recovery is None


@pytest.mark.parametrize("policy", ["raise", "restart"])
async def test_the_tokens_of_a_failed_answer_are_charged_to_its_endpoint(policy: str) -> None:
    """The words the primary streamed before it was cut were billed: usage() carries them
    (estimated) under the primary, with no extra request counted."""
    async with (
        FaultyEndpoint("openai", name="primary", text=PRIMARY) as primary,
        FaultyEndpoint("openai", name="backup", text=BACKUP) as backup,
    ):
        primary.faults.cut_after = 2
        async with runtime_for(primary, backup, on_interrupt=policy) as rt:
            with pytest.raises(StreamInterrupted) if policy == "raise" else contextlib.nullcontext():
                await collect(rt)
            report = rt.usage()
    charged = report.by_endpoint["primary"]
    assert charged.output_tokens >= 1 and charged.input_tokens > 0 and charged.requests == 0
    assert report.total.requests == 1
    if policy == "restart":
        assert report.by_endpoint["backup"].output_tokens == len(BACKUP.split())
