"""Running host commands (ip, iptables, runc, mount, ...) from the agent's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

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
    env: dict[str, str] | None = None,
) -> Result:
    """Run ``argv`` and collect its output; raise :class:`CommandError` on failure if ``check``.
    ``env``: the command's whole environment (None: the agent's)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # Own process group: a Ctrl-C on the agent's terminal must not kill a half-done runc.
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except BaseException as e:
        # Timed out, or the caller gave up (cancelled): the command must not run on behind its
        # rollback, e.g. a `cp` still writing into a directory being removed, or an iptables
        # rule landing after its slot was released. Its own group (start_new_session): children
        # go too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        if isinstance(e, TimeoutError):
            raise CommandError(list(argv), -9, f"timed out after {timeout}s") from None
        raise
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


_libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2


def mount(source: str, target: str, fstype: str, data: str, flags: int = 0) -> None:
    """mount(2) directly: the `mount` program costs a fork+exec (~3 ms) per call."""
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def umount(target: str, *, lazy: bool = False) -> None:
    if _libc.umount2(target.encode(), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or below ``prefix``, deepest first so nested ones come off in order."""
    p = str(prefix)
    with open("/proc/self/mountinfo") as f:
        text = f.read()
    # Only the lines that hold ``prefix``'s longest piece mountinfo leaves as it is (it escapes
    # whitespace and backslashes) are split: a host's hundreds of other mounts, each split in
    # Python at every destroy, cost more than the read (session 28).
    piece = max(re.split(r"[\s\\]", p), key=len)
    out = []
    for line in text.splitlines():
        if piece in line:
            mp = line.split()[4].replace("\\040", " ")
            if mp == p or mp.startswith(p + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def process_alive(pid: int) -> bool:
    """Whether a process is there and not a zombie; an unknown pid (0) counts as alive, so
    that nothing is torn down on a guess."""
    if pid <= 0:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
