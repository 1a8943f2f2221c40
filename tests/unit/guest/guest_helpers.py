"""Helpers shared by the guest tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import warren.guest
from warren.agent.guest_client import GuestClient

GUEST_PY = warren.guest.GUEST_SCRIPT


def guest_python() -> str:
    """The interpreter the guest runs under: the template's is Debian bookworm's python3."""
    return os.environ.get("WARREN_GUEST_PYTHON") or (
        "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    )


@dataclass
class RunningGuest:
    proc: subprocess.Popen[bytes]
    socket: str
    client: GuestClient

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} missing")


def wait_for_socket(path: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"guest exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("guest socket never appeared")
        time.sleep(0.002)


def pid_gone(pid: int) -> bool:
    """True when `pid` no longer exists or is a zombie (not running, just not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return False
