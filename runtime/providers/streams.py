"""Incremental stream framing: bytes split anywhere in, whole events out.

Two framers turn a response body into frames, whatever way the network split it:

- :class:`SSEDecoder` reads ``text/event-stream`` (OpenAI, Azure, DeepSeek, Anthropic) as the
  WHATWG spec says: ``\\n``, ``\\r\\n`` and a lone ``\\r`` all end a line, ``:`` lines are
  comments (``: keep-alive``), ``data:`` lines of one event are joined with ``\\n``, an
  ``event:`` field names the event, a blank line dispatches it. One departure from the
  spec, on purpose: an event still open at end of input is dispatched by :meth:`finish`
  rather than dropped, because real servers end on an event without its blank line
  (Anthropic's SDK fixture does) and dropping it would lose the terminal event.
- :class:`NDJSONDecoder` reads newline-delimited JSON (Ollama): one frame per non-blank
  line, the last line flushed at end of input even without its newline.

Both hold at most one incomplete line plus the event being assembled, so memory stays
flat however long the stream runs; a single line or event larger than ``max_frame_bytes``
is refused with :class:`ProtocolError` rather than buffered without bound.

:class:`FramedDecoder` is the base of every adapter's :class:`StreamDecoder`: it runs a
framer, hands each frame to the adapter's dialect code and takes care of the rules every
dialect shares. An error found after some chunks of the same read is held back until
those chunks are delivered. A stream ends when its answer ends: at its terminal event
(``[DONE]``, ``message_stop``, ``done: true``), or, when the body ends cleanly after the
dialect's finish reason (OpenAI's ``finish_reason``, Anthropic's ``message_delta`` with
``stop_reason``) but before the terminal event, at the end of the body, because some
OpenAI-compatible servers never send ``[DONE]`` and the answer is whole without it. A
body that ends before any finish reason raises :class:`ProtocolError` from
:meth:`~FramedDecoder.finish`: that is a cut answer, never a short success.
"""

from __future__ import annotations

import abc
import functools
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import msgspec

from ..errors import ProtocolError, ProviderError
from ..types import StreamChunk
from .base import DECODE_ERRORS, StreamDecoder, decode_failure

if TYPE_CHECKING:
    from .base import Adapter

__all__ = ["DEFAULT_MAX_FRAME_BYTES", "FramedDecoder", "Framer", "NDJSONDecoder", "SSEDecoder", "SSEEvent"]

#: The largest single line or event a framer buffers. LLM stream events are small (a
#: token, a tool-call fragment); a frame this large means a broken or hostile server.
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024

_T = TypeVar("_T")


class SSEEvent(msgspec.Struct, frozen=True, gc=False):
    """One dispatched server-sent event: its name (``"message"`` when it had no ``event:``
    field) and its data, the event's ``data:`` lines joined with ``\\n``, as bytes so JSON
    decoders read it without a copy.

    A struct, not a NamedTuple: one is made per event, and a NamedTuple's ``__new__`` is a
    Python function."""

    event: str
    data: bytes


#: An unnamed event from its data, made in C (the framer's fast path maps it over a read).
_message_event = functools.partial(SSEEvent, "message")


class Framer(Protocol[_T]):
    """Something that cuts a byte stream into frames: :class:`SSEDecoder`, :class:`NDJSONDecoder`."""

    def feed(self, data: bytes) -> list[_T]:
        """The frames completed by ``data``."""
        ...

    def finish(self) -> list[_T]:
        """The frames still open at end of input."""
        ...


_BOM = b"\xef\xbb\xbf"


def _without_bom(head: bytes, data: bytes) -> tuple[bytes | None, bytes]:
    """Strip a UTF-8 byte-order mark at the start of a stream, however the reads split it
    (the SSE spec says to; a server that sends one would otherwise lose its first event).
    Returns what is still held of a possible mark (None once past the start) and the data
    to read."""
    if not head and data and data[0] != _BOM[0]:
        return None, data  # the common case, decided at the first byte without a copy
    data = head + data
    if len(data) < len(_BOM) and _BOM.startswith(data):
        return data, b""
    return None, data[len(_BOM):] if data.startswith(_BOM) else data


def _too_large(size: int, limit: int) -> ProtocolError:
    return ProtocolError(f"stream frame of {size} bytes exceeds the {limit}-byte limit")


class _LineFramer:
    """What both framers hold between reads: the pieces of a line whose end has not come
    (joined once, when it does, so a long line in many small reads costs linear, not
    quadratic, time) and the start of a possible byte-order mark."""

    __slots__ = ("_head", "_partial", "_partial_size", "max_frame_bytes")

    #: bytes of the event being assembled (SSE's own; NDJSON frames are lines alone)
    _data_size: int = 0

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._partial: list[bytes] = []  # pieces of the current, unterminated line
        self._partial_size = 0
        self._head: bytes | None = b""  # the start of a possible BOM; None past the stream's start

    @property
    def buffered(self) -> int:
        """Bytes held: the incomplete line plus the data of the event being assembled."""
        return self._partial_size + self._data_size

    def _hold(self, piece: bytes) -> None:
        """Keep ``piece`` of a line whose end has not come yet."""
        self._partial.append(piece)
        self._partial_size += len(piece)
        if self._partial_size + self._data_size > self.max_frame_bytes:
            raise _too_large(self._partial_size + self._data_size, self.max_frame_bytes)

    def _joined(self, data: bytes) -> bytes:
        """``data``, which ends a line, after the pieces held of that line."""
        self._partial.append(data)
        data = b"".join(self._partial)
        self._partial = []
        self._partial_size = 0
        return data


class SSEDecoder(_LineFramer):
    """Bytes to :class:`SSEEvent`\\ s, incrementally; the same events for any split of the input.

    ``comments`` counts comment lines seen (keep-alives); ``last_event_id`` is the last
    ``id:`` field. ``retry:`` and unknown fields are ignored, as the spec says.
    """

    __slots__ = ("_data", "_data_size", "_event", "_skip_lf", "comments", "last_event_id")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__(max_frame_bytes)
        self.comments = 0
        self.last_event_id: str | None = None
        self._data: list[bytes] | None = None  # data lines of the open event; None: no data yet
        self._data_size = 0
        self._event = "message"
        self._skip_lf = False  # the last read ended on "\r": a leading "\n" completes that CRLF

    def __repr__(self) -> str:
        return f"<SSEDecoder [buffered {self.buffered} bytes | {self.comments} comments]>"

    def feed(self, data: bytes) -> list[SSEEvent]:
        """The events completed by ``data``."""
        if self._head is not None or self._skip_lf:
            data = self._trim_start(data)
        has_cr = b"\r" in data
        if (
            not has_cr
            and data.endswith(b"\n\n")
            and data.startswith(b"data: ")
            and self._data is None
            and not self._partial
            and self._event == "message"
            and len(data) <= self.max_frame_bytes
        ):
            # What nearly every read of an LLM stream is: whole events of one ``data:`` line
            # each, nothing open before it. Split in C; the newline count proves the shape
            # (every newline is in a separator or the final pair, so no line is anything
            # but ``data: …``), and anything else takes the line-by-line reading below.
            payloads = data[6:-2].split(b"\n\ndata: ")
            if data.count(b"\n") == 2 * len(payloads):
                return list(map(_message_event, payloads))
        return self._lines(data, has_cr)

    def _lines(self, data: bytes, has_cr: bool) -> list[SSEEvent]:
        """``feed`` for any read but the common one: line by line, with what an earlier read left open."""
        if not has_cr and b"\n" not in data:
            if data:
                self._hold(data)
            return []
        if self._partial:
            data = self._joined(data)
        if has_cr:
            if data[-1] == 0x0D:
                self._skip_lf = True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        tail = lines.pop()
        events: list[SSEEvent] = []
        # The two lines almost every event is made of (``data: …`` and the blank line that
        # dispatches it) are read here, in the loop; every other field goes through _field.
        limit = self.max_frame_bytes
        for line in lines:
            if not line:
                parts = self._data
                if parts is not None:
                    events.append(SSEEvent(self._event, parts[0] if len(parts) == 1 else b"\n".join(parts)))
                    self._data = None
                    self._data_size = 0
                self._event = "message"
                continue
            if line.startswith(b"data: "):
                value = line[6:]
            elif line.startswith(b"event: "):
                self._event = _event_name(line[7:])
                continue
            else:
                field = self._field(line)
                if field is None:
                    continue
                value = field
            if self._data is None:
                self._data = [value]
            else:
                self._data.append(value)
            self._data_size += len(value) + 1  # + the joining newline, so empty lines count too
            if self._data_size > limit:
                raise _too_large(self._data_size, limit)
        if tail:
            self._hold(tail)
        return events

    def finish(self) -> list[SSEEvent]:
        """The event still open at end of input (see the module docstring); resets the decoder."""
        # The end of input ends the open line and then the open event, as "\n\n" would (a
        # pending "\r\n" half takes the first "\n", and the event still ends).
        events = self.feed(b"\n\n")
        self._head = b""
        self._skip_lf = False
        return events

    def _trim_start(self, data: bytes) -> bytes:
        """``data`` without what belongs to the reads before it: a byte-order mark at the
        stream's start, the ``\\n`` of a ``\\r\\n`` split across two reads."""
        if self._head is not None:
            self._head, data = _without_bom(self._head, data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        return data

    def _field(self, line: bytes) -> bytes | None:
        """Apply a line that is not ``data: …`` or blank: a comment, ``event``, ``id``, or a
        field the spec says to ignore; a ``data`` field's value (its space-less spelling,
        ``data:x`` or ``data``) is returned for the caller to add to the event."""
        if line[0] == 0x3A:  # ":" opens a comment
            self.comments += 1
            return None
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            return value
        if name == b"event":
            self._event = _event_name(value)
        elif name == b"id":
            if b"\0" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        return None


_EVENT_NAMES: dict[bytes, str] = {}


def _event_name(raw: bytes) -> str:
    # Streams repeat a handful of names thousands of times; decode each once. The cache is
    # bounded so a server inventing names cannot grow it.
    name = _EVENT_NAMES.get(raw)
    if name is None:
        name = raw.decode("utf-8", "replace") or "message"
        if len(_EVENT_NAMES) < 64:
            _EVENT_NAMES[raw] = name
    return name


class NDJSONDecoder(_LineFramer):
    """Bytes to lines of newline-delimited JSON, incrementally; blank lines are skipped and a
    ``\\r`` before the ``\\n`` is dropped. The same lines for any split of the input."""

    __slots__ = ()

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        super().__init__(max_frame_bytes)  # a BOM at the start is dropped, as SSEDecoder does

    def __repr__(self) -> str:
        return f"<NDJSONDecoder [buffered {self.buffered} bytes]>"

    def feed(self, data: bytes) -> list[bytes]:
        """The lines completed by ``data``."""
        if self._head is not None:
            self._head, data = _without_bom(self._head, data)
        if b"\n" not in data:
            if data:
                self._hold(data)
            return []
        if self._partial:
            data = self._joined(data)
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            self._hold(tail)
        return [line for line in map(_strip_cr, lines) if line and not line.isspace()]

    def finish(self) -> list[bytes]:
        """The last line when the input did not end with a newline; resets the decoder."""
        lines = self.feed(b"\n")  # the end of input ends the open line, as a newline would
        self._head = b""
        return lines


def _strip_cr(line: bytes) -> bytes:
    return line[:-1] if line[-1:] == b"\r" else line


class FramedDecoder(StreamDecoder, Generic[_T]):
    """Base of the adapters' stream decoders: a framer plus the dialect's frame handler.

    Subclasses implement :meth:`_frame`, appending the chunks a frame carries to ``out``,
    raising the matching :class:`ProviderError` for an error frame, setting ``finished``
    when the answer's finish reason came and ``done`` on the terminal event; frames after
    it are ignored. ``terminal`` names the terminal event for the error raised when the
    stream ends without it and without a finish reason.

    An error raised by a frame after earlier frames of the same read produced chunks is
    held back: ``feed`` returns those chunks and the error is raised by the next
    ``feed`` or ``finish`` (servers close the stream after an error, so that call comes at
    once). So the caller gets every chunk the server sent before the error, however the
    bytes were split. ``finish`` cannot hold anything back (the stream is over), so an
    error found there is raised at once.
    """

    terminal: str = "terminal event"
    #: what one frame is called in the error for a frame that cannot be read
    unit: str = "stream event"

    def __init__(self, adapter: Adapter, framer: Framer[_T]) -> None:
        self._adapter = adapter
        self._framer = framer
        self._error: ProviderError | None = None
        self.done = False
        #: the finish reason came: a clean end of the body completes the answer
        self.finished = False

    def __repr__(self) -> str:
        state = "done" if self.done else "failed" if self._error is not None else "open"
        return f"<{type(self).__name__} {self._adapter.name!r} [{state}]>"

    @abc.abstractmethod
    def _frame(self, frame: _T, out: list[StreamChunk]) -> None: ...

    @abc.abstractmethod
    def _plain(self, frame: _T) -> StreamChunk | None:
        """The chunk of the dialect's commonest frame, a plain text delta (None when its text
        is empty), decoded as one strict shape; raises :class:`msgspec.DecodeError` for any
        other frame, which :meth:`_frame` then reads in full. A frame that fits the shape
        must mean exactly what :meth:`_frame` would make of it."""

    def feed(self, data: bytes) -> list[StreamChunk]:
        """The chunks completed by ``data``; raises the error a frame carried."""
        if self._error is not None:
            raise self._release()
        out: list[StreamChunk] = []
        try:
            self._read(self._framer.feed(data), out)
        except ProviderError as exc:
            self._own(exc)
            if out:
                self._error = exc
                return out
            raise
        return out

    def finish(self) -> list[StreamChunk]:
        """The chunks of a last frame without its terminator; raises :class:`ProtocolError`
        when neither the terminal event nor a finish reason came."""
        if self._error is not None:
            raise self._release()
        out: list[StreamChunk] = []
        try:
            self._read(self._framer.finish(), out)
        except ProviderError as exc:
            self._own(exc)
            raise
        if not self.done:
            if not self.finished:
                raise self._missing_terminal()
            self.done = True
        return out

    def _read(self, frames: list[_T], out: list[StreamChunk]) -> None:
        # The one place a frame's undecodable bytes (bad JSON, bad UTF-8 in a tool call's
        # arguments, nesting too deep) become a ProtocolError, for every dialect: once a
        # read, not once a frame.
        try:
            self._frames(frames, out)
        except DECODE_ERRORS as exc:
            raise self._adapter._protocol(decode_failure(self.unit, exc)) from self._adapter.scrub(exc)

    def _frames(self, frames: list[_T], out: list[StreamChunk]) -> None:
        # Each frame read as a plain text delta, and in full when it is not one, until
        # the terminal event (frames after it are ignored).
        if self.done:
            return
        plain = self._plain
        for frame in frames:
            try:
                chunk = plain(frame)
            except msgspec.DecodeError:
                pass  # any other frame (or no JSON at all): read in full below, outside this handler
            else:
                if chunk is not None:
                    out.append(chunk)
                continue
            self._frame(frame, out)
            if self.done:
                return

    def _missing_terminal(self) -> ProviderError:
        """The error for a stream that ended without its terminal event."""
        adapter = self._adapter
        return ProtocolError(f"stream ended without a finish reason or its {self.terminal}", endpoint=adapter.name, provider=adapter.provider)

    def _release(self) -> ProviderError:
        error = self._error
        assert error is not None
        self._error = None
        self.done = True  # nothing after an error event is a reply
        return error

    def _own(self, exc: ProviderError) -> None:
        # Framers raise without knowing whose stream it is; name the endpoint here.
        if exc.endpoint is None:
            exc.endpoint = self._adapter.name
            exc.provider = self._adapter.provider
