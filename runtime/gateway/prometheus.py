"""``GET /metrics``: the runtime's figures in the Prometheus text format (version 0.0.4).

Built at scrape time from what the runtime already keeps (``rt.usage()`` by endpoint,
``rt.status()``) and the gateway's own counters, so a scrape costs a few dict walks and
the request path pays nothing. Everything is this process's: with ``--workers N``, each
worker is scraped (or summed) on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from ..accounting import UsageReport
from ..endpoint.actor import EndpointStatus
from .keys import ClientKey

__all__ = ["exposition"]

_UP = ("healthy", "degraded")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[Mapping[str, str], float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        inner = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{inner}}} {value:g}" if inner else f"{name} {value:g}")
    return lines


def exposition(
    usage: UsageReport,
    status: Sequence[EndpointStatus],
    counts: Mapping[tuple[str, int], int],
    in_flight: int,
    keys: Sequence[ClientKey],
) -> str:
    """The whole exposition text."""
    by = usage.by_endpoint
    lines = [
        *_family("llm_runtime_gateway_requests_total", "counter", "HTTP requests answered, by route and status",
                 (({"route": r, "status": str(s)}, n) for (r, s), n in sorted(counts.items()))),
        *_family("llm_runtime_gateway_in_flight", "gauge", "Requests being served now", [({}, in_flight)]),
        *_family("llm_runtime_requests_total", "counter", "Requests answered by each endpoint",
                 (({"endpoint": e}, t.requests) for e, t in by.items())),
        *_family("llm_runtime_tokens_total", "counter", "Tokens by endpoint and direction",
                 [item for e, t in by.items() for item in (({"endpoint": e, "direction": "input"}, t.input_tokens),
                                                          ({"endpoint": e, "direction": "output"}, t.output_tokens))]),
        *_family("llm_runtime_cost_usd_total", "counter", "USD spent by endpoint", (({"endpoint": e}, t.cost_usd) for e, t in by.items())),
        *_family("llm_runtime_errors_total", "counter", "Requests that ended in an error", [({}, usage.total.errors)]),
        *_family("llm_runtime_cache_hits_total", "counter", "Replies served from the cache", [({}, usage.total.cache_hits)]),
        *_family("llm_runtime_endpoint_up", "gauge", "1 when the endpoint takes traffic (healthy or degraded)",
                 (({"endpoint": s.name, "state": s.state}, float(s.state in _UP)) for s in status)),
        *_family("llm_runtime_endpoint_breaker_open", "gauge", "1 while the endpoint's breaker is open",
                 (({"endpoint": s.name}, float(s.breaker == "open")) for s in status)),
        *_family("llm_runtime_endpoint_in_flight", "gauge", "Requests in flight at each endpoint",
                 (({"endpoint": s.name}, s.in_flight) for s in status)),
        *_family("llm_runtime_endpoint_latency_seconds", "gauge", "Latency EWMA of each endpoint",
                 (({"endpoint": s.name}, s.latency_ms / 1000.0) for s in status if s.latency_ms is not None)),
        *_family("llm_runtime_gateway_key_in_flight", "gauge", "Requests in flight per gateway key",
                 (({"key": k.name}, k.limiter.in_flight) for k in keys)),
        *_family("llm_runtime_gateway_key_budget_remaining", "gauge", "What is left of each gateway key's budgets (tokens or USD)",
                 (({"key": k.name, "kind": kind}, left) for k in keys if k.budget is not None
                  for kind, left in k.budget.remaining().items())),
    ]
    return "\n".join(lines) + "\n"
