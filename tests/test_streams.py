"""SSE and NDJSON framing: spec behaviour, real fixture streams, any split, flat memory."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import ProtocolError
from runtime.providers.streams import NDJSONDecoder, SSEDecoder, SSEEvent

DATA = Path(__file__).parent / "data"
SSE_FIXTURES = sorted(DATA.glob("*/*.sse"))
NDJSON_FIXTURES = sorted(DATA.glob("*/*.ndjson"))


def sse(*pieces: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events + decoder.finish()


def ndjson(*pieces: bytes) -> list[bytes]:
    decoder = NDJSONDecoder()
    lines: list[bytes] = []
    for piece in pieces:
        lines += decoder.feed(piece)
    return lines + decoder.finish()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# --- the SSE spec ---------------------------------------------------------------------------


def test_data_lines_make_one_event_each_blank_line() -> None:
    """A blank line dispatches the event; its name defaults to "message"."""
    assert sse(b"data: a\n\ndata: b\n\n") == [SSEEvent("message", b"a"), SSEEvent("message", b"b")]


def test_event_field_names_the_event_and_resets_after_dispatch() -> None:
    """``event:`` names one event only; the next one is "message" again."""
    events = sse(b"event: ping\ndata: {}\n\ndata: x\n\n")
    assert events == [SSEEvent("ping", b"{}"), SSEEvent("message", b"x")]


def test_multiline_data_is_joined_with_newlines() -> None:
    """Several ``data:`` lines of one event are joined with ``\\n``."""
    assert sse(b"data: line one\ndata:line two\ndata:\n\n") == [SSEEvent("message", b"line one\nline two\n")]


def test_one_leading_space_is_stripped_from_values() -> None:
    """Only the single space after the colon is dropped; the rest of the value is kept."""
    assert sse(b"data:  two spaces \n\n") == [SSEEvent("message", b" two spaces ")]


def test_field_without_colon_is_a_field_with_empty_value() -> None:
    """A bare ``data`` line adds an empty data line, so the event is dispatched with empty data."""
    assert sse(b"data\n\n") == [SSEEvent("message", b"")]


def test_comments_are_skipped_and_counted() -> None:
    """``: keep-alive`` lines produce nothing and do not split an event."""
    decoder = SSEDecoder()
    events = decoder.feed(b": keep-alive\n\ndata: a\n: mid-event comment\ndata: b\n\n")
    assert events == [SSEEvent("message", b"a\nb")]
    assert decoder.comments == 2


def test_event_without_data_is_not_dispatched() -> None:
    """An event with no ``data:`` line is dropped, as the spec says."""
    assert sse(b"event: lonely\n\n") == []


def test_unknown_fields_and_retry_are_ignored_and_id_is_kept() -> None:
    """``retry:`` and unknown fields change nothing; ``id:`` is remembered."""
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 100\nfoo: bar\nid: 7\ndata: x\n\n") == [SSEEvent("message", b"x")]
    assert decoder.last_event_id == "7"


def test_crlf_and_lone_cr_end_lines() -> None:
    """``\\r\\n``, ``\\r`` and ``\\n`` all end a line."""
    assert sse(b"event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\rdata: 3\n\n") == [
        SSEEvent("a", b"1"),
        SSEEvent("b", b"2"),
        SSEEvent("message", b"3"),
    ]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    """A ``\\r`` ending one read and the ``\\n`` starting the next are one line end, not two."""
    assert sse(b"data: a\r", b"\n", b"data: b\r", b"\ndata: c\r\n\r\n") == [SSEEvent("message", b"a\nb\nc")]


def test_final_event_without_blank_line_is_flushed_at_eof() -> None:
    """An event still open at end of input is dispatched by finish(), even mid-line."""
    assert sse(b"data: a\n\nevent: last\ndata: b\n") == [SSEEvent("message", b"a"), SSEEvent("last", b"b")]
    assert sse(b"data: a\n\ndata: no newline at all") == [
        SSEEvent("message", b"a"),
        SSEEvent("message", b"no newline at all"),
    ]


def test_finish_resets_the_decoder() -> None:
    """After finish() the decoder holds nothing and starts afresh."""
    decoder = SSEDecoder()
    decoder.feed(b"data: half")
    assert decoder.finish() == [SSEEvent("message", b"half")]
    assert decoder.buffered == 0
    assert decoder.finish() == []


def test_oversized_event_is_refused() -> None:
    """A line or event beyond max_frame_bytes raises ProtocolError instead of growing without bound."""
    decoder = SSEDecoder(max_frame_bytes=100)
    with pytest.raises(ProtocolError):
        for _ in range(20):
            decoder.feed(b"0123456789")
    decoder = SSEDecoder(max_frame_bytes=100)
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: " + b"x" * 60 + b"\n" + b"data: " + b"y" * 60 + b"\n")
    decoder = SSEDecoder(max_frame_bytes=100)
    with pytest.raises(ProtocolError):
        decoder.feed(b"data:\n" * 200)  # empty data lines still grow the event


# --- the real fixtures ----------------------------------------------------------------------


def test_openai_text_fixture_frames_exactly() -> None:
    """The recorded OpenAI text stream is 34 events, the last ``[DONE]``."""
    events = sse((DATA / "openai/chat_stream_text_with_usage.sse").read_bytes())
    assert len(events) == 34
    assert {e.event for e in events} == {"message"}
    assert events[-1].data == b"[DONE]"
    assert events[0].data.startswith(b'{"id":"chatcmpl-ABfw031mOJeYCSHe4yI2ZjOA6kMJL"')


def test_anthropic_fixture_without_trailing_newline_keeps_its_last_event() -> None:
    """The SDK fixture ends on ``message_stop`` with no newline; that event is still delivered."""
    events = sse((DATA / "anthropic/stream_text_sdk_fixture.sse").read_bytes())
    assert [e.event for e in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[-1].data == b'{"type":"message_stop"}'


def test_deepseek_keepalive_fixture_yields_no_event() -> None:
    """DeepSeek's ``: keep-alive`` frame is a comment: no event."""
    decoder = SSEDecoder()
    assert decoder.feed((DATA / "deepseek/keepalive_comment_DERIVED.sse").read_bytes()) == []
    assert decoder.finish() == []
    assert decoder.comments == 1


@pytest.mark.parametrize("path", SSE_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sse_fixture_byte_at_a_time_equals_whole(path: Path) -> None:
    """Feeding a real stream one byte at a time gives the events of feeding it whole."""
    data = path.read_bytes()
    assert sse(*(data[i : i + 1] for i in range(len(data)))) == sse(data)


@pytest.mark.parametrize("path", SSE_FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_sse_fixture_any_split_equals_whole(path: Path, data: st.DataObject) -> None:
    """For random splits of each real fixture stream the events equal the unsplit decode."""
    raw = path.read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60))
    assert sse(*split_at(raw, cuts)) == sse(raw)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"data: x", b"data:y", b"event: e", b": c", b"", b"id: 1", b"data", b"retry: 5"]),
        max_size=30,
    ),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.data(),
)
def test_sse_any_line_ending_any_split(lines: list[bytes], ending: bytes, data: st.DataObject) -> None:
    """Synthetic streams give the same events for any split, with any of the three line endings."""
    raw = b"".join(line + ending for line in lines)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert sse(*split_at(raw, cuts)) == sse(raw) == sse(b"".join(line + b"\n" for line in lines))


def test_memory_stays_flat_over_a_long_stream() -> None:
    """Feeding a stream of thousands of events keeps the buffer at most one event's size."""
    one = (DATA / "openai/chat_stream_text_with_usage.sse").read_bytes()
    longest = max(len(line) for line in one.split(b"\n"))
    decoder = SSEDecoder()
    stream = one * 300  # ~10,000 events, ~3 MB
    peak = 0
    count = 0
    for i in range(0, len(stream), 1000):
        count += len(decoder.feed(stream[i : i + 1000]))
        peak = max(peak, decoder.buffered)
    assert count == 34 * 300
    assert peak <= longest


# --- NDJSON ---------------------------------------------------------------------------------


def test_ndjson_lines_blank_lines_and_crlf() -> None:
    """One frame per non-blank line; ``\\r\\n`` endings and blank lines are tolerated."""
    assert ndjson(b'{"a":1}\r\n\n  \n{"b":2}\n') == [b'{"a":1}', b'{"b":2}']


def test_ndjson_last_line_without_newline_is_flushed() -> None:
    """The last line is delivered at end of input even without its newline."""
    decoder = NDJSONDecoder()
    assert decoder.feed(b'{"a":1}\n{"b":') == [b'{"a":1}']
    assert decoder.buffered == 5
    assert decoder.feed(b"2}") == []
    assert decoder.finish() == [b'{"b":2}']
    assert decoder.buffered == 0


def test_ndjson_oversized_line_is_refused() -> None:
    """A line beyond max_frame_bytes raises ProtocolError."""
    decoder = NDJSONDecoder(max_frame_bytes=10)
    with pytest.raises(ProtocolError):
        decoder.feed(b"x" * 11)


def test_ndjson_fixture_frames_exactly() -> None:
    """Ollama's documented stream is seven lines, the last one ``done: true``."""
    lines = ndjson((DATA / "ollama/generate_stream_docs.ndjson").read_bytes())
    assert len(lines) == 7
    assert lines[-1].endswith(b'"done":true, "done_reason": "stop"}')


@pytest.mark.parametrize("path", NDJSON_FIXTURES, ids=lambda p: p.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_ndjson_fixture_any_split_equals_whole(path: Path, data: st.DataObject) -> None:
    """For random splits of each real NDJSON fixture the lines equal the unsplit decode."""
    raw = path.read_bytes()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=60))
    assert ndjson(*split_at(raw, cuts)) == ndjson(raw)


def test_ndjson_memory_stays_flat() -> None:
    """A long NDJSON stream keeps at most one line buffered."""
    one = (DATA / "ollama/generate_stream_docs.ndjson").read_bytes()
    decoder = NDJSONDecoder()
    peak = count = 0
    stream = one * 2000
    for i in range(0, len(stream), 777):
        count += len(decoder.feed(stream[i : i + 777]))
        peak = max(peak, decoder.buffered)
    assert count == 7 * 2000
    assert peak <= max(len(line) for line in one.split(b"\n"))
