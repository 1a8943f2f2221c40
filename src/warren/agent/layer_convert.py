"""The agent's end of the layer converter's processes (``warren.layers.convert_server``).

One server per agent process, started with the layer cache (``warm``) and kept: each layer is
converted in a child it forks, dropped to a uid of its own and under a seccomp filter, which
reads the tar from a pipe the agent fills as the chunks arrive and writes straight into
``tar2sqfs``' stdin. Receiving and hashing (the agent), converting (the child) and packing
(``tar2sqfs``) so run on as many cores as there are, not on the agent's one GIL. A server that
died is started again on the next layer; the server ends on its own once the agent (its
socket) is gone.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading

from warren.layers import LayerStats
from warren.layers.convert_server import minimal_env, result_of

# The compiled converter (native/layer_convert.c), which `make setup` builds beside the venv's
# python: plain layers convert in a few ms of CPU instead of ~100 (docs/benchmarks.md, session
# 12). Without it every layer takes the Python converter: the same answers, slower.
NATIVE_NAME = "warren-layer-convert"
NOBODY = 65534
F_SETPIPE_SZ = 1031
PIPE_SIZE = 4 << 20  # how far the agent may run ahead of the converter (root may exceed 1 MiB)
PIPE_FALLBACK = 1 << 20  # fs.pipe-max-size's default: what it may be without CAP_SYS_RESOURCE
# glibc's malloc in the converter: 1 MiB reads from the heap, and freed memory kept for the next
# ones instead of mapped and faulted in afresh (a child's page faults: 4 500 -> 1 800 per 5 000
# small files, ~10 ms of CPU).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(16 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
    "MALLOC_TOP_PAD_": str(16 << 20),
}

# The same in the agent itself (mallopt, at its start): each 1 MiB PutLayer message, and its
# copies, were mapped and faulted in afresh and unmapped once freed. Bounded: at most
# TRIM_THRESHOLD kept free at the top of each arena (the receiving threads use several: at
# 16 MiB the agent's high-water mark for a 105 MiB layer grew by up to 54 MiB, at 4 MiB by
# 17-28, about as without; tests/security/test_attack_session8_layer_stream.py).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 4 << 20

_lock = threading.Lock()
_server: tuple[subprocess.Popen[bytes], socket.socket] | None = None


def tune_allocator() -> bool:
    """Have glibc's malloc serve 1 MiB blocks from its heaps and reuse them (see above): fewer
    page faults and zeroed pages per pushed layer (the agent's CPU per 256 MB push 815 -> 645
    ms; docs/benchmarks.md, session 9). False where this is not glibc."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def native_converter() -> str | None:
    """The compiled converter's path, or None when it is not built (see NATIVE_NAME)."""
    path = os.path.join(os.path.dirname(sys.executable), NATIVE_NAME)
    return path if os.access(path, os.X_OK) else None


def warm() -> None:
    """Start the server ahead of the first layer (its imports take ~80 ms of CPU)."""
    global _server
    with _lock:
        if _server is None or _server[0].poll() is not None:
            _server = _start()


def _send(message: bytes, fds: list[int]) -> None:
    """The request to the server, started (again) when there is none."""
    global _server
    with _lock:
        for attempt in range(2):
            if _server is None or _server[0].poll() is not None:
                _server = _start()
            try:
                socket.send_fds(_server[1], [message], fds)
                return
            except OSError:
                if attempt:
                    raise
                _server[1].close()
                _server = None


def _start() -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warren.layers.convert_server", str(theirs.fileno())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=(theirs.fileno(),),
            env={**minimal_env(os.environ, keep=("PYTHONPATH",)), **MALLOC_ENV},  # none of the agent's
            close_fds=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, ours


def _widen(pipe: int) -> None:
    """The pipe PIPE_SIZE wide, or as wide as an unprivileged one may be (fs.pipe-max-size,
    1 MiB by default): root without CAP_SYS_RESOURCE (a container's) gets EPERM past it, and the
    pipe stayed at 64 KiB, a wake-up of the converter every 64 KiB. A narrower one is only
    slower."""
    for size in (PIPE_SIZE, PIPE_FALLBACK):
        try:
            fcntl.fcntl(pipe, F_SETPIPE_SZ, size)
            return
        except OSError:
            continue


class Conversion:
    """One layer being converted into ``out_fd`` (``tar2sqfs``' stdin, which the caller closes
    once this is made): :meth:`put` its chunks, :meth:`close`, then :meth:`result`. With
    ``native`` by the compiled converter where it is built (which may decline the layer:
    ``ConverterDeclined``), else by the Python one."""

    def __init__(
        self,
        out_fd: int,
        *,
        uid_base: int,
        max_bytes: int,
        cpu_s: int,
        native: bool = False,
        user: int = NOBODY,
    ) -> None:
        # ``user``: the uid the child runs as, one of this conversion's own (layer_image) so that
        # no other process shares it: not nobody's daemons, not another layer's converter.
        fields = {"uid_base": uid_base, "max_bytes": max_bytes, "cpu_s": cpu_s, "user": user}
        request = json.dumps({**fields, "native": (native_converter() if native else None) or ""})
        src_r, self._src = os.pipe()
        self._result, result_w = os.pipe()
        try:
            _widen(self._src)
            _send(request.encode(), [src_r, out_fd, result_w])
        except BaseException:
            os.close(self._src)
            os.close(self._result)
            raise
        finally:
            os.close(src_r)
            os.close(result_w)
        self._open = True

    def put(self, chunk: bytes) -> None:
        """The next chunk (blocks while the converter is a pipe's worth behind). Once the
        converter stopped reading (it refused the layer, or ``tar2sqfs`` gave up), dropped: the
        rest is still received and hashed."""
        if not self._open:
            return
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self._src, view) :]
        except BrokenPipeError:
            self.close()

    def put_file(self, fd: int, offset: int, n: int) -> None:
        """As :meth:`put`, for ``n`` bytes at ``offset`` in file ``fd``, spliced into the pipe:
        the page cache's pages are passed on, not copied (the agent wrote them a moment ago;
        docs/benchmarks.md, session 12)."""
        if not self._open:
            return
        try:
            while n:
                k = os.splice(fd, self._src, n, offset_src=offset)
                if not k:
                    raise OSError(f"the layer's file ended {n} bytes early")
                offset += k
                n -= k
        except BrokenPipeError:
            self.close()

    def close(self) -> None:
        """The end of the layer (idempotent): the converter reads to its end, or stops."""
        if self._open:
            self._open = False
            os.close(self._src)

    def result(self) -> LayerStats | None:
        """Once closed: the stats, None when ``tar2sqfs`` stopped reading; raises the layer's
        refusal, ``NeedsExtraction``, ``ConverterDeclined``, or ``OSError`` (the converter
        failed)."""
        self.close()
        assert self._result >= 0, "discarded"
        parts = []
        with open(self._result, "rb", buffering=0, closefd=False) as f:
            while data := f.read(1 << 16):  # the end: the child exited
                parts.append(data)
        return result_of(b"".join(parts))

    def discard(self) -> None:
        """Closes everything (idempotent); a child still running ends on the closed pipes."""
        self.close()
        if self._result >= 0:
            os.close(self._result)
            self._result = -1
