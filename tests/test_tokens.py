"""Token counting: model families, the offline tiktoken check, the estimator, request estimates."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from runtime.accounting import tokens as tokens_module
from runtime.accounting.tokens import (
    TokenCounter,
    count_tokens,
    estimate_request_tokens,
    estimate_usage,
    model_family,
    token_counter,
)
from runtime.types import ChatRequest, ImagePart, Message, TextPart, ToolCall

CORPUS = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "corpus.txt"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def corpus_paragraphs() -> list[str]:
    """The benchmark corpus's paragraphs (section headers left out)."""
    text = CORPUS.read_text(encoding="utf-8")
    return [p for p in text.split("\n\n") if p.strip() and not p.startswith("===")]


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-mini", "o200k"),
        ("gpt-4.1-nano-2025-04-14", "o200k"),
        ("o3-mini", "o200k"),
        ("openai/gpt-5", "o200k"),
        ("gpt-4-0613", "cl100k"),
        ("gpt-3.5-turbo", "cl100k"),
        ("text-embedding-3-small", "cl100k"),
        ("claude-3-5-haiku-latest", "claude"),
        ("anthropic.claude-sonnet-4-20250514-v1:0", "claude"),
        ("llama3.2:3b", "open"),
        ("qwen2.5-coder:7b", "open"),
        ("mistral-small", "open"),
        ("gemma2", "open"),
        ("deepseek-chat", "deepseek"),
        ("some-unknown-model", "o200k"),
        (None, "o200k"),
    ],
)
def test_model_family(model: str | None, family: str) -> None:
    """Model names map to their tokenizer family; unknown names fall back to o200k."""
    assert model_family(model) == family


def test_counter_is_resolved_once_per_model() -> None:
    """token_counter caches its answer per process and model name."""
    assert token_counter("gpt-4o-mini") is token_counter("gpt-4o-mini")


def test_missing_cache_file_never_asks_tiktoken(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without tiktoken's cached BPE file, no encoding is loaded (so nothing is downloaded)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tokens_module._tiktoken_encoding.__wrapped__("o200k_base") is None
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken's "never cache": it would always download
    assert tokens_module._tiktoken_encoding.__wrapped__("o200k_base") is None


def test_corrupt_cache_file_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A cache file whose hash is wrong is not used; the caller gets the estimator."""
    pytest.importorskip("tiktoken")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    path = tokens_module._tiktoken_cache_file("o200k_base")
    assert path is not None
    Path(path).write_bytes(b"not a bpe file\n")

    def no_network(*args: object, **kwargs: object) -> bytes:
        raise OSError("network disabled in this test")

    import tiktoken.load

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    assert tokens_module._tiktoken_encoding.__wrapped__("o200k_base") is None


def test_estimator_counts_empty_and_short_text() -> None:
    """The empty string is 0 tokens; any non-empty text is at least 1."""
    counter = TokenCounter("o200k")
    assert counter.estimate("") == 0
    assert counter.count("") == 0
    assert counter.estimate("a") >= 1
    assert counter.estimate(".") >= 1


def test_estimator_tracks_common_words() -> None:
    """Common English words are about one token each, in every family."""
    words = "the quick brown fox jumps over the lazy dog and then it runs home again".split()
    text = " ".join(words * 20)
    for family in ("o200k", "cl100k", "open"):
        estimate = TokenCounter(family).estimate(text)
        assert 0.8 * len(words) * 20 <= estimate <= 1.25 * len(words) * 20, family


def test_estimator_grows_with_text() -> None:
    """More of the same text means proportionally more tokens."""
    counter = TokenCounter("o200k")
    paragraph = corpus_paragraphs()[0]
    one, four = counter.estimate(paragraph), counter.estimate("\n\n".join([paragraph] * 4))
    assert 3.5 * one <= four <= 4.5 * one


def test_estimator_handles_every_script() -> None:
    """Non-Latin scripts, emoji and lone surrogates are counted, never dropped or raised on."""
    counter = TokenCounter("o200k")
    for text in ("Привет, мир", "你好，世界", "こんにちは", "مرحبا بالعالم", "안녕하세요", "नमस्ते", "🎉🎂🥳", "\ud800x"):
        assert counter.estimate(text) >= 1


def test_claude_estimates_lean_high() -> None:
    """Claude's estimate is o200k's scaled up: the safe side without a public tokenizer."""
    paragraph = corpus_paragraphs()[0]
    assert TokenCounter("claude").estimate(paragraph) > TokenCounter("o200k").estimate(paragraph)


def _reference(encoding: str) -> TokenCounter:
    enc = tokens_module._tiktoken_encoding(encoding)
    if enc is None:
        pytest.skip(f"tiktoken's {encoding} is not available offline on this machine")
    return TokenCounter("o200k" if encoding == "o200k_base" else "cl100k", enc, encoding)


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base"])
def test_estimator_is_close_to_tiktoken(encoding: str) -> None:
    """On the multi-language corpus the estimator's mean error against tiktoken stays under 20 %."""
    exact = _reference(encoding)
    estimator = TokenCounter(exact.family)
    errors = [abs(estimator.estimate(p) - exact.count(p)) / exact.count(p) for p in corpus_paragraphs()]
    assert statistics.fmean(errors) < 0.20


def test_openai_models_count_exactly_when_tiktoken_is_cached() -> None:
    """With the BPE file cached, an OpenAI model's counter is exact and matches tiktoken."""
    exact = _reference("o200k_base")
    counter = token_counter("gpt-4o")
    assert counter.exact and counter.encoding == "o200k_base"
    text = "Hello, world! <|endoftext|> is ordinary text here."
    assert counter.count(text) == exact.count(text)


def test_messages_include_chat_overhead() -> None:
    """A conversation costs its texts plus per-message, per-name and priming overhead."""
    counter = token_counter("llama3.2")
    fmt = counter.format
    messages = [
        Message(role="system", content="You are terse."),
        Message(role="user", content="Hi there", name="ann"),
    ]
    expected = (
        fmt.priming
        + 2 * fmt.per_message
        + counter.count("You are terse.")
        + counter.count("Hi there")
        + fmt.per_name
        + counter.count("ann")
    )
    assert count_tokens(messages, "llama3.2") == expected
    assert count_tokens("Hi there", "llama3.2") == counter.count("Hi there")


def test_dict_messages_count_like_structs() -> None:
    """OpenAI-shaped dicts count the same as the equivalent Message structs."""
    call = ToolCall(id="c1", name="get_weather", arguments='{"city": "Lisbon"}')
    structs = [
        Message(role="user", content=[TextPart(text="Weather?"), ImagePart(url="https://x/y.png", detail="low")]),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", content="22 C, sunny", tool_call_id="c1"),
    ]
    dicts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather?"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lisbon"}'}}
            ],
        },
        {"role": "tool", "content": "22 C, sunny", "tool_call_id": "c1"},
    ]
    assert count_tokens(structs, "gpt-4o") == count_tokens(dicts, "gpt-4o")


def test_images_count_a_flat_figure() -> None:
    """An image costs the family's flat figure, or 85 tokens at low detail."""
    high = [Message(role="user", content=[ImagePart(url="https://x/y.png")])]
    low = [Message(role="user", content=[ImagePart(url="https://x/y.png", detail="low")])]
    base = count_tokens([Message(role="user", content=[])], "gpt-4o")
    assert count_tokens(high, "gpt-4o") - base == token_counter("gpt-4o").format.image
    assert count_tokens(low, "gpt-4o") - base == 85


def test_request_estimate_adds_tools() -> None:
    """Tool schemas add their JSON's tokens plus the family's tool framing."""
    plain = ChatRequest(messages=[Message(role="user", content="Weather in Lisbon?")], model="claude-sonnet-4")
    with_tools = ChatRequest(messages=plain.messages, model="claude-sonnet-4", tools=[WEATHER_TOOL])
    extra = estimate_request_tokens(with_tools) - estimate_request_tokens(plain)
    assert extra > token_counter("claude-sonnet-4").format.tools_base
    # An explicit model overrides the request's route.
    assert estimate_request_tokens(plain, "gpt-4o") == count_tokens(plain.messages, "gpt-4o")


def test_estimated_usage_is_flagged() -> None:
    """A reply without provider usage gets an estimate marked estimated=True."""
    request = ChatRequest(messages=[Message(role="user", content="Name a colour.")])
    usage = estimate_usage(request, "Blue.", "gpt-4o-mini")
    assert usage.estimated
    assert usage.input_tokens == estimate_request_tokens(request, "gpt-4o-mini")
    assert usage.output_tokens == token_counter("gpt-4o-mini").count("Blue.")
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    with_call = estimate_usage(
        request, "", "gpt-4o-mini", tool_calls=[ToolCall(id="1", name="pick", arguments="{}")], reasoning="Think."
    )
    assert with_call.output_tokens > 0 and with_call.reasoning_tokens == token_counter("gpt-4o-mini").count("Think.")
