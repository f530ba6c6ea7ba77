"""Costs from the shipped price table: name matching and hand-checked arithmetic."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from runtime.accounting.cost import PriceTable, cost_usd, normalize_model
from runtime.policy import Price
from runtime.types import Usage


@pytest.fixture(scope="module")
def raw() -> dict[str, dict[str, float]]:
    """The shipped table's models, read straight from the JSON file."""
    data = json.loads(resources.files("runtime.accounting").joinpath("prices.json").read_bytes())
    models: dict[str, dict[str, float]] = data["models"]
    return models


@pytest.fixture(scope="module")
def table() -> PriceTable:
    """The shipped table, loaded."""
    return PriceTable.load()


def test_table_is_dated_and_sourced(table: PriceTable) -> None:
    """The table says when its prices were taken and that they drift."""
    assert table.as_of[:4].isdigit()
    assert "drift" in table.source


def test_every_entry_is_sane(raw: dict[str, dict[str, float]]) -> None:
    """Prices are non-negative, and cached input never costs more than input."""
    for name, price in raw.items():
        assert price["input"] >= 0 and price["output"] >= 0, name
        assert price.get("cached_input", price["input"]) <= price["input"], name


def test_cost_matches_hand_computation(table: PriceTable, raw: dict[str, dict[str, float]]) -> None:
    """1,000 input (200 cached) and 500 output tokens on gpt-4o-mini, computed by hand."""
    p = raw["gpt-4o-mini"]
    usage = Usage(input_tokens=1000, output_tokens=500, cached_input_tokens=200)
    by_hand = (800 * p["input"] + 200 * p["cached_input"] + 500 * p["output"]) / 1_000_000
    assert table.cost_usd(usage, "gpt-4o-mini", "openai") == pytest.approx(by_hand, rel=1e-12)


def test_claude_and_deepseek_costs(table: PriceTable, raw: dict[str, dict[str, float]]) -> None:
    """Anthropic and DeepSeek bill cache reads / hits at their cached price."""
    usage = Usage(input_tokens=10_000, output_tokens=2_000, cached_input_tokens=6_000)
    for model in ("claude-sonnet-4", "deepseek-chat"):
        p = raw[model]
        by_hand = (4_000 * p["input"] + 6_000 * p["cached_input"] + 2_000 * p["output"]) / 1e6
        assert table.cost_usd(usage, model, None) == pytest.approx(by_hand, rel=1e-12)


def test_cached_price_missing_means_input_price(table: PriceTable, raw: dict[str, dict[str, float]]) -> None:
    """A model without a cached price bills cached tokens as ordinary input."""
    assert "cached_input" not in raw["gpt-4"]
    usage = Usage(input_tokens=100, output_tokens=10, cached_input_tokens=50)
    by_hand = (100 * raw["gpt-4"]["input"] + 10 * raw["gpt-4"]["output"]) / 1e6
    assert table.cost_usd(usage, "gpt-4", "openai") == pytest.approx(by_hand)


@pytest.mark.parametrize(
    ("model", "matched"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4-0613", "gpt-4"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku-latest"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("gpt-4o-mini-search-preview", "gpt-4o-mini"),
        ("o3-pro-2025-06-10", "o3-pro"),
        ("openai/gpt-4o", "gpt-4o"),
        ("us.anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("claude-3-5-haiku@20241022", "claude-3-5-haiku"),
        ("DeepSeek-Chat", "deepseek-chat"),
    ],
)
def test_name_matching(table: PriceTable, model: str, matched: str) -> None:
    """Exact first, then without a date or -latest suffix, then the longest prefix."""
    price = table.price(model, "openai")
    assert price.known and price.matched == matched


def test_prefix_must_end_at_a_dash(table: PriceTable) -> None:
    """gpt-4o-like names never fall back to a shorter name glued to other letters."""
    assert table.price("gpt-4oz", "openai").known is False
    assert normalize_model("Llama3.2:3B") == "llama3.2"


def test_local_models_are_free(table: PriceTable) -> None:
    """Ollama models cost 0 and are known to cost 0."""
    usage = Usage(input_tokens=5_000, output_tokens=5_000)
    price = table.price("llama3.2", "ollama")
    assert price.known and table.cost_usd(usage, "llama3.2", "ollama") == 0.0


def test_unknown_models_cost_zero_flagged(table: PriceTable) -> None:
    """An unknown model costs 0 with known=False, so reports can tell missing from free."""
    price = table.price("my-finetune", "openai-compatible")
    assert not price.known
    assert table.cost_usd(Usage(input_tokens=10, output_tokens=10), "my-finetune", "openai-compatible") == 0.0


def test_endpoint_override_wins(table: PriceTable) -> None:
    """An endpoint's configured price replaces the table's, even for a local model."""
    override = Price(input=1.0, output=2.0, cached_input=0.5)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=500_000)
    assert table.cost_usd(usage, "llama3.2", "ollama", override) == pytest.approx(0.5 + 0.25 + 2.0)


def test_module_function_uses_shipped_table(table: PriceTable) -> None:
    """cost_usd() is the shipped table's cost_usd."""
    usage = Usage(input_tokens=1234, output_tokens=567)
    assert cost_usd(usage, "claude-3-5-haiku-latest", "anthropic") == table.cost_usd(
        usage, "claude-3-5-haiku-latest", "anthropic"
    )


def test_custom_table_from_json() -> None:
    """A table in the same JSON shape loads, with its own free providers."""
    table = PriceTable.from_json(
        '{"as_of": "2030-01-01", "free_providers": ["vllm"], "models": {"m": {"input": 2, "output": 4}}}'
    )
    assert table.cost_usd(Usage(input_tokens=500_000, output_tokens=250_000), "m-2030-01-01") == pytest.approx(2.0)
    assert table.price("m", "vllm").input == 0.0
    assert "2030-01-01" in repr(table)
