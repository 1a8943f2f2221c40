"""The host side of a sandbox's filesystem: its directory, its mounts, its identity files.

Per sandbox, under ``<data-dir>/sandboxes/<id>/`` (``0710 root:<uid base>``: the runtime's
init, running as sandbox root, must walk to ``rootfs``; no other host user gets in)::

    record.json, config.json   0600: they hold the sandbox's env, typically secrets
    layers/<i>                 0700: hard links of the snapshot layers (the overlay's lowers)
    disk/                      tmpfs, the disk cap (`DiskSize`); nosuid, nodev, 0700
        upper/ work/           the overlay's writable layer
        shm/                   bind-mounted at /dev/shm: shared memory counts against the cap
        etc/                   hostname, hosts, resolv.conf: bind-mounted over the rootfs's
    rootfs/                    the overlay mount; nosuid, nodev; its lowers id-mapped from the
                               canonical range to the sandbox's own (idmap.py)
    run/                       a tiny tmpfs bound at /run/warren (the guest's socket)

The rule (docs/design.md §6): the agent never resolves a tenant-controlled path on the host. Anything
under ``rootfs/``, ``disk/upper/`` or ``layers/`` may be a symlink a tenant planted (a snapshot
carries them to its next sandboxes), so the agent never opens, chowns or writes there. The
identity files are written here, in directories only the agent made, and the runtime mounts
them over ``/etc/...``: it resolves a mount's destination inside the container's root, as
Docker does for the same three files. Everything a sandbox can write from inside lands on a
per-sandbox tmpfs, mounted nosuid and nodev, so a planted set-uid file never runs set-uid on
the host and nothing a tenant writes grows a host file.

The runtimes (runc >= 1.1, crun) open bind-mount *sources* as host root before entering the
user namespace, so only the path to ``rootfs`` must be searchable by sandbox root; the template
store and this dir's other entries stay private.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.agent import idmap
from warren.agent.fsmount import fs_mount
from warren.agent.proc import MS_NODEV, MS_NOSUID, mount, run, umount
from warren.agent.templates import MAPPED_BASE
from warren.agent.trees import remove_tree
from warren.errors import InvalidRequest

MS_NOEXEC = 8
# mount(2) copies at most one page of options: the overlay's lowerdir list must fit in it.
MAX_MOUNT_DATA = 4096

# The writable layer is a tmpfs, so its pages (and its inodes, as kernel memory) are charged to
# the sandbox's memory cgroup. Filling it must end in ENOSPC with this much memory still free
# for processes: the guest agent (~4 MB anonymous + ~6 MB of python's page cache) and a few
# commands to recover with (a python3 exec is ~9 MB). A sandbox of 128 MB kept answering with
# 12 MB left; 32 MB leaves margin for page cache and a shell pipeline.
PROCESS_HEADROOM_MB = 32
# Kernel memory per file on the layer, charged to the sandbox: tmpfs' inode and dentry plus
# overlayfs' own. Measured ~1.9 KiB per empty file, ~2.9 KiB with 250-byte names, of which
# overlayfs' part (about half) is reclaimed under pressure; 2 KiB covers what stays pinned. A
# 256 MB sandbox filled with 8 KB files of 250-byte names to both caps used 228 MB, and an exec
# and the OOM ordering still worked.
INODE_COST_BYTES = 2048
# One inode per 8 KiB of disk (ext4 uses 16 KiB): small-file trees (node_modules) fit, and
# the inodes' kernel memory is a quarter of the data at most, inside the memory budget.
BYTES_PER_INODE = 8192
MIN_MEMORY_MB = 64  # PROCESS_HEADROOM_MB plus a usable disk
MIN_DISK_MB = 16
# gVisor's /tmp is a tmpfs of the Sentry (bundle.BundleSpec.tmp_mb): memory charged to the host
# cgroup that no kill frees, as the disk's pages are. So it takes its share of the same budget:
# with both full the guest's watch, which counts both, can still kill its way under the tenant's
# limit, and the host cgroup keeps its headroom for a checkpoint (session 32). A quarter of the
# memory past twice the processes' headroom (so a small sandbox keeps most of its disk), and at
# least this much; the disk gets the rest.
GVISOR_TMP_SHARE = 4
GVISOR_TMP_MIN_MB = 16
# /run/warren holds one socket; the rest is the tenant's to waste, so it is tiny.
RUN_TMPFS_OPTS = "size=64k,nr_inodes=64,mode=0700"


@dataclass(frozen=True, slots=True)
class DiskSize:
    mb: int
    inodes: int


def gvisor_tmp_mb(memory_mb: int) -> int:
    """The size of a gVisor sandbox's /tmp (see GVISOR_TMP_SHARE)."""
    return max(GVISOR_TMP_MIN_MB, (memory_mb - 2 * PROCESS_HEADROOM_MB) // GVISOR_TMP_SHARE)


def disk_size(memory_mb: int, requested_mb: int, *, beside_mb: int = 0) -> DiskSize:
    """The writable layer a sandbox of ``memory_mb`` really gets: at most what was asked, and
    small enough that the full layer, its inodes' kernel memory, ``beside_mb`` (gVisor's /tmp)
    and PROCESS_HEADROOM_MB fit in the memory limit
    (data + data * INODE_COST / BYTES_PER_INODE + beside <= memory - headroom)."""
    budget = max(0, memory_mb - PROCESS_HEADROOM_MB - beside_mb) << 20
    fits = budget * BYTES_PER_INODE // (BYTES_PER_INODE + INODE_COST_BYTES) >> 20
    mb = max(1, min(requested_mb, fits))
    return DiskSize(mb=mb, inodes=max(256, (mb << 20) // BYTES_PER_INODE))


def host_capacity() -> tuple[int, int]:
    """(CPUs, memory in MB) of this host: no single sandbox may be larger."""
    mem = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20
    return os.cpu_count() or 1, mem


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a 0600 file: created with that mode, never chmodded
    after, so it is not readable by others even for an instant."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_dir(path: Path, mode: int, gid: int = 0) -> None:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, 0, gid)
    os.chmod(path, mode)  # mkdir's mode went through the umask


def secure_data_dirs(data_dir: Path, sandboxes_dir: Path) -> None:
    """The agent's dirs: others may pass through the data dir and the sandboxes dir (each
    sandbox's root, a host uid of its own, walks them to its rootfs) but list nothing; each
    sandbox's own dir is for root and that sandbox's root only."""
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o711)  # noqa: S103 - search only: sandbox root walks through it
    _private_dir(sandboxes_dir, 0o711)


def check_traversable(sandboxes_dir: Path) -> None:
    """Root in a sandbox is an unprivileged host uid: the runtime's init, running as it, must
    walk down to its rootfs, or every create fails with a bare EACCES."""
    for p in [sandboxes_dir, *sandboxes_dir.parents]:
        st = os.stat(p)
        if st.st_mode & 0o001:
            continue
        raise SystemExit(
            f"{p} is not searchable by other users (mode {oct(st.st_mode & 0o777)}); sandbox "
            f"root is an unprivileged host uid and must reach {sandboxes_dir}: chmod o+x {p}"
        )


def _nameservers() -> list[str]:
    found = []
    with contextlib.suppress(OSError), open("/etc/resolv.conf") as f:
        for line in f:
            parts = line.split()
            # A loopback resolver on the host is unreachable from the sandbox's netns.
            if len(parts) >= 2 and parts[0] == "nameserver" and not parts[1].startswith(("127.", "::1")):
                found.append(parts[1])
    return found


def identity_files(sb_id: str) -> dict[str, str]:
    return {
        "hostname": f"{sb_id}\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{sb_id}\n",
        "resolv.conf": "".join(f"nameserver {ns}\n" for ns in _nameservers()),
    }


def _new_file(path: Path, text: str, uid: int, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
        os.fchown(fd, uid, uid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _new_dir(path: Path, mode: int, uid: int = 0, gid: int | None = None) -> None:
    path.mkdir(mode=0o700)  # FileExistsError if it is there: nothing is reused
    os.chown(path, uid, uid if gid is None else gid, follow_symlinks=False)
    os.chmod(path, mode, follow_symlinks=False)  # after the chown, which clears set-gid bits


@dataclass(frozen=True, slots=True)
class SandboxFs:
    root: Path  # the sandbox dir, which is also the OCI bundle

    @property
    def rootfs(self) -> Path:
        return self.root / "rootfs"

    @property
    def disk(self) -> Path:
        return self.root / "disk"

    @property
    def upper(self) -> Path:
        return self.disk / "upper"

    @property
    def shm(self) -> Path:
        return self.disk / "shm"

    @property
    def identity(self) -> Path:
        return self.disk / "etc"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def guest_socket(self) -> Path:
        return self.run / "guest.sock"

    async def build(
        self, sb_id: str, lower: list[Path], disk: DiskSize, undo: list[Callable[[], Awaitable[Any]]],
        *, link_layers: bool = True, uid_base: Callable[[], Awaitable[int]] | None = None,
    ) -> list[Path]:  # fmt: skip
        """Make the dir, its mounts and identity files; return the overlay's lower layers as
        mounted (topmost first). Each step appends its rollback to ``undo``. ``link_layers``:
        hard-link all but the bottom layer into the sandbox's dir (a legacy snapshot's layers);
        a chain's store layers are mounted where they are. ``uid_base``: the host uid of the
        sandbox's root (awaited once the steps that need none are done: it comes with the
        network slot); None: the canonical MAPPED_BASE, the layers' own (gVisor)."""
        d = self.root
        _new_dir(d, 0o700)
        undo.append(lambda: asyncio.to_thread(remove_tree, d, ignore_errors=True))
        for sub in (self.disk, self.rootfs, self.run):
            sub.mkdir(mode=0o700)
        # A snapshot's layers are hard-linked into the sandbox's own dir and mounted from
        # there: deleting or overwriting the snapshot later must not pull files out from under
        # a sandbox made from it. Layers are never written, so links cost no copy. `cp -a`
        # links symlinks as symlinks: nothing in a layer is followed.
        if link_layers:
            own = d / "layers"
            for i, layer in enumerate(lower[:-1]):
                own.mkdir(mode=0o700, exist_ok=True)
                await run("cp", "-al", str(layer), str(own / str(i)))
            lower = [*(own / str(i) for i in range(len(lower) - 1)), lower[-1]]
        opts = f"size={disk.mb}m,nr_inodes={disk.inodes},mode=0700"
        mount(f"warren-{sb_id}", str(self.disk), "tmpfs", opts, MS_NOSUID | MS_NODEV)
        undo.append(lambda: _umount_lazy(self.disk))
        base = MAPPED_BASE if uid_base is None else await uid_base()
        # Searchable by this sandbox's root only (the runtime's init walks it to rootfs).
        os.chown(d, 0, base)
        os.chmod(d, 0o710)  # noqa: S103 - search only, for its root
        self._own_dirs(sb_id, base)
        run_opts = f"{RUN_TMPFS_OPTS},uid={base},gid={base}"
        mount(f"warren-{sb_id}", str(self.run), "tmpfs", run_opts, MS_NOSUID | MS_NODEV | MS_NOEXEC)
        undo.append(lambda: _umount_lazy(self.run))
        userns_fd = None if base == MAPPED_BASE else await idmap.open_userns(MAPPED_BASE, base)
        try:
            mount_overlay(f"warren-{sb_id}", self.rootfs, lower, self.upper, self.disk / "work", userns_fd)
        finally:
            if userns_fd is not None:
                os.close(userns_fd)
        undo.append(lambda: _umount_lazy(self.rootfs))
        return lower

    def _own_dirs(self, sb_id: str, base: int) -> None:
        """The writable layer, /dev/shm and the identity files, owned by the sandbox's root
        (host uid ``base``)."""
        _new_dir(self.upper, 0o755, base)
        _new_dir(self.disk / "work", 0o700)
        _new_dir(self.shm, 0o1777, base)
        _new_dir(self.identity, 0o755)
        for name, text in identity_files(sb_id).items():
            _new_file(self.identity / name, text, base, 0o644)


def mount_overlay(
    source: str, target: Path, lower: list[Path], upper: Path, work: Path, userns_fd: int | None = None
) -> None:
    """The overlay (nosuid, nodev) of ``lower`` (topmost first) under ``upper``. mount(2) takes
    one page of options, about 40 layer paths: a longer chain is mounted through the new mount
    API, which takes its layers one by one (``lowerdir+``, Linux 6.8). ``userns_fd``: every
    lower is seen through this id map (idmap.py), passed as a detached mount (new API only)."""
    lowerdir = ":".join(str(p) for p in lower)
    overlay = f"lowerdir={lowerdir},upperdir={upper},workdir={work}"
    if userns_fd is None and len(overlay.encode()) < MAX_MOUNT_DATA:
        mount(source, str(target), "overlay", overlay, MS_NOSUID | MS_NODEV)
        return
    try:
        with idmap.clones(lower, [userns_fd] * len(lower)) as layers:
            params: list[tuple[str, str | int]] = [("source", source), *(("lowerdir+", x) for x in layers)]
            params += [("upperdir", str(upper)), ("workdir", str(work))]
            fs_mount("overlay", params, target, nosuid=True, nodev=True)
    except OSError as e:
        raise InvalidRequest(f"{len(lower)} layers cannot be stacked on this host: {e}") from e


async def _umount_lazy(path: Path) -> None:
    with contextlib.suppress(OSError):
        umount(str(path), lazy=True)
