"""Test support: fault-injecting local LLM endpoints and a fast-forwarding event loop."""

from ._clock import VirtualClockLoop as VirtualClockLoop

__all__ = ["VirtualClockLoop"]
