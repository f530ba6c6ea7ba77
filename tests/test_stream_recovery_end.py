"""A stream ends when its answer ends, and the fault knobs that stream recovery is tested with.

End to end against the local endpoints on the virtual clock: a finish reason followed by a
clean end of the body is a whole answer without ``[DONE]`` / ``message_stop`` (usage taken
when it came); a body that ends before any finish reason is a ``ProtocolError``. Then each
stream fault knob of :class:`~runtime.testing.Faults` on each dialect, seen from the wire.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from runtime import HealthPolicy, ProtocolError, Runtime, StreamInterrupted
from runtime.testing import FaultyEndpoint

pytestmark = pytest.mark.anyio

DIALECTS = ["openai", "anthropic", "ollama"]
TEXT = "one two three four five"
QUIET = HealthPolicy(enabled=False)
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}


def runtime_for(*eps: FaultyEndpoint, **endpoint_kwargs: Any) -> Runtime:
    return Runtime([ep.endpoint(priority=i + 1, health=QUIET, **endpoint_kwargs) for i, ep in enumerate(eps)], seed=3)


async def read_all(rt: Runtime, **kwargs: Any) -> tuple[str, Any]:
    async with rt.stream("count to five", **kwargs) as stream:
        text = "".join([chunk.text async for chunk in stream])
    return text, stream.response


@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_finish_reason_then_clean_end_is_a_whole_answer_with_usage(dialect: str) -> None:
    """No ``[DONE]`` / ``message_stop`` after the finish reason: success, with the usage that came,
    finalised when the body ends rather than after an idle timeout."""
    async with FaultyEndpoint(dialect, name="ep", text=TEXT) as ep:
        ep.faults.no_terminal = True
        async with runtime_for(ep, idle_timeout=30.0) as rt:
            start = anyio.current_time()
            text, reply = await read_all(rt)
            assert anyio.current_time() - start < 1.0
    assert text == TEXT and reply.finish_reason == "stop"
    assert reply.usage.output_tokens == 5 and reply.usage.input_tokens == 3
    assert reply.endpoint == "ep" and len(reply.attempts) == 1


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_clean_end_before_any_finish_reason_is_a_protocol_error(dialect: str) -> None:
    """A body that ends cleanly after content but before the finish reason is never a short success."""
    async with FaultyEndpoint(dialect, name="ep", text=TEXT) as ep:
        ep.faults.end_after = 2
        async with runtime_for(ep) as rt:
            with pytest.raises(StreamInterrupted) as info:
                await read_all(rt)
    assert info.value.partial == "one two"
    assert isinstance(info.value.cause, ProtocolError) and "finish reason" in str(info.value.cause)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_clean_end_before_content_fails_over(dialect: str) -> None:
    """An empty answer without a finish reason fails over like any error before the first chunk."""
    async with (
        FaultyEndpoint(dialect, name="primary", text=TEXT) as primary,
        FaultyEndpoint(dialect, name="backup", text="backup answer") as backup,
    ):
        primary.faults.end_after = 0
        async with runtime_for(primary, backup) as rt:
            text, reply = await read_all(rt)
    assert text == "backup answer" and reply.endpoint == "backup"
    assert isinstance(reply.attempts[0].error, ProtocolError)


# --- the knobs, seen from the wire ----------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A bare client session: the knobs are checked on the bytes the endpoint writes."""
    async with aiohttp.ClientSession() as s:
        yield s


def body(dialect: str, messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": "m", "messages": messages, "stream": True, **extra}
    if dialect == "anthropic":
        out["max_tokens"] = 100
    return out


def texts(dialect: str, raw: bytes) -> list[str]:
    """The text pieces of a raw stream, in any dialect."""
    if dialect == "ollama":
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        return [line["message"]["content"] for line in lines if line.get("message", {}).get("content")]
    out = []
    for event in raw.split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            data = json.loads(line[6:])
            if dialect == "openai":
                out += [c["delta"]["content"] for c in data.get("choices", []) if c.get("delta", {}).get("content")]
            elif data.get("type") == "content_block_delta":
                out.append(data["delta"]["text"])
    return out


async def post(session: aiohttp.ClientSession, ep: FaultyEndpoint, payload: dict[str, Any]) -> tuple[int, bytes]:
    async with session.post(ep.base_url.removesuffix("/v1") + PATHS[ep.dialect], json=payload) as resp:
        return resp.status, await resp.read()


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_end_after_ends_cleanly_without_finish_or_terminal(session: aiohttp.ClientSession, dialect: str) -> None:
    """end_after=K: K content pieces, then a clean end of the body with no finish reason."""
    async with FaultyEndpoint(dialect, text=TEXT) as ep:
        ep.faults.end_after = 2
        status, raw = await post(session, ep, body(dialect, USER))
    assert status == 200 and texts(dialect, raw) == ["one", " two"]
    for marker in (b"finish_reason\":\"stop", b"stop_reason\":\"end_turn", b'"done":true', b"[DONE]", b"message_stop"):
        assert marker not in raw


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_stall_after_holds_the_stream_until_the_client_leaves(session: aiohttp.ClientSession, dialect: str) -> None:
    """stall_after=K: K content pieces, then silence; the client leaving counts as a disconnect."""
    async with FaultyEndpoint(dialect, text=TEXT) as ep:
        ep.faults.stall_after = 1
        got = b""
        with anyio.move_on_after(60) as scope:
            async with session.post(ep.base_url.removesuffix("/v1") + PATHS[dialect], json=body(dialect, USER)) as resp:
                async for piece in resp.content.iter_any():
                    got += piece
        assert scope.cancelled_caught
        for _ in range(100):
            if ep.stats.disconnects:
                break
            await anyio.sleep(0.01)
        assert ep.stats.disconnects == 1
    assert texts(dialect, got) == ["one"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_malformed_after_sends_one_broken_event_mid_stream(session: aiohttp.ClientSession, dialect: str) -> None:
    """malformed_after=K: K good pieces, one undecodable event, then the rest of the stream."""
    async with FaultyEndpoint(dialect, text=TEXT) as ep:
        ep.faults.malformed_after = 2
        _, raw = await post(session, ep, body(dialect, USER))
    separator = b"\n" if dialect == "ollama" else b"\n\n"
    broken = [f for f in raw.split(separator) if f.strip() and not _decodes(f)]
    assert len(broken) == 1
    good = raw.replace(broken[0] + separator, b"")
    assert "".join(texts(dialect, good)) == TEXT


def _decodes(frame: bytes) -> bool:
    data = frame.split(b"data: ", 1)[-1]
    if data == b"[DONE]":
        return True
    try:
        json.loads(data)
    except json.JSONDecodeError:
        return False
    return True


PREFILL_BODY = {
    "openai": {"continue_final_message": True, "add_generation_prompt": False},
    "anthropic": {},
    "ollama": {},
}


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_trailing_assistant_message_is_continued(session: aiohttp.ClientSession, dialect: str) -> None:
    """A prefill that begins the reply is continued: only the words after it are sent."""
    async with FaultyEndpoint(dialect, text=TEXT) as ep:
        messages = [*USER, {"role": "assistant", "content": "one two"}]
        status, raw = await post(session, ep, body(dialect, messages, **PREFILL_BODY[dialect]))
    assert status == 200 and "".join(texts(dialect, raw)) == " three four five"


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_reject_prefill_answers_400(session: aiohttp.ClientSession, dialect: str) -> None:
    """reject_prefill: a request that asks to continue an assistant message gets the dialect's 400."""
    async with FaultyEndpoint(dialect, text=TEXT) as ep:
        ep.faults.reject_prefill = True
        messages = [*USER, {"role": "assistant", "content": "one two"}]
        status, raw = await post(session, ep, body(dialect, messages, **PREFILL_BODY[dialect]))
        plain_status, _ = await post(session, ep, body(dialect, USER))
    assert status == 400 and any(word in raw for word in (b"prefill", b"continue_final_message", b"continue an assistant"))
    assert plain_status == 200


async def test_openai_prefill_needs_the_flag_and_no_generation_prompt(session: aiohttp.ClientSession) -> None:
    """On the OpenAI dialect a trailing assistant message is continued only with continue_final_message,
    and that flag with add_generation_prompt left on is a 400, as on vLLM."""
    async with FaultyEndpoint("openai", text=TEXT) as ep:
        messages = [*USER, {"role": "assistant", "content": "one two"}]
        _, fresh = await post(session, ep, body("openai", messages))
        status, raw = await post(session, ep, body("openai", messages, continue_final_message=True))
    assert "".join(texts("openai", fresh)) == TEXT
    assert status == 400 and b"add_generation_prompt" in raw


async def test_anthropic_refuses_a_prefill_ending_in_whitespace(session: aiohttp.ClientSession) -> None:
    """As the real API does: final assistant content cannot end with trailing whitespace."""
    async with FaultyEndpoint("anthropic", text=TEXT) as ep:
        status, raw = await post(session, ep, body("anthropic", [*USER, {"role": "assistant", "content": "one "}]))
    assert status == 400 and b"trailing whitespace" in raw


def test_server_command_sets_the_stream_knobs() -> None:
    """The standalone server's stream fault flags land on its Faults."""
    from runtime.testing import Faults
    from runtime.testing.server import _parser, apply_faults

    args = _parser().parse_args(
        ["--stream-error-after", "1", "--no-terminal", "--end-after", "2", "--stall-after", "3",
         "--malformed-after", "4", "--reject-prefill"]
    )
    faults = Faults()
    apply_faults(faults, args)
    assert (faults.stream_error_after, faults.end_after, faults.stall_after, faults.malformed_after) == (1, 2, 3, 4)
    assert faults.no_terminal and faults.reject_prefill
