"""A stand-in for a pytest worker that is killed (tests/integration/harness/test_orphans.py):
it starts, through the harness, a platform (a CP process and a registered agent) and a
standalone agent, one sandbox on each, prints what it started as one JSON line, then waits to be
killed.

Everything starts from worker threads (``asyncio.to_thread``, as the fixtures do) of an event
loop that is closed before the line is printed: those threads have ended by then, so what
survives them is tied to this process, not to the thread that started it.

    python -m tests.integration.harness.killed_run <database url> <home> <agent ip>
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness.agent import AgentProcess
from tests.harness.platform import start_platform


async def _start(db_url: str, home: Path, ip: str) -> dict[str, Any]:
    standalone = AgentProcess.standalone(home / "standalone")
    platform, _ = await asyncio.gather(
        start_platform(db_url, home / "platform", agent_ips=(ip,)), asyncio.to_thread(standalone.start)
    )
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=120) as http:
        r = await http.post("/v1/sandboxes", json={"template": "minimal"})
        assert r.status_code == 201, r.text
    created = await asyncio.to_thread(standalone.create, template="minimal")
    standalone.disconnect()
    registered = platform.agents[0]
    assert standalone.proc is not None and registered.proc is not None
    return {
        "cp": platform.cp.pid,
        "agents": [standalone.proc.pid, registered.proc.pid],
        "data_dirs": [str(standalone.data_dir), str(registered.data_dir)],
        "sandboxes": [created.sandbox_id, r.json()["id"]],
    }


def main() -> None:
    db_url, home, ip = sys.argv[1:4]
    started = asyncio.run(_start(db_url, Path(home), ip))  # its worker threads end here
    print(json.dumps(started), flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
