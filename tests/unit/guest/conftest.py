"""Run the guest agent as a plain host subprocess on a temp socket and drive it via GuestClient."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

import warren.guest
from tests.unit.guest.guest_helpers import GUEST_PY, RunningGuest, guest_python, wait_for_socket
from warren.agent.guest_client import GuestClient


@pytest.fixture(scope="session", autouse=True)
def _guest_bytecode() -> None:
    # As the host agent does at startup: sandboxes see the guest directory read-only.
    warren.guest.precompile()


@pytest.fixture
def start_guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningGuest]]:
    # Not the test's tmp_path: tests list and compare that directory, the socket must not show.
    sock_dir = tmp_path_factory.mktemp("guest-sock")
    started: list[subprocess.Popen[bytes]] = []

    def start(*prefix: str, name: str = "guest.sock", extra: tuple[str, ...] = ()) -> RunningGuest:
        sock = str(sock_dir / name)
        cmd = [*prefix, guest_python(), "-I", "-S", str(GUEST_PY), "--socket", sock, *extra]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        wait_for_socket(sock, proc)
        return RunningGuest(proc, sock, GuestClient(sock, op_timeout=10.0))

    yield start
    died = [(p.args, p.returncode) for p in started if p.poll() is not None and p.returncode != 0]
    for proc in started:
        if proc.poll() is None:
            # SIGTERM first: the guest forwards it to the processes it started (background ones
            # live in their own process groups and would otherwise outlive the test). To the
            # group, so that a guest wrapped in `unshare` gets it too.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    # A guest that crashed mid-test would otherwise only show up as confusing "unavailable"s.
    assert not died, f"guest process died unexpectedly: {died}"


@pytest.fixture
def guest(start_guest: Callable[..., RunningGuest]) -> RunningGuest:
    return start_guest()


@pytest.fixture
def client(guest: RunningGuest) -> GuestClient:
    return guest.client
