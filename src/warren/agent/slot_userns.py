"""A user namespace per network slot, made by a host uid of its own, with the slot's netns inside.

The kernel counts some objects per user (inotify instances and watches, POSIX message-queue
bytes, queued signals, processes) in the user namespace that holds them *and* in each parent
namespace, under the uid that made the child namespace. A sandbox whose user namespace the OCI
runtime makes (as root) is therefore counted under host root, together with every other such
sandbox and host root's own processes: one tenant could use the shared count up
(docs/security.md §3). Here each slot's user namespace is made by ``owner_uid(index)``, a host
uid nothing else runs as, so what a sandbox holds is counted under its own uid, against the
kernel's per-user limits, and touches no one else's count.

How a slot is made (~3 ms, ahead of time for pooled slots): the agent's namespace maker
(ns_maker.py, a small root process started once) forks a child that takes the owner uid and
unshares a user and a network namespace together (so the netns belongs to the new user
namespace: runc joins the user namespace first, and could not join a netns owned by the initial
one from inside it); the maker writes the uid/gid maps (the slot's own range, templates.uid_base) and
keeps both namespaces as bind mounts (``/run/netns/<name>`` as ``ip netns`` would, a file under
``USERNS_DIR`` for the user namespace); the child exits. The bundle then names both paths.
Before the maker, ``setpriv … unshare … sh`` did the child's part: three execs, ~8 ms more a
slot made on a create's path (docs/benchmarks.md, session 11).

runsc cannot join a user namespace by path (its gofer's ``setns`` fails), nor a netns owned by
another user namespace, so gVisor sandboxes keep slots made the plain way (``ip netns add``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
from collections import deque
from pathlib import Path

from warren.agent.helper_process import HelperProcess, PerLoop, spawn_script
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE, uid_base

log = logging.getLogger("warren.agent")

USERNS_DIR = Path("/run/warren/userns")
NETNS_DIR = Path("/run/netns")  # where ``ip netns`` keeps named network namespaces
# Slot n's namespace is made by host uid OWNER_BASE + n: far from the sandboxes' mapped ranges
# (templates.uid_base) and from any uid a distribution hands out.
OWNER_BASE = 2_000_000_000
PROBE_UID = OWNER_BASE - 1  # made and let go at start: whether this host allows it at all
IDMAP_OWNER_UID = OWNER_BASE - 2  # owns the id-map namespaces (idmap.py)
_MS_BIND, _MS_REC, _MS_SHARED, _MNT_DETACH = 4096, 16384, 1 << 20, 2
_ANSWER_TIMEOUT = 30.0  # the maker gives up on a child after 10 s; this covers a stuck maker
_libc = ctypes.CDLL(None, use_errno=True)
_idmap_locks: dict[Path, asyncio.Lock] = {}


class SlotUsernsError(RuntimeError):
    pass


class Maker(HelperProcess):
    """The agent's handle on its namespace maker (ns_maker.py). Requests are pipelined: each is
    written at once and answered in order, so creates arriving together make their namespaces
    side by side."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._pending: deque[asyncio.Future[str]] = deque()
        super().__init__(proc, "ns-maker-answers")

    @classmethod
    async def start(cls, prefix: tuple[str, ...] = ()) -> Maker:
        """``prefix``: a command the maker runs under (tests: a namespace it cannot work in)."""
        return cls(await spawn_script(Path(__file__).with_name("ns_maker.py"), prefix=prefix))

    async def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                if self._pending:
                    fut = self._pending.popleft()
                    if not fut.done():
                        fut.set_result(line.decode(errors="replace").rstrip("\n"))
        finally:  # ended: whatever is still waiting never gets its answer
            while self._pending:
                fut = self._pending.popleft()
                if not fut.done():
                    fut.set_result("err the namespace maker ended")

    async def request(self, line: str) -> None:
        """Send one request and wait for its "ok". Raises SlotUsernsError with the maker's
        reason, or when the maker is gone or does not answer (then it is killed). Cancelled,
        it still waits for its answer: the caller's cleanup must find all the maker made."""
        assert self.proc.stdin is not None
        if not self.alive:
            raise SlotUsernsError("the namespace maker ended")
        fut = self.loop.create_future()
        self._pending.append(fut)  # and written, with no await between: answers come in order
        self.proc.stdin.write(f"{line}\n".encode())
        try:
            answer = await asyncio.wait_for(asyncio.shield(fut), _ANSWER_TIMEOUT)
        except TimeoutError:  # stuck: ended with what it was making, before the caller cleans up
            await self.close()
            raise SlotUsernsError(f"the namespace maker did not answer in {_ANSWER_TIMEOUT:.0f} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(fut, _ANSWER_TIMEOUT)
            raise
        if answer != "ok":
            raise SlotUsernsError(answer.removeprefix("err "))


async def _start_maker() -> Maker:
    _prepare_dirs()
    return await Maker.start()


_maker: PerLoop[Maker] = PerLoop(_start_maker)


async def maker() -> Maker:
    """This event loop's maker, started (again) if there is none or it ended."""
    return await _maker.get()


async def stop_maker() -> None:
    """End the maker (agent shutdown; it would end with the agent anyway)."""
    await _maker.stop()


def _prepare_dirs() -> None:
    """``USERNS_DIR``, and ``NETNS_DIR`` as ``ip netns`` leaves it: a mount point of its own,
    shared, so the netns mounts in it propagate to mount namespaces made later."""
    USERNS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    NETNS_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    with open("/proc/self/mountinfo") as f:
        mounted = any(line.split(" ")[4] == str(NETNS_DIR) for line in f)
    if not mounted:
        _mount(NETNS_DIR, NETNS_DIR, _MS_BIND | _MS_REC)
    _mount(None, NETNS_DIR, _MS_SHARED | _MS_REC)


def _mount(source: Path | None, target: Path, flags: int) -> None:
    src = str(source).encode() if source is not None else b"none"
    if _libc.mount(src, str(target).encode(), b"none", flags, None) != 0:
        raise SlotUsernsError(f"mount {source} on {target}: {os.strerror(ctypes.get_errno())}")


async def unavailable(via: Maker | None = None) -> str:
    """Why slots cannot have user namespaces of their own on this host ("" when they can): an
    unprivileged uid must be able to make a user namespace with a netns inside (Debian's
    ``kernel.unprivileged_userns_clone``, Ubuntu's AppArmor ``userns`` restriction). ``via``:
    another maker than this loop's (tests: one where it cannot)."""
    try:
        await (via or await maker()).request(f"probe {PROBE_UID}")
    except (SlotUsernsError, OSError) as e:
        return str(e) or type(e).__name__
    return ""


def idmap_path(from_base: int, to_base: int) -> Path:
    return USERNS_DIR / f"idmap-{from_base}-{to_base}"


async def ensure_idmap(from_base: int, to_base: int) -> Path:
    """The user namespace an id-mapped mount takes ``from_base``.. to ``to_base``.. through
    (idmap.py), made the first time it is asked for and kept (one per slot base)."""
    path = idmap_path(from_base, to_base)
    async with _idmap_locks.setdefault(path, asyncio.Lock()):
        if path.exists() and not bound(path):
            # Its mount went (an operator's umount of /run/warren): the empty file left would
            # be taken for the namespace, and every id-mapped mount through it would fail.
            log.warning("event=idmap_userns_stale path=%s detail=made anew", path)
            path.unlink(missing_ok=True)
        if not path.exists():
            try:
                await (await maker()).request(
                    f"user {IDMAP_OWNER_UID} {from_base} {to_base} {MAPPED_SIZE} {path}"
                )
            except SlotUsernsError:
                if not path.exists():  # else another agent on this host made it first
                    raise
    return path


def bound(target: Path) -> bool:
    """Whether a namespace is bind-mounted on ``target`` (not only the file it was mounted on):
    a mount's file lives on the namespace filesystem's device, not on its directory's."""
    try:
        return target.stat().st_dev != target.parent.stat().st_dev
    except OSError:
        return False


def owner_uid(index: int) -> int:
    return OWNER_BASE + index


def path(index: int) -> Path:
    return USERNS_DIR / f"s{index}"


async def make(index: int, netns: str) -> None:
    """Make slot ``index``'s user namespace and, inside it, the network namespace ``netns``
    (named as ``ip netns`` names them). On failure nothing of it is left."""
    netns_path, userns_path = NETNS_DIR / netns, path(index)
    try:
        # Slot n's sandboxes run as a host range of their own (templates.uid_base), and see
        # the canonical layers through an id map to it, made here, ahead of any create.
        id_map = f"0 {uid_base(index)} {MAPPED_SIZE}"
        m = await maker()
        made = await asyncio.gather(
            m.request(f"make {owner_uid(index)} {id_map} {netns_path} {userns_path}"),
            ensure_idmap(MAPPED_BASE, uid_base(index)),
            return_exceptions=True,
        )
        for result in made:
            if isinstance(result, BaseException):
                raise result
    except (SlotUsernsError, OSError) as e:
        raise SlotUsernsError(f"slot {index}: could not make its namespaces: {e}") from None


async def remove(index: int) -> None:
    """Let go of slot ``index``'s user namespace (its netns goes with network.delete_netns); the
    namespace itself ends when the sandbox's last process does. Nothing there: nothing done."""
    target = path(index)
    if not target.exists():
        return
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0 and ctypes.get_errno() not in (22, 2):
        raise SlotUsernsError(f"unmounting {target}: {os.strerror(ctypes.get_errno())}")
    target.unlink(missing_ok=True)


def present(index: int) -> bool:
    """Whether slot ``index`` was made with a user namespace of its own."""
    return path(index).exists()
