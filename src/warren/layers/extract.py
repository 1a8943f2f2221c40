"""OCI layer tar (untrusted) → a directory in overlayfs' own format, safely, as root.

Safety rests on one rule: no path is ever resolved through the filesystem. Every directory is
opened relative to its parent's fd with O_NOFOLLOW|O_DIRECTORY, every entry is created with a
*at call on the parent fd (O_CREAT|O_EXCL, mkdirat, symlinkat, mknodat, linkat without
AT_SYMLINK_FOLLOW), and attributes are set on the new file's fd or with AT_SYMLINK_NOFOLLOW.
So a symlink the tar made earlier (`a -> /etc`, then `a/passwd`) makes the walk fail with ELOOP
instead of leaving the layer dir, and a hard link can only name an entry inside it. Symlink
targets are data: written as given, never read.

Decisions (docs/templates.md §2):
- owners are shifted to `uid_base + N`; N outside 0..65535 refuses the layer;
- set-uid/set-gid bits are kept (chmod after chown, which clears them);
- character/block devices are skipped (a sandbox gets its /dev from the runtime), except that
  `.wh.<name>` becomes overlayfs' whiteout (a 0/0 character device) and `.wh..wh..opq` sets
  `trusted.overlay.opaque=y`; other `.wh..wh.*` (aufs metadata) are skipped;
- xattrs in the tar are ignored (a `security.capability` set by host root would be honoured);
- a later member replaces an earlier non-directory of the same name; one that would replace a
  directory is refused (so a directory fd held open always names what the path names);
- `max_bytes` bounds the tar's bytes (headers included), checked before data is written;
- the tar first passes `scan_layer` whole (a stream: each member, before it is applied), whose
  model of the names (`_Namespace`) is bounded in memory (`MAX_NAME_CELLS`): a tar of paths
  hundreds of levels deep, each under a directory of its own, is refused instead of held (~130
  bytes per byte of tar) or created (a directory per level: ~250 per 2 KiB member;
  `IMPLIED_PER_MEMBER` unlisted directories a member are allowed);
- the root entry (`./`) is ignored: the layer dir stays 0700 root.
On any refusal the partial destination is removed and `LayerError` names the member.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from warren.layers.hashing import LayerError
from warren.layers.stats import LayerStats, Python3Probe
from warren.layers.tarfmt import (
    BLK,
    CHR,
    DIR,
    FIFO,
    LNK,
    MAX_ID,
    OPAQUE,
    REGULAR,
    SYM,
    WHITEOUT,
    Member,
    Readable,
    Source,
    members,
    normalize,
)

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
OPAQUE_XATTR = "trusted.overlay.opaque"
# What checking one tar's names may hold (`_Namespace.kinds`), in path components, plus
# KEY_CELLS per name for the tuple and the dict entry: ~10 bytes a cell, so ~320 MiB at most.
# A layer of 1,000,000 files 8 levels deep, directories listed, costs 24M.
KEY_CELLS = 16
MAX_NAME_CELLS = 32 << 20
# Directories a tar does not list but its paths need: extraction creates each (a 4 KiB block),
# so a 2 KiB member 250 levels deep under a directory of its own would make 250. Layers list
# their directories (Docker, our own export); a tar of files only needs a few per file.
IMPLIED_PER_MEMBER = 4
IMPLIED_FREE = 16384
# The child extracting a layer (`extract_layer`): below the agent and the sandboxes (nice 0),
# it has ~10% of a contended CPU, and it is killed past EXTRACT_CPU_S of CPU. A member costs
# ~120 us of CPU (200,000 empty files: 24 CPU-s at load 15, most of it the kernel's), so the
# budget is ~2.5M members: 8x a 300,000-file image layer; an 8 GiB tar of empty files (16M
# members, ~2,000 CPU-s) is refused at 300.
EXTRACT_NICE = 10
EXTRACT_CPU_S = 300


def extract_layer(
    src: Readable | Path,
    dest: Path,
    *,
    uid_base: int,
    max_bytes: int | None = None,
    cpu_seconds: int | None = EXTRACT_CPU_S,
) -> LayerStats:
    """Extract the layer tar `src` into `dest` (absent or empty; made 0700), see above.

    A tar given as a path is extracted by a child process (`warren.layers.extract_child`) at
    nice `EXTRACT_NICE`, killed past `cpu_seconds` of CPU (the layer refused), unless
    `cpu_seconds` is None. In the caller's process, a 200,000-file layer is ~6 s of Python
    holding the GIL the agent's RPCs need (and ~24 CPU-s in all at load 15): each layer a
    tenant chooses would spend the host's CPU at the priority of every other tenant's calls."""
    if isinstance(src, (str, os.PathLike)) and cpu_seconds is not None:
        return _extract_in_child(Path(src), Path(dest), uid_base, max_bytes, cpu_seconds)
    return extract_here(src, dest, uid_base=uid_base, max_bytes=max_bytes)


def extract_here(
    src: Readable | Path, dest: Path, *, uid_base: int, max_bytes: int | None = None
) -> LayerStats:
    """`extract_layer` in this process.

    A tar given as a path is checked whole by `scan_layer` first (headers only: file data is
    seeked over), so a refused layer is refused before anything is made. Checked member by
    member instead, a tar refused at its 66th member had made 16,000 directories by then, and
    removing them took ~40 s on an ext4 mounted `discard` (2-4 ms an rmdir)."""
    dest = Path(dest)
    whole = isinstance(src, (str, os.PathLike))
    if whole:
        scan_layer(src, max_bytes=max_bytes)
    _make_dest(dest)
    try:
        with Source(src, max_bytes) as source, _Extractor(dest, uid_base) as ex:
            ns = None if whole else _Namespace()  # a stream: scan_layer's checks as it goes
            for m in members(source):
                parts = normalize(m.name)
                if parts and ns is not None:
                    ns.member(parts, m)
                try:
                    ex.apply(m, source)
                except OSError as e:
                    raise LayerError(f"member {m.label()}: {e.strerror or e}") from e
            ex.finish()
            return ex.stats()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _extract_in_child(
    tar: Path, dest: Path, uid_base: int, max_bytes: int | None, cpu_seconds: int
) -> LayerStats:
    args = [str(tar), str(dest), str(uid_base), str(max_bytes or 0), str(cpu_seconds), str(EXTRACT_NICE)]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "warren.layers.extract_child", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            close_fds=True,
            check=False,
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    rc = done.returncode
    if rc == 0:
        got = json.loads(done.stdout)
        if "refused" in got:
            raise LayerError(got["refused"])
        return LayerStats(**got["stats"])
    shutil.rmtree(dest, ignore_errors=True)  # what a killed child made
    if rc == -signal.SIGXCPU:  # RLIMIT_CPU's soft limit (the hard one, 5 s on, is SIGKILL)
        raise LayerError(f"extracting the layer took over {cpu_seconds} CPU-seconds: too many members")
    raise OSError(f"the layer extraction child failed ({rc}): {done.stderr[-2000:].decode(errors='replace')}")


def stats_json(stats: LayerStats) -> bytes:
    return json.dumps({"stats": dataclasses.asdict(stats)}).encode()


def scan_layer(src: Readable | Path, *, max_bytes: int | None = None) -> LayerStats:
    """The checks and stats of `extract_layer` without writing anything (for the CP, which
    validates a layer before storing it and needs no root): the same members are refused,
    with the same messages, by modelling the names the extraction would create."""
    ns = _Namespace()
    with Source(src, max_bytes) as source:
        for m in members(source):
            parts = normalize(m.name)
            _owner(m, 0)
            if parts:
                ns.member(parts, m)
    return ns.stats()


class _Namespace:
    """What extraction would create, by name: a directory, a linkable entry or a whiteout."""

    def __init__(self) -> None:
        self.kinds: dict[tuple[bytes, ...], str] = {}
        self.cells = 0  # what `kinds` holds, in path components (+ KEY_CELLS a name)
        self.members = self.implied = 0  # members seen; directories made for them, unlisted
        self.probe = Python3Probe()
        self.files = self.bytes = self.skipped = 0

    def stats(self) -> LayerStats:
        return LayerStats(self.files, self.bytes, self.probe.has, self.probe.removes, self.skipped)

    def _parents(self, parts: tuple[bytes, ...], m: Member) -> None:
        # A directory never becomes anything else (`_put` refuses it), so one known as a
        # directory has only directories above it: one lookup, not one per level.
        if not parts or self.kinds.get(parts) == "d":
            return
        for i in range(1, len(parts) + 1):
            key = parts[:i]
            kind = self.kinds.get(key)
            if kind is None:
                self.implied += 1
                if self.implied > IMPLIED_PER_MEMBER * self.members + IMPLIED_FREE:
                    raise LayerError(f"member {m.label()}: too many directories the tar does not list")
                self._add(key, "d", m)
            elif kind != "d":
                raise LayerError(f"member {m.label()}: {parts[i - 1]!r} on its path is not a directory")

    def _put(self, parts: tuple[bytes, ...], kind: str, m: Member) -> None:
        old = self.kinds.get(parts)
        if kind != "d" and old == "d":
            raise LayerError(f"member {m.label()} would replace a directory")
        if old is None:
            self._add(parts, kind, m)
        else:
            self.kinds[parts] = kind

    def _add(self, parts: tuple[bytes, ...], kind: str, m: Member) -> None:
        """A new name, paid for: every level of every name is held (a tar of paths 250 levels
        deep, each under a directory of its own, held ~130 bytes per byte of tar)."""
        self.cells += len(parts) + KEY_CELLS
        if self.cells > MAX_NAME_CELLS:
            raise LayerError(f"member {m.label()}: the layer's names are too many or too deep to check")
        self.kinds[parts] = kind

    def member(self, parts: tuple[bytes, ...], m: Member) -> None:
        self.members += 1
        base = parts[-1]
        if base.startswith(WHITEOUT):
            if base == OPAQUE:
                self._parents(parts[:-1], m)
                self.probe.opaque(parts[:-1])
            elif base.startswith(b".wh..wh."):
                self.skipped += 1
            else:
                target = (*parts[:-1], _whiteout_target(base, m))
                self._parents(parts[:-1], m)
                self._put(target, "w", m)
                self.probe.whiteout(target)
                self.files += 1
            return
        if m.type in (CHR, BLK):
            self.skipped += 1
            return
        self._parents(parts[:-1], m)
        self.probe.entry(parts, is_dir=m.type == DIR, is_file_or_link=m.type in (*REGULAR, LNK, SYM))
        if m.type == DIR:
            self._put(parts, "d", m)  # over a file or link of this layer: it replaces it
            return
        if m.type == SYM and (not m.linkname or b"\0" in m.linkname):
            raise LayerError(f"member {m.label()}: empty symlink target or NUL in it")
        if m.type == LNK:
            target = normalize(m.linkname, f"hard link {m.label()} target")
            if self.kinds.get(target) != "f":
                raise LayerError(_not_earlier(m))
        self._put(parts, "f", m)
        self.files += 1
        self.bytes += m.size


def _not_earlier(m: Member) -> str:
    return (
        f"member {m.label()}: hard link to {m.linkname[:200]!r}, which is not an earlier file of this layer"
    )


def _make_dest(dest: Path) -> None:
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        st = os.lstat(dest)
        if not stat.S_ISDIR(st.st_mode) or os.listdir(dest):
            raise LayerError(f"{dest}: the layer destination exists and is not an empty directory") from None
    os.chmod(dest, 0o700)


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o7777  # unknown: every file gets its fchmod


def _owner(m: Member, uid_base: int) -> tuple[int, int]:
    if not (0 <= m.uid <= MAX_ID and 0 <= m.gid <= MAX_ID):
        raise LayerError(f"member {m.label()}: owner {m.uid}:{m.gid} outside 0..{MAX_ID}")
    return uid_base + m.uid, uid_base + m.gid


def _whiteout_target(base: bytes, m: Member) -> bytes:
    target = base[len(WHITEOUT) :]
    if target in (b"", b".", b".."):
        raise LayerError(f"member {m.label()}: a whiteout of nothing")
    return target


class _Extractor:
    def __init__(self, dest: Path, uid_base: int) -> None:
        self.uid_base = uid_base
        self.root = os.open(dest, DIR_FLAGS)
        # the open directory chain of the last member: tars list siblings together, so most
        # members reuse it and cost one openat per new directory, not one per path component
        self._chain: list[tuple[bytes, int]] = []
        self._dir_mtimes: dict[tuple[bytes, ...], int] = {}
        self._linkable: set[tuple[bytes, ...]] = set()
        self._probe = Python3Probe()
        self._umask = _umask()
        self.files = self.bytes = self.skipped = 0

    def __enter__(self) -> _Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_chain(0)
        os.close(self.root)

    def stats(self) -> LayerStats:
        return LayerStats(self.files, self.bytes, self._probe.has, self._probe.removes, self.skipped)

    def _close_chain(self, keep: int) -> None:
        while len(self._chain) > keep:
            os.close(self._chain.pop()[1])

    def _dir(self, parts: tuple[bytes, ...], m: Member) -> int:
        """An fd of directory `parts` (created 0755 sandbox-root when missing), walked from the
        root without following anything."""
        chain = self._chain
        common = 0
        for (name, _), part in zip(chain, parts, strict=False):
            if name != part:
                break
            common += 1
        self._close_chain(common)
        fd = chain[-1][1] if chain else self.root
        for part in parts[common:]:
            fd = self._open_child_dir(fd, part, m)
            chain.append((part, fd))
        return fd

    def _open_child_dir(self, parent: int, name: bytes, m: Member) -> int:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            pass
        except OSError as e:  # ELOOP (a symlink), ENOTDIR (a file): never walked through
            raise LayerError(f"member {m.label()}: {name!r} on its path is not a directory") from e
        os.mkdir(name, 0o755, dir_fd=parent)
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        os.fchown(fd, self.uid_base, self.uid_base)
        os.fchmod(fd, 0o755)
        return fd

    def _clear(self, parent: int, name: bytes, m: Member) -> None:
        """Make room for a member replacing an earlier one of the same name."""
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise LayerError(f"member {m.label()} would replace a directory")
        os.unlink(name, dir_fd=parent)

    def apply(self, m: Member, source: Source) -> None:
        parts = normalize(m.name)
        uid, gid = _owner(m, self.uid_base)
        if not parts:
            return
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self._whiteout(parts, m)
            return
        typ = m.type
        if typ in (CHR, BLK):
            self.skipped += 1
            return
        parent = self._dir(parts[:-1], m)
        self._probe.entry(parts, is_dir=typ == DIR, is_file_or_link=typ in (*REGULAR, LNK, SYM))
        if typ == DIR:
            self._mkdir(parent, parts, m, uid, gid)
            return
        self._linkable.discard(parts)
        if typ in REGULAR:
            self._file(parent, base, m, uid, gid, source)
        elif typ == SYM:
            if not m.linkname or b"\0" in m.linkname:
                raise LayerError(f"member {m.label()}: empty symlink target or NUL in it")
            self._create(parent, base, m, lambda: os.symlink(m.linkname, base, dir_fd=parent))
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.utime(base, ns=(m.mtime_ns, m.mtime_ns), dir_fd=parent, follow_symlinks=False)
        elif typ == LNK:
            self._hardlink(parent, base, m)
        elif typ == FIFO:
            self._create(parent, base, m, lambda: os.mkfifo(base, 0o600, dir_fd=parent))
            os.chown(base, uid, gid, dir_fd=parent, follow_symlinks=False)
            # chmod follows a final symlink, but this name is the fifo just made in a 0700
            # tree that only this process writes
            os.chmod(base, m.mode, dir_fd=parent)
            os.utime(base, ns=(m.mtime_ns, m.mtime_ns), dir_fd=parent, follow_symlinks=False)
        self._linkable.add(parts)
        self.files += 1

    def _create(self, parent: int, base: bytes, m: Member, make: Callable[[], object]) -> None:
        try:
            make()
        except FileExistsError:
            self._clear(parent, base, m)
            make()

    def _file(self, parent: int, base: bytes, m: Member, uid: int, gid: int, source: Source) -> None:
        mode = m.mode
        # created with its final mode when the umask leaves it whole and fchown cannot clear a
        # bit of it: one syscall less per file
        exact = not (mode & self._umask or mode & 0o7000)
        create_mode = mode if exact else 0o600
        try:
            fd = os.open(base, FILE_FLAGS, create_mode, dir_fd=parent)
        except FileExistsError:
            self._clear(parent, base, m)
            fd = os.open(base, FILE_FLAGS, create_mode, dir_fd=parent)
        try:
            if m.size:
                source.copy_to(fd, m.size, m)
            os.fchown(fd, uid, gid)
            if not exact:
                os.fchmod(fd, mode)  # after fchown: it clears set-uid/set-gid
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)
        self.bytes += m.size

    def _mkdir(self, parent: int, parts: tuple[bytes, ...], m: Member, uid: int, gid: int) -> None:
        base = parts[-1]
        try:
            os.mkdir(base, 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a file or link of this layer: replaced
                self._linkable.discard(parts)
                os.unlink(base, dir_fd=parent)
                os.mkdir(base, 0o700, dir_fd=parent)
        fd = self._dir(parts, m)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, m.mode)
        self._dir_mtimes[parts] = m.mtime_ns  # set last: creating children changes it

    def _whiteout(self, parts: tuple[bytes, ...], m: Member) -> None:
        base = parts[-1]
        if base == OPAQUE:
            os.setxattr(self._dir(parts[:-1], m), OPAQUE_XATTR, b"y")
            self._probe.opaque(parts[:-1])
            return
        if base.startswith(b".wh..wh."):
            self.skipped += 1
            return
        target = _whiteout_target(base, m)
        parent = self._dir(parts[:-1], m)
        dev = os.makedev(0, 0)
        self._create(parent, target, m, lambda: os.mknod(target, stat.S_IFCHR, dev, dir_fd=parent))
        self._linkable.discard((*parts[:-1], target))
        self._probe.whiteout((*parts[:-1], target))
        self.files += 1

    def _hardlink(self, parent: int, base: bytes, m: Member) -> None:
        target = normalize(m.linkname, f"hard link {m.label()} target")
        if target not in self._linkable:
            raise LayerError(_not_earlier(m))
        src_fd = self._open_dir_path(target[:-1], m)
        name = target[-1]
        try:
            self._create(
                parent,
                base,
                m,
                lambda: os.link(name, base, src_dir_fd=src_fd, dst_dir_fd=parent, follow_symlinks=False),
            )
        finally:
            os.close(src_fd)

    def _open_dir_path(self, parts: tuple[bytes, ...], m: Member) -> int:
        """A new fd of an existing directory, walked like `_dir` (the chain is left alone)."""
        fd = os.dup(self.root)
        for part in parts:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                os.close(fd)
                raise LayerError(f"member {m.label()}: hard link through {part!r}: not a directory") from e
            os.close(fd)
            fd = nxt
        return fd

    def finish(self) -> None:
        for parts in sorted(self._dir_mtimes):
            ns = self._dir_mtimes[parts]
            fd = self._dir(parts, _FINISH)
            os.utime(fd, ns=(ns, ns))


_FINISH = Member(b"(directory times)", DIR, 0, 0, 0, 0, 0, b"")
