"""What a reply cost, from a dated price table shipped with the package.

``prices.json`` (beside this module) lists USD per million tokens for input, output and
cached input, per model, with the date the prices were taken (``as_of``) and where from
(``source``). Prices drift: an endpoint's ``price`` in the config overrides the table.

A model name is looked up in three steps, the first that finds it wins:

1. exactly, after normalising it (lower case; ``openai/``-style and Bedrock
   ``us.anthropic.`` prefixes, ``@`` version separators, ``-v1:0`` and ``:tag`` suffixes
   removed);
2. with a date suffix removed (``gpt-4o-mini-2024-07-18`` → ``gpt-4o-mini``,
   ``claude-3-5-haiku-20241022`` → ``claude-3-5-haiku``, ``gpt-4-0613`` → ``gpt-4``),
   or a ``-latest`` suffix;
3. by the longest table name that is a prefix of it ending at a ``-``
   (``gpt-4o-mini-search-preview`` → ``gpt-4o-mini``).

Local providers (``ollama``, ``mock``) cost 0. A model found nowhere costs 0 too, with
``known=False`` on its :class:`ModelPrice` so a report can say the figure is missing
rather than free.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from typing import Any, Final

import msgspec

from ..policy import Price
from ..types import FrozenStruct, Usage

__all__ = ["ModelPrice", "PriceTable", "cost_usd"]

_PER_TOKEN: Final = 1e-6
_DATE_SUFFIX: Final = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_VENDOR_PREFIX: Final = re.compile(r"^(?:(?:us|eu|apac|global)\.)?(?:anthropic|openai|meta|deepseek)\.")
_BEDROCK_VERSION: Final = re.compile(r"-v\d+(?::\d+)?$")
_LATEST_SUFFIX: Final = re.compile(r"-latest$")


class ModelPrice(FrozenStruct, frozen=True):
    """USD per million tokens for one model, and whether the table knew it.

    ``matched`` is the table name the model resolved to (empty when unknown or free).
    ``cached_input`` None means cached input is billed like any input.
    """

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    known: bool = True
    matched: str = ""

    def cost(self, usage: Usage) -> float:
        """USD for ``usage``: cached input tokens at the cached price, the rest at the input price."""
        cached = usage.cached_input_tokens
        if not cached:  # most replies: the same sum without the cached share's terms
            return (usage.input_tokens * self.input + usage.output_tokens * self.output) * _PER_TOKEN
        cached = min(cached, usage.input_tokens)
        fresh = usage.input_tokens - cached
        cached_price = self.input if self.cached_input is None else self.cached_input
        return (fresh * self.input + cached * cached_price + usage.output_tokens * self.output) * _PER_TOKEN


_FREE: Final = ModelPrice(matched="")
_UNKNOWN: Final = ModelPrice(known=False)


def normalize_model(model: str) -> str:
    """The model name as the table spells names: lower case, without vendor prefixes and tags."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = _VENDOR_PREFIX.sub("", name)
    name = _BEDROCK_VERSION.sub("", name)
    name = name.replace("@", "-")  # Vertex AI: claude-3-5-haiku@20241022
    return name.split(":", 1)[0]  # Ollama tags (llama3.2:3b), Bedrock revisions


class PriceTable:
    """The loaded price table: lookups by model name, costs of usages.

    ``as_of`` and ``source`` say when and where the prices were taken. Lookups are
    cached per (model, provider): resolving a name costs a dict hit after the first time.
    """

    def __init__(
        self,
        models: dict[str, Price],
        *,
        as_of: str = "",
        source: str = "",
        free_providers: frozenset[str] = frozenset({"ollama", "mock"}),
    ) -> None:
        self.models = {name.lower(): price for name, price in models.items()}
        self.as_of = as_of
        self.source = source
        self.free_providers = free_providers
        # Longest first, so the first prefix that matches is the longest one.
        self._by_length = sorted(self.models, key=len, reverse=True)
        self.lookup = functools.lru_cache(maxsize=1024)(self._lookup)

    def __repr__(self) -> str:
        return f"<PriceTable [{len(self.models)} models | as of {self.as_of or 'unknown'}]>"

    @classmethod
    def load(cls, path: str | None = None) -> PriceTable:
        """The table shipped with the package, or the JSON file at ``path`` in the same shape."""
        if path is None:
            raw = resources.files(__package__).joinpath("prices.json").read_bytes()
        else:
            with open(path, "rb") as f:
                raw = f.read()
        return cls.from_json(raw)

    @classmethod
    def from_json(cls, raw: bytes | str) -> PriceTable:
        """A table from JSON text: ``{"as_of", "source", "free_providers", "models": {name: price}}``."""
        data: dict[str, Any] = json.loads(raw)
        models = msgspec.convert(data.get("models", {}), dict[str, Price])
        return cls(
            models,
            as_of=str(data.get("as_of", "")),
            source=str(data.get("source", "")),
            free_providers=frozenset(data.get("free_providers", ("ollama", "mock"))),
        )

    def _lookup(self, model: str, provider: str | None = None) -> ModelPrice:
        if provider in self.free_providers:
            return _FREE
        name = normalize_model(model)
        found = self._find(name)
        if found is None:
            return _UNKNOWN
        price = self.models[found]
        return ModelPrice(input=price.input, output=price.output, cached_input=price.cached_input, matched=found)

    def _find(self, name: str) -> str | None:
        models = self.models
        if name in models:
            return name
        for suffix in (_DATE_SUFFIX, _LATEST_SUFFIX):
            stripped = suffix.sub("", name)
            if stripped != name and stripped in models:
                return stripped
        for candidate in self._by_length:
            if name.startswith(candidate) and name[len(candidate)] == "-":
                return candidate
        return None

    def price(self, model: str, provider: str | None = None, override: Price | None = None) -> ModelPrice:
        """The price of ``model`` served by ``provider``; ``override`` (an endpoint's ``price``) wins."""
        if override is not None:
            return ModelPrice(
                input=override.input, output=override.output, cached_input=override.cached_input, matched="override"
            )
        return self.lookup(model, provider)

    def cost_usd(
        self, usage: Usage, model: str, provider: str | None = None, price_override: Price | None = None
    ) -> float:
        """USD for ``usage`` on ``model``: cached input at the cached price, the rest at the input price."""
        return self.price(model, provider, price_override).cost(usage)


@functools.cache
def _default_table() -> PriceTable:
    return PriceTable.load()


def cost_usd(usage: Usage, model: str, provider: str | None = None, price_override: Price | None = None) -> float:
    """USD for ``usage`` on ``model`` by the shipped table (see :meth:`PriceTable.cost_usd`)."""
    return _default_table().cost_usd(usage, model, provider, price_override)
