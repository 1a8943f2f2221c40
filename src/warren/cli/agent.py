"""`warren agent`: run the host agent on this machine (the command lives with the agent)."""

from __future__ import annotations

from warren.agent.entry import agent_command

__all__ = ["agent_command"]
