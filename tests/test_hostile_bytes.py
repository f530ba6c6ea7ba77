"""Hostile and broken bytes from an endpoint: only runtime.errors, never a short success.

Every recorded transcript in tests/data goes through its dialect's decoder split at
random points, truncated, with a BOM in front, with bytes flipped, inserted or
deleted; whole bodies go through parse_chat / parse_embed / parse_error the same way.
Deep nesting and invalid UTF-8 inside tool-call arguments are made on purpose. The
decoders must give the same answer for every split, a truncated stream must fail or
give the whole answer, and nothing but a runtime.errors class may ever come out. Over
the network, such a body on one endpoint fails over to the next.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime import HealthPolicy, Runtime
from runtime.errors import LLMError, ProtocolError, ProviderError
from runtime.policy import Endpoint
from runtime.providers import Adapter, adapter_for
from runtime.providers.base import MAX_WAIT
from runtime.testing import FaultyEndpoint
from runtime.types import StreamChunk

DATA = Path(__file__).parent / "data"
QUIET = HealthPolicy(enabled=False)
FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
DEEP = 100_000
BOM = b"\xef\xbb\xbf"

_ENDPOINTS = {
    "openai": Endpoint(name="o", provider="openai", model="gpt-4o-mini", api_key="sk-test"),
    "azure": Endpoint(name="az", provider="azure", model="dep", base_url="https://r.openai.azure.com", api_key="k"),
    "deepseek": Endpoint(name="ds", provider="deepseek", model="deepseek-chat", api_key="k"),
    "anthropic": Endpoint(name="an", provider="anthropic", model="claude-haiku-4-5", api_key="k"),
    "ollama": Endpoint(name="ol", provider="ollama", model="llama3.2"),
}


def adapter(dialect: str) -> Adapter:
    return adapter_for(_ENDPOINTS[dialect])


STREAMS = sorted(p for p in DATA.glob("*/*") if p.suffix in (".sse", ".ndjson"))
BODIES = sorted(
    p
    for p in DATA.glob("*/*.json")
    if not any(word in p.name for word in ("cassette", "tags", "first_chunk", "last_chunk", "spec_example", "annotations"))
)


def _ids(paths: list[Path]) -> list[str]:
    return [f"{p.parent.name}/{p.name}" for p in paths]


Outcome = tuple[str, Any]


def run_stream(dialect: str, pieces: list[bytes]) -> Outcome:
    """What the decoder makes of ``pieces`` read in order, the way ChunkStream reads them:
    ("ok", (text, tool calls, finish)) or ("error", the error class). Anything that is no
    runtime.errors class propagates and fails the test."""
    decoder = adapter(dialect).stream_decoder()
    chunks: list[StreamChunk] = []
    try:
        for piece in pieces:
            chunks += decoder.feed(piece)
            if decoder.done:
                break
        else:
            chunks += decoder.finish()
    except LLMError as exc:
        return "error", type(exc)
    return "ok", _summary(chunks)


def _summary(chunks: list[StreamChunk]) -> tuple[str, dict[int, tuple[str, str, str]], str | None]:
    calls: dict[int, list[str]] = {}
    finish = None
    for chunk in chunks:
        for delta in chunk.tool_calls or ():
            call = calls.setdefault(delta.index, ["", "", ""])
            call[0] = delta.id or call[0]
            call[1] = delta.name or call[1]
            call[2] += delta.arguments
        finish = chunk.finish_reason or finish
    return "".join(c.text for c in chunks), {i: (c[0], c[1], c[2]) for i, c in calls.items()}, finish


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
@FAST
@given(cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_gives_the_same_answer(path: Path, cuts: list[int]) -> None:
    data = path.read_bytes()
    dialect = path.parent.name
    assert run_stream(dialect, _split(data, cuts)) == run_stream(dialect, [data])


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
@FAST
@given(cuts=st.lists(st.integers(min_value=0), max_size=6))
def test_a_bom_at_the_start_is_stripped_however_it_is_split(path: Path, cuts: list[int]) -> None:
    data = path.read_bytes()
    dialect = path.parent.name
    assert run_stream(dialect, _split(BOM + data, cuts)) == run_stream(dialect, [data])


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
@FAST
@given(cut=st.integers(min_value=0))
def test_a_truncated_stream_fails_or_is_whole_never_short(path: Path, cut: int) -> None:
    data = path.read_bytes()
    dialect = path.parent.name
    whole = run_stream(dialect, [data])
    kind, value = run_stream(dialect, [data[: cut % (len(data) + 1)]])
    if kind == "ok":
        assert whole[0] == "ok", "a stream that fails whole succeeded when cut"
        text, calls, finish = value
        assert (text, calls) == whole[1][:2] and finish is not None


_MUTATION = st.tuples(st.sampled_from(["flip", "insert", "delete"]), st.integers(min_value=0), st.integers(0, 255))


def _mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, byte in edits:
        at = where % (len(out) + 1)
        if kind == "insert":
            out[at:at] = bytes([byte])
        elif out and kind == "flip":
            out[at % len(out)] ^= byte or 1
        elif out:
            del out[at % len(out)]
    return bytes(out)


@pytest.mark.parametrize("path", STREAMS, ids=_ids(STREAMS))
@FAST
@given(edits=st.lists(_MUTATION, min_size=1, max_size=8), cuts=st.lists(st.integers(min_value=0), max_size=4))
def test_mutated_streams_raise_only_runtime_errors(path: Path, edits: list[tuple[str, int, int]], cuts: list[int]) -> None:
    run_stream(path.parent.name, _split(_mutate(path.read_bytes(), edits), cuts))


def parse_body(dialect: str, path: Path, body: bytes) -> Any:
    """The body through the parser its file holds: errors through parse_error (which
    returns, never raises), embeddings through parse_embed, replies through parse_chat."""
    a = adapter(dialect)
    if "error" in path.name or "INVALID" in path.name:
        error = a.parse_error(_status(path), {}, body)
        assert isinstance(error, ProviderError)
        return error
    parse: Callable[[bytes], Any] = a.parse_embed if "embed" in path.name else a.parse_chat
    try:
        return parse(body)
    except LLMError as exc:
        return exc


def _status(path: Path) -> int:
    for part in path.stem.split("_"):
        if part.isdigit() and len(part) == 3:
            return int(part)
    return 400


def _body(path: Path) -> bytes:
    data = path.read_bytes()
    if data.lstrip().startswith(b'{\n  "status_code"'):
        import msgspec  # a recorded exchange: the body is inside it

        return msgspec.json.encode(msgspec.json.decode(data)["body"])
    return data


@pytest.mark.parametrize("path", BODIES, ids=_ids(BODIES))
@FAST
@given(edits=st.lists(_MUTATION, max_size=8), cut=st.integers(min_value=0))
def test_mutated_and_truncated_bodies_raise_only_runtime_errors(path: Path, edits: list[tuple[str, int, int]], cut: int) -> None:
    body = _mutate(_body(path), edits)
    parse_body(path.parent.name, path, body[: cut % (len(body) + 1)] if cut % 3 == 0 else body)


def _deep(depth: int = DEEP) -> bytes:
    return b"[" * depth + b"]" * depth


# One stream frame per dialect carrying deep nesting: in an unknown field, and as a tool call's input.
_DEEP_FRAMES = {
    "openai": [b'data: {"choices": [], "x": ' + _deep() + b"}\n\n"],
    "anthropic": [
        b'event: message_start\ndata: {"type": "message_start", "message": {"x": ' + _deep() + b"}}\n\n",
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
        b'"content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": ' + _deep() + b"}}}\n\n",
    ],
    "ollama": [
        b'{"message": {"role": "assistant", "content": "", "x": ' + _deep() + b"}, \"done\": false}\n",
        b'{"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"a": ' + _deep() + b"}}}]}, \"done\": false}\n",
    ],
}

# Invalid UTF-8 inside tool-call arguments, streamed and whole.
_BAD_UTF8_FRAMES = {
    "openai": [b'data: {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\xff"}}]}}]}\n\n'],
    "anthropic": [
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
        b'"content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": "\xff\xfe"}}}\n\n',
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "input_json_delta", "partial_json": "{\\"a\\": \\"\xff"}}\n\n',
    ],
    "ollama": [b'{"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"a": "\xff"}}}]}, "done": false}\n'],
}
_BAD_UTF8_BODIES = {
    "openai": b'{"choices": [{"index": 0, "message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "\xff"}}]}}]}',
    "anthropic": b'{"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": "\xff"}}]}',
    "ollama": b'{"message": {"tool_calls": [{"function": {"name": "f", "arguments": {"a": "\xff"}}}]}, "done": true}',
}


@pytest.mark.parametrize(("dialect", "frame"), [(d, f) for d, frames in _DEEP_FRAMES.items() for f in frames])
def test_deep_nesting_in_a_stream_is_a_protocol_error(dialect: str, frame: bytes) -> None:
    assert run_stream(dialect, [frame]) == ("error", ProtocolError)


@pytest.mark.parametrize(("dialect", "frame"), [(d, f) for d, frames in _BAD_UTF8_FRAMES.items() for f in frames])
def test_invalid_utf8_in_streamed_tool_arguments_is_a_protocol_error(dialect: str, frame: bytes) -> None:
    assert run_stream(dialect, [frame]) == ("error", ProtocolError)


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
def test_deep_or_undecodable_whole_bodies_are_protocol_errors(dialect: str) -> None:
    a = adapter(dialect)
    for body in (b'{"x": ' + _deep() + b"}", _deep(), _BAD_UTF8_BODIES[dialect]):
        with pytest.raises(ProtocolError) as info:
            a.parse_chat(body)
        assert isinstance(info.value.__cause__, Exception)
        assert "could not read" in str(info.value)
    if a.embeddings:
        with pytest.raises(ProtocolError):
            a.parse_embed(_deep())
    error = a.parse_error(503, {}, b'{"error": ' + _deep() + b"}")
    assert isinstance(error, ProviderError) and error.status == 503


# --- over the network: a hostile body on one endpoint fails over to the next -------------


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
async def test_a_hostile_reply_fails_over_to_the_healthy_backup(dialect: str) -> None:
    """Deep nesting and bad UTF-8 from the primary, whole and streamed: ProtocolError with
    its cause, the backup answers, and the caller never sees a library exception."""
    async with FaultyEndpoint(dialect, name="hostile") as bad, FaultyEndpoint("openai", name="good") as good:
        endpoints = [bad.endpoint(health=QUIET, priority=1), good.endpoint(health=QUIET, priority=2)]
        async with Runtime(endpoints) as rt:
            for body in (b'{"x": ' + _deep() + b"}", _BAD_UTF8_BODIES[dialect]):
                bad.faults.body = body
                reply = await rt.chat("hi")
                assert reply.endpoint == "good"
                first = reply.attempts[0]
                assert first.endpoint == "hostile" and isinstance(first.error, ProtocolError)
                assert first.error.__cause__ is not None
            for frame in (*_DEEP_FRAMES[dialect], *_BAD_UTF8_FRAMES[dialect]):
                bad.faults.body = frame
                async with rt.stream("hi") as s:
                    text = "".join([c.text async for c in s])
                assert s.response.endpoint == "good" and text == s.response.text


@pytest.mark.anyio
async def test_a_stream_starting_with_a_bom_keeps_its_first_event() -> None:
    """A BOM before the first event: the tool call still has its id and name."""
    data = (DATA / "anthropic" / "stream_tool_use_sdk_fixture.sse").read_bytes()
    async with FaultyEndpoint("anthropic", name="bom") as server:
        server.faults.body = BOM + data
        async with Runtime([server.endpoint(health=QUIET)]) as rt:
            async with rt.stream("hi") as s:
                async for _ in s:
                    pass
    whole = run_stream("anthropic", [data])
    assert whole[0] == "ok"
    calls = s.response.tool_calls
    assert calls and all(call.id and call.name for call in calls)
    assert [(c.id, c.name) for c in calls] == [(i, n) for i, n, _ in whole[1][1].values()]


_HEADER_VALUES = st.one_of(
    st.sampled_from(["inf", "-inf", "nan", "1e400", "-5", "", " ", "9" * 400, "6m0s", "1h1m1.5s", "2025-13-45T99:99:99Z"]),
    st.text(max_size=40),
)
_HEADER_NAMES = [
    "retry-after", "retry-after-ms", "x-should-retry",
    *(f"x-ratelimit-{f}-{k}" for f in ("limit", "remaining", "reset") for k in ("requests", "tokens")),
    *(f"anthropic-ratelimit-{k}-{f}" for f in ("limit", "remaining", "reset") for k in ("requests", "tokens", "input-tokens")),
]


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
@FAST
@given(headers=st.dictionaries(st.sampled_from(_HEADER_NAMES), _HEADER_VALUES, max_size=8), status=st.sampled_from([400, 429, 500, 503, 529]))
def test_hostile_headers_never_raise_and_never_wait_forever(dialect: str, headers: dict[str, str], status: int) -> None:
    """Rate-limit and retry headers of any value: read or ignored, never an exception, never an infinite wait."""
    a = adapter(dialect)
    snapshot = a.rate_limit(headers)
    error = a.parse_error(status, headers, b'{"error": {"message": "x"}}')
    assert isinstance(error, ProviderError)
    waits = [error.retry_after] + ([snapshot.reset_requests, snapshot.reset_tokens] if snapshot else [])
    assert all(w is None or 0 <= w <= MAX_WAIT for w in waits)


@pytest.mark.anyio
@pytest.mark.parametrize("dialect", ["openai", "anthropic"])
async def test_a_stream_cut_short_says_how_much_had_arrived(dialect: str) -> None:
    """A body that ends cleanly before the answer's end: the error says how many characters
    the caller already had, in our words, and stays a ProtocolError."""
    from runtime.errors import StreamInterrupted

    async with FaultyEndpoint(dialect, name="cut", text="alpha beta gamma delta") as server:
        server.faults.end_after = 2
        async with Runtime([server.endpoint(health=QUIET)]) as rt:
            with pytest.raises(StreamInterrupted) as info:
                async with rt.stream("hi") as s:
                    async for _ in s:
                        pass
    cause = info.value.cause
    assert isinstance(cause, ProtocolError)
    assert f"the stream was cut after {len(info.value.partial)} characters" in str(cause)


@pytest.mark.anyio
async def test_a_body_past_the_limit_is_a_protocol_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole body larger than MAX_BODY_BYTES is refused while it is read, and fails over."""
    import runtime.providers.base as base

    monkeypatch.setattr(base, "MAX_BODY_BYTES", 1000)
    async with FaultyEndpoint("openai", name="huge") as bad, FaultyEndpoint("openai", name="good") as good:
        bad.faults.body = b'{"choices": [{"index": 0, "message": {"content": "' + b"x" * 5000 + b'"}}]}'
        async with Runtime([bad.endpoint(health=QUIET, priority=1), good.endpoint(health=QUIET, priority=2)]) as rt:
            reply = await rt.chat("hi")
    assert reply.endpoint == "good"
    error = reply.attempts[0].error
    assert isinstance(error, ProtocolError) and "exceeds the 1000-byte limit" in str(error)
