"""Session 23: a cancelled snapshot export gave its turn back while its thread went on writing.

An export (``ExportSnapshot``, and a build step's) writes the sandbox's writable layer as a tar in
a thread, in one of the agent's two export turns and under the sandbox's lock. The control plane
cancels the call when its deadline passes (a tenant's files can make an export slow) or when the
store stops reading. The cancelled call gave back its turn and the lock and unlinked the
temporary tar at once, but the thread went on: it walked every file and wrote the whole tar into
the unlinked file (host disk no one counted), holding a thread of the agent's default executor,
and the next export of the same tenant started another beside it.

Written as the control plane calls the agent: a tenant's sandbox holds a 2 GiB file; its export
is cancelled as soon as its tar is being written. Before: the agent kept writing the tar to its
end (2 GiB). Now the thread stops at its next write (warren/stoppable.py), and the turn is held
until it has: the tar stops growing right after the cancel, and a new export of the sandbox
still works.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness.agent import AgentProcess, scratch_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

BIG_MB = 2048
# The disk is a tmpfs in the memory limit (docs/security.md §3): room for the file.
MEMORY_MB, DISK_MB = 3072, 2300


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProcess]:
    with scratch_agent("attack-s23-export-cancel") as a:
        yield a


def _export_tar_fd(agent: AgentProcess) -> Path | None:
    """The agent's open descriptor of an export's temporary tar (``layers/.tmp-*.tar``)."""
    assert agent.proc is not None
    fds = Path(f"/proc/{agent.proc.pid}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if "/layers/.tmp-" in target and ".tar" in target:
                return fd
    return None


def _size(fd: Path, inode: int) -> int | None:
    """The tar's size while ``fd`` is still open on it (a closed number may be reused)."""
    try:
        st = fd.stat()
    except OSError:  # closed: the thread is done with it
        return None
    return st.st_size if st.st_ino == inode else None


def test_a_cancelled_export_stops_writing(agent: AgentProcess) -> None:
    sid = agent.create(memory_mb=MEMORY_MB, disk_size_mb=DISK_MB, owner_team_id=str(uuid.uuid4())).sandbox_id
    try:
        fill = f"dd if=/dev/zero of=/home/big bs=1M count={BIG_MB} status=none && sync"
        assert agent.exec(sid, "/bin/sh", "-c", fill, timeout_sec=300).exit_code == 0
        agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sid), timeout=120)
        call = agent.stub.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=sid), timeout=300)
        fd, inode, deadline = None, 0, time.monotonic() + 120
        while fd is None or not _size(fd, inode):
            assert time.monotonic() < deadline, "the export never started writing its tar"
            if (fd := _export_tar_fd(agent)) is not None:
                with contextlib.suppress(OSError):
                    inode = fd.stat().st_ino
            time.sleep(0.01)
        call.cancel()  # the control plane's deadline passed
        last = at_cancel = _size(fd, inode) or 0
        deadline = time.monotonic() + 180
        while (now := _size(fd, inode)) is not None and time.monotonic() < deadline:
            last = now
            time.sleep(0.05)
        print(f"tar at the cancel: {at_cancel >> 20} MiB; last seen: {last >> 20} MiB of {BIG_MB}")
        assert _size(fd, inode) is None, "the export's tar was still open 180 s after the cancel"
        # Before: the thread wrote the whole tar into the unlinked file.
        assert last < (BIG_MB << 20) // 2, f"the cancelled export went on to write {last >> 20} MiB"
        # The sandbox's lock and the export turn are free again: it resumes, and exports.
        agent.stub.ResumeSandbox(pb.ResumeSandboxRequest(sandbox_id=sid), timeout=120)
        assert agent.exec(sid, "/bin/rm", "/home/big").exit_code == 0
        agent.stub.PauseSandbox(pb.PauseSandboxRequest(sandbox_id=sid), timeout=120)
        again = list(agent.stub.ExportSnapshot(pb.ExportSnapshotRequest(sandbox_id=sid), timeout=300))
        assert again and again[-1].HasField("done"), "a new export after the cancelled one failed"
    finally:
        with contextlib.suppress(grpc.RpcError):
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=120)
