"""gVisor sandboxes: the same OCI bundle run by ``runsc`` (a user-space kernel) instead of runc.

What differs from runc (docs/agent.md, "gVisor"; docs/security.md, "Tiers"):

* **Network.** runsc's own network stack (netstack) takes over the sandbox's netns: it copies
  ``eth0``'s address and routes and removes them from the host side, so the veth, the egress
  rules and NAT are those of a runc sandbox. This runsc version (20221219) refuses to start
  when ``/proc/sys/net/core/rmem_default`` exists in the sandbox's netns (its test for "the
  host's netns"), which on Linux ≥ 6.x it does in every netns. Each runsc call that starts a
  sandbox (run, restore) therefore runs in a throwaway private mount namespace where
  ``/proc/sys/net`` is covered by an empty tmpfs, plus a second, pristine procfs mount
  elsewhere: the gofer mounts a fresh proc inside its user namespace, which the kernel allows
  only while some proc mount is fully visible.
* **Guest transport.** A unix socket bound inside the sandbox is in gVisor's kernel, not on the
  host, and a host-backed one (``--host-uds``) makes the sandbox impossible to checkpoint. The
  guest therefore also listens on TCP :data:`GUEST_PORT` behind a per-sandbox secret
  (guest_agent/tcp.py), reached over the veth.
* **Pause to disk.** :meth:`GvisorRuntime.checkpoint` writes the sandbox's kernel and memory to
  ``<sandbox>/checkpoint/`` and ends its processes; :meth:`GvisorRuntime.restore` brings it
  back. A checkpointed sandbox has no runsc container and no cgroup; :meth:`state` reports it
  ``paused`` with pid 0 while its image is complete.
* Limits: runsc places the sandbox in the bundle's cgroups (``/warren/<id>``), so memory, CPU
  and pids limits, the freezer ("memory" pause) and the metrics are those of a runc sandbox.
"""

# ruff: noqa: ASYNC240 - small local files (markers, a pid file), as in oci.py

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from warren import footprint
from warren.agent.proc import run
from warren.agent.runtime.base import ContainerState, ContainerStats, ContainerStatus, RuntimeError_
from warren.agent.runtime.gvisor_memwake import MemoryWake, wake_pipe
from warren.agent.runtime.oci import cgroup_dir, cgroup_stats, parse_state, read_state, remove_cgroups, thaw
from warren.agent.runtime.oci_spawner import runtime_env

log = logging.getLogger("warren.agent")

NAME = "gvisor"
RUNSC = "runsc"
GUEST_PORT = 49982  # the guest's TCP listener inside every gVisor sandbox
CHECKPOINT_DIR = "checkpoint"  # <sandbox dir>/checkpoint/: the image of a sandbox paused to disk
IMAGE_FILE = "checkpoint.img"
CHILDREN_FILE = "runsc.pids"  # the sandbox's runsc processes (sentry, gofer), to reap them
COMPLETE = "complete"  # written once an image is whole (runsc leaves a stub when a save fails)
# Memory: the host cgroup holds the tenant's limit plus this, for the sentry and gofer themselves
# and for the guest's watchdog to act in (guest_agent/memwatch.py), which kills inside at the
# tenant's limit, read from this file in the sandbox's run dir (/run/warren inside).
MEMORY_HEADROOM = footprint.GVISOR_HEADROOM  # 96 MiB; a host's capacity counts it (warren/footprint.py)
MEMORY_LIMIT_FILE = "memory-limit"
_TENANT_LIMIT = "dev.warren.memory-limit"  # the bundle's annotation: the tenant's own limit
# Where the platform chosen at the first agent start of this boot is kept (see choose_platform).
PLATFORM_CACHE = Path("/run/warren/gvisor-platform")
KVM_PROBE_TIMEOUT = 5.0
# The mount namespace trick of the module docstring, as a shell prefix to `exec runsc …`.
_PROC_DIR = "/run/warren/gvisor-proc"
_NETNS_FIX = (
    f"mkdir -p {_PROC_DIR} && mount -t proc proc {_PROC_DIR} && "
    'mount -t tmpfs -o size=4k,mode=555 none /proc/sys/net && exec "$@"'
)


def available() -> bool:
    """Whether ``runsc`` is installed (whether it works is what the first create finds out)."""
    return shutil.which(RUNSC) is not None


def _wrap(argv: list[str]) -> list[str]:
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", _NETNS_FIX, "sh", *argv]


async def _probe_kvm(scratch: Path) -> bool:
    """``runsc --platform=kvm do true``: on a host whose /dev/kvm is there but cannot run a
    guest (nested KVM), runsc hangs, so the probe is bounded and killed."""
    scratch.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *_wrap([RUNSC, "--root", str(scratch), "--platform=kvm", "--network=none", "do", "/bin/true"]),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, start_new_session=True, env=runtime_env(),
    )  # fmt: skip
    try:
        async with asyncio.timeout(KVM_PROBE_TIMEOUT):
            return await proc.wait() == 0
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return False
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


async def choose_platform(setting: str, scratch: Path) -> str:
    """``ptrace`` or ``kvm``: the setting when it names one, else (``auto``) kvm when
    ``/dev/kvm`` opens and runs a sandbox, ptrace otherwise. The probe's answer is kept for the
    boot (``/run`` is a tmpfs), so only the first agent start pays for it."""
    if setting in ("ptrace", "kvm"):
        return setting
    with contextlib.suppress(OSError, ValueError):
        cached = PLATFORM_CACHE.read_text().strip()
        if cached in ("ptrace", "kvm"):
            return cached
    platform = "ptrace"
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        pass
    else:
        os.close(fd)
        if await _probe_kvm(scratch):
            platform = "kvm"
    with contextlib.suppress(OSError):
        PLATFORM_CACHE.parent.mkdir(parents=True, exist_ok=True)
        PLATFORM_CACHE.write_text(platform)
    return platform


def _slot_of_netns(netns_path: str) -> int | None:
    name = os.path.basename(netns_path)
    prefix = "warren-s"
    return int(name[len(prefix) :]) if name.startswith(prefix) and name[len(prefix) :].isdigit() else None


class GvisorRuntime:
    """``runsc`` with its state under ``state_root``; sandboxes' bundles in ``sandboxes_dir``."""

    name = NAME

    def __init__(self, state_root: Path, sandboxes_dir: Path, platform: str = "ptrace") -> None:
        self.state_root = state_root
        self.sandboxes_dir = sandboxes_dir
        self.platform = platform
        # After a checkpoint, the container's delete and the netns's address run here, off the
        # pause's time; whatever touches the sandbox next waits for them (_settled).
        self._settling: dict[str, asyncio.Task[None]] = {}
        self._addressed: set[str] = set()  # settled, with the address back in their netns
        self.memwake = MemoryWake()  # wakes each guest's memory watch (gvisor_memwake.py)
        self._rearm_tried: set[str] = set()
        state_root.mkdir(parents=True, exist_ok=True)

    def _argv(self, *args: str, log_file: Path | None = None, starts: bool = False) -> list[str]:
        """Every runsc command runs with ``runtime_env()`` (PATH alone, as runc and crun): nothing
        of the agent's environment (its settings, an EnvironmentFile's secrets, NOTIFY_SOCKET).
        ``starts``: a verb that starts a sandbox (run, restore) needs the mount namespace of
        the module docstring; the others (exec, checkpoint, delete, state, …) set up no network
        and no gofer, and skip its ~15 ms (unshare, sh, two mounts)."""
        base = [RUNSC, "--root", str(self.state_root), f"--platform={self.platform}"]
        if log_file is not None:
            base += ["--log", str(log_file)]
        return _wrap([*base, *args]) if starts else [*base, *args]

    def image_dir(self, sandbox_id: str) -> Path:
        return self.sandboxes_dir / sandbox_id / CHECKPOINT_DIR

    async def _start(self, sandbox_id: str, bundle: Path, *extra: str) -> int:
        """``runsc run`` (or ``restore`` with ``extra``) detached; the sandbox process's pid."""
        pid_file = bundle / "init.pid"
        log_file = bundle / "runtime.log"
        pid_file.unlink(missing_ok=True)
        await self._settled(sandbox_id)
        if self._state_file(sandbox_id).exists():  # a crash between checkpoint and delete
            await self._delete(sandbox_id)
        limit_memory(bundle)
        verb = ["restore", *extra] if extra else ["run"]
        argv = self._argv(*verb, "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file),
                          sandbox_id, log_file=log_file, starts=True)  # fmt: skip
        proc, wake_w, stdio = await _spawn(argv, bundle)
        try:
            rc = await proc.wait()
        except asyncio.CancelledError:
            # The caller's undo deletes the container; runsc must not go on creating it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            self._save_children(bundle, sandbox_id)
            _close(wake_w, stdio)
            raise
        if rc != 0:
            _close(wake_w, stdio)
            detail = _log_errors(log_file) or "(no log)"
            self._save_children(bundle, sandbox_id)
            with contextlib.suppress(Exception):
                await self._delete(sandbox_id)
            raise RuntimeError_(f"runsc {verb[0]} failed (exit {proc.returncode}): {detail}")
        self.memwake.arm(sandbox_id, wake_w, stdio)
        pid = int(pid_file.read_text().strip())
        self._save_children(bundle, sandbox_id)
        return pid

    def _state_file(self, sandbox_id: str) -> Path:
        """runsc's own record of the container (its sandbox and gofer pids among the rest)."""
        return self.state_root / f"{sandbox_id}_sandbox:{sandbox_id}.state"

    def _save_children(self, bundle: Path, sandbox_id: str) -> None:
        """The sandbox's and gofer's pids, from runsc's state file (else by a scan of /proc)."""
        try:
            state = json.loads(self._state_file(sandbox_id).read_text())
            pids = [int(state["sandbox"]["pid"]), int(state["goferPid"])]
        except (OSError, ValueError, KeyError, TypeError):
            _save_children(bundle / CHILDREN_FILE, sandbox_id)
            return
        with contextlib.suppress(OSError):
            (bundle / CHILDREN_FILE).write_text(" ".join(str(p) for p in pids if p > 0))

    async def create(self, sandbox_id: str, bundle: Path) -> int:
        return await self._start(sandbox_id, bundle)

    async def _delete(self, sandbox_id: str) -> None:
        # runsc waits (5 s) for its sandbox's processes to be gone; they are the agent's
        # children (its subreaper), so they stay zombies unless reaped meanwhile.
        self.memwake.disarm(sandbox_id)
        reaper = asyncio.create_task(_reap(self.sandboxes_dir / sandbox_id / CHILDREN_FILE))
        try:
            res = await run(*self._argv("delete", "--force", sandbox_id), check=False, env=runtime_env())
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        gone = "does not exist" in res.stderr or "not exist" in res.stderr
        if res.returncode != 0 and not gone and await self._runsc_state(sandbox_id) is not None:
            raise RuntimeError_(f"runsc delete {sandbox_id}: {res.stderr.strip()[-500:]}")
        await remove_cgroups(sandbox_id)

    async def destroy(self, sandbox_id: str) -> None:
        with contextlib.suppress(Exception):  # _delete below tries again
            await self._settled(sandbox_id)
        self._addressed.discard(sandbox_id)
        self._rearm_tried.discard(sandbox_id)
        # A frozen sandbox cannot die: thaw first (a no-op when not frozen).
        if (cgroup_dir("freezer", sandbox_id) / "freezer.state").exists():
            with contextlib.suppress(RuntimeError_):
                await thaw(sandbox_id)
        await self._delete(sandbox_id)
        shutil.rmtree(self.image_dir(sandbox_id), ignore_errors=True)

    async def pause(self, sandbox_id: str) -> None:
        """``runsc pause``: gVisor's kernel stops every task (memory stays resident): the
        "memory" pause. Not the cgroup freezer: on the ptrace platform the sentry's traced
        stub processes never reach FROZEN."""
        res = await run(*self._argv("pause", sandbox_id), check=False, env=runtime_env())
        if res.returncode != 0:
            raise RuntimeError_(f"runsc pause {sandbox_id}: {_first_line(res.stderr)}")

    async def resume(self, sandbox_id: str) -> None:
        res = await run(*self._argv("resume", sandbox_id), check=False, env=runtime_env())
        if res.returncode != 0:
            raise RuntimeError_(f"runsc resume {sandbox_id}: {_first_line(res.stderr)}")

    async def _runsc_state(self, sandbox_id: str) -> ContainerState | None:
        return await read_state(self._argv("state", sandbox_id), runtime_env())

    async def exec_output(self, sandbox_id: str, argv: list[str], limit: int, timeout: float) -> bytes:  # noqa: ASYNC109
        """``runsc exec``: a command in the sandbox, beside its guest (no connection to it); at
        most ``limit`` bytes of its stdout (the command is the tenant's: it may print without
        end), within ``timeout`` seconds (then ``RuntimeError_``)."""
        stdio = _stdio_file(self.sandboxes_dir / sandbox_id)  # runsc chowns it too, as at _start
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv("exec", sandbox_id, *argv), stdin=stdio,
                stdout=asyncio.subprocess.PIPE, stderr=stdio, start_new_session=True, env=runtime_env(),
            )  # fmt: skip
        finally:
            os.close(stdio)
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                out = await proc.stdout.read(limit)
                await proc.wait()
        except TimeoutError as e:
            raise RuntimeError_(f"runsc exec in {sandbox_id} did not finish in {timeout:.0f} s") from e
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())
        if proc.returncode != 0:
            raise RuntimeError_(f"runsc exec in {sandbox_id} failed (exit {proc.returncode})")
        return out

    def checkpointed(self, sandbox_id: str) -> bool:
        return (self.image_dir(sandbox_id) / COMPLETE).exists()

    async def state(self, sandbox_id: str) -> ContainerState | None:
        st = await self._runsc_state(sandbox_id)
        if (st is None or st.status == ContainerStatus.STOPPED) and self.checkpointed(sandbox_id):
            return ContainerState(id=sandbox_id, status=ContainerStatus.PAUSED, pid=0)
        if st is not None and st.status in (ContainerStatus.RUNNING, ContainerStatus.PAUSED):
            self._rearm(sandbox_id)
        return st

    def _rearm(self, sandbox_id: str) -> None:
        """A sandbox an earlier agent started (readopt asks its state): its wake pipe and stdio
        file again, from the sandbox process's descriptors. Once per sandbox and agent. Not
        found: the earlier agent's hold at the limit is handed back (no one watches it now)."""
        if sandbox_id in self._rearm_tried or sandbox_id in self.memwake.armed():
            return
        self._rearm_tried.add(sandbox_id)
        bundle = self.sandboxes_dir / sandbox_id
        found = None
        with contextlib.suppress(OSError, ValueError, IndexError):
            found = _held_stdio(int((bundle / CHILDREN_FILE).read_text().split()[0]), bundle / "run")
        if found is None:
            log.warning("event=memwake_unarmed sandbox_id=%s error=its wake pipe was not found", sandbox_id)
            self.memwake.release(sandbox_id)
            return
        if self.memwake.arm(sandbox_id, *found):
            log.info("event=memwake_rearmed sandbox_id=%s", sandbox_id)

    async def list(self) -> list[ContainerState]:
        res = await run(*self._argv("list", "--format", "json"), check=False, env=runtime_env())
        found: dict[str, ContainerState] = {}
        if res.returncode == 0 and res.stdout.strip() not in ("", "null"):
            found = {st.id: st for st in map(parse_state, json.loads(res.stdout))}
        if self.sandboxes_dir.is_dir():
            for d in self.sandboxes_dir.iterdir():
                stale = d.name in found and found[d.name].status == ContainerStatus.STOPPED
                if (d.name not in found or stale) and self.checkpointed(d.name):
                    found[d.name] = ContainerState(id=d.name, status=ContainerStatus.PAUSED, pid=0)
        return list(found.values())

    def stats(self, sandbox_id: str) -> ContainerStats | None:
        return cgroup_stats(sandbox_id)

    # ------------------------------------------------------------------ checkpoint / restore

    async def checkpoint(self, sandbox_id: str) -> int:
        """Save the sandbox to its image dir and end it; the image's size in bytes. Its container
        and cgroups are removed in the background (_settle), which a restore or destroy awaits.
        On failure this runsc version has ended the sandbox all the same (its sentry exits
        whether the save worked or not): the caller must treat it as lost."""
        image = self.image_dir(sandbox_id)
        shutil.rmtree(image, ignore_errors=True)
        image.mkdir(mode=0o700)
        self.memwake.disarm(sandbox_id)  # its processes end; a restore arms anew
        t0 = time.monotonic()
        argv = self._argv("checkpoint", "--image-path", str(image), sandbox_id)
        res = await run(*argv, check=False, env=runtime_env())
        if res.returncode != 0:
            shutil.rmtree(image, ignore_errors=True)
            raise RuntimeError_(f"runsc checkpoint failed: {_first_line(res.stderr)}")
        (image / COMPLETE).write_text("")
        # Its processes have ended; the cgroups go now (they hold the charge of the image's page
        # cache until removed), runsc's delete of the container in the background.
        await remove_cgroups(sandbox_id)
        size = image_size(image)
        log.info(
            "event=sandbox_checkpointed sandbox_id=%s checkpoint_ms=%.0f bytes=%d",
            sandbox_id, (time.monotonic() - t0) * 1000, size,
        )  # fmt: skip
        self._settling[sandbox_id] = asyncio.create_task(self._settle(sandbox_id))
        return size

    async def _settle(self, sandbox_id: str) -> None:
        """After a checkpoint (its processes have ended): delete the container and give the
        netns back its address, ready for a restore."""
        t0 = time.monotonic()
        await self._delete(sandbox_id)
        bundle = self.sandboxes_dir / sandbox_id
        if (bundle / "config.json").exists():
            await self._readdress(bundle)
            self._addressed.add(sandbox_id)
        log.info("event=checkpoint_settled sandbox_id=%s ms=%.0f", sandbox_id, (time.monotonic() - t0) * 1000)

    async def _settled(self, sandbox_id: str) -> None:
        """Wait for a checkpoint's settling; when it failed, delete here, in the caller's time."""
        task = self._settling.pop(sandbox_id, None)
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except Exception as e:
            log.warning("event=checkpoint_settle_failed sandbox_id=%s error=%s", sandbox_id, e)
            await self._delete(sandbox_id)

    async def restore(self, sandbox_id: str, bundle: Path, image: Path | None = None) -> int:
        """Start the sandbox from ``image`` (default: its own checkpoint); its pid. The netns gets
        back the address runsc took from it at the first start. Its own image is removed once
        restored; another's (a snapshot's) is only read."""
        own = image is None
        image = image or self.image_dir(sandbox_id)
        if not (image / COMPLETE).exists():
            raise RuntimeError_(f"no complete checkpoint image for {sandbox_id}")
        await self._settled(sandbox_id)
        if sandbox_id in self._addressed:
            self._addressed.discard(sandbox_id)
        else:
            await self._readdress(bundle)
        pid = await self._start(sandbox_id, bundle, "--image-path", str(image))
        if own:
            shutil.rmtree(image, ignore_errors=True)
        return pid

    @staticmethod
    async def _readdress(bundle: Path) -> None:
        """runsc moved eth0's address into its own stack; a restore copies it from the netns
        again, so put it back (idempotent)."""
        from warren.agent.network import Slot

        spec = json.loads((bundle / "config.json").read_text())
        paths = [str(n.get("path", "")) for n in spec["linux"]["namespaces"] if n.get("type") == "network"]
        index = _slot_of_netns(paths[0]) if paths else None
        if index is None:
            return
        slot = Slot(index)
        cmds = (
            f"addr replace {slot.sandbox_ip}/30 dev eth0\nlink set eth0 up\n"
            f"route replace default via {slot.gateway}\n"
        )
        await run("ip", "-n", slot.netns, "-batch", "-", input=cmds.encode())


async def _spawn(argv: list[str], bundle: Path) -> tuple[asyncio.subprocess.Process, int, int]:
    """``runsc run``/``restore``, started; with the wake pipe's write end and the stdio file,
    both kept for :class:`MemoryWake` (which drains the guest's stderr from that file)."""
    # stdio: an unnamed file on the sandbox's own run tmpfs. The sandbox process inherits
    # it (a pipe would keep us waiting for an EOF that comes when the sandbox ends), and
    # runsc chowns it to its own user: /dev/null here made the host's null device nobody's,
    # to chmod for any nobody process (session 13). Errors are in --log.
    # stdin: the memory watch's wake pipe (gvisor_memwake.py), armed once the cgroup exists.
    stdio = _stdio_file(bundle)
    try:
        wake_in, wake_w = wake_pipe()
    except OSError:
        os.close(stdio)
        raise
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=wake_in, stdout=stdio, stderr=stdio, start_new_session=True, env=runtime_env(),
        )  # fmt: skip
    except BaseException:
        _close(wake_w, stdio)
        raise
    finally:
        os.close(wake_in)
    return proc, wake_w, stdio


def _held_stdio(pid: int, run_dir: Path) -> tuple[int, int] | None:
    """The wake pipe (the one pipe open read-write) and the stdio file (the first unnamed file
    of ``run_dir``) the sandbox process ``pid`` holds, reopened: (writer, stdio)."""
    pipes: list[str] = []
    files: list[tuple[int, str]] = []
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return None
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            link = os.readlink(f"{fd_dir}/{name}")
            if link.startswith("pipe:"):
                info = Path(f"/proc/{pid}/fdinfo/{name}").read_text()
                flags = int(next(ln for ln in info.splitlines() if ln.startswith("flags:")).split()[1], 8)
                if flags & os.O_ACCMODE == os.O_RDWR:
                    pipes.append(f"{fd_dir}/{name}")
            elif link.startswith(f"{run_dir}/") and link.endswith(" (deleted)"):
                files.append((int(name), f"{fd_dir}/{name}"))
    if len(pipes) != 1 or not files:
        return None
    try:
        writer = os.open(pipes[0], os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stdio = os.open(min(files)[1], os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        stdio = -1
    return writer, stdio


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _stdio_file(bundle: Path) -> int:
    """A runsc command's stdio: an unnamed file on the sandbox's 64 KiB run tmpfs, never the
    host's /dev/null, which runsc would chown to nobody (session 13), nor a file on the host's
    disk (what a ``runsc exec``'d tenant process writes to its stderr lands in it)."""
    try:
        return os.open(bundle / "run", os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:  # sandbox root filled its run tmpfs, say: its own sandbox's failure
        raise RuntimeError_(f"no stdio file for runsc in {bundle / 'run'}: {e}") from e


def limit_memory(bundle: Path) -> None:
    """The host cgroup's limit becomes the tenant's plus :data:`MEMORY_HEADROOM` (gVisor's
    kernel has no OOM killer: at the cgroup's limit the host's would end the whole sandbox), and
    the tenant's goes to the guest, which enforces it inside. Idempotent: the tenant's limit is
    kept in an annotation, so a restore of the same bundle adds the headroom once."""
    cfg_path = bundle / "config.json"
    spec = json.loads(cfg_path.read_text())
    memory = spec.get("linux", {}).get("resources", {}).get("memory")
    annotations = spec.setdefault("annotations", {})
    if not memory or not memory.get("limit"):
        return
    tenant = int(annotations.get(_TENANT_LIMIT) or memory["limit"])
    run_dir = next(
        (Path(m["source"]) for m in spec.get("mounts", []) if m.get("destination") == "/run/warren"), None
    )
    if run_dir is not None:
        tmp = run_dir / f".{MEMORY_LIMIT_FILE}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
        with os.fdopen(fd, "w") as f:
            f.write(str(tenant))
        os.replace(tmp, run_dir / MEMORY_LIMIT_FILE)
    if annotations.get(_TENANT_LIMIT) == str(tenant):
        return
    annotations[_TENANT_LIMIT] = str(tenant)
    memory["limit"] = tenant + MEMORY_HEADROOM
    if "swap" in memory:
        memory["swap"] = tenant + MEMORY_HEADROOM
    tmp = bundle / "config.json.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    os.replace(tmp, cfg_path)


def _save_children(path: Path, sandbox_id: str) -> None:
    """The pids of this sandbox's runsc processes that are the agent's children (re-parented
    to it as subreaper when ``runsc run`` exits): the gofer and the sandbox itself."""
    me, pids = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == me and sandbox_id.encode() in (stat.parent / "cmdline").read_bytes():
                pids.append(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue
    with contextlib.suppress(OSError):
        path.write_text(" ".join(pids))


async def _reap(path: Path) -> None:
    """Reap the recorded processes as they exit (not children after an agent restart: init's)."""
    try:
        pids = {int(p) for p in path.read_text().split()}
    except (OSError, ValueError):
        return
    while pids:
        for pid in list(pids):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never blocks
            except ChildProcessError:
                done = pid
            if done:
                pids.discard(pid)
        await asyncio.sleep(0.02)


def image_size(image: Path) -> int:
    return sum(p.stat().st_size for p in image.iterdir() if p.is_file())


def _first_line(stderr: str) -> str:
    """runsc prints the object it could not save (a whole Go struct) and a stack after the
    reason: keep ``<object type>: <reason>``."""
    text = stderr.strip().split("\ngoroutine", 1)[0]
    if "encoding error at object " in text and "}: " in text:
        head = text.split("encoding error at object ", 1)[1]
        return f"cannot save {head.split('{', 1)[0]}: {text.rsplit('}: ', 1)[1][:300]}".strip(" :")
    return text.split("\n")[0][:500]


def _log_errors(log_file: Path) -> str:
    """The distinct error messages of runsc's log (JSON lines: the gofer's and the sandbox's
    reasons are there, the command's own stderr only says the sandbox did not start)."""
    msgs: list[str] = []
    with contextlib.suppress(OSError):
        for chunk in log_file.read_text()[-20000:].replace("}{", "}\n{").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                msg = json.loads(chunk).get("msg", "")
                if msg and msg not in msgs:
                    msgs.append(msg.strip()[:300])
    return " | ".join(msgs[-4:])
