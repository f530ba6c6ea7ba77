"""Decode throughput of the stream framers and adapters, and each adapter's per-request cost.

Three measurements, all on the real recorded fixtures in ``tests/data``:

1. Framing: :class:`SSEDecoder` / :class:`NDJSONDecoder` alone, on a fixture stream repeated
   to ~10,000 events and fed in 1,400-byte reads (about one TCP segment each), in events/s.
2. Stream decoding: each adapter's full stream decoder (framing, JSON decode into the
   private views, :class:`StreamChunk` construction) on its fixture, in events/s and
   chunks/s. A decoder ends at its terminal event, so each repetition gets a fresh one,
   as each request does.
3. Per request: building one chat request (URL, headers, body bytes) plus parsing one
   non-stream reply, per adapter. Each iteration is timed on its own with
   ``perf_counter_ns`` (the timer's own median cost subtracted), so median and p99 are
   of single requests.

Throughputs are the best of several runs (the least disturbed by the machine).

    python benchmarks/decode.py [--iterations 20000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.policy import Endpoint
from runtime.providers import adapter_for
from runtime.providers.base import Adapter
from runtime.providers.streams import NDJSONDecoder, SSEDecoder
from runtime.types import ChatRequest, Message

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
READ = 1400
RUNS = 5

ENDPOINTS = {
    "openai": Endpoint(name="bench", provider="openai", model="gpt-4o-mini", api_key="sk-bench"),
    "azure": Endpoint(name="bench", provider="azure", model="dep", base_url="https://r.openai.azure.com", api_key="k"),
    "deepseek": Endpoint(name="bench", provider="deepseek", model="deepseek-chat", api_key="sk-bench"),
    "anthropic": Endpoint(name="bench", provider="anthropic", model="claude-haiku-4-5", api_key="sk-ant-bench"),
    "ollama": Endpoint(name="bench", provider="ollama", model="llama3.2"),
}
REPLIES = {
    "openai": "openai/chat_completion_nonstream_sdk_recorded.json",
    "azure": "azure/content_filter_annotations_response_docs.json",
    "deepseek": "deepseek/reasoner_nonstream_third_party_capture.json",
    "anthropic": "anthropic/messages_nonstream_recorded.json",
    "ollama": "ollama/chat_nonstream_docs.json",
}
STREAMS = {
    "openai": "openai/chat_stream_text_with_usage.sse",
    "deepseek": "deepseek/chat_stream_docs.sse",
    "anthropic": "anthropic/stream_text_recorded_live.sse",
    "ollama": "ollama/chat_stream_DERIVED.ndjson",
}
REQUEST = ChatRequest(
    messages=[
        Message(role="system", content="You are a concise assistant."),
        Message(role="user", content="What is the weather like in San Francisco today? Answer in one sentence."),
    ],
    max_tokens=200,
    temperature=0.2,
)


def pieces(data: bytes) -> list[bytes]:
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def best_rate(run: Callable[[], int]) -> float:
    """Items per second of the fastest of RUNS runs of ``run`` (which returns its item count)."""
    best = 0.0
    for _ in range(RUNS):
        start = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - start))
    return best


def framing() -> None:
    print("1. framing alone (events/s, reads of 1,400 bytes)")
    cases: list[tuple[str, str, Any]] = [
        ("SSE    openai text stream", "openai/chat_stream_text_with_usage.sse", SSEDecoder),
        ("SSE    anthropic live stream", "anthropic/stream_text_recorded_live.sse", SSEDecoder),
        ("SSE    deepseek stream", "deepseek/chat_stream_docs.sse", SSEDecoder),
        ("NDJSON ollama generate stream", "ollama/generate_stream_docs.ndjson", NDJSONDecoder),
    ]
    for label, name, cls in cases:
        # End each copy with a blank line so copies stay separate events when repeated.
        one = (DATA / name).read_bytes().rstrip(b"\n") + b"\n\n"
        per_copy = len(cls().feed(one) + cls().finish()) if cls is NDJSONDecoder else len(cls().feed(one))
        copies = max(1, 10_000 // per_copy)
        reads = pieces(one * copies)

        def run(reads: list[bytes] = reads, cls: Any = cls) -> int:
            decoder = cls()
            count = 0
            for piece in reads:
                count += len(decoder.feed(piece))
            return count + len(decoder.finish())

        rate = best_rate(run)
        mb = rate * len(one) / per_copy / 1e6
        print(f"   {label:32s} {rate / 1e6:6.2f} M events/s  ({mb:6.1f} MB/s, {per_copy * copies} events)")


def decode_stream(adapter: Adapter, reads: list[bytes], repeats: int) -> int:
    """Decode ``reads`` as ``repeats`` separate streams; the number of chunks produced."""
    chunks = 0
    for _ in range(repeats):
        decoder = adapter.stream_decoder()
        for piece in reads:
            chunks += len(decoder.feed(piece))
        chunks += len(decoder.finish())
    return chunks


def stream_decoding() -> None:
    print("2. full stream decoding per adapter (framing + JSON + StreamChunk)")
    for provider, name in STREAMS.items():
        adapter = adapter_for(ENDPOINTS[provider])
        raw = (DATA / name).read_bytes()
        reads = pieces(raw)
        framer = NDJSONDecoder() if name.endswith(".ndjson") else SSEDecoder()
        events = len(framer.feed(raw)) + len(framer.finish())
        repeats = max(1, 10_000 // events)
        chunks = decode_stream(adapter, reads, 1)

        def run(adapter: Adapter = adapter, reads: list[bytes] = reads, repeats: int = repeats, events: int = events) -> int:
            decode_stream(adapter, reads, repeats)
            return events * repeats

        rate = best_rate(run)
        print(
            f"   {provider:10s} {name:44s} {rate / 1e3:7.0f} k events/s  {rate * chunks / events / 1e3:7.0f} k chunks/s"
        )


def timer_cost() -> int:
    samples = []
    for _ in range(10_000):
        start = time.perf_counter_ns()
        samples.append(time.perf_counter_ns() - start)
    return int(statistics.median(samples))


def per_request(iterations: int) -> None:
    print(f"3. per request: build chat request + parse non-stream reply (µs, {iterations} iterations)")
    overhead = timer_cost()
    for provider, name in REPLIES.items():
        adapter = adapter_for(ENDPOINTS[provider])
        body = (DATA / name).read_bytes()
        for _ in range(1000):  # warm up
            adapter.chat_request(REQUEST, stream=False)
            adapter.parse_chat(body)
        samples = []
        gc.disable()
        try:
            for _ in range(iterations):
                start = time.perf_counter_ns()
                adapter.chat_request(REQUEST, stream=False)
                adapter.parse_chat(body)
                samples.append(time.perf_counter_ns() - start - overhead)
        finally:
            gc.enable()
        samples.sort()
        median = samples[len(samples) // 2] / 1000
        p99 = samples[int(len(samples) * 0.99)] / 1000
        print(f"   {provider:10s} median {median:6.2f} µs   p99 {p99:6.2f} µs   (reply {len(body)} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()
    framing()
    stream_decoding()
    per_request(args.iterations)


if __name__ == "__main__":
    main()
