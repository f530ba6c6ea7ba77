"""What a stream does when its answer fails after content reached the caller.

``on_interrupt`` picks one of three policies:

- ``"raise"`` (the default): :class:`~runtime.errors.StreamInterrupted` with the partial
  text. The caller decides; nothing is sent again.
- ``"restart"``: the request runs again by the usual rules (another endpoint first, the
  same one only after backoff, within the retry budget, ``max_attempts`` and the
  deadline), and the caller gets one ``StreamChunk(restart=True)`` before the new
  answer's first chunk: everything before the marker is void.
- ``"continue"``: where the next endpoint can continue an assistant message (a prefill),
  it is asked to continue the partial text and only the continuation is streamed, so the
  caller's text stays one answer. Where it cannot (the provider has no prefill, the
  partial holds a tool call, or the endpoint refuses the prefill with a 400), the stream
  restarts instead: a refused prefill is never the error the caller sees.

:class:`Recovery` holds one stream's side of that: the policy, what each recovery attempt
sent, and the endpoints that refused a prefill. The stream does the I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from .errors import BadRequest, ContextWindowExceeded, LLMError
from .policy import OnInterrupt
from .types import Attempt, ChatRequest

if TYPE_CHECKING:
    from .endpoint.actor import EndpointActor

__all__ = ["Mode", "Recovery", "recoverable"]

Mode = Literal["restart", "continue"]


class Recovery:
    """One stream's recovery state: ``restarts`` and ``continuations`` made so far.

    A recovery runs the dispatcher once more; for each endpoint it picks,
    :meth:`request_for` says what to send. After it, :meth:`label` marks each attempt of
    that run in the trail with how it recovered, and :meth:`refused_prefill` says whether
    the run ended on an endpoint refusing the prefill, so that it runs again as a restart.
    """

    __slots__ = ("_launched", "_refused", "continuations", "policy", "restarts")

    def __init__(self, policy: OnInterrupt) -> None:
        self.policy = policy
        self.restarts = 0
        self.continuations = 0
        self._refused: set[str] = set()  # endpoints that refused a prefill in this request
        self._launched: list[Mode] = []

    def __repr__(self) -> str:
        return f"<Recovery {self.policy} [restarts {self.restarts} | continuations {self.continuations}]>"

    @property
    def active(self) -> bool:
        """Whether a failure after content is recovered at all (not ``"raise"``)."""
        return self.policy != "raise"

    def begin(self) -> None:
        """A recovery run starts: forget what the previous one launched."""
        self._launched = []

    def request_for(self, actor: EndpointActor, request: ChatRequest, partial: str | None) -> tuple[ChatRequest, Mode]:
        """What to send ``actor``: the continuation of ``partial`` where the policy, the
        partial and the endpoint allow it, else the request itself (a restart)."""
        mode: Mode = "restart"
        if self.policy == "continue" and partial is not None and actor.name not in self._refused:
            continued = actor.client.continuation(request, partial)
            if continued is not None:
                request, mode = continued, "continue"
        self._launched.append(mode)
        return request, mode

    def label(self, trail: list[Attempt], start: int) -> None:
        """Mark the attempts the last run added to ``trail`` (from ``start``) with how each
        recovered the answer: the dispatcher appends one entry per attempt, in order."""
        for i, mode in enumerate(self._launched, start):
            if i < len(trail):
                trail[i] = msgspec.structs.replace(trail[i], recovery=mode)

    def refused_prefill(self, exc: BaseException, endpoint: str | None) -> bool:
        """Whether ``exc`` ending the last run is ``endpoint`` refusing the prefill; it is
        then never asked to continue again in this request."""
        if not self._launched or self._launched[-1] != "continue" or endpoint is None:
            return False
        # A longer prompt may overflow a context window: that is not a refusal of the prefill.
        if not isinstance(exc, BadRequest) or isinstance(exc, ContextWindowExceeded):
            return False
        self._refused.add(endpoint)
        return True


def recoverable(exc: LLMError) -> bool:
    """Whether a failure after content is worth another attempt (a filter's refusal or a
    request error would fail the same way again)."""
    return bool(getattr(exc, "retryable", False))
