"""`python -m warren.agent …` — the same as `warren agent …` (tests start agents this way)."""

from __future__ import annotations

import typer

from warren.agent.entry import agent_command

if __name__ == "__main__":
    typer.run(agent_command)
