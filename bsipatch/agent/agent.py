"""The update agent's public names, gathered: the executor, its state and its planner.

Kept so ``from bsipatch.agent.agent import Agent`` keeps working; the code lives in
:mod:`bsipatch.agent.executor` (I/O: refresh, install, record), :mod:`bsipatch.agent.plan`
(pure decisions) and :mod:`bsipatch.agent.state` (the agent's files). Nothing else here.
"""

from __future__ import annotations

from bsipatch._time import format_time, utc_now
from bsipatch.agent.executor import Agent, CheckResult
from bsipatch.agent.plan import ACTIVE, DEFER, INSTALL, SKIP, STEP_BACK, Decision
from bsipatch.agent.state import AGENT_DIR, AgentState, AgentStore, Settings

__all__ = [
    "ACTIVE",
    "AGENT_DIR",
    "DEFER",
    "INSTALL",
    "SKIP",
    "STEP_BACK",
    "Agent",
    "AgentState",
    "AgentStore",
    "CheckResult",
    "Decision",
    "Settings",
    "format_time",
    "utc_now",
]
