"""A provider that echoes the API key back never gets it into anything the caller can see.

The matrix: every dialect x (401 and 400 bodies quoting the key in message and code,
200 bodies carrying an error, stream error events, a non-JSON body longer than the
snippet with the key across the cut) x chat and stream. After each, the key (or its
first half) must be in no attribute of the raised error or its cause chain, no repr,
no span, no log line and no status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runtime import HealthPolicy, RetryPolicy, Runtime
from runtime.errors import ContentFiltered, LLMError
from runtime.policy import Endpoint
from runtime.providers import adapter_for
from runtime.testing import Faults, FaultyEndpoint

pytestmark = pytest.mark.anyio

KEY = "sk-echo-0123456789abcdef0123456789abcdef"
PIECES = (KEY, KEY[: len(KEY) // 2], KEY[len(KEY) // 2 :])
QUIET = HealthPolicy(enabled=False)
_LONG = b"<html><body>" + b"x" * 268 + KEY.encode() + b" " + b"y" * 600 + b"</body></html>"


def _stream_error(dialect: str) -> bytes:
    if dialect == "openai":
        return b'data: {"error": {"message": "bad key ' + KEY.encode() + b'", "type": "' + KEY.encode() + b'", "code": "' + KEY.encode() + b'"}}\n\n'
    if dialect == "anthropic":
        return (
            b'event: error\ndata: {"type": "error", "error": {"type": "' + KEY.encode() + b'", "message": "echo '
            + KEY.encode() + b'"}}\n\n'
        )
    return b'{"error": "key ' + KEY.encode() + b' refused"}\n'


def _error_200(dialect: str) -> bytes:
    if dialect == "openai":
        return b'{"error": {"message": "' + KEY.encode() + b'", "type": "' + KEY.encode() + b'", "code": "' + KEY.encode() + b'"}}'
    if dialect == "anthropic":
        return b'{"type": "error", "error": {"type": "' + KEY.encode() + b'", "message": "' + KEY.encode() + b'"}}'
    return b'{"error": "' + KEY.encode() + b'"}'


def _bad_utf8(dialect: str) -> bytes:
    """Tool-call arguments quoting the key, with a byte that is no UTF-8: the decode error
    carries the bytes, and it stays the ProtocolError's cause."""
    args = b'{"a": "' + KEY.encode() + b'\xff"}'
    if dialect == "anthropic":
        return b'{"content": [{"type": "tool_use", "id": "t", "name": "f", "input": ' + args + b"}]}"
    if dialect == "ollama":
        return b'{"message": {"tool_calls": [{"function": {"name": "f", "arguments": ' + args + b"}}]}, \"done\": true}"
    return b'{"choices": [{"index": 0, "message": {"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "' + KEY.encode() + b'\xff"}}]}}]}'


def _fail(status: int) -> Callable[[Faults, str], None]:
    def setup(faults: Faults, dialect: str) -> None:
        faults.fail_next(10, status, message=f"Incorrect API key provided: {KEY}", code=KEY)

    return setup


def _body(make: Callable[[str], bytes], status: int = 200, *, streamed: bool = False) -> Callable[[Faults, str], None]:
    def setup(faults: Faults, dialect: str) -> None:
        faults.body = make(dialect)
        faults.body_status = status

    return setup


CASES: dict[str, tuple[Callable[[Faults, str], None], tuple[str, ...]]] = {
    "401 quoting the key": (_fail(401), ("chat", "stream")),
    "400 quoting the key": (_fail(400), ("chat", "stream")),
    "200 carrying an error": (_body(_error_200), ("chat",)),
    "stream error event": (_body(_stream_error), ("stream",)),
    "long non-JSON 500": (_body(lambda d: _LONG, 500), ("chat", "stream")),
    "bad UTF-8 tool arguments": (_body(_bad_utf8), ("chat",)),
}


def _leaks(value: Any, seen: set[int] | None = None) -> list[str]:
    """Where in ``value`` (an error, its chain, structs, containers) a piece of the key shows."""
    seen = set() if seen is None else seen
    if id(value) in seen or value is None or isinstance(value, int | float | bool):
        return []
    seen.add(id(value))
    if isinstance(value, str | bytes):
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        return [text[:120]] if any(p in text for p in PIECES) else []
    found: list[str] = []
    if isinstance(value, BaseException):
        found += _leaks(str(value), seen) + _leaks(repr(value), seen)
        found += _leaks(list(value.args), seen) + _leaks(dict(vars(value)), seen)
        if isinstance(value, UnicodeDecodeError):
            found += _leaks(value.object, seen)
        found += _leaks(value.__cause__, seen) + _leaks(value.__context__, seen)
    elif isinstance(value, msgspec.Struct):
        found += _leaks(repr(value), seen) + _leaks(msgspec.structs.asdict(value), seen)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            found += _leaks(k, seen) + _leaks(v, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            found += _leaks(item, seen)
    else:
        found += _leaks(repr(value), seen)
        if hasattr(value, "__dict__"):
            found += _leaks(dict(vars(value)), seen)
    return found


def _span_text(exporter: InMemorySpanExporter) -> list[str]:
    texts: list[str] = []
    for span in exporter.get_finished_spans():
        texts.append(span.name)
        texts += [str(v) for v in (span.attributes or {}).values()]
        texts.append(str(span.status.description or ""))
        for event in span.events:
            texts.append(event.name)
            texts += [str(v) for v in (event.attributes or {}).values()]
    return texts


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "ollama"])
@pytest.mark.parametrize("case", list(CASES))
async def test_an_echoed_key_reaches_nothing_the_caller_sees(
    dialect: str, case: str, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    setup, calls = CASES[case]
    caplog.set_level(logging.DEBUG, logger="runtime")
    async with FaultyEndpoint(dialect, name="echo") as server:
        setup(server.faults, dialect)
        endpoint = server.endpoint(health=QUIET, api_key=KEY)
        async with Runtime([endpoint], retry=RetryPolicy(max_attempts=2, backoff_base=0.01)) as rt:
            for call in calls:
                with pytest.raises(LLMError) as info:
                    if call == "chat":
                        await rt.chat("hi")
                    else:
                        async with rt.stream("hi") as s:
                            async for _ in s:
                                pass
                assert not _leaks(info.value), (call, _leaks(info.value))
            status = rt.status()
            assert not _leaks([msgspec.structs.asdict(st) if isinstance(st, msgspec.Struct) else vars(st) for st in status])
            assert not _leaks(rt.usage())
    assert not [t for t in _span_text(span_exporter) if any(p in t for p in PIECES)]
    assert not any(p in caplog.text for p in PIECES)


def test_the_snippet_is_redacted_before_it_is_cut() -> None:
    """A key that straddles the 300-character cut is redacted whole, never half shown."""
    adapter = adapter_for(Endpoint(name="o", provider="openai", model="m", api_key=KEY))
    for at in range(260, 320, 7):
        body = b"x" * at + KEY.encode() + b"y" * 400
        error = adapter.parse_error(502, {}, body)
        assert not _leaks(error), at


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("openai", b'{"error": {"message": "refused", "code": "content_policy_violation"}}'),
        ("openai", b'{"error": {"message": "refused", "code": "content_filter"}}'),
        ("anthropic", b'{"type": "error", "error": {"type": "content_filter", "message": "refused"}}'),
        ("anthropic", b'{"type": "error", "error": {"type": "content_policy_violation", "message": "refused"}}'),
        ("ollama", b'{"error": {"message": "refused", "code": "content_policy_violation"}}'),
        ("ollama", b'{"error": {"message": "refused", "code": "content_filter"}}'),
    ],
)
def test_a_content_policy_400_is_content_filtered_on_every_dialect(provider: str, body: bytes) -> None:
    adapter = adapter_for(Endpoint(name="e", provider=provider, model="m", api_key="k"))  # type: ignore[arg-type]
    error = adapter.parse_error(400, {}, body)
    assert isinstance(error, ContentFiltered) and error.status == 400
