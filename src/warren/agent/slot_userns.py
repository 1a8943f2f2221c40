"""A user namespace per network slot, made by a host uid of its own, with the slot's netns inside.

The kernel counts some objects per user (inotify instances and watches, POSIX message-queue
bytes, queued signals, processes) in the user namespace that holds them *and* in each parent
namespace, under the uid that made the child namespace. A sandbox whose user namespace the OCI
runtime makes (as root) is therefore counted under host root, together with every other such
sandbox and host root's own processes: one tenant could use the shared count up
(docs/security.md §3). Here each slot's user namespace is made by ``owner_uid(index)``, a host
uid nothing else runs as, so what a sandbox holds is counted under its own uid, against the
kernel's per-user limits, and touches no one else's count.

How a slot is made (about 10 ms, ahead of time for pooled slots): a process switched to the
owner uid unshares a user and a network namespace together (so the netns belongs to the new
user namespace: runc joins the user namespace first, and could not join a netns owned by the
initial one from inside it); the agent writes the uid/gid maps (the sandboxes' one mapped range)
and keeps both namespaces as bind mounts (``ip netns attach`` for the netns, a file under
``USERNS_DIR`` for the user namespace); the process exits. The bundle then names both paths.

runsc cannot join a user namespace by path (its gofer's ``setns`` fails), nor a netns owned by
another user namespace, so gVisor sandboxes keep slots made the plain way (``ip netns add``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from pathlib import Path

from warren.agent.proc import run
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE

USERNS_DIR = Path("/run/warren/userns")
NETNS_DIR = Path("/run/netns")  # where ``ip netns`` keeps named network namespaces
# Slot n's namespace is made by host uid OWNER_BASE + n: far from the sandboxes' mapped range
# (MAPPED_BASE…) and from any uid a distribution hands out.
OWNER_BASE = 2_000_000_000
_MAP = f"0 {MAPPED_BASE} {MAPPED_SIZE}\n"
_MS_BIND, _MNT_DETACH = 4096, 2
_libc = ctypes.CDLL(None, use_errno=True)


class SlotUsernsError(RuntimeError):
    pass


async def unavailable() -> str:
    """Why slots cannot have user namespaces of their own on this host ("" when they can): an
    unprivileged uid must be able to make a user namespace with a netns inside (Debian's
    ``kernel.unprivileged_userns_clone``, Ubuntu's AppArmor ``userns`` restriction)."""
    uid = str(OWNER_BASE - 1)
    res = await run(
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "unshare", "--user", "--net", "true",
        check=False,
    )  # fmt: skip
    return "" if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")


def owner_uid(index: int) -> int:
    return OWNER_BASE + index


def path(index: int) -> Path:
    return USERNS_DIR / f"s{index}"


async def make(index: int, netns: str) -> None:
    """Make slot ``index``'s user namespace and, inside it, the network namespace ``netns``
    (named as ``ip netns`` names them). On failure nothing of it is left."""
    uid = str(owner_uid(index))
    maker = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
        "unshare", "--user", "--net", "sh", "-c", "echo ready; read _",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert maker.stdin is not None and maker.stdout is not None and maker.stderr is not None
    try:
        try:
            ready = await asyncio.wait_for(maker.stdout.readline(), timeout=30)
        except TimeoutError:
            ready = b""
        if ready != b"ready\n":
            maker.kill()
            err = (await maker.stderr.read()).decode(errors="replace").strip()
            raise SlotUsernsError(f"slot {index}: could not make its namespaces: {err or 'no answer'}")
        proc = Path(f"/proc/{maker.pid}")
        (proc / "uid_map").write_text(_MAP)
        (proc / "gid_map").write_text(_MAP)
        await _attach_netns(proc / "ns" / "net", netns, maker.pid)
        _bind(proc / "ns" / "user", path(index))
    except BaseException:
        await remove(index)
        raise
    finally:
        maker.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            await maker.wait()


async def _attach_netns(source: Path, netns: str, pid: int) -> None:
    """``ip netns attach``, without its fork and exec once ``ip`` has made /run/netns a mount
    point of its own (it does so the first time; its namespaces' mounts then propagate)."""
    if os.path.ismount(NETNS_DIR):  # noqa: ASYNC240 (two stats)
        _bind(source, NETNS_DIR / netns)
    else:
        await run("ip", "netns", "attach", netns, str(pid))


def _bind(source: Path, target: Path) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    target.touch(mode=0o444 if target.parent == NETNS_DIR else 0o600)
    if _libc.mount(str(source).encode(), str(target).encode(), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        target.unlink(missing_ok=True)
        raise SlotUsernsError(f"bind-mounting {source} on {target}: {os.strerror(err)}")


async def remove(index: int) -> None:
    """Let go of slot ``index``'s user namespace (its netns goes with ``ip netns delete``); the
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
