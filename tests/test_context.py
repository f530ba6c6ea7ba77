"""Context-window trimming: always fits, never splits a tool pair, keeps what matters."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.accounting.context import fit_messages
from runtime.accounting.tokens import count_tokens
from runtime.errors import ContextWindowExceeded
from runtime.types import Message, ToolCall

MODEL = "gpt-4o-mini"
words = st.text(alphabet="abcdefghij klmnop,.", min_size=0, max_size=120)


@st.composite
def turn(draw: st.DrawFn, index: int) -> list[Message]:
    """A user message, then a plain answer or a tool call with its results (and maybe an answer)."""
    messages = [Message(role="user", content=draw(words))]
    if draw(st.booleans()):
        calls = [
            ToolCall(id=f"t{index}-{k}", name="lookup", arguments=draw(words)) for k in range(draw(st.integers(1, 3)))
        ]
        messages.append(Message(role="assistant", tool_calls=calls))
        messages.extend(Message(role="tool", content=draw(words), tool_call_id=c.id) for c in calls)
        if draw(st.booleans()):
            messages.append(Message(role="assistant", content=draw(words)))
    else:
        messages.append(Message(role="assistant", content=draw(words)))
    return messages


@st.composite
def conversation(draw: st.DrawFn) -> list[Message]:
    """System messages, some turns, and a final user message (sometimes with a tool call in progress)."""
    messages = [Message(role="system", content=draw(words)) for _ in range(draw(st.integers(0, 2)))]
    for i in range(draw(st.integers(0, 8))):
        messages.extend(draw(turn(i)))
    messages.append(Message(role="user", content=draw(words)))
    if draw(st.booleans()):
        call = ToolCall(id="live", name="lookup", arguments="{}")
        messages += [
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", content="ok", tool_call_id="live"),
        ]
    return messages


def last_user_index(messages: list[Message]) -> int:
    """Where the last user message is."""
    return max(i for i, m in enumerate(messages) if m.role == "user")


@settings(max_examples=150, deadline=None)
@given(conversation(), st.integers(50, 1500), st.integers(0, 200))
def test_trimming_always_fits_and_never_splits(messages: list[Message], window: int, max_tokens: int) -> None:
    """Whatever the conversation and window: it fits, or the minimum provably does not."""
    budget = window - max_tokens
    last = last_user_index(messages)
    try:
        result = fit_messages(messages, context_window=window, max_tokens=max_tokens, model=MODEL)
    except ContextWindowExceeded:
        pinned = [m for i, m in enumerate(messages) if m.role == "system" or i >= last]
        assert count_tokens(pinned, MODEL) > budget
        return
    kept = result.messages
    assert result.tokens == count_tokens(kept, MODEL) <= budget
    # Kept and dropped partition the conversation, each in its original order.
    kept_ids = {id(m) for m in kept}
    assert [m for m in messages if id(m) in kept_ids] == kept
    assert [m for m in messages if id(m) not in kept_ids] == result.dropped
    # System messages and the latest user turn are always kept.
    assert all(id(m) in kept_ids for i, m in enumerate(messages) if m.role == "system" or i >= last)
    # A tool call and its results stay or go together.
    call_ids = {c.id for m in kept if m.tool_calls for c in m.tool_calls}
    answered = {m.tool_call_id for m in kept if m.role == "tool"}
    assert call_ids == answered
    # After trimming, the conversation opens with a user turn.
    if result.dropped:
        first = next(m for m in kept if m.role != "system")
        assert first.role == "user"


def test_nothing_dropped_when_it_fits() -> None:
    """A conversation that fits comes back whole."""
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Hi")]
    result = fit_messages(messages, context_window=1000, max_tokens=100, model=MODEL)
    assert result.messages == messages and result.dropped == [] and result.budget == 900


def test_oldest_turns_go_first() -> None:
    """Without importance scores, the oldest turns are dropped and the newest kept."""
    messages = [Message(role="system", content="You answer questions.")]
    for i in range(6):
        messages += [
            Message(role="user", content=f"question {i} " * 20),
            Message(role="assistant", content=f"answer {i} " * 20),
        ]
    messages.append(Message(role="user", content="and finally?"))
    need = count_tokens([messages[0], *messages[-5:]], MODEL)
    result = fit_messages(messages, context_window=need + 50, max_tokens=50, model=MODEL)
    assert result.messages == [messages[0], *messages[-5:]]
    assert result.dropped == messages[1:-5]


def test_importance_drops_least_important_first() -> None:
    """With an importance score, the lowest-scoring old turn goes first, whatever its age."""
    old_key = Message(role="user", content="IMPORTANT: my account id is 4471 " * 5)
    messages = [
        old_key,
        Message(role="assistant", content="noted " * 25),
        Message(role="user", content="small talk " * 25),
        Message(role="assistant", content="indeed " * 25),
        Message(role="user", content="what is my account id?"),
    ]
    everything = count_tokens(messages, MODEL)
    window = everything - count_tokens([messages[2]], MODEL) + 3 + 10
    result = fit_messages(
        messages,
        context_window=window,
        max_tokens=10,
        model=MODEL,
        importance=lambda m: 1.0 if m.text.startswith("IMPORTANT") else 0.0,
    )
    assert old_key in result.messages
    assert messages[2] in result.dropped


def test_tool_pair_dropped_as_one() -> None:
    """An old tool call goes with all of its results, and a reply that would then lead goes too."""
    call = ToolCall(id="c1", name="search", arguments='{"q": "weather"}')
    messages = [
        Message(role="user", content="weather? " * 30),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", content="sunny " * 30, tool_call_id="c1"),
        Message(role="assistant", content="It is sunny."),
        Message(role="user", content="thanks, and tomorrow?"),
    ]
    result = fit_messages(messages, context_window=count_tokens(messages[-1:], MODEL) + 5, max_tokens=5, model=MODEL)
    assert result.messages == [messages[-1]]
    assert result.dropped == messages[:-1]


def test_too_small_window_raises_clearly() -> None:
    """When system messages and the last user turn alone overflow, it says by how much."""
    messages = [Message(role="system", content="rules " * 200), Message(role="user", content="hello")]
    with pytest.raises(ContextWindowExceeded) as info:
        fit_messages(messages, context_window=300, max_tokens=100, model=MODEL, extra_tokens=20)
    text = str(info.value)
    assert "needs at least" in text and "only 180 fit" in text and "context window 300" in text


def test_dict_messages_are_accepted() -> None:
    """OpenAI-shaped dicts are accepted and come back as Message structs."""
    result = fit_messages([{"role": "user", "content": "hi"}], context_window=100, max_tokens=10, model=MODEL)
    assert result.messages == [Message(role="user", content="hi")]
