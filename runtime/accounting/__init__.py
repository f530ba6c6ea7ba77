"""Accounting and economy: tokens, prices and costs, usage, budgets, the response cache,
context-window trimming.

Implementation lives in the submodules; this module re-exports their public names.
:class:`~runtime.metrics.Metrics` (floor 0, beside telemetry) is re-exported here too,
for the facade's convenience.
"""

from ..metrics import Metrics as Metrics
from .budget import BudgetGuard as BudgetGuard
from .budget import BudgetStatistics as BudgetStatistics
from .budget import Reservation as Reservation
from .cache import CacheStatistics as CacheStatistics
from .cache import CacheStore as CacheStore
from .cache import MemoryStore as MemoryStore
from .cache import ResponseCache as ResponseCache
from .cache import cache_key as cache_key
from .cache import cacheable as cacheable
from .cache import replay_as_stream as replay_as_stream
from .context import TrimResult as TrimResult
from .context import fit_messages as fit_messages
from .cost import ModelPrice as ModelPrice
from .cost import PriceTable as PriceTable
from .cost import cost_usd as cost_usd
from .tokens import TokenCounter as TokenCounter
from .tokens import count_tokens as count_tokens
from .tokens import estimate_request_tokens as estimate_request_tokens
from .tokens import estimate_usage as estimate_usage
from .tokens import model_family as model_family
from .tokens import token_counter as token_counter
from .usage import UsageLedger as UsageLedger
from .usage import UsageReport as UsageReport
from .usage import UsageTotals as UsageTotals

__all__ = [
    "BudgetGuard",
    "BudgetStatistics",
    "CacheStatistics",
    "CacheStore",
    "MemoryStore",
    "Metrics",
    "ModelPrice",
    "PriceTable",
    "Reservation",
    "ResponseCache",
    "TokenCounter",
    "TrimResult",
    "UsageLedger",
    "UsageReport",
    "UsageTotals",
    "cache_key",
    "cacheable",
    "cost_usd",
    "count_tokens",
    "estimate_request_tokens",
    "estimate_usage",
    "fit_messages",
    "model_family",
    "token_counter",
]
