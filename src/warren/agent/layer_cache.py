"""The layers installed on this host (docs/templates.md §2), under ``<data-dir>/layers/``::

    layers/                   0700 root: nothing in it is for anyone but the agent
      <digest>/               one installed layer, renamed into place once complete
        tree/                 the layer in overlayfs' own format (whiteouts as 0:0 char devices,
                              opaque dirs by xattr), owned by the mapped uids: an overlay lowerdir
        layer.json            {"digest", "size"}: the size of the tar it came from
        layer.sqfs            when installed as an image (layer_image.py): tree/ is its
                              read-only loop mount
      .skeleton/              the mount points the runtime needs, at the bottom of every chain
      .tmp-*  .del-*          an install or a delete under way; removed at startup

A layer arrives as an OCI layer tar. Its bytes go to a temporary file in the same filesystem,
hashed on the way in and bounded by its declared size; a mismatch keeps nothing and answers
``DATA_LOSS``. The tar then becomes a squashfs image mounted on ``tree/`` where this host can
(``layer_image``; the same checks, far faster for many small files), or is extracted
(``warren.layers.extract_layer``: never follows a link, never writes outside its directory), in
a temporary directory that is renamed into place, so a layer is either whole or absent.
Installs of one digest are serialized: the second waits and finds it installed. Installs of
different digests take turns for this host's slots (``layer_slots``: a few at once, fair between
teams, the rest queued before any of their bytes are read).

A layer is in use while a sandbox on this host (running, paused, re-adopted, or a build step)
has it in its chain, or while a create on it is under way (:meth:`LayerCache.pin`). In-use
layers are never deleted. The check and the rename that takes a layer away happen without an
``await`` between them, as do a create's presence check and its pin, so the two cannot
interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import logging
import os
import shutil
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from warren.agent import layer_convert, layer_image
from warren.agent.chain import DIGEST, MINIMAL_BASE, Chain, check_digest
from warren.agent.layer_abandon import StreamedLayers
from warren.agent.layer_slots import InstallSlots, Ticket
from warren.agent.templates import MAPPED_BASE
from warren.errors import InvalidRequest, InvalidState, PayloadTooLarge, WarrenError
from warren.fair_turns import FairTurns
from warren.layers import HashingWriter, LayerError, LayerMeta, extract_layer, write_layer
from warren.stoppable import Stopped, run_stoppable

log = logging.getLogger("warren.agent.layers")

STREAM_CHUNK = 1 << 20
EXPORTS_AT_ONCE = 2  # sandboxes' writable layers turned into tars at once (export)
# A layer this small (tar bytes: at most 8 192 members) installs in well under a core-second:
# it takes the small layers' turns (LayerCache._turns).
SMALL_LAYER = 4 << 20
LAYER_TREE = "tree"
LAYER_INFO = "layer.json"
SKELETON = ".skeleton"
# Directories and files the runtime mounts over or into. In a chain's bottom layer they keep
# the runtime from creating them in the sandbox's writable layer, and so in a build step's layer.
SKELETON_DIRS = (".warren", ".warren/guest", "run", "run/warren", "etc", "dev", "proc", "sys")
SKELETON_FILES = ("etc/hostname", "etc/hosts", "etc/resolv.conf")


class LayerCorrupt(WarrenError):
    """The bytes received are not the layer they were sent as (gRPC ``DATA_LOSS``)."""

    code = "data_loss"


@dataclass(frozen=True, slots=True)
class InstalledLayer:
    digest: str
    size: int
    in_use: bool


class LayerCache:
    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        in_use: Callable[[], set[str]] | None = None,
        images: bool = True,
        installs_at_once: int | None = None,
        install_queue: int = 64,
    ) -> None:
        self.root = root
        self.max_bytes = max_bytes
        # Install layers as squashfs images (layer_image.py) when asked and this host can;
        # decided in prepare(), extraction until then.
        self._want_images = images
        self.images = False
        # The digests of every registered sandbox's chain (the manager's registry).
        self._sandboxes_use = in_use or set
        self._pins: Counter[str] = Counter()
        self._installing: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._streamed = StreamedLayers(self.delete)  # streams to the CP (stream_and_install)
        # Exports (snapshots, build steps) walking sandboxes' files at once: each may hold up to
        # ~50 MiB of the tenant's names (layers/writer.py), so their number is the platform's;
        # their turns are fair between teams (one team's exports of many files held another
        # team's snapshot behind all of them).
        self._exports = FairTurns(EXPORTS_AT_ONCE)
        # Conversions and extractions at once (each may spend a core for minutes): the CPUs. A
        # small layer (a snapshot's few files, a config step's) takes turns of its own, half as
        # many: its work is bounded by its size, so it never waits for a large install's slot.
        cap = installs_at_once or os.cpu_count() or 1
        self.slots = InstallSlots(cap, install_queue)
        self.small_slots = InstallSlots(max(1, cap // 2), install_queue)

    # ------------------------------------------------------------------------ startup

    def prepare(self) -> list[Path]:
        """At startup: the dir (0700 root), the skeleton layer; returns the leftovers removed
        (installs and deletes a crash interrupted: nothing refers to them)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chown(self.root, 0, 0)
        os.chmod(self.root, 0o700)
        found = sorted([*self.root.glob(".tmp-*"), *self.root.glob(".del-*")])
        for p in found:
            layer_image.release_leftovers(p)
            _remove(p)
        # A loop device on an image that nothing mounts (a crash between attach and mount).
        for dev in layer_image.detach_loops(self.root):
            log.info("event=layer_loop_detached device=%s", dev)
        if not (self.root / SKELETON).is_dir():
            self._make_skeleton()
        layer_convert.tune_allocator()  # layers arrive in 1 MiB messages, images or not
        if self._want_images:
            got = layer_image.support()
            self.images = got.ok
            native = layer_convert.native_converter()
            log.info("event=layer_install_mode images=%s detail=%r native=%s", got.ok, got.detail, native)
            if got.ok:
                try:  # its imports now, not on the first layer's way
                    layer_convert.warm()
                except OSError as e:
                    log.warning("event=layer_converter_failed error=%s", e)
        else:
            log.info("event=layer_install_mode images=False detail='extraction (setting)'")
        self._remount()
        return found

    def _remount(self) -> None:
        """Image layers installed before a restart are mounted again (a layer whose image
        cannot be mounted is removed: it is fetched again when needed)."""
        for p in sorted(self.root.iterdir()):
            if not (DIGEST.match(p.name) and layer_image.is_image(p)):
                continue
            if os.path.ismount(p / LAYER_TREE):
                continue
            try:
                layer_image.mount_image(p, p / LAYER_TREE)
            except (OSError, subprocess.SubprocessError) as e:
                log.error("event=layer_remount_failed digest=%s error=%s", p.name, e)
                doomed = self._temp_path(prefix=".del-")
                os.rename(p, doomed)
                layer_image.release_leftovers(doomed)
                _remove(doomed)

    def _make_skeleton(self) -> None:
        tmp = self._temp_path()
        tmp.mkdir(mode=0o755)
        for d in SKELETON_DIRS:
            (tmp / d).mkdir(mode=0o755)
        for f in SKELETON_FILES:
            (tmp / f).touch(mode=0o644)
        for p in [tmp, *(tmp / d for d in SKELETON_DIRS), *(tmp / f for f in SKELETON_FILES)]:
            os.lchown(p, MAPPED_BASE, MAPPED_BASE)
        os.rename(tmp, self.root / SKELETON)

    def unmount_idle(self) -> int:
        """At agent stop: unmount the images no sandbox holds (a running sandbox's stay, busy),
        so a stopped agent leaves no loop device behind; the next start mounts them again."""
        n = 0
        for p in sorted(self.root.iterdir()):
            if DIGEST.match(p.name) and layer_image.is_image(p):
                with contextlib.suppress(OSError):
                    n += layer_image.unmount_tree(p / LAYER_TREE)
        return n

    @property
    def skeleton(self) -> Path:
        return self.root / SKELETON

    # ----------------------------------------------------------------------- lookups

    def tree(self, digest: str) -> Path:
        return self.root / digest / LAYER_TREE

    def has(self, digest: str) -> bool:
        # layer.json is written before the rename: a <digest> dir is always complete.
        return (self.root / digest).is_dir()

    def missing(self, digests: Iterable[str]) -> list[str]:
        """Those not here (``HasLayers``, a create's chain); the others count as delivered to
        whoever asked, should a stream that is installing one be abandoned (layer_abandon.py)."""
        wanted = [check_digest(d) for d in digests]
        lacking = [d for d in wanted if not self.has(d)]
        self._streamed.seen(set(wanted) - set(lacking))
        return lacking

    @contextlib.contextmanager
    def pin(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep ``digests`` from being deleted while a create or a build step uses them."""
        held = list(digests)
        self._pins.update(held)
        try:
            yield
        finally:
            self._pins.subtract(held)
            self._pins += Counter()  # drops the zero counts

    @contextlib.contextmanager
    def hold(self, chain: Chain | None) -> Iterator[None]:
        """A chain's layers, here and kept while the caller makes a sandbox on them; refused
        (``FAILED_PRECONDITION`` "missing layers: d1,d2") when some are not installed. The check
        and the pin happen together, so a delete cannot come between them."""
        if chain is None:
            yield
            return
        if missing := self.missing(chain.layers):
            raise InvalidState(f"missing layers: {','.join(missing)}")
        with self.pin(chain.layers):
            yield

    async def lower(self, chain: Chain, minimal: Callable[[], Awaitable[Path]]) -> list[Path]:
        """A chain's overlay lowerdirs, topmost first: its layers, its base (``minimal``'s
        rootfs, or nothing for ``scratch``), and the skeleton, so that every chain has the
        runtime's mount points without them landing in its writable layer."""
        base = [await minimal()] if chain.base == MINIMAL_BASE else []
        # A layer twice in a chain (two steps that changed nothing make the same empty layer)
        # is mounted once, where it is topmost: the view is the same, and overlayfs wants
        # distinct lowerdirs.
        topmost_first = list(dict.fromkeys(reversed(chain.layers)))
        return [*(self.tree(d) for d in topmost_first), *base, self.skeleton]

    def in_use(self) -> set[str]:
        return self._sandboxes_use() | set(self._pins) | set(self._installing)

    def installed(self) -> list[InstalledLayer]:
        used = self.in_use()
        out = []
        for p in sorted(self.root.iterdir()):
            if DIGEST.match(p.name) and p.is_dir():
                out.append(InstalledLayer(p.name, _recorded_size(p), p.name in used))
        return out

    # ---------------------------------------------------------------------- installs

    async def receive(
        self,
        digest: str,
        size: int,
        chunks: AsyncIterator[bytes],
        *,
        team: str = "",
        admitted: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Install the layer ``chunks`` carry (``PutLayer``). False, without reading a chunk, when
        it is here already (or arrives while waiting for a concurrent install of it). The first
        chunk is read only once ``team``'s install has a slot (``layer_slots``); ``admitted`` is
        awaited then (the RPC tells the sender to start sending)."""
        check_digest(digest)
        if not 0 <= size <= self.max_bytes:
            raise PayloadTooLarge(
                f"layer size {size} is not within 0-{self.max_bytes} bytes (this host's max)"
            )
        async with self._install_lock(digest):
            if self.has(digest):  # (pushed while a stream installed it: delivered, layer_abandon)
                self._streamed.seen([digest])
                return False
            async with self._turns(size).slot(team) as ticket:
                if admitted is not None:
                    await admitted()
                tar = self._temp_path(".tar")
                try:
                    if self.images:
                        await self._receive_as_image(tar, digest, size, chunks, ticket)
                    else:
                        await self._receive_to(tar, digest, size, chunks)
                        await self._install_tar(tar, digest, size, ticket)
                finally:
                    tar.unlink(missing_ok=True)
        return True

    def _turns(self, size: int) -> InstallSlots:
        """The turns a layer of ``size`` tar bytes takes (the size is a bound: a layer that sends
        more than it declared is refused as it arrives)."""
        return self.small_slots if size <= SMALL_LAYER else self.slots

    async def _receive_as_image(
        self, tar: Path, digest: str, size: int, chunks: AsyncIterator[bytes], ticket: Ticket
    ) -> None:
        """Receive, hash and convert at once: the converter and ``tar2sqfs`` take each chunk as it
        arrives (``layer_image.StreamedImage``). The image is only mounted once the digest
        matched; a mismatch discards it (``DATA_LOSS``, nothing kept). The tar is still written,
        for a layer only extraction can install, and for one the native converter declines (the
        Python one converts it again from the tar: ``layer_image.rebuild``)."""
        work = self._temp_path()
        work.mkdir(mode=0o700)
        image: layer_image.StreamedImage | None = None
        try:
            try:
                image = layer_image.StreamedImage(
                    work, size=size, uid_base=MAPPED_BASE, max_bytes=self.max_bytes, native=True
                )
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("event=layer_image_failed digest=%s error=%s", digest, e)
            await self._receive_to(tar, digest, size, chunks, also=image.put_file if image else None)
        except BaseException:
            if image is not None:
                image.abort()
            _remove(work)
            raise
        await self._install_tar(tar, digest, size, ticket, work=work, image=image)

    async def _receive_to(
        self,
        tar: Path,
        digest: str,
        size: int,
        chunks: AsyncIterator[bytes],
        also: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """The layer's bytes into ``tar``, hashed, bounded and checked; each chunk handed to
        ``also`` as well once written (the image being made while they arrive), as (the tar's
        fd, offset, length): spliced from the page cache, not copied again."""
        with _new_file(tar) as f:
            out = HashingWriter(f)
            async for chunk in chunks:
                if out.size + len(chunk) > size:
                    raise LayerCorrupt(f"layer {digest}: more bytes than the {size} declared")
                # Hashing and writing 1 MiB takes about a millisecond: off the event loop.
                await asyncio.to_thread(_take, out, f, chunk, also)
        got = out.meta()
        if got.size != size:
            raise LayerCorrupt(f"layer {digest}: {got.size} bytes received, {size} declared")
        if got.digest != digest:
            raise LayerCorrupt(f"layer {digest}: the bytes received hash to {got.digest}")

    async def install_file(self, tar: Path, digest: str, size: int, *, team: str = "") -> bool:
        """Install a tar this agent wrote and hashed itself (a build step's or a snapshot's
        layer), in ``team``'s turn. The tar is left where it is; False when the layer was here
        already."""
        check_digest(digest)
        async with self._install_lock(digest):
            if self.has(digest):
                return False
            async with self._turns(size).slot(team) as ticket:
                await self._install_tar(tar, digest, size, ticket)
        return True

    async def _install_tar(
        self,
        tar: Path,
        digest: str,
        size: int,
        ticket: Ticket,
        *,
        work: Path | None = None,
        image: layer_image.StreamedImage | None = None,
    ) -> None:
        # One thread call, shielded: a caller that gives up cannot stop an extraction halfway
        # (its thread would write on into a directory being removed); it finishes, or cleans
        # up after itself, and keeps its slot until then.
        install = functools.partial(self._extract_into_place, tar, digest, size, work=work, image=image)
        fut = asyncio.ensure_future(asyncio.to_thread(install))
        ticket.keep_until(fut)
        await asyncio.shield(fut)
        log.info("event=layer_installed digest=%s bytes=%d", digest, size)

    def _extract_into_place(
        self,
        tar: Path,
        digest: str,
        size: int,
        *,
        work: Path | None = None,
        image: layer_image.StreamedImage | None = None,
    ) -> None:
        if work is None:
            work = self._temp_path()
            work.mkdir(mode=0o700)
        try:
            try:
                self._make_tree(tar, work, digest, image)
            except LayerError as e:
                raise InvalidRequest(f"layer {digest} cannot be installed: {e}") from e
            (work / LAYER_INFO).write_text(json.dumps({"digest": digest, "size": size}))
            try:
                os.rename(work, self.root / digest)
            except OSError:
                if not self.has(digest):
                    raise
                # an install its caller gave up on got there first: same bytes
                layer_image.release_leftovers(work)
                _remove(work)
        except BaseException:
            if image is not None:
                image.abort()
            layer_image.release_leftovers(work)
            _remove(work)
            raise

    def _make_tree(
        self, tar: Path, work: Path, digest: str, image: layer_image.StreamedImage | None = None
    ) -> None:
        """``work/tree``: a mounted image (``image``, made while the tar arrived, or made now),
        or an extraction when images are off or this layer cannot be one (NeedsExtraction:
        valid, but only extraction can apply it)."""
        if self.images:
            try:
                if image is not None:
                    try:
                        image.finish()
                    except layer_image.ConverterDeclined as e:  # the Python converter's, then
                        log.info("event=layer_native_declined digest=%s reason=%r", digest, str(e)[:200])
                        layer_image.rebuild(tar, work, uid_base=MAPPED_BASE, max_bytes=self.max_bytes)
                else:
                    layer_image.build_image(tar, work, uid_base=MAPPED_BASE, max_bytes=self.max_bytes)
                layer_image.mount_image(work, work / LAYER_TREE)
                return
            except layer_image.NeedsExtraction as e:
                log.info("event=layer_extracted_instead digest=%s reason=%r", digest, str(e)[:300])
            except (OSError, subprocess.SubprocessError) as e:
                log.warning("event=layer_image_failed digest=%s error=%s", digest, e)
            layer_image.release_leftovers(work)
            (work / layer_image.IMAGE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (work / LAYER_TREE).rmdir()
        extract_layer(tar, work / LAYER_TREE, uid_base=MAPPED_BASE, max_bytes=self.max_bytes)

    # ----------------------------------------------------------------------- exports

    async def export(
        self, upper: Path, limit: int, uid_base: int = MAPPED_BASE, *, tenant: str = ""
    ) -> tuple[Path, LayerMeta]:
        """A sandbox's writable layer as a layer tar (a temporary file here, for
        :meth:`stream_and_install`), owners shifted back by ``uid_base`` (the sandbox's range:
        the tar is canonical), in ``tenant``'s turn. Past ``limit`` bytes (and this host's max):
        ``RESOURCE_EXHAUSTED``, and nothing is left."""
        limit = min(limit, self.max_bytes) if limit > 0 else self.max_bytes
        tar = self._temp_path(".tar")
        try:
            async with self._exports.turn(tenant):  # held until the writing thread ends
                meta = await run_stoppable(functools.partial(_write_bounded, upper, tar, limit, uid_base))
        except LayerError as e:  # the tenant's files (a `.wh.` name, holes): the caller's to fix
            tar.unlink(missing_ok=True)
            raise InvalidRequest(f"the sandbox's files cannot be exported: {e}") from e
        except BaseException:
            tar.unlink(missing_ok=True)
            raise
        return tar, meta

    async def stream_and_install(
        self, tar: Path, meta: LayerMeta, *, team: str = ""
    ) -> AsyncGenerator[bytes]:
        """``tar``'s bytes in 1 MiB chunks while it is installed here (so a sandbox on it needs no
        fetch); the last chunk comes once it is installed. The caller removes ``tar``, and closes
        this (``aclosing``) when its reader leaves: the CP cancelled the build or snapshot and
        records the layer nowhere, so the layer is removed once installed (session 25: kept, it
        was host disk no store quota counted until the collector's grace ran out)."""
        install = asyncio.ensure_future(self.install_file(tar, meta.digest, meta.size, team=team))
        install.add_done_callback(_log_install_failure)
        # Removed only once every stream of this digest has ended, none of them well: another
        # tenant's stream of the same layer may have ended well on it (layer_abandon.py).
        self._streamed.started(meta.digest)
        streamed = False
        try:
            with await asyncio.to_thread(open, tar, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, STREAM_CHUNK):
                    yield chunk
            await asyncio.shield(install)
            streamed = True
        finally:
            self._streamed.ended(meta.digest, install, delivered=streamed)

    @contextlib.asynccontextmanager
    async def _install_lock(self, digest: str) -> AsyncIterator[None]:
        lock, users = self._installing.setdefault(digest, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._installing[digest]

    # ----------------------------------------------------------------------- deletes

    async def delete(self, digests: Iterable[str]) -> tuple[list[str], list[str]]:
        """Remove the layers no sandbox uses. Returns (gone: not on this host any more, those
        that were not here included; kept: in use, or being installed)."""
        wanted = list(dict.fromkeys(check_digest(d) for d in digests))
        used = self.in_use()
        gone, kept, doomed = [], [], []
        for d in wanted:
            if d in used:
                kept.append(d)
                continue
            if self.has(d):
                # An image is unmounted first; one still busy (never, for a layer not in use:
                # but then it is kept, not half-removed). One syscall, no await.
                if not layer_image.unmount_tree(self.tree(d)):
                    log.warning("event=layer_delete_busy digest=%s", d)
                    kept.append(d)
                    continue
                # Renamed first (no await since the in-use check): a create that comes next
                # finds it missing instead of half-removed.
                tmp = self._temp_path(prefix=".del-")
                os.rename(self.root / d, tmp)
                doomed.append(tmp)
            gone.append(d)
        for p in doomed:
            await asyncio.to_thread(_remove, p)
        if gone or kept:
            log.info("event=layers_deleted deleted=%d kept=%d", len(gone), len(kept))
        return gone, kept

    def _temp_path(self, suffix: str = "", prefix: str = ".tmp-") -> Path:
        return self.root / f"{prefix}{uuid.uuid4().hex[:12]}{suffix}"


def _take(
    out: HashingWriter, f: BinaryIO, chunk: bytes, also: Callable[[int, int, int], None] | None
) -> None:
    start = out.size
    out.write(chunk)
    if also is not None:
        f.flush()  # (1 MiB chunks bypass its buffer: a no-op)
        also(f.fileno(), start, len(chunk))


def _new_file(path: Path) -> BinaryIO:
    # Readable too: what is received is spliced from it to the converter (``_take``).
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


class _Bounded(io.RawIOBase):
    """A file that refuses to grow past ``limit`` bytes (a layer's size limit), or at all once
    ``stop`` is set (its writer's caller was cancelled: warren/stoppable.py)."""

    def __init__(self, out: BinaryIO, limit: int, stop: threading.Event) -> None:
        self.out, self.limit, self.size, self.stop = out, limit, 0, stop

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        if self.stop.is_set():
            raise Stopped("the export was cancelled")
        if self.size + n > self.limit:
            raise PayloadTooLarge(f"the layer is larger than {self.limit} bytes, its limit")
        self.size += n
        return self.out.write(data)


def _write_bounded(upper: Path, tar: Path, limit: int, uid_base: int, stop: threading.Event) -> LayerMeta:
    with _new_file(tar) as f:
        return write_layer(upper, cast(BinaryIO, _Bounded(f, limit, stop)), uid_base=uid_base)


def _log_install_failure(task: asyncio.Future[bool]) -> None:
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("event=layer_install_failed error=%s", e)


def _recorded_size(layer_dir: Path) -> int:
    try:
        info: Any = json.loads((layer_dir / LAYER_INFO).read_text())
        return int(info["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _remove(p: Path) -> None:
    """Remove a file or a tree; ``rmtree`` never follows a link (a layer holds tenant links)."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
