"""Template store: the built-in `minimal` rootfs and filesystem snapshots.

Layout under ``<data-dir>/templates``::

    minimal/rootfs/                       Debian bookworm minbase + python3 (read-only lower)
    minimal/template.json                 build info
    teams/<team-uuid>/<template-uuid>/
        layers/0 … layers/N               overlay lower layers, topmost last (N = the
                                          snapshotted sandbox's upper dir)
        config.json                       {"kind": "filesystem", "vcpus", "memory_mb", ...}

Every file of a template is owned by the *mapped* uid range (container uid + MAPPED_BASE), so
root inside a user-namespaced sandbox owns its files while being an unprivileged uid on the
host. A template's set-uid files are therefore set-uid *sandbox root* on the host: the store
(and `minimal`, wherever it lives) is 0700, so no host user can reach and run one. Overlayfs
reads the layers with the credentials of its mounter (the agent), so sandboxes need no access
either; tenant content in a layer (symlinks included) is only ever copied or hard-linked with
`cp -a`, which follows nothing. A snapshot copies the parent snapshot's layers with hard
links (layers never change once written) so deleting one snapshot can never break another.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from warren.agent.proc import mounts_under, run, umount
from warren.agent.rootfs_profile import trim_login_shell
from warren.agent.trees import remove_tree, tree_size
from warren.errors import InvalidRequest, NotFound

log = logging.getLogger("warren.agent.templates")

# The canonical range: layers and templates are stored owned by MAPPED_BASE + N (container
# uid N). A runc/crun sandbox runs as a range of its own (uid_base), seeing its layers through
# id-mapped mounts (idmap.py); gVisor sandboxes run as this range itself.
MAPPED_BASE = 1_000_000_000
MAPPED_SIZE = 65536
# Sandbox ranges: slot k runs as uid_base(k). The first region ends below the slot owner uids
# (slot_userns.OWNER_BASE, 2_000_000_000); the slots past it continue above the layer packer's
# uids (layer_image.PACKER_UID_BASE 2_100_000_000 + 2**20).
_REGION1_SLOTS = (2_000_000_000 - MAPPED_BASE) // MAPPED_SIZE - 1
_REGION2_BASE = 2_200_000_000


def uid_base(slot: int) -> int:
    """Host uid of root in the sandbox on network slot ``slot``: a range no other slot shares,
    so the kernel's per-user counts (user_struct: descriptors in flight, ...) are the
    sandbox's own."""
    if slot < 0:
        raise ValueError(f"slot {slot}")
    if slot < _REGION1_SLOTS:
        return MAPPED_BASE + (slot + 1) * MAPPED_SIZE
    return _REGION2_BASE + (slot - _REGION1_SLOTS) * MAPPED_SIZE


MINIMAL = "minimal"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Directories the runtime mounts over; made at build time so no sandbox writes them to its upper.
MOUNT_POINTS = (".warren/guest", "run/warren")


def parse_uuid(text: str, what: str) -> uuid.UUID:
    if not text:
        return uuid.UUID(int=0)
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidRequest(f"invalid {what}: {text!r}") from None


@dataclass(frozen=True, slots=True)
class TemplateRef:
    team_id: uuid.UUID
    template_id: uuid.UUID

    @property
    def is_minimal(self) -> bool:
        return self.template_id.int == 0

    @classmethod
    def parse(cls, team_id: str, template_id: str) -> TemplateRef:
        return cls(parse_uuid(team_id, "team_id"), parse_uuid(template_id, "template_id"))


@dataclass(frozen=True, slots=True)
class Template:
    lower_layers: list[Path]  # topmost first, as overlayfs' lowerdir wants them
    config: dict[str, object]


def _reown(root: Path, new_id: Callable[[int], int]) -> None:
    """Re-own every file under ``root`` (a tree only the agent can reach): uid and gid each to
    ``new_id`` of it. Nothing is followed (lchown, and os.walk does not enter symlinked dirs);
    set-uid/set-gid bits, which chown(2) clears, are put back."""

    def reown(path: str, st: os.stat_result, is_link: bool) -> None:
        uid, gid = new_id(st.st_uid), new_id(st.st_gid)
        if (uid, gid) != (st.st_uid, st.st_gid):
            os.lchown(path, uid, gid)
            if not is_link and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode))

    reown(str(root), os.lstat(root), False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            reown(p, st, stat.S_ISLNK(st.st_mode))


def shift_ownership(root: Path, base: int = MAPPED_BASE) -> None:
    """Re-own every file under ``root`` from uid N to ``base`` + N (idempotent for N < base)."""
    _reown(root, lambda n: n if n >= base else n + base)


def rebase_ownership(root: Path, from_base: int, to_base: int) -> None:
    """Re-own every file under ``root`` from ``from_base`` + N to ``to_base`` + N, N in
    0..65535; other owners are left."""
    _reown(root, lambda n: n + to_base - from_base if from_base <= n < from_base + MAPPED_SIZE else n)


def dir_size(path: Path) -> int:
    return tree_size(path)  # a snapshot holds a tenant's tree: any depth (trees.py)


class TemplateStore:
    def __init__(self, root: Path, *, minimal_dir: Path | None = None, mirror: str | None = None) -> None:
        self.root = root
        # Tests (and hosts with several agents) may keep `minimal` in a shared cache.
        self.minimal_dir = minimal_dir or root / MINIMAL
        self.mirror = mirror or DEFAULT_MIRROR
        self._build_lock = asyncio.Lock()

    @property
    def minimal_rootfs(self) -> Path:
        return self.minimal_dir / "rootfs"

    def make_private(self) -> None:
        """At startup: the store and `minimal` are for root only (see the module docstring)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (self.root, self.minimal_dir):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(d, 0o700)

    def snapshot_dir(self, ref: TemplateRef) -> Path:
        return self.root / "teams" / str(ref.team_id) / str(ref.template_id)

    async def remove_leftovers(self) -> list[Path]:
        """At startup: the temporary dirs of snapshot writes, replacements and deletes that a
        crash interrupted (``.<id>.tmp-*``, ``.old-*``, ``.del-*``); nothing refers to them."""
        found = [
            p
            for pattern in (".*.tmp-*", ".*.old-*", ".*.del-*")
            for p in self.root.glob(f"teams/*/{pattern}")
        ]
        for p in found:
            await asyncio.to_thread(remove_tree, p, ignore_errors=True)
        return found

    # ---------------------------------------------------------------------------- minimal

    async def ensure_minimal(self) -> Path:
        """Build `minimal` on first use. Concurrent callers (and other agents) wait for one build."""
        if (self.minimal_dir / "template.json").exists():
            return self.minimal_rootfs
        async with self._build_lock:
            self.minimal_dir.parent.mkdir(parents=True, exist_ok=True)
            lock_path = self.minimal_dir.parent / f".{self.minimal_dir.name}.lock"
            fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
                if not (self.minimal_dir / "template.json").exists():
                    await self._build_minimal()
            finally:
                os.close(fd)
        return self.minimal_rootfs

    async def _build_minimal(self) -> None:
        # Build next to the destination and rename, so a crash never leaves a half template.
        tmp = self.minimal_dir.parent / f".{self.minimal_dir.name}.build-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        started = time.monotonic()
        log.info("event=template_build_start template=minimal mirror=%s", self.mirror)
        proc = await asyncio.create_subprocess_exec(
            "debootstrap", "--variant=minbase", "--include=python3", "bookworm",
            str(tmp / "rootfs"), self.mirror,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        tail: list[str] = []
        try:
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                tail = [*tail[-20:], line]
                # debootstrap's "I: Retrieving/Validating/Unpacking …" lines are the progress report.
                log.info("event=template_build_progress template=minimal %s", line)
        except asyncio.CancelledError:
            # Agent shutdown mid-build: stop debootstrap and leave no mount or half tree behind.
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            for mp in mounts_under(tmp):
                with contextlib.suppress(OSError):
                    umount(mp, lazy=True)
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("event=template_build_cancelled template=minimal")
            raise
        if await proc.wait() != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError("debootstrap failed: " + " | ".join(tail[-5:]))
        rootfs = tmp / "rootfs"
        await asyncio.to_thread(self._finish_rootfs, rootfs)
        tmp.chmod(0o700)
        info = {"name": MINIMAL, "built_at": int(time.time()), "mapped_base": MAPPED_BASE}
        (tmp / "template.json").write_text(json.dumps(info))
        if self.minimal_dir.exists():
            shutil.rmtree(self.minimal_dir)
        os.rename(tmp, self.minimal_dir)
        log.info("event=template_build_done template=minimal seconds=%.1f", time.monotonic() - started)

    @staticmethod
    def _finish_rootfs(rootfs: Path) -> None:
        # The package cache is 30+ MB that no sandbox needs.
        for p in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            p.unlink()
        for mp in MOUNT_POINTS:
            (rootfs / mp).mkdir(parents=True, exist_ok=True)
        trim_login_shell(rootfs)  # E2B's `bash -l -c` per command: no fork in the profile
        shift_ownership(rootfs)

    # --------------------------------------------------------------------------- lookups

    async def resolve(self, ref: TemplateRef) -> Template:
        if ref.is_minimal:
            rootfs = await self.ensure_minimal()
            return Template([rootfs], {"kind": "base", "name": MINIMAL})
        d = self.snapshot_dir(ref)
        try:
            config = json.loads((d / "config.json").read_text())
        except FileNotFoundError:
            raise NotFound(
                f"template {ref.template_id} of team {ref.team_id} not found on this host"
            ) from None
        rootfs = await self.ensure_minimal()
        n = int(config["layer_count"])
        layers = [d / "layers" / str(i) for i in reversed(range(n))]
        return Template([*layers, rootfs], config)

    # ------------------------------------------------------------------------- snapshots

    async def create_snapshot(
        self,
        ref: TemplateRef,
        *,
        upper: Path,
        snapshot_layers: list[Path],
        config: dict[str, object],
        image: Path | None = None,
        uid_base: int = MAPPED_BASE,
    ) -> int:
        """Store ``snapshot_layers`` (bottom first) + a copy of ``upper`` as template ``ref``;
        with ``image`` (a gVisor checkpoint), also the memory image (``kind`` ``memory``).
        ``uid_base``: the sandbox's range, which owns ``upper``; the copy is stored in the
        canonical one, as every layer is (a sandbox with another range id-maps it, idmap.py).

        Replaces an existing snapshot of the same ref only once the new one is complete.
        Returns the size in bytes of the new template dir.
        """
        if ref.is_minimal:
            raise InvalidRequest("cannot overwrite the built-in minimal template")
        final = self.snapshot_dir(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            (tmp / "layers").mkdir(parents=True)
            for i, layer in enumerate(snapshot_layers):
                await _keep_layer(layer, tmp / "layers" / str(i))
            # `cp -a` keeps owners, modes, xattrs (overlay opaque dirs) and whiteout devices.
            top = tmp / "layers" / str(len(snapshot_layers))
            await run("cp", "-a", str(upper), str(top))
            if uid_base != MAPPED_BASE:
                await asyncio.to_thread(rebase_ownership, top, uid_base, MAPPED_BASE)
            kind = "filesystem"
            if image is not None:  # hard links: an image is never written again
                await run("cp", "-al", str(image), str(tmp / "memory"))
                kind = "memory"
            cfg = {**config, "kind": kind, "layer_count": len(snapshot_layers) + 1}
            (tmp / "config.json").write_text(json.dumps(cfg))
            old = None
            if final.exists():
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(final, old)
            os.rename(tmp, final)
            if old is not None:
                await asyncio.to_thread(remove_tree, old, ignore_errors=True)
        except BaseException:
            await asyncio.to_thread(remove_tree, tmp, ignore_errors=True)
            raise
        return await asyncio.to_thread(dir_size, final)

    async def delete_snapshot(self, ref: TemplateRef) -> bool:
        """Remove the snapshot's files; False when there was nothing (not an error)."""
        if ref.is_minimal:
            raise InvalidRequest("the built-in minimal template cannot be deleted")
        d = self.snapshot_dir(ref)
        if not d.exists():
            return False
        # Rename first so a concurrent create never sees a half-deleted template.
        doomed = d.parent / f".{d.name}.del-{uuid.uuid4().hex[:8]}"
        os.rename(d, doomed)
        await asyncio.to_thread(remove_tree, doomed)
        return True


async def _keep_layer(layer: Path, dest: Path) -> None:
    """A snapshot's own copy of one of its sandbox's lower layers. Layers are immutable once
    written, so hard links share them at no cost; a store layer mounted as an image (a squashfs
    of the layer cache) is another filesystem, where a link is EXDEV: its tree is copied."""
    same_fs = await asyncio.to_thread(lambda: layer.stat().st_dev == dest.parent.stat().st_dev)
    await run("cp", "-al" if same_fs else "-a", str(layer), str(dest))
