"""Running host commands (ip, iptables, runc, mount, ...) from the agent's event loop."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

log = logging.getLogger("warren.agent")


class CommandError(RuntimeError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{' '.join(argv[:3])}… exited {returncode}: {self.stderr[-500:]}")


@dataclass(slots=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run(
    *argv: str,
    input: bytes | None = None,
    check: bool = True,
    timeout: float = 60.0,  # noqa: ASYNC109
) -> Result:
    """Run ``argv`` and collect its output; raise :class:`CommandError` on failure if ``check``."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Own process group: a Ctrl-C on the agent's terminal must not kill a half-done runc.
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandError(list(argv), -9, f"timed out after {timeout}s") from None
    res = Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and res.returncode != 0:
        raise CommandError(list(argv), res.returncode, res.stderr or res.stdout)
    return res


def write_file(path: str, data: str) -> None:
    """Write to a kernel file (cgroup, sysctl) with a single write(2)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
