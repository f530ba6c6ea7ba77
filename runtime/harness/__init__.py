"""The failover benchmark harness: scenarios as data, systems under test, metrics, reports.

::

    from runtime.harness import LLMRuntime, builtin, run_scenario, score

    record = await run_scenario(builtin("primary-down-then-healthy"), LLMRuntime())
    result = score(record)
    result.failed, result.time_to_recover_s, result.windows[0].success_rate

``llm-runtime bench`` is the command-line face of the same pieces.
"""

from ._catalogue import builtin as builtin
from ._catalogue import catalogue as catalogue
from ._catalogue import resolve as resolve
from .metrics import RunResult as RunResult
from .metrics import score as score
from .runner import RequestRecord as RequestRecord
from .runner import RunObserver as RunObserver
from .runner import RunRecord as RunRecord
from .runner import Transition as Transition
from .runner import answer_text as answer_text
from .runner import run_scenario as run_scenario
from .scenario import Scenario as Scenario
from .scenario import load_scenario as load_scenario
from .scenario import parse_scenario as parse_scenario
from .systems import Answer as Answer
from .systems import BareAiohttp as BareAiohttp
from .systems import Call as Call
from .systems import LiteLLMRouter as LiteLLMRouter
from .systems import LLMRuntime as LLMRuntime
from .systems import OpenAIClient as OpenAIClient
from .systems import OpenAICompatibleURL as OpenAICompatibleURL
from .systems import Session as Session
from .systems import System as System
from .systems import Target as Target
from .systems import system_from_spec as system_from_spec

__all__ = [
    "Answer",
    "BareAiohttp",
    "Call",
    "LLMRuntime",
    "LiteLLMRouter",
    "OpenAIClient",
    "OpenAICompatibleURL",
    "RequestRecord",
    "RunObserver",
    "RunRecord",
    "RunResult",
    "Scenario",
    "Session",
    "System",
    "Target",
    "Transition",
    "answer_text",
    "builtin",
    "catalogue",
    "load_scenario",
    "parse_scenario",
    "resolve",
    "run_scenario",
    "score",
    "system_from_spec",
]
