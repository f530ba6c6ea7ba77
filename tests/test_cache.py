"""The response cache: canonical keys, the deterministic-only rule, LRU, TTL, stale, replay."""

from __future__ import annotations

import asyncio

import pytest

from runtime.accounting.cache import (
    CacheStore,
    MemoryStore,
    ResponseCache,
    cache_key,
    cacheable,
    replay_as_stream,
)
from runtime.policy import CachePolicy
from runtime.types import ChatRequest, ChatResponse, Message, ToolCall, Usage


class FakeClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(**fields: object) -> ChatRequest:
    """A small deterministic request with ``fields`` overridden."""
    base: dict[str, object] = {"messages": [Message(role="user", content="What is 2 + 2?")], "temperature": 0.0}
    base.update(fields)
    return ChatRequest(**base)  # type: ignore[arg-type]


def reply(text: str = "4", **fields: object) -> ChatResponse:
    """A reply as an endpoint would produce it."""
    return ChatResponse(
        text=text,
        finish_reason="stop",
        usage=Usage(input_tokens=12, output_tokens=1, total_tokens=13),
        model="gpt-4o-mini",
        endpoint="primary",
        provider="openai",
        **fields,  # type: ignore[arg-type]
    )


def test_key_is_stable_under_dict_ordering() -> None:
    """Tools and response_format with the same content in another key order hash the same."""
    tool_a = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    tool_b = {"function": {"parameters": {"properties": {}, "type": "object"}, "name": "f"}, "type": "function"}
    fmt_a = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    fmt_b = {"json_schema": {"schema": {"type": "object"}, "name": "x"}, "type": "json_schema"}
    assert cache_key("r", request(tools=[tool_a], response_format=fmt_a)) == cache_key(
        "r", request(tools=[tool_b], response_format=fmt_b)
    )


def test_key_ignores_number_spelling_and_user() -> None:
    """temperature 0 and 0.0 are one key; the end-user id does not split the cache."""
    assert cache_key(None, request(temperature=0)) == cache_key(None, request(temperature=0.0, user="u-1"))


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [Message(role="user", content="What is 2 + 3?")]},
        {"messages": [Message(role="system", content="Be brief."), Message(role="user", content="What is 2 + 2?")]},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"seed": 7},
        {"stop": ["\n"]},
        {"max_tokens": 10},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "g"}}]},
        {"tool_choice": "required"},
        {"model": "gpt-4o"},
    ],
)
def test_key_changes_with_what_shapes_the_reply(change: dict[str, object]) -> None:
    """Every part of the request that can change the reply changes the key."""
    assert cache_key("r", request()) != cache_key("r", request(**change))


def test_key_includes_the_route() -> None:
    """The same request on two routes is two entries."""
    assert cache_key("fast", request()) != cache_key("smart", request())


def test_only_deterministic_requests_by_default() -> None:
    """temperature 0 is cacheable; unset or positive temperature only with cache=True; never with False."""
    assert cacheable(request(temperature=0), None)
    assert not cacheable(request(temperature=None), None)
    assert not cacheable(request(temperature=0.7), None)
    assert cacheable(request(temperature=0.7), True)
    assert not cacheable(request(temperature=0), False)


def test_lru_bound_evicts_least_recently_used() -> None:
    """Past max_entries the least recently used entry goes; a read refreshes recency."""
    cache = ResponseCache(CachePolicy(max_entries=2, ttl=60), clock=FakeClock())
    cache.set("a", reply("A"))
    cache.set("b", reply("B"))
    assert cache.get("a") is not None
    cache.set("c", reply("C"))
    assert cache.get("b") is None
    assert [r.text for r in (cache.get("a"), cache.get("c")) if r] == ["A", "C"]
    stats = cache.statistics()
    assert (stats.entries, stats.evictions, stats.hits, stats.misses) == (2, 1, 3, 1)


@pytest.mark.anyio
async def test_ttl_on_the_loop_clock() -> None:
    """Entries expire ttl seconds later on the loop's (virtual) clock."""
    cache = ResponseCache(CachePolicy(ttl=300))
    cache.set("k", reply())
    await asyncio.sleep(299)
    assert cache.get("k") is not None
    await asyncio.sleep(2)
    assert cache.get("k") is None
    assert cache.statistics().expirations == 1


def test_stored_reply_is_detached() -> None:
    """The cache keeps its own copy: later changes to the caller's reply do not leak in."""
    cache = ResponseCache(CachePolicy(), clock=FakeClock())
    original = reply(tool_calls=[ToolCall(id="1", name="f")])
    cache.set("k", original)
    original.text = "changed"
    original.tool_calls[0].name = "g"
    original.usage.output_tokens = 99
    hit = cache.get("k")
    assert hit is not None
    assert (hit.text, hit.tool_calls[0].name, hit.usage.output_tokens) == ("4", "f", 1)
    assert not hit.cached and hit.attempts == []


def test_stale_reply_outlives_ttl() -> None:
    """With serve_stale, the last good reply stays available after its TTL for total failures."""
    clock = FakeClock()
    cache = ResponseCache(CachePolicy(ttl=10, serve_stale=True), clock=clock)
    cache.set("k", reply("old"))
    cache.set("k", reply("new"))
    clock.now += 3600
    assert cache.get("k") is None
    stale = cache.stale("k")
    assert stale is not None and stale.text == "new"
    assert cache.statistics().stale_served == 1


def test_stale_is_off_unless_asked() -> None:
    """Without serve_stale nothing is kept past the TTL."""
    cache = ResponseCache(CachePolicy(ttl=10), clock=FakeClock())
    cache.set("k", reply())
    assert cache.stale("k") is None and cache.stale_store is None


def test_stale_replies_are_bounded_and_not_restored() -> None:
    """The stale store is bounded by max_entries, and a stale reply is never stored again."""
    cache = ResponseCache(CachePolicy(max_entries=2, ttl=10, serve_stale=True), clock=FakeClock())
    for key in "abc":
        cache.set(key, reply(key))
    assert cache.stale("a") is None and cache.stale("c") is not None
    cache.set("d", reply("d", stale=True))
    assert cache.get("d") is None and cache.stale("d") is None


def test_delete_and_clear_forget_fresh_and_stale() -> None:
    """delete() and clear() drop both the fresh and the stale copy."""
    cache = ResponseCache(CachePolicy(serve_stale=True), clock=FakeClock())
    cache.set("a", reply())
    cache.set("b", reply())
    cache.delete("a")
    assert cache.get("a") is None and cache.stale("a") is None
    cache.clear()
    assert cache.statistics().entries == 0 and cache.statistics().stale_entries == 0


def test_memory_store_is_a_cache_store() -> None:
    """The in-memory store implements the CacheStore protocol a shared backend implements too."""
    store = MemoryStore(4, clock=FakeClock())
    assert isinstance(store, CacheStore)
    with pytest.raises(ValueError, match="max_entries"):
        MemoryStore(0)


def test_replay_as_stream_yields_the_same_reply() -> None:
    """A cached reply replayed as chunks joins back to the same text, tool calls, usage and finish."""
    text = "Python is a programming language that lets you work quickly and integrate systems effectively."
    cached = reply(
        text,
        reasoning="Recall the definition.",
        tool_calls=[ToolCall(id="c1", name="lookup", arguments='{"q": "python"}')],
        id="chatcmpl-1",
    )
    chunks = replay_as_stream(cached)
    assert len([c for c in chunks if c.text]) > 1
    assert "".join(c.text for c in chunks) == text
    assert "".join(c.reasoning for c in chunks) == "Recall the definition."
    deltas = [d for c in chunks for d in c.tool_calls or []]
    assert [(d.id, d.name, d.arguments) for d in deltas] == [("c1", "lookup", '{"q": "python"}')]
    last = chunks[-1]
    assert (last.finish_reason, last.usage, last.model, last.id) == ("stop", cached.usage, "gpt-4o-mini", "chatcmpl-1")
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("text", ["", "x", "no_spaces_at_all_in_this_rather_long_single_token_string", "a b c d e f"])
def test_replay_text_always_joins_back(text: str) -> None:
    """Whatever the text, the replayed pieces join back exactly and end with the finish reason."""
    chunks = replay_as_stream(reply(text))
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finish_reason == "stop"
