"""The OpenAI request parameters beyond the common ones, translated per provider.

Each adapter names, in its ``param_rules``, how each parameter goes onto its wire; a
parameter it has no rule for is refused with :class:`InvalidRequest` naming the
parameter and the endpoint, unless the request or the endpoint says
``drop_unsupported``, in which case it is dropped and a DEBUG line on the ``runtime``
logger says so. ``extra_body`` is merged into the body last (it wins), and
``extra_headers`` into the headers, for every provider: they are the escape hatch for
whatever this table does not know.

=======================  ==========================  ======================  =====================
parameter                OpenAI / Azure / compatible  Anthropic               Ollama
=======================  ==========================  ======================  =====================
``presence_penalty``     as is                        refused                 ``options``
``frequency_penalty``    as is                        refused                 ``options``
``logit_bias``           as is                        refused                 refused
``logprobs``             as is                        refused                 refused
``top_logprobs``         as is                        refused                 refused
``n``                    as is                        refused                 refused
``user``                 as is                        ``metadata.user_id``    refused
``parallel_tool_calls``  as is                        ``tool_choice.disable_  refused
                                                      parallel_tool_use``
``reasoning_effort``     as is                        ``thinking`` budget     ``think``
``metadata``             as is                        refused                 refused
=======================  ==========================  ======================  =====================

DeepSeek takes ``presence_penalty``, ``frequency_penalty``, ``logprobs`` and
``top_logprobs`` and refuses the rest.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._logging import logger
from ..errors import InvalidRequest
from ..types import ChatRequest

if TYPE_CHECKING:  # the adapters import this module
    from .base import Adapter

__all__ = ["NOTHING_EXTRA", "OPENAI_RULES", "PARAMS", "Rule", "apply_params", "as_is", "in_options", "params_and_extra_body", "unsupported", "with_extra_headers"]

#: The parameters this module translates, in the order they are applied.
PARAMS = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "n",
    "user",
    "parallel_tool_calls",
    "reasoning_effort",
    "metadata",
)

#: A request's parameters and ``extra_body`` in one call, and what they are on most requests
#: (nothing set): compared at once instead of eleven lookups, and a body built without
#: :func:`apply_params` is whole when the two are equal.
params_and_extra_body = operator.attrgetter(*PARAMS, "extra_body")
NOTHING_EXTRA = (None,) * (len(PARAMS) + 1)

#: How one parameter goes onto the wire: ``rule(body, value, request)`` edits the body.
Rule = Callable[[dict[str, Any], Any, ChatRequest], None]


def as_is(name: str) -> Rule:
    """The parameter under its own name, at the top of the body."""

    def rule(body: dict[str, Any], value: Any, request: ChatRequest) -> None:
        body[name] = value

    return rule


def in_options(name: str) -> Rule:
    """The parameter inside the body's ``options`` object (Ollama)."""

    def rule(body: dict[str, Any], value: Any, request: ChatRequest) -> None:
        body.setdefault("options", {})[name] = value

    return rule


def rules_for(names: Iterable[str]) -> dict[str, Rule]:
    """``as_is`` rules for ``names``."""
    return {name: as_is(name) for name in names}


#: The OpenAI dialect takes every parameter as it is.
OPENAI_RULES: Mapping[str, Rule] = rules_for(PARAMS)


def apply_params(body: dict[str, Any], request: ChatRequest, rules: Mapping[str, Rule], adapter: Adapter) -> None:
    """Put the request's extra parameters on ``body`` by ``rules``, then merge ``extra_body``;
    a parameter without a rule is :func:`unsupported` on ``adapter``'s endpoint."""
    values = params_and_extra_body(request)
    if values == NOTHING_EXTRA:
        return
    *params, extra_body = values
    for name, value in zip(PARAMS, params, strict=True):
        if value is None:
            continue
        rule = rules.get(name)
        if rule is not None:
            rule(body, value, request)
        else:
            unsupported(name, request, adapter)
    if extra_body:
        body.update(extra_body)


def unsupported(name: str, request: ChatRequest, adapter: Adapter) -> None:
    """A parameter the provider has no equivalent for: dropped (with a DEBUG line) when the
    endpoint's ``drop_unsupported`` or the request's says so, else refused."""
    provider, endpoint = adapter.provider, adapter.name
    if adapter.endpoint.drop_unsupported or request.drop_unsupported:
        logger.debug("dropped %s: %s has no equivalent (endpoint %r)", name, provider, endpoint)
        return
    raise InvalidRequest(
        f"{name} is not supported by {provider} (endpoint {endpoint!r}); "
        "pass drop_unsupported=True (or set it on the endpoint) to drop it",
        field=name,
        endpoint=endpoint,
    )


def with_extra_headers(headers: Mapping[str, str], request: ChatRequest) -> Mapping[str, str]:
    """The adapter's headers with the request's ``extra_headers`` on top."""
    extra = request.extra_headers
    return {**headers, **extra} if extra else headers
