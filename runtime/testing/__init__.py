"""Test support: fault-injecting local LLM endpoints and a fast-forwarding event loop."""

from ._clock import VirtualClockLoop as VirtualClockLoop
from ._server import Arrival as Arrival
from ._server import Decision as Decision
from ._server import Dialect as Dialect
from ._server import Faults as Faults
from ._server import FaultyEndpoint as FaultyEndpoint
from ._server import LocalEndpoints as LocalEndpoints
from ._server import ServerStats as ServerStats
from ._server import Step as Step

__all__ = [
    "Arrival",
    "Decision",
    "Dialect",
    "FaultyEndpoint",
    "Faults",
    "LocalEndpoints",
    "ServerStats",
    "Step",
    "VirtualClockLoop",
]
