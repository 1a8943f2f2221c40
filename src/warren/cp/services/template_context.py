"""A build's context (the tar uploaded with it) and the two steps made from it without user
code: COPY and WORKDIR (docs/templates.md §4).

COPY works in two halves. The control plane writes a *staging layer* holding exactly the
files the step names, under ``/.warren-build/copy/<n>/`` (root-owned, modes and mtimes as in the
context, symlinks as links: nothing is ever followed, and a name with ``..`` or a device never
leaves the tar); then the build host copies them into place in a build sandbox, with
``cp -a``, and the step's layer is that sandbox's writable layer. Copying on the host is what
keeps the destination's existing parent directories as they are (a ``/home/app`` keeps its
owner; ``/tmp`` keeps 1777): the control plane cannot see the chain below to write them itself.
WORKDIR likewise is ``mkdir -p`` on the host. The staging layer is never part of a template.

Everything here is synchronous file work, as long as the tenant's context makes it: the control
plane runs the index and the staging layer in a child process of their own (session 26:
services/context_child.py; in its tenant threads before, where they held its GIL, checking a
stop event at each member, file and chunk written), killed when the build is cancelled; the
caller removes what was written.
"""

from __future__ import annotations

import asyncio
import fnmatch
import io
import os
import posixpath
import shlex
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from warren.cp.services.template_spec import CopyStep, WorkdirStep
from warren.errors import InvalidRequest, PayloadTooLarge
from warren.layers.hashing import HashingWriter, LayerMeta

MAX_ENTRIES = 100_000
STAGING = ".warren-build"
WRITE_CHUNK = 1024 * 1024
_GLOB = set("*?[")


def new_spool_file(spool_dir: Path, prefix: str) -> Path:
    """A new empty 0600 file in ``spool_dir`` (made if missing)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=spool_dir, prefix=prefix, suffix=".tar")
    os.close(fd)
    return Path(name)


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A spooled file read back in WRITE_CHUNK pieces (off the event loop), for the store."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(f.read, WRITE_CHUNK):
            yield data
    finally:
        f.close()


async def receive(chunks: AsyncIterator[bytes], spool_dir: Path, max_bytes: int) -> tuple[Path, LayerMeta]:
    """Write an upload to a new 0600 temp file (never held in memory), hashing it; 413 past
    ``max_bytes``. The caller removes the file."""
    path = await asyncio.to_thread(new_spool_file, spool_dir, ".upload-")
    f = await asyncio.to_thread(path.open, "wb")
    w = HashingWriter(f)
    buf = bytearray()
    try:
        async for chunk in chunks:
            if w.size + len(buf) + len(chunk) > max_bytes:
                raise PayloadTooLarge(f"the upload is larger than {max_bytes // (1024 * 1024)} MiB")
            buf += chunk
            if len(buf) >= WRITE_CHUNK:
                await asyncio.to_thread(w.write, buf)
                buf = bytearray()
        await asyncio.to_thread(w.write, buf)
        await asyncio.to_thread(f.close)
        return path, w.meta()
    except BaseException:
        f.close()
        await asyncio.to_thread(path.unlink, missing_ok=True)
        raise


def _clean(name: str) -> str | None:
    """A member's name relative to the context's root, or None for one that climbs out."""
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or any("\x00" in p for p in parts):
        return None
    return "/".join(parts)


class BuildContext:
    """The members of a context tar by clean name; directories only implied by deeper names
    count as directories."""

    def __init__(self, path: Path | None) -> None:
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        self.dirs: set[str] = {""}
        self._sorted: list[str] | None = None
        if path is None:
            return
        try:
            self.tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by close()
            for count, member in enumerate(self.tar, start=1):
                if count > MAX_ENTRIES:
                    raise InvalidRequest(f"the build context has more than {MAX_ENTRIES} entries")
                name = _clean(member.name)
                if not name:
                    continue
                if member.sparse is not None:
                    # Its header claims any size (tarfile fills the holes with zeros when it
                    # is read): a few KiB of context would stage a terabyte.
                    raise InvalidRequest(f"{name[:200]!r}: sparse files are not supported in a build context")
                self.members[name] = member
                parts = name.split("/")
                self.dirs.update("/".join(parts[:i]) for i in range(len(parts)))
                if member.isdir():
                    self.dirs.add(name)
        except tarfile.TarError as e:
            self.close()
            raise InvalidRequest(f"the build context is not a tar file: {e}") from e
        except BaseException:
            self.close()  # refused (too many entries, a sparse member)
            raise

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def _names(self) -> list[str]:
        if self._sorted is None:  # once: a spec may COPY many times from a large context
            self._sorted = sorted(set(self.members) | self.dirs)
        return self._sorted

    def expand(self, line: int, source: str) -> list[str]:
        """The context names a COPY source means (a pattern may match several)."""
        if not _GLOB & set(source):
            if source == "." or source in self.members or source in self.dirs:
                return [source if source != "." else ""]
            raise InvalidRequest(f"line {line}: COPY {source}: not found in the build context")
        depth = source.count("/")
        found = [n for n in self._names() if n and n.count("/") == depth and fnmatch.fnmatchcase(n, source)]
        if not found:
            raise InvalidRequest(f"line {line}: COPY {source}: nothing in the build context matches")
        return found

    def is_dir(self, name: str) -> bool:
        member = self.members.get(name)
        return member.isdir() if member is not None else name in self.dirs

    def below(self, prefix: str) -> list[str]:
        start = prefix + "/" if prefix else ""
        return [n for n in self._names() if n.startswith(start) and n != prefix]


@dataclass(frozen=True)
class Staged:
    """One source in the staging layer: its directory there and whether it is a directory."""

    path: str  # absolute, inside the build sandbox
    name: str  # the source's base name
    is_dir: bool


def _dir_info(name: str, mode: int = 0o755, mtime: float = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(mtime)
    return info


def _rooted(member: tarfile.TarInfo, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = member.mode & 0o7777
    info.mtime = int(member.mtime)
    if member.isdir():
        info.type = tarfile.DIRTYPE
    elif member.issym():
        info.type, info.linkname = tarfile.SYMTYPE, member.linkname
    return info


def _add(ctx: BuildContext, out: tarfile.TarFile, name: str, staged_name: str, line: int) -> None:
    member = ctx.members.get(name)
    if member is None:  # implied by deeper names only
        out.addfile(_dir_info(staged_name))
        return
    info = _rooted(member, staged_name)
    if member.isdir() or member.issym():
        out.addfile(info)
        return
    if not (member.isreg() or member.islnk()):
        raise InvalidRequest(f"line {line}: COPY {name}: only files, directories and symlinks are copied")
    if member.islnk():  # a hard link: the bytes of the member it names, in this tar only
        target = ctx.members.get(_clean(member.linkname) or "")
        if target is None or not target.isreg():
            raise InvalidRequest(f"line {line}: COPY {name}: a hard link to no file of the context")
        member = target
    assert ctx.tar is not None
    data = ctx.tar.extractfile(member)
    assert data is not None
    info.type, info.size = tarfile.REGTYPE, member.size
    out.addfile(info, data)


class _Capped:
    """A file that refuses to grow past ``limit`` bytes: hard links and repeated sources stage
    their target's bytes again each time, so the layer can be far larger than the context."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out, self.limit, self.size = out, limit, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise PayloadTooLarge(f"the COPY step's files are past a layer's limit of {self.limit >> 20} MiB")
        return self.out.write(data)


def staging_layer(
    ctx: BuildContext,
    step: CopyStep,
    index: int,
    out_path: Path,
    max_bytes: int,
) -> tuple[LayerMeta, list[Staged]]:
    """Write the step's staging layer to ``out_path`` (deterministic: the same files give the
    same digest, which is the step's content in its cache key); 413 past ``max_bytes``, before
    more than that is written (the caller removes the file)."""
    sources = [name for source in step.sources for name in ctx.expand(step.line, source)]
    staged: list[Staged] = []
    top = f"{STAGING}/copy/{index}"
    with open(out_path, "wb") as raw:
        w = HashingWriter(cast(BinaryIO, _Capped(raw, max_bytes)))
        with tarfile.open(fileobj=w, mode="w|", format=tarfile.PAX_FORMAT) as out:  # type: ignore[call-overload]
            out.addfile(_dir_info(STAGING, 0o700))
            out.addfile(_dir_info(f"{STAGING}/copy", 0o700))
            out.addfile(_dir_info(top, 0o700))
            for n, name in enumerate(sources):
                here = f"{top}/{n}"
                out.addfile(_dir_info(here, 0o700))
                base = posixpath.basename(name) or "."
                if ctx.is_dir(name):
                    staged.append(Staged("/" + here, base, True))
                    for inner in ctx.below(name):
                        rel = inner[len(name) + 1 :] if name else inner
                        _add(ctx, out, inner, f"{here}/{rel}", step.line)
                else:
                    staged.append(Staged("/" + here, base, False))
                    _add(ctx, out, name, f"{here}/{base}", step.line)
        return w.meta(), staged


def copy_command(step: CopyStep, staged: list[Staged]) -> str:
    """The build-host half of COPY: put each staged source into place, then drop the staging
    files (the step's layer then has a whiteout for /.warren-build, harmless without it)."""
    q = shlex.quote
    dest = step.dest
    into_dir = step.dest_is_dir or any(s.is_dir for s in staged)
    lines = ["set -e", f"/bin/mkdir -p -- {q(dest if into_dir else posixpath.dirname(dest) or '/')}"]
    for s in staged:
        if s.is_dir:
            # Each child on its own: `cp -a src/. dest` would give dest the staging dir's owner.
            lines.append(
                f"/usr/bin/find {q(s.path)} -mindepth 1 -maxdepth 1 -exec /bin/cp -a -t {q(dest)} -- {{}} +"
            )
        elif into_dir:
            lines.append(f"/bin/cp -a -- {q(s.path + '/' + s.name)} {q(dest + '/')}")
        else:
            lines.append(f"/bin/cp -a -- {q(s.path + '/' + s.name)} {q(dest)}")
    lines.append(f"/bin/rm -rf /{STAGING}")
    return "\n".join(lines)


def workdir_command(step: WorkdirStep) -> str:
    return f"/bin/mkdir -p -- {shlex.quote(step.path)}"


def empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT):
        pass
    return buf.getvalue()
