"""Actors and their supervisor."""

from .actor import Actor as Actor
from .actor import ActorState as ActorState
from .actor import ActorStopped as ActorStopped
from .supervisor import ChildSpec as ChildSpec
from .supervisor import Restart as Restart
from .supervisor import Supervisor as Supervisor

__all__ = ["Actor", "ActorState", "ActorStopped", "ChildSpec", "Restart", "Supervisor"]
