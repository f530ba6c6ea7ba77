"""Stream recovery holds its promises whatever fails, wherever: seeded random scenarios.

Each case draws dialects for a primary and a backup, a fault and the chunk it strikes
after for each (the backup may fail too, or not at all), and a policy; then checks what
the caller got against what every policy promises: the text after the last ``restart``
marker is ``stream.response.text``, markers and ``stream.restarts`` agree, a continued
answer is one text, a failure is a ``StreamInterrupted`` whose partial is the text of the
answer in hand, and no endpoint is left with a request in flight.
"""

from __future__ import annotations

import random

import pytest

from runtime import HealthPolicy, LLMError, RetryPolicy, Runtime, StreamInterrupted
from runtime.testing import FaultyEndpoint
from runtime.types import StreamChunk

pytestmark = pytest.mark.anyio

DIALECTS = ["openai", "anthropic", "ollama"]
KNOBS = ["cut_after", "stall_after", "malformed_after", "stream_error_after", "end_after"]
POLICIES = ["raise", "restart", "continue"]
TEXT = "one two three four five six"


@pytest.mark.parametrize("seed", range(60))
async def test_random_faults_keep_every_policys_promise(seed: int) -> None:
    """Whatever fails where, the caller's chunks, the response and the counters agree with the policy."""
    rng = random.Random(seed)
    dialects = [rng.choice(DIALECTS), rng.choice(DIALECTS)]
    policy = rng.choice(POLICIES)
    async with (
        FaultyEndpoint(dialects[0], name="primary", text=TEXT) as primary,
        FaultyEndpoint(dialects[1], name="backup", text=TEXT) as backup,
    ):
        # The backup is healthy half the time, so that recoveries succeed as often as they run out.
        backup_knob = rng.choice(KNOBS) if rng.random() < 0.5 else None
        for ep, knob in ((primary, rng.choice(KNOBS)), (backup, backup_knob)):
            if knob is not None:
                setattr(ep.faults, knob, rng.randrange(0, 7))
        endpoints = [
            ep.endpoint(priority=i, idle_timeout=3.0, health=HealthPolicy(enabled=False), prefill=rng.random() < 0.5)
            for i, ep in enumerate((primary, backup), 1)
        ]
        rt = Runtime(endpoints, seed=seed, on_interrupt=policy, retry=RetryPolicy(max_attempts=4, backoff_base=0.2))
        async with rt:
            chunks: list[StreamChunk] = []
            failure: StreamInterrupted | None = None
            try:
                async with rt.stream("count", timeout=60) as stream:
                    async for chunk in stream:
                        chunks.append(chunk)
            except StreamInterrupted as exc:
                failure = exc
            except LLMError:  # failing before any content reached the caller: a typed error, as any request
                assert not chunks
                return
            finally:
                assert [s.in_flight for s in rt.status()] == [0, 0]
    marks = [i for i, c in enumerate(chunks) if c.restart]
    last = "".join(c.text for c in chunks[marks[-1] + 1 :] if not c.restart) if marks else "".join(c.text for c in chunks)
    if policy == "raise":
        assert not marks
    if failure is not None:
        assert failure.partial == last
        return
    assert stream.response.text == last == TEXT
    assert stream.restarts == len(marks)
    if policy == "continue" and not marks:
        assert "".join(c.text for c in chunks) == TEXT
