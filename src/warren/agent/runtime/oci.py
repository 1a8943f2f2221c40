"""OCI containers run by `runc` or `crun` (the agent's default where crun works, choose_default).

Both keep their state under ``<data-dir>/<runtime>`` (``--root``), so `list` sees only
Warren's containers. Pause/resume write the cgroup v1 freezer directly: it is what
`runc pause` does, minus ~6 ms of fork+exec, and both runtimes read the freezer back when asked
for a container's state.

Every runtime command runs through the agent's OCI spawner (oci_spawner.py, oci_spawn.py): a
small stdlib process that forks and execs it, so the agent never forks itself (gRPC's fork
handlers: a ``preexec_fn`` child of the agent died with SIGSEGV, docs/benchmarks.md "Session
9") and a command's set-up needs no program of its own: the RLIMIT_NOFILE a sandbox inherits is
set in the child (no ``prlimit`` exec), and crun's mount namespace below is made there too.

crun refuses to run on this kernel's "hybrid" cgroup layout (v1 controllers plus a cgroup2
mount at /sys/fs/cgroup/unified). Each crun command therefore runs in a throwaway private mount
namespace with that mount moved out of the way, made by the spawner's child (unshare, make
private, move, exec); the agent itself stays in the host's mount namespace so the overlay mounts it makes are
visible to every later agent process. Before the spawner this was ``unshare … sh -c 'umount …;
exec crun …'``: three programs, ~5 ms of CPU a call (docs/benchmarks.md, "Session 12").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any

from warren.agent.proc import CommandError, Result, run, write_file
from warren.agent.runtime import cmds_cgroup, cmds_oom, guest_oom, oci_spawn, socket_memory
from warren.agent.runtime.base import ContainerState, ContainerStats, ContainerStatus, RuntimeError_
from warren.agent.runtime.bundle import CGROUP_PARENT, CMDS_FDS_ARG, NOFILE_ANNOTATION
from warren.agent.runtime.kernel_limits import lift_shared_kernel_limits, lift_socket_memory

log = logging.getLogger("warren.agent")

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd")
# Hierarchies a destroy removes the sandbox's cgroup from: on a hybrid host also the cgroup v2
# one (runc places the container there too; a container killed outside runc left it behind).
_HIERARCHIES = (*CONTROLLERS, "unified")
HYBRID_CGROUP2 = CGROUP_ROOT / "unified"  # what crun trips on, hidden from its commands
# A `run --detach` returns once the container's init runs; a runtime stuck longer is killed.
CREATE_TIMEOUT_S = 120.0
# Runtime processes that outlive the command that started them, re-parented to the agent (the
# subreaper of its descendants, teardown.set_subreaper), which never waited for them: `crun run
# --detach` daemonizes (its grandchild makes the container and exits after crun itself), and
# runsc's re-executed processes (comm "exe": a gVisor sandbox's gofer, its ptrace stubs, one per
# tenant process, when the sandbox ends) outlive their parent. Each stayed a zombie, holding a
# pid, for the agent's life: a tenant's create/delete loop used up the host's pids (32768 here:
# every fork on the host failing, other tenants' and the platform's). teardown.reap_zombies
# reaps them (reap_orphans) every second.
ORPHAN_NAMES = frozenset({"crun", "exe"})


def cgroup_dir(controller: str, sandbox_id: str) -> Path:
    return CGROUP_ROOT / controller / CGROUP_PARENT / sandbox_id


def _read_int(path: Path) -> int:
    with open(path) as f:
        return int(f.read().strip())


class OciRuntime:
    def __init__(self, name: str, state_root: Path) -> None:
        if name not in ("runc", "crun"):
            raise ValueError(f"unknown OCI runtime {name!r} (runc or crun)")
        self.name = name
        self.state_root = state_root
        state_root.mkdir(parents=True, exist_ok=True)
        hybrid = os.path.ismount(HYBRID_CGROUP2)
        self._hide = str(HYBRID_CGROUP2) if name == "crun" and hybrid else None
        repair_dev_null()
        lift_shared_kernel_limits()  # host-wide, shared by every sandbox (kernel_limits.py)
        if socket_memory.available():  # per-sandbox bounds first, then the host's room for them
            lift_socket_memory(socket_memory.MAX_SHARE)

    def _argv(self, *args: str) -> list[str]:
        return [self.name, "--root", str(self.state_root), *args]

    async def _run(self, *args: str, check: bool = True) -> Result:
        return await oci_spawn.run(*self._argv(*args), check=check, hide=self._hide)

    async def create(self, sandbox_id: str, bundle: Path) -> int:
        pid_file = bundle / "init.pid"
        log_file = bundle / "runtime.log"
        pid_file.unlink(missing_ok=True)
        # stdio is an unnamed file on the sandbox's own 64 KiB run tmpfs: the container's init
        # inherits it (a pipe would keep us waiting for EOF until the container exits), and
        # crun chowns it to the sandbox's root, which it did to the host's /dev/null (a chmod
        # inside then reached every process of the host and of every sandbox). Errors land in
        # --log.
        # --no-new-keyring: a fresh session keyring per container would count against the key
        # quota of the one mapped uid every sandbox shares (200 keys) and fail the 200th create;
        # the inherited keyring is unreachable anyway (seccomp denies keyctl/add_key).
        config = json.loads((bundle / "config.json").read_bytes())
        # A guest that moves each command into the cmds cgroup gets its cgroup.procs files
        # (cmds_cgroup.py), made before the container: the runtime takes the cgroup as it is.
        passed = _cmds_procs(sandbox_id, config)
        cmds_oom.WATCH.arm(sandbox_id)  # its OOM events watched from the start (cmds_oom.py)
        _bound_sockets(sandbox_id, config)  # before any of its processes runs (socket_memory.py)
        keep = [f"--preserve-fds={len(passed)}"] if passed else []
        argv = self._argv("--log", str(log_file), "run", "--detach", "--no-new-keyring", *keep,
                          "--bundle", str(bundle), "--pid-file", str(pid_file), sandbox_id)  # fmt: skip
        # The sandbox inherits the runtime's own RLIMIT_NOFILE (bundle.NOFILE_ANNOTATION).
        nofile = _nofile_outside(config)
        try:
            res = await oci_spawn.run(*argv, check=False, capture=False, timeout=CREATE_TIMEOUT_S,
                                      hide=self._hide, nofile=nofile, stdio=str(bundle / "run"),
                                      passed=passed)  # fmt: skip
            rc, why = res.returncode, res.stderr
        except CommandError as e:  # timed out, or the spawner ended
            rc, why = e.returncode, e.stderr
        if rc != 0:
            detail = why
            with contextlib.suppress(OSError):
                detail = f"{why}\n{log_file.read_text()[-1500:].strip()}".strip()
            await self.destroy(sandbox_id)
            raise RuntimeError_(f"{self.name} run failed (exit {rc}): {detail}")
        pid = int(pid_file.read_text().strip())
        guest_oom.pin(pid)  # no tenant process may lower its OOM score to the guest's
        return pid

    async def destroy(self, sandbox_id: str) -> None:
        # A frozen task cannot die: thaw first (a no-op when not frozen).
        freezer = cgroup_dir("freezer", sandbox_id) / "freezer.state"
        if freezer.exists():
            with contextlib.suppress(OSError):
                write_file(str(freezer), "THAWED")
        res = await self._run("delete", "--force", sandbox_id, check=False)
        gone = "not exist" in res.stderr
        if res.returncode != 0 and not gone and await self.state(sandbox_id) is not None:
            raise RuntimeError_(f"{self.name} delete {sandbox_id}: {res.stderr.strip()}")
        await self._remove_cgroups(sandbox_id)

    async def _remove_cgroups(self, sandbox_id: str) -> None:
        await remove_cgroups(sandbox_id)

    async def pause(self, sandbox_id: str) -> None:
        await freeze(sandbox_id)

    async def resume(self, sandbox_id: str) -> None:
        await thaw(sandbox_id)

    async def state(self, sandbox_id: str) -> ContainerState | None:
        try:
            res = await self._run("state", sandbox_id)
        except CommandError:
            return None
        return parse_state(json.loads(res.stdout))

    async def list(self) -> list[ContainerState]:
        res = await self._run("list", "--format", "json", check=False)
        if res.returncode != 0 or not res.stdout.strip() or res.stdout.strip() == "null":
            # An empty state root: runc prints "null", crun errors when --root is empty.
            return [
                st
                for d in sorted(self.state_root.iterdir())
                if d.is_dir() and (st := await self.state(d.name)) is not None
            ]
        return [parse_state(item) for item in json.loads(res.stdout)]

    def frozen(self, sandbox_id: str) -> bool | None:
        try:
            return (cgroup_dir("freezer", sandbox_id) / "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return None

    def stats(self, sandbox_id: str) -> ContainerStats | None:
        return cgroup_stats(sandbox_id)


# Shared with the gVisor runtime (gvisor.py): runsc places its sandbox in the same cgroups.


def repair_dev_null(path: str = "/dev/null") -> bool:
    """The host's null device back to root:root 0666 when an older agent left it another owner:
    crun chowned it to a sandbox's root, runsc to nobody (the stdio they were given, session 13),
    and its owner could chmod it for every process of the host and of every sandbox. True when
    it was repaired; a path that is not the null device is left alone (and logged)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
            log.error("event=dev_null_not_the_null_device path=%s mode=%o", path, st.st_mode)
            return False
        if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o666):
            return False
        os.chown(path, 0, 0, follow_symlinks=False)
        os.chmod(path, 0o666, follow_symlinks=False)  # noqa: S103 (what the null device is)
    except OSError as e:  # not root (a unit test's runtime): nothing to repair with
        log.warning("event=dev_null_unchecked error=%s", e)
        return False
    was = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    log.warning("event=dev_null_repaired uid=%d gid=%d mode=%o", *was)
    return True


def _child_pids() -> list[int]:
    """The agent's children: orphans are re-parented to its main thread (the thread group's
    leader), whose ``children`` file lists them; without CONFIG_PROC_CHILDREN, a scan of /proc."""
    me = os.getpid()
    with contextlib.suppress(OSError, ValueError):
        return [int(p) for p in Path(f"/proc/{me}/task/{me}/children").read_text().split()]
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat_file.read_text().rsplit(")", 1)[1].split()[1]) == me:
                out.append(int(stat_file.parent.name))
    return out


# Zombies of ORPHAN_NAMES the last pass found: reaped if still there at the next.
_orphans_seen: set[int] = set()


def reap_orphans() -> int:
    """Reap the agent's zombie children named in :data:`ORPHAN_NAMES` that were zombies at the
    previous call already (a second apart); how many. A child the agent waits for itself (an
    asyncio subprocess: its watcher is blocked in ``waitpid``) is reaped the moment it ends,
    so one still there a pass later is waited for by nobody."""
    global _orphans_seen
    found: set[int] = set()
    reaped = 0
    for pid in _child_pids():
        try:
            comm, _, rest = Path(f"/proc/{pid}/stat").read_text().partition("(")[2].rpartition(")")
            if rest.split()[0] != "Z" or comm not in ORPHAN_NAMES:
                continue
            if pid not in _orphans_seen:
                found.add(pid)
            elif os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
        except (OSError, IndexError):  # gone meanwhile, or reaped by its own waiter (gvisor._reap)
            continue
    _orphans_seen = found
    return reaped


def _nofile_outside(config: dict[str, Any]) -> int | None:
    """The RLIMIT_NOFILE to start the runtime under (bundle.NOFILE_ANNOTATION), if any."""
    value = (config.get("annotations") or {}).get(NOFILE_ANNOTATION)
    return int(value) if value else None


def _cmds_procs(sandbox_id: str, config: dict[str, Any]) -> list[str]:
    """When the bundle's guest takes the cmds descriptors: ``cmds`` made with the bundle's
    limits, and its ``cgroup.procs`` files (for fds 3, 4); else nothing."""
    if CMDS_FDS_ARG not in config["process"]["args"]:
        return []
    res = config["linux"]["resources"]
    try:
        cmds_cgroup.prepare(sandbox_id, int(res["memory"]["limit"]), int(res["pids"]["limit"]))
    except OSError as e:
        raise RuntimeError_(f"cmds cgroup of {sandbox_id}: {e}") from e
    return cmds_cgroup.procs_files(sandbox_id)


def _bound_sockets(sandbox_id: str, config: dict[str, Any]) -> None:
    """The sandbox's socket memory bound on its memory cgroup and ``cmds`` (socket_memory.py)."""
    limit = ((config["linux"].get("resources") or {}).get("memory") or {}).get("limit")
    if not limit:
        return  # no memory limit (no bundle of this agent's): nothing to size a bound by
    try:
        socket_memory.limit_new(sandbox_id, int(limit))
    except OSError as e:
        raise RuntimeError_(f"socket memory bound of {sandbox_id}: {e}") from e


async def remove_cgroups(sandbox_id: str) -> None:
    """Remove the sandbox's cgroup from every hierarchy (its ``cmds`` first), killing what is
    left in it."""
    cmds_oom.WATCH.disarm(sandbox_id)
    for ctrl in _HIERARCHIES:
        d = cgroup_dir(ctrl, sandbox_id)
        if not d.exists():
            continue
        for _ in range(50):
            try:
                if ctrl in cmds_cgroup.HIERARCHIES:
                    cmds_cgroup.remove(sandbox_id, ctrl)
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                # Processes still exiting: kill whatever is left and retry briefly.
                try:
                    for pid in (d / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), 9)
                except OSError:
                    pass
                await asyncio.sleep(0.02)
        else:
            raise RuntimeError_(f"cannot remove cgroup {d}")


async def freeze(sandbox_id: str) -> None:
    state = cgroup_dir("freezer", sandbox_id) / "freezer.state"
    try:
        write_file(str(state), "FROZEN")
        # v1 freezing is asynchronous (FREEZING → FROZEN), usually within a millisecond:
        # poll finely rather than sleeping a fixed 5 ms like the runtimes do.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            if state.read_text().strip() == "FROZEN":
                return
            await asyncio.sleep(0.0005)
    except OSError as e:
        raise RuntimeError_(f"freeze {sandbox_id}: {e}") from e
    write_file(str(state), "THAWED")
    raise RuntimeError_(f"freeze {sandbox_id}: processes did not freeze within 2 s")


async def thaw(sandbox_id: str) -> None:
    state = cgroup_dir("freezer", sandbox_id) / "freezer.state"
    try:
        write_file(str(state), "THAWED")
    except OSError as e:
        raise RuntimeError_(f"thaw {sandbox_id}: {e}") from e


async def read_state(argv: list[str], env: dict[str, str] | None = None) -> ContainerState | None:
    """What ``<runtime> state <id>`` (``argv``, run with ``env``) says, None when the runtime
    knows no such container (runc, crun and runsc all answer in the OCI state format)."""
    try:
        res = await run(*argv, env=env)
    except CommandError:
        return None
    return parse_state(json.loads(res.stdout))


def parse_state(d: dict[str, object]) -> ContainerState:
    raw = str(d.get("status", "stopped"))
    try:
        status = ContainerStatus(raw)
    except ValueError:
        status = ContainerStatus.STOPPED
    pid = d.get("pid") or 0
    return ContainerState(id=str(d["id"]), status=status, pid=int(pid) if isinstance(pid, int | str) else 0)


def cgroup_stats(sandbox_id: str) -> ContainerStats | None:
    try:
        cpu = _read_int(cgroup_dir("cpuacct", sandbox_id) / "cpuacct.usage")
        mem_dir = cgroup_dir("memory", sandbox_id)
        usage = _read_int(mem_dir / "memory.usage_in_bytes")
        inactive = 0
        with open(mem_dir / "memory.stat") as f:
            for line in f:
                if line.startswith("total_inactive_file "):
                    inactive = int(line.split()[1])
                    break
    except (OSError, ValueError):
        return None
    return ContainerStats(cpu_ns=cpu, mem_bytes=max(0, usage - inactive))
