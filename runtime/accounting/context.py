"""Fit a conversation into a context window: drop old turns, never the ones that matter.

:func:`fit_messages` trims a conversation to ``context_window - max_tokens`` tokens
(counted with :mod:`runtime.accounting.tokens` for the model):

* system messages are always kept;
* the last user message and everything after it (the turn in progress: tool calls and
  their results) are always kept;
* older turns are dropped oldest first, or, given an ``importance`` callable, lowest
  importance first (oldest first among equals);
* an assistant message with ``tool_calls`` and the tool messages answering it are one
  unit: kept together or dropped together, never split;
* after dropping, assistant or tool turns left at the front of the kept conversation are
  dropped too, so it starts with a user turn as every provider expects.

When even the kept minimum does not fit it raises
:class:`~runtime.errors.ContextWindowExceeded` saying how many tokens it needs and how
many fit. The result reports what was dropped, in conversation order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from ..errors import ContextWindowExceeded
from ..types import FrozenStruct, Message
from .tokens import _message_tokens, token_counter

__all__ = ["TrimResult", "fit_messages"]


class TrimResult(FrozenStruct, frozen=True):
    """The kept ``messages`` and the ``dropped`` ones (both in conversation order), and the
    kept conversation's ``tokens`` (with the reply priming and any ``extra_tokens``)."""

    messages: list[Message]
    dropped: list[Message]
    tokens: int
    budget: int


class _Unit:
    """Messages that stay or go together: one message, or a tool call and its results."""

    __slots__ = ("importance", "indices", "pinned", "tokens")

    def __init__(self, indices: list[int], tokens: int, pinned: bool) -> None:
        self.indices = indices
        self.tokens = tokens
        self.pinned = pinned
        self.importance = 0.0


def _as_message(message: Message | Mapping[str, Any]) -> Message:
    return message if isinstance(message, Message) else msgspec.convert(message, Message)


def _units(messages: list[Message], last_user: int, tokens: list[int]) -> list[_Unit]:
    units: list[_Unit] = []
    i = 0
    n = len(messages)
    while i < n:
        message = messages[i]
        indices = [i]
        if message.role == "assistant" and message.tool_calls:
            ids = {call.id for call in message.tool_calls}
            j = i + 1
            # The tool results answering this call follow it; they belong to it.
            while (
                j < n
                and messages[j].role == "tool"
                and (messages[j].tool_call_id in ids or not messages[j].tool_call_id)
            ):
                indices.append(j)
                j += 1
        # Contiguous indices: the unit holds the last user message or comes after it.
        pinned = message.role == "system" or indices[-1] >= last_user
        units.append(_Unit(indices, sum(tokens[k] for k in indices), pinned))
        i = indices[-1] + 1
    return units


def fit_messages(
    messages: Sequence[Message | Mapping[str, Any]],
    *,
    context_window: int,
    max_tokens: int,
    model: str | None,
    importance: Callable[[Message], float] | None = None,
    extra_tokens: int = 0,
) -> TrimResult:
    """Trim ``messages`` so they and a ``max_tokens`` reply fit ``context_window``.

    ``importance`` scores a message (higher is kept longer); a tool-call unit scores as
    its most important message. ``extra_tokens`` are tokens outside the messages that
    must fit too, such as tool schemas. Raises
    :class:`~runtime.errors.ContextWindowExceeded` when the system messages and the
    latest user turn alone do not fit.
    """
    conversation = [_as_message(m) for m in messages]
    budget = context_window - max_tokens - extra_tokens
    counter = token_counter(model)
    tokens = [_message_tokens(m, counter) for m in conversation]
    last_user = max((i for i, m in enumerate(conversation) if m.role == "user"), default=len(conversation))
    units = _units(conversation, last_user, tokens)
    total = counter.format.priming + sum(tokens)
    minimum = counter.format.priming + sum(u.tokens for u in units if u.pinned)
    if minimum > budget:
        raise ContextWindowExceeded(
            f"the conversation needs at least {minimum} tokens (system messages and the latest user turn) "
            f"but only {max(budget, 0)} fit: context window {context_window} - max_tokens {max_tokens}"
            + (f" - {extra_tokens} other prompt tokens" if extra_tokens else "")
        )
    dropped_units: set[int] = set()
    if total > budget:
        candidates = [k for k, u in enumerate(units) if not u.pinned]
        if importance is not None:
            for k in candidates:
                units[k].importance = max(importance(conversation[i]) for i in units[k].indices)
            candidates.sort(key=lambda k: (units[k].importance, k))
        for k in candidates:
            if total <= budget:
                break
            dropped_units.add(k)
            total -= units[k].tokens
        # A kept conversation must open with a user turn: drop assistant/tool turns before it.
        for k, unit in enumerate(units):
            if k in dropped_units or conversation[unit.indices[0]].role == "system":
                continue
            if conversation[unit.indices[0]].role == "user" or unit.pinned:
                break
            dropped_units.add(k)
            total -= unit.tokens
    kept: list[Message] = []
    dropped: list[Message] = []
    for k, unit in enumerate(units):
        target = dropped if k in dropped_units else kept
        target.extend(conversation[i] for i in unit.indices)
    return TrimResult(messages=kept, dropped=dropped, tokens=total + extra_tokens, budget=context_window - max_tokens)
