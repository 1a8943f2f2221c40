"""One standalone agent per runtime per pytest worker, lent to the modules that only create and
destroy sandboxes of their own (an agent's start and stop is ~3 s of a loaded machine's CPU,
paid once per worker instead of once per module and runtime).

A module keeps an agent of its own (``scratch_agent``) when its tests read more of the agent's log
than their own sandboxes' lines, change its settings (``env``), kill, restart or measure it, move
its fake clock, or assert on what the whole agent holds. A borrower gets the agent with no
sandbox left from the module before, and leaves none: every sandbox still there when its module
ends is destroyed. An agent that died or cannot list its sandboxes is finished and the next
module starts a fresh one.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

import pytest

from tests.harness.agent import AgentProcess
from tests.harness.machine import scratch_dir

_AGENTS = pytest.StashKey[dict[str, AgentProcess]]()


def _agents(config: pytest.Config) -> dict[str, AgentProcess]:
    """This worker's agents by runtime, finished when its session ends."""
    if _AGENTS not in config.stash:
        agents: dict[str, AgentProcess] = {}
        config.stash[_AGENTS] = agents

        def finish_all() -> None:
            for agent in agents.values():
                _retire(agent)
            agents.clear()

        config.add_cleanup(finish_all)
    return config.stash[_AGENTS]


def _retire(agent: AgentProcess) -> None:
    try:
        agent.reconnect()  # lent agents are left without a channel between modules
        agent.finish()
    finally:
        shutil.rmtree(agent.root.parent, ignore_errors=True)  # scratch_dir's run-* directory


def _alive(agent: AgentProcess) -> bool:
    return agent.proc is not None and agent.proc.poll() is None


@contextlib.contextmanager
def shared_agent(request: pytest.FixtureRequest, runtime: str = "runc") -> Iterator[AgentProcess]:
    """The worker's started agent of ``runtime``, for one module (use in a module fixture)."""
    agents = _agents(request.config)
    agent = agents.get(runtime)
    if agent is not None and not _alive(agent):
        _retire(agents.pop(runtime))
        agent = None
    if agent is None:
        root = scratch_dir(f"shared-agent-{runtime}")
        agent = AgentProcess.standalone(root / "agent", runtime=runtime).start()
        agents[runtime] = agent
    agent.reconnect()
    try:
        yield agent
    finally:
        try:
            agent.destroy_all()  # the module's leftovers: the next borrower starts with none
        except Exception:
            _retire(agents.pop(runtime))
            raise
        # No channel between modules: gRPC's threads would stay in this worker, and a later
        # module that forks it met their fork handlers (CI, session 19: a converter probe's
        # child logged 2 GB of "pthread_create failed", the guest's run_as child failed).
        agent.disconnect()
