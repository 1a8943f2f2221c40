"""Layers as read-only squashfs images, loop-mounted where extraction would put the tree
(docs/templates.md §2). A layer directory installed this way holds::

    <digest>/
      layer.sqfs    the image, 0600 root, made from the converted tar by the packer: the
                    compiled writer (``warren-layer-sqfs``) where built, ``tar2sqfs`` otherwise
      tree/         the image mounted ro,nosuid,nodev (a loop device that clears itself on umount)
      layer.json

The packer runs as a uid of its own (``PACKER_UID_BASE``) under resource limits, reading the tar
``warren.layers.convert_layer`` writes (every check of extraction already made), so what it
parses is never the tenant's tar. Whatever it cannot take (:class:`NeedsExtraction`, or a
failure of its own) leaves the caller to extract the layer instead.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import secrets
import shutil
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from warren.agent.fsmount import start_writeback
from warren.agent.layer_convert import Conversion, native_converter
from warren.agent.proc import MS_NODEV, MS_NOSUID, mount, mounts_under, umount
from warren.layers import LayerError, LayerStats
from warren.layers.convert_server import ConverterDeclined, minimal_env
from warren.layers.image_tar import NeedsExtraction, convert_layer

log = logging.getLogger("warren.agent.layers")

IMAGE = "layer.sqfs"
# The compiled image writer (native/layer_sqfs.c), which `make setup` builds beside the venv's
# python: tar2sqfs' job in one thread, confined by its own seccomp filter (a small layer's
# image in ~25 ms of CPU instead of ~70). Without it, tar2sqfs makes the images.
WRITER_NAME = "warren-layer-sqfs"
PACKER_ENV = "WARREN_LAYER_PACKER"
NOBODY = 65534
# The packer runs as a uid of its own per run, not nobody: tar2sqfs is dumpable after its exec, and
# any other process of its uid could ptrace it (a converter child, another layer's packer). Picked
# at random from a range no one else uses (the sandboxes' mapped range is 1e9 + 65536, the slots'
# namespace owners 2e9 + slot), so that agents sharing a host rarely pick the same.
PACKER_UID_BASE = 2_100_000_000
PACKER_UIDS = 1 << 20
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
# The packer's budget: CPU seconds (a minute, plus one per 5 MB of tar), memory, and output size
# (an image of a tar is never much larger than the tar).
CPU_BASE_S = 60
CPU_BYTES_PER_S = 5 << 20
ADDRESS_SPACE = 4 << 30
IMAGE_SLACK = 64 << 20
WRITEBACK_MARGIN = 1 << 20  # the image's last bytes are left to the next start
JOBS = "1"  # one compressor thread: as fast, and 10-15% less CPU than 2 (docs/benchmarks.md, session 8)
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LOOP_TRIES = 20
MS_RDONLY = 1
# struct loop_config: fd, block_size, then struct loop_info64 of which only lo_flags is set
# (its 5 u64 and 3 u32 before it, the names, key and init after), then 8 reserved u64.
_LOOP_CONFIG = struct.Struct("=II40x12xI64x64x32x16x64x")


@dataclass(frozen=True, slots=True)
class Support:
    """Whether this host can install layers as images, and why not."""

    ok: bool
    detail: str


def support() -> Support:
    """A packer (the compiled writer, or tar2sqfs), the squashfs filesystem and loop devices
    (checked once at agent start)."""
    writer = native_writer()
    if writer is None and shutil.which("tar2sqfs") is None:
        missing = "neither warren-layer-sqfs (make setup) nor tar2sqfs (apt install squashfs-tools-ng)"
        return Support(False, missing)
    for tool in ("prlimit", "setpriv"):
        if shutil.which(tool) is None:
            return Support(False, f"{tool} not found (util-linux)")
    if not os.path.exists("/dev/loop-control"):
        return Support(False, "no /dev/loop-control (loop devices)")
    if not _has_squashfs():
        return Support(False, "squashfs is not in /proc/filesystems and modprobe squashfs failed")
    if writer is not None:
        packer = "warren-layer-sqfs, under its own seccomp filters"
    else:
        confined = "under seccomp" if _confined_exec() else "without seccomp (no compiled converter)"
        packer = f"tar2sqfs, {confined}"
    return Support(True, f"layers install as loop-mounted squashfs images ({packer})")


def native_writer() -> str | None:
    """The compiled image writer's path, or None when it is not built (see WRITER_NAME) or the
    agent was started with ``WARREN_LAYER_PACKER=tar2sqfs`` (bench/layer_fetch.py --packer)."""
    if os.environ.get(PACKER_ENV) == "tar2sqfs":
        return None
    path = os.path.join(os.path.dirname(sys.executable), WRITER_NAME)
    return path if os.access(path, os.X_OK) else None


def _has_squashfs() -> bool:
    def listed() -> bool:
        try:
            with open("/proc/filesystems") as f:
                return any(line.split()[-1:] == ["squashfs"] for line in f)
        except OSError:
            return False

    if listed():
        return True
    try:
        subprocess.run(["modprobe", "squashfs"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed()


def build_image(tar: Path, work: Path, *, uid_base: int, max_bytes: int) -> LayerStats:
    """``work/layer.sqfs`` from layer tar ``tar`` (already hashed). Raises ``LayerError`` when the
    layer is refused (as extraction would), ``NeedsExtraction`` when it must be extracted."""
    out_dir = _out_dir(work)
    try:
        packer = _Packer(tar.stat().st_size, out_dir)
        try:
            try:
                stats = convert_layer(tar, packer.stdin_fd(), uid_base=uid_base, max_bytes=max_bytes)
            except BrokenPipeError:
                stats = None  # the packer gave up: its exit status says why
            finally:
                packer.close_stdin()
        except BaseException:
            packer.kill()
            packer.close_stdin()
            raise
        packer.wait(fed=stats is not None)
        assert stats is not None
        _take_image(out_dir, work)
        return stats
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


class StreamedImage:
    """An image made while its layer arrives (``LayerCache.receive``): :meth:`put` each chunk as
    it comes, then :meth:`finish` once its digest matched, or :meth:`abort`. The converter runs
    in a process of its own (``layer_convert``) writing straight into the packer, so
    receiving and hashing, converting and packing run at once, on separate cores. Nothing of it
    is mounted or kept before ``finish``. ``native``: by the compiled converter where it is
    built, which may decline the layer (then :func:`rebuild` converts it again)."""

    def __init__(self, work: Path, *, size: int, uid_base: int, max_bytes: int, native: bool = False) -> None:
        self._work = work
        self._out_dir = _out_dir(work)
        self._image_fd = -1
        self._written_back = 0
        try:
            self._packer = _Packer(size, self._out_dir)
        except BaseException:
            shutil.rmtree(self._out_dir, ignore_errors=True)
            raise
        # The converter's uid: its own, not its packer's (tar2sqfs is dumpable after its exec).
        self._uid = _take_uid()
        try:
            self._conversion = Conversion(
                self._packer.stdin_fd(),
                uid_base=uid_base,
                max_bytes=max_bytes,
                cpu_s=_cpu_s(size),
                native=native,
                user=self._uid,
            )
        except BaseException:
            self._kill()
            raise
        finally:
            self._packer.close_stdin()  # the converter's now: the packer ends when it does

    def put(self, chunk: bytes) -> None:
        """The next chunk of the layer (blocks while the converter is a few MiB behind)."""
        self._conversion.put(chunk)

    def put_file(self, fd: int, offset: int, n: int) -> None:
        """The next ``n`` bytes of the layer, at ``offset`` in file ``fd`` (the received tar)."""
        self._conversion.put_file(fd, offset, n)

    def finish(self) -> LayerStats:
        """``work/layer.sqfs``, once every chunk was put and the layer's digest matched. Raises
        as :func:`build_image` does, or ``ConverterDeclined`` (the native converter left the
        layer to the Python one: :func:`rebuild`); nothing of the image is left then."""
        try:
            self._start_writeback()  # while the converter and the packer finish
            stats = self._conversion.result()
            self._packer.wait(fed=stats is not None)
            assert stats is not None
            self._start_writeback(whole=True)
            _take_image(self._out_dir, self._work)
            return stats
        finally:
            self.abort()

    def abort(self) -> None:
        """Stop converting and packing, and remove what was made (idempotent)."""
        self._conversion.discard()
        self._kill()

    def _kill(self) -> None:
        self._packer.kill()  # a write of the converter's fails: it ends
        self._packer.close_stdin()
        _release_uid(self._uid)
        if self._image_fd >= 0:
            os.close(self._image_fd)
            self._image_fd = -1
        shutil.rmtree(self._out_dir, ignore_errors=True)

    def _start_writeback(self, *, whole: bool = False) -> None:
        """Start writing the image's pages to disk before it is attached: attaching a loop
        device writes its file back first (Linux 6.x), which then waits for what is left, not
        for all of it. Started once when the last chunk is in (the converter and the packer are
        then finishing the tail), and over the whole file once the packer is done (``whole``: its
        tables and superblock). Not every few MiB while the image grows: for a 256 MB image
        that cost the agent ~250 ms more CPU than one pass (docs/benchmarks.md, session 9)."""
        if self._image_fd < 0:
            try:  # the packer (not root) makes it: no link followed, no wait on a fifo put there
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                self._image_fd = os.open(self._out_dir / IMAGE, flags)
            except OSError:
                return  # not there yet
        if whole:
            start_writeback(self._image_fd)
            return
        end = os.fstat(self._image_fd).st_size - WRITEBACK_MARGIN  # the page being written: later
        if end > self._written_back:
            start_writeback(self._image_fd, self._written_back, end - self._written_back)
            self._written_back = end


def rebuild(tar: Path, work: Path, *, uid_base: int, max_bytes: int) -> LayerStats:
    """``work/layer.sqfs`` from the received tar by the Python converter (in its process, as
    nobody), for a layer the native one declined. Raises as :meth:`StreamedImage.finish`."""
    image = StreamedImage(work, size=tar.stat().st_size, uid_base=uid_base, max_bytes=max_bytes, native=False)
    try:
        with open(tar, "rb", buffering=0) as f:
            while chunk := f.read(PIPE_SIZE):
                image.put(chunk)
    except BaseException:
        image.abort()
        raise
    return image.finish()


def _cpu_s(size: int) -> int:
    return CPU_BASE_S + size // CPU_BYTES_PER_S


def _out_dir(work: Path) -> Path:
    """The directory the packer writes in: nobody's, inside the install's own (root's, 0700)."""
    out_dir = work / "image"
    out_dir.mkdir(mode=0o700)
    os.chown(out_dir, NOBODY, NOBODY)
    return out_dir


_uids_lock = threading.Lock()
_uids_taken: set[int] = set()


def _take_uid() -> int:
    """A uid of PACKER_UIDS' range no run of this agent holds (kept until it exited)."""
    with _uids_lock:
        while (uid := PACKER_UID_BASE + secrets.randbelow(PACKER_UIDS)) in _uids_taken:
            pass
        _uids_taken.add(uid)
        return uid


def _release_uid(uid: int) -> None:
    """Once its run exited (idempotent: kill and wait may both come)."""
    with _uids_lock:
        _uids_taken.discard(uid)


def _tool(name: str) -> str:
    """``name``'s path on the agent's PATH (where ``support`` found it): the packer's own PATH
    is only ``/usr/bin:/bin``."""
    return shutil.which(name) or name


@functools.cache
def _confined_exec() -> tuple[str, ...]:
    """The launcher that puts tar2sqfs under its seccomp filter (the compiled converter's
    ``--confined-exec``, native/seccomp.c: no signal, ptrace, socket, namespace or new process;
    threads and exec kept), or nothing where it is not built, or built before it had the mode
    (then every tar2sqfs would fail, and every layer be extracted: logged, run without)."""
    native = native_converter()
    if native is None:
        return ()
    try:
        probe = subprocess.run([native, "--confined-exec", "/bin/true"], capture_output=True, timeout=30)
        ok = probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        log.error("event=layer_packer_unconfined native=%s (rebuild it: make setup)", native)
        return ()
    return (native, "--confined-exec")


def _packer_argv() -> list[str]:
    """The packer's command line after its limits: the compiled writer (it confines itself once
    its output is open: no exec at all), or tar2sqfs behind the converter's launcher."""
    writer = native_writer()
    if writer is not None:
        return [writer, IMAGE]
    return [
        *_confined_exec(),
        _tool("tar2sqfs"), "-q", "-f", "--no-skip", "-c", "lz4", "-j", JOBS,
        "-d", "uid=0,gid=0,mode=0700",
        IMAGE,
    ]  # fmt: skip


def packer_path() -> str:
    """The program that packs images on this agent (what its process runs)."""
    return native_writer() or _tool("tar2sqfs")


class _Packer:
    """One packer run (the compiled writer, or tar2sqfs), as a uid of its own under limits sized
    for a tar of ``size`` bytes, reading the converted tar on its stdin and writing
    ``cwd/layer.sqfs``."""

    def __init__(self, size: int, cwd: Path) -> None:
        self.uid = uid = _take_uid()
        os.chown(cwd, uid, uid)  # made nobody's by _out_dir: this run's alone now
        self.name = os.path.basename(packer_path())
        argv = [
            # setpriv, not Popen(user=...): a set-uid in the child of a threaded agent crashed
            # it now and then (SIGSEGV before exec); this way root execs setpriv, which drops.
            # --no-new-privs: nothing it execs gains privileges (set-uid bits, capabilities).
            _tool("setpriv"), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
            _tool("prlimit"),
            f"--cpu={_cpu_s(size)}",
            f"--as={ADDRESS_SPACE}",
            f"--fsize={size + size // 8 + IMAGE_SLACK}",
            "--",
            *_packer_argv(),
        ]  # fmt: skip
        try:
            self.proc = self._start(argv, cwd)
        except BaseException:
            _release_uid(uid)
            raise
        self._errors: list[bytes] = []
        stderr = self.proc.stderr
        assert stderr is not None and self.proc.stdin is not None
        # Read all along: a full stderr pipe would stall it.
        self._reader = threading.Thread(
            target=lambda: self._errors.append(stderr.read(64 << 10)), daemon=True
        )
        self._reader.start()
        with contextlib.suppress(OSError):  # a smaller pipe is only slower
            fcntl.fcntl(self.proc.stdin.fileno(), F_SETPIPE_SZ, PIPE_SIZE)

    @staticmethod
    def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=cwd,  # entered as root; the image is written relative to it as the run's uid
            close_fds=True,
            env=minimal_env(os.environ, keep=()),  # none of the agent's: its tools are named by path
        )

    def stdin_fd(self) -> int:
        assert self.proc.stdin is not None
        return self.proc.stdin.fileno()

    def close_stdin(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=10)
        _release_uid(self.uid)

    def wait(self, *, fed: bool) -> None:
        """Raises ``NeedsExtraction`` when the packer failed (or was not fed the whole tar)."""
        code = self.proc.wait()
        self._reader.join(timeout=10)
        _release_uid(self.uid)
        if code != 0 or not fed:
            detail = b"".join(self._errors).decode("utf-8", "replace").strip().splitlines()[-1:]
            raise NeedsExtraction(f"{self.name} exited with {code}: {(detail or ['(no message)'])[0][:300]}")


def _take_image(out_dir: Path, work: Path) -> None:
    image = out_dir / IMAGE
    # Root's from here on: the packer's uid made it, and may touch it no more.
    fd = os.open(image, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    os.rename(image, work / IMAGE)


def mount_image(layer_dir: Path, tree: Path) -> None:
    """Mount ``layer_dir``'s image read-only on ``tree`` (made if missing): a read-only loop
    device that clears itself once unmounted, attached and mounted with ioctl(2) and mount(2)
    (the `mount` program's fork and exec came last on a layer fetch's critical path); the
    program where the ioctls are not there."""
    tree.mkdir(mode=0o700, exist_ok=True)
    image = layer_dir / IMAGE
    img = os.open(image, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        try:
            loop, device = _attach_loop(img)
        except OSError as e:
            if e.errno not in (errno.ENOTTY, errno.EINVAL, errno.ENOENT, errno.ENXIO):
                raise
            _mount_program(image, tree)
            return
        try:
            mount(device, str(tree), "squashfs", "", MS_RDONLY | MS_NOSUID | MS_NODEV)
        finally:
            os.close(loop)  # the mount holds the device now; if it failed, it clears
    finally:
        os.close(img)


def _attach_loop(img: int) -> tuple[int, str]:
    """A free loop device set up read-only and autoclear on fd ``img``: (its fd, its path)."""
    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(LOOP_TRIES):
            device = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
            loop = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.ioctl(
                    loop, LOOP_CONFIGURE, _LOOP_CONFIG.pack(img, 0, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR)
                )
                return loop, device
            except OSError as e:
                os.close(loop)
                if e.errno != errno.EBUSY:  # another process took it between the two calls
                    raise
        raise OSError(errno.EBUSY, f"no free loop device after {LOOP_TRIES} tries")
    finally:
        os.close(ctl)


def _mount_program(image: Path, tree: Path) -> None:
    proc = subprocess.run(
        ["mount", "-t", "squashfs", "-o", "loop,ro,nosuid,nodev", str(image), str(tree)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise OSError(f"mount {image}: {proc.stderr.decode('utf-8', 'replace').strip()[:300]}")


def is_image(layer_dir: Path) -> bool:
    return (layer_dir / IMAGE).is_file()


def unmount_tree(tree: Path) -> bool:
    """Unmount an image's tree (its loop device clears itself). False when it is busy (a
    sandbox's overlay holds it): then it stays mounted, and the caller keeps the layer."""
    if not os.path.ismount(tree):
        return True
    try:
        umount(str(tree))
    except OSError as e:
        if e.errno == 16:  # EBUSY
            return False
        raise
    return True


def release_leftovers(path: Path) -> None:
    """Before a leftover install or delete is removed: nothing mounted in it (lazily: nothing
    uses a leftover), and no loop device left on its image."""
    for mp in mounts_under(path):
        try:
            umount(mp, lazy=True)
        except OSError as e:
            log.warning("event=layer_leftover_umount_failed path=%s error=%s", mp, e)
    detach_loops(path)


def detach_loops(under: Path) -> list[str]:
    """Detach loop devices whose backing file is below ``under`` and that nothing mounts (a
    crash between attaching and mounting leaves one)."""
    gone = []
    prefix = str(under) + "/"
    for dev in Path("/sys/block").glob("loop*"):
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:
            continue
        if backing.removesuffix(" (deleted)").startswith(prefix) and not _mounted(f"/dev/{dev.name}"):
            subprocess.run(
                ["losetup", "-d", f"/dev/{dev.name}"], capture_output=True, timeout=30, check=False
            )
            gone.append(dev.name)
    return gone


def _mounted(device: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" - ", 1)[-1].split()[1:2] == [device] for line in f)


__all__ = [
    "IMAGE",
    "ConverterDeclined",
    "LayerError",
    "NeedsExtraction",
    "StreamedImage",
    "Support",
    "build_image",
    "detach_loops",
    "is_image",
    "mount_image",
    "native_writer",
    "rebuild",
    "release_leftovers",
    "support",
    "unmount_tree",
]
