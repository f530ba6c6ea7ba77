"""Every stream decoder reads its commonest frame, a plain text delta, as one strict shape
(``_plain``) before the full reading (``_frame``): wherever the strict shape fits a frame,
both readings must give the same chunks. Checked over every recorded stream fixture and
over hand-made frames a field away from plain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from runtime.policy import Endpoint
from runtime.providers import adapter_for
from runtime.providers.streams import FramedDecoder, NDJSONDecoder, SSEDecoder, SSEEvent
from runtime.types import StreamChunk

DATA = Path(__file__).parent / "data"

ADAPTERS = {
    "openai": Endpoint(name="oa", provider="openai", model="gpt-4o-mini", api_key="sk-test"),
    "azure": Endpoint(name="az", provider="azure", model="dep", base_url="https://res.openai.azure.com", api_key="k"),
    "deepseek": Endpoint(name="ds", provider="deepseek", model="deepseek-chat", api_key="k"),
    "anthropic": Endpoint(name="an", provider="anthropic", model="claude-sonnet-4-5", api_key="k"),
    "ollama": Endpoint(name="ol", provider="ollama", model="llama3.2"),
}


def frames_of(dialect: str, body: bytes) -> list[Any]:
    framer: SSEDecoder | NDJSONDecoder = NDJSONDecoder() if dialect == "ollama" else SSEDecoder()
    return [*framer.feed(body), *framer.finish()]


def readings(decoder: FramedDecoder[Any], frame: Any) -> tuple[list[StreamChunk], list[StreamChunk]] | None:
    """(the plain reading, the full reading) of ``frame``, or None when the plain one does not fit."""
    try:
        chunk = decoder._plain(frame)
    except msgspec.DecodeError:
        return None
    full: list[StreamChunk] = []
    decoder._frame(frame, full)
    return ([] if chunk is None else [chunk]), full


def agree(dialect: str, frames: list[Any]) -> int:
    """Feeds ``frames`` in order (the full reading keeps the decoder's state); how many fit plain."""
    decoder = adapter_for(ADAPTERS[dialect]).stream_decoder()
    assert isinstance(decoder, FramedDecoder)
    fitted = 0
    for frame in frames:
        pair = readings(decoder, frame)
        if pair is None:
            try:
                decoder._frame(frame, [])
            except Exception:  # an error event, [DONE] after the end: the full reading's business
                pass
            continue
        fitted += 1
        assert pair[0] == pair[1], frame
    return fitted


FIXTURES = sorted(p for p in DATA.glob("*/*") if p.suffix in (".sse", ".ndjson"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_plain_reading_of_every_recorded_frame_is_the_full_one(path: Path) -> None:
    dialect = "openai" if path.parent.name == "openai" else path.parent.name
    agree(dialect, frames_of(dialect, path.read_bytes()))


def test_recorded_text_streams_are_read_plain() -> None:
    # its 30 text deltas and the role opener (empty content: no chunk either way)
    assert agree("openai", frames_of("openai", (DATA / "openai/chat_stream_text_with_usage.sse").read_bytes())) == 31
    assert agree("anthropic", frames_of("anthropic", (DATA / "anthropic/stream_text_recorded_live.sse").read_bytes())) > 0
    assert agree("ollama", frames_of("ollama", (DATA / "ollama/chat_stream_DERIVED.ndjson").read_bytes())) > 0


def sse(doc: Any) -> SSEEvent:
    return SSEEvent("message", msgspec.json.encode(doc))


OPENAI_NEAR_PLAIN: list[Any] = [
    {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]},
    {"id": "", "model": "", "choices": [{"index": 0, "delta": {"content": "hi", "role": "assistant"}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "", "refusal": "no"}}]},
    {"choices": [{"index": 0, "delta": {"content": "a", "reasoning_content": "r"}}]},
    {"choices": [{"index": 0, "delta": {"content": "a", "reasoning": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "a", "tool_calls": []}}]},
    {"choices": [{"index": 0, "delta": {"content": "a", "audio": {}}}]},
    {"choices": [{"index": 0, "delta": {"content": None}}]},
    {"choices": [{"index": 1, "delta": {"content": "other"}}]},
    {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]},
    {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
    {"choices": [{"index": 0, "delta": {"content": "a"}}], "usage": {"prompt_tokens": 1}},
    {"choices": [{"index": 0, "text": "completion"}]},
    {"choices": []},
]


def test_openai_frames_a_field_away_from_plain_read_as_in_full() -> None:
    assert agree("openai", [sse(doc) for doc in OPENAI_NEAR_PLAIN]) == 4  # the first three and the audio one


def test_anthropic_frames_a_field_away_from_plain_read_as_in_full() -> None:
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 3}}}
    docs: list[Any] = [
        start,
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"text": "no type"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "t"}},
        {"type": "content_block_delta", "index": 0, "delta": {"text": "a", "thinking": "t"}},
        {"type": "content_block_start", "index": 0, "delta": {"text": "a"}},
    ]
    assert agree("anthropic", [SSEEvent(d["type"], msgspec.json.encode(d)) for d in docs]) == 3


def test_ollama_lines_a_field_away_from_plain_read_as_in_full() -> None:
    docs: list[Any] = [
        {"model": "m", "message": {"role": "assistant", "content": "hi"}, "done": False},
        {"model": "m", "message": {"content": ""}},
        {"model": "m", "message": {"content": "a", "thinking": "t"}, "done": False},
        {"model": "m", "message": {"content": "a", "tool_calls": []}, "done": False},
        {"model": "m", "message": {"content": "a"}, "error": "boom"},
        {"model": "m", "response": "generated", "done": False},
        {"model": "m", "message": {"content": "a"}, "done": True, "done_reason": "stop"},
    ]
    assert agree("ollama", [msgspec.json.encode(d) for d in docs]) == 2
