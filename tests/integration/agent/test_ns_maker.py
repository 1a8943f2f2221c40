"""The namespace maker (agent/ns_maker.py, driven by agent/slot_userns.py): each network slot's
user namespace is owned by the slot's own host uid, holds the slot's netns and the sandboxes'
map; a child that cannot do its part is reported, never waited on forever; the maker ends with
the agent that started it."""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren.agent import slot_userns
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE, uid_base

pytestmark = pytest.mark.root

NS_GET_USERNS, NS_GET_OWNER_UID = 0xB701, 0xB704
# Slots this high are never reached by the agents other tests run on this machine (they take
# the lowest free ones), so the paths here are the tests' own.
INDEX = 16_370 + os.getpid() % 10
NETNS = f"wtest-maker-{INDEX}"


@pytest.fixture
async def slot() -> AsyncIterator[int]:
    yield INDEX
    subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True, check=False)
    await slot_userns.remove(INDEX)
    assert not (slot_userns.NETNS_DIR / NETNS).exists() and not slot_userns.present(INDEX)


def _owner_uid(ns_file: Path) -> int:
    fd = os.open(ns_file, os.O_RDONLY)
    try:
        return int.from_bytes(fcntl.ioctl(fd, NS_GET_OWNER_UID, b"\0" * 4), "little")
    finally:
        os.close(fd)


def _owning_userns_inode(netns_file: Path) -> int:
    fd = os.open(netns_file, os.O_RDONLY)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
        try:
            return os.fstat(owner).st_ino
        finally:
            os.close(owner)
    finally:
        os.close(fd)


async def test_a_slots_user_namespace_is_its_own_uids_and_holds_its_netns_and_the_map(slot: int) -> None:
    await slot_userns.make(slot, NETNS)
    userns, netns = slot_userns.path(slot), slot_userns.NETNS_DIR / NETNS
    assert _owner_uid(userns) == slot_userns.owner_uid(slot)
    assert _owning_userns_inode(netns) == os.stat(userns).st_ino
    inside = subprocess.run(
        ["nsenter", f"--user={userns}", "cat", "/proc/self/uid_map", "/proc/self/gid_map"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    sandboxes_map = ["0", str(uid_base(slot)), str(MAPPED_SIZE)]  # the slot's own range
    assert [line.split() for line in inside.stdout.splitlines()] == [sandboxes_map] * 2
    with pytest.raises(slot_userns.SlotUsernsError, match="File exists"):
        await slot_userns.make(slot, NETNS)  # never stacked on a slot that is still there
    assert _owner_uid(userns) == slot_userns.owner_uid(slot)


async def test_a_child_that_cannot_take_its_uid_is_reported_not_waited_on() -> None:
    """Run where the slot's uid does not exist (a user namespace mapping root alone): the child's
    setgroups fails, and the maker answers with the reason and serves on."""
    maker = await slot_userns.Maker.start(prefix=("unshare", "--user", "--map-root-user"))
    try:
        for _ in range(2):
            with pytest.raises(slot_userns.SlotUsernsError, match=r"setgroups: .*Operation not permitted"):
                await asyncio.wait_for(maker.request(f"probe {slot_userns.owner_uid(INDEX)}"), 60)
        assert maker.alive
        # What the agent's start-up check makes of it: slots made plain, this the reason logged.
        assert "Operation not permitted" in await asyncio.wait_for(slot_userns.unavailable(maker), 60)
        assert await slot_userns.unavailable() == ""  # this host's own maker can
    finally:
        await maker.close()


async def test_a_make_that_fails_halfway_leaves_nothing() -> None:
    maker = await slot_userns.Maker.start()
    netns = slot_userns.NETNS_DIR / NETNS
    try:
        request = f"make {slot_userns.owner_uid(INDEX)} 0 {MAPPED_BASE} 1 {netns} /nonexistent/u"
        with pytest.raises(slot_userns.SlotUsernsError, match="No such file"):
            await asyncio.wait_for(maker.request(request), 60)
        assert not netns.exists()
        with pytest.raises(slot_userns.SlotUsernsError, match="out of range"):
            await maker.request("probe 0")  # never a namespace of host root's
    finally:
        await maker.close()


async def test_a_maker_that_ended_is_reported_and_the_next_make_starts_another(slot: int) -> None:
    first = await slot_userns.maker()
    first.proc.kill()
    await first.proc.wait()
    with pytest.raises(slot_userns.SlotUsernsError, match="namespace maker"):
        await asyncio.wait_for(first.request(f"probe {slot_userns.PROBE_UID}"), 60)
    await slot_userns.make(slot, NETNS)
    assert (await slot_userns.maker()) is not first
    assert _owner_uid(slot_userns.path(slot)) == slot_userns.owner_uid(slot)


async def test_creates_that_find_no_maker_start_one() -> None:
    await slot_userns.stop_maker()
    first, second = await asyncio.gather(slot_userns.maker(), slot_userns.maker())
    assert first is second and first.alive


async def test_slots_made_at_once_are_each_their_own_uids() -> None:
    indices = [INDEX - 10 * k for k in range(1, 4)]
    try:
        await asyncio.gather(*(slot_userns.make(i, f"{NETNS}-{i}") for i in indices))
        for i in indices:
            userns = slot_userns.path(i)
            assert _owner_uid(userns) == slot_userns.owner_uid(i)
            assert _owning_userns_inode(slot_userns.NETNS_DIR / f"{NETNS}-{i}") == os.stat(userns).st_ino
    finally:
        for i in indices:
            subprocess.run(["ip", "netns", "delete", f"{NETNS}-{i}"], capture_output=True, check=False)
            await slot_userns.remove(i)


async def test_a_cancelled_make_returns_once_the_maker_is_done_with_it(slot: int) -> None:
    """The caller's cleanup (release) runs after the cancellation: it must find everything the
    maker made for the slot, so nothing is bound after it."""
    maker = await slot_userns.maker()
    task = asyncio.create_task(slot_userns.make(slot, NETNS))
    while not maker._pending:  # written to the maker
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not maker._pending and maker.alive
    assert (slot_userns.NETNS_DIR / NETNS).exists() == slot_userns.present(slot)


STAND_IN_AGENT = """
import asyncio, sys
from warren.agent import slot_userns
async def main():
    maker = await slot_userns.maker()
    print(maker.proc.pid, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_the_maker_ends_with_the_agent() -> None:
    agent = subprocess.Popen([sys.executable, "-c", STAND_IN_AGENT], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        maker_pid = int(agent.stdout.readline())
        assert _state(maker_pid) not in ("", "Z")
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    deadline = time.monotonic() + 30
    while _state(maker_pid) not in ("", "Z") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _state(maker_pid) in ("", "Z")


def _state(pid: int) -> str:
    """The process's state letter, "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


def _mounted(ns_file: Path) -> bool:
    return ns_file.stat().st_dev != ns_file.parent.stat().st_dev  # nsfs, not the directory's


async def test_an_id_map_namespace_whose_mount_went_is_made_anew() -> None:
    """An umount of /run/warren (by hand, or a cleanup's) leaves the empty file the namespace
    was mounted on; taken for the namespace, it failed every id-mapped mount of its slot base
    ("Invalid argument") until someone removed it (session 20)."""
    path = slot_userns.idmap_path(MAPPED_BASE, uid_base(INDEX))
    await slot_userns.ensure_idmap(MAPPED_BASE, uid_base(INDEX))  # this test's own slot base
    assert _mounted(path)
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.umount2(str(path).encode(), 2) == 0  # MNT_DETACH: as it went
    assert path.exists() and not _mounted(path)
    made = await slot_userns.ensure_idmap(MAPPED_BASE, uid_base(INDEX))
    assert made == path and _mounted(path)
    assert _owner_uid(path) == slot_userns.IDMAP_OWNER_UID
