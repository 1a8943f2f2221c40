"""The layer image converter in processes of its own (docs/templates.md §2, session 9 in
docs/benchmarks.md)::

    python -m warren.layers.convert_server FD

The agent starts this once, with one end of a ``SOCK_SEQPACKET`` unix socket as ``FD``. It
imports the converter once, then per request forks a child that converts one layer, so that
the converter runs beside the agent's receive loop and hashing instead of sharing their GIL,
and no request pays Python's start (~80 ms of imports). A request is one message: JSON
``{"uid_base", "max_bytes", "cpu_s", "user", "native"}`` with three fds: the layer tar (a pipe's
read end), ``tar2sqfs``' stdin, and the result (a pipe's write end). The child drops to ``user``
(a uid of this conversion's own; it needs no privilege: it only reads and writes the fds it was
given), sets its limits and its seccomp filter (``seccomp.py``: an allow-list of the calls a
conversion makes on these fds), converts, writes one JSON
result (:func:`result_of`) and exits. With ``native`` (the path of
``native/layer_convert.c``'s program, which ``make setup`` builds) the child execs that instead,
under the same user and limits: it converts what layers are made of with the same bytes out
(5 200 members: ~17 ms of CPU instead of ~100), and declines the rest (``ConverterDeclined``),
which the agent then converts again with this module's Python converter. The server ends when
the agent's end of the socket closes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import os
import resource
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from typing import Any

from warren.layers import seccomp
from warren.layers.hashing import LayerError
from warren.layers.image_tar import NeedsExtraction, convert_layer
from warren.layers.stats import LayerStats
from warren.layers.tar_stream import PipeSource

FDS = 3  # layer tar in, image tar out, result out
MAX_REQUEST = 4096
ADDRESS_SPACE = 4 << 30  # as tar2sqfs': the names of a million members fit in it
PR_SET_NO_NEW_PRIVS = 38
# What the converter's processes see of an environment: none of the agent's (its WARREN_*
# settings and whatever else it was started with), only the locale and glibc's malloc tuning
# (layer_convert.MALLOC_ENV), and for the server Python's own path when the agent has one.
BASE_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}
KEPT_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_libc = ctypes.CDLL(None, use_errno=True)  # loaded once, before the children are forked


def minimal_env(environ: Mapping[str, str], *, keep: tuple[str, ...] = KEPT_ENV) -> dict[str, str]:
    """``BASE_ENV`` and those of ``keep`` that ``environ`` sets: the converter's environment."""
    return {**BASE_ENV, **{k: environ[k] for k in keep if k in environ}}


class ConverterDeclined(Exception):
    """The native converter leaves this layer to the Python one (a refusal, a whiteout, a name
    listed twice, ...): convert it again with ``native`` off. Nothing of its output is kept."""


def serve(sock: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the agent's group: it ends with the agent
    gc.freeze()  # what is here now is shared with the children: no collection copies its pages
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, MAX_REQUEST, FDS)
        except InterruptedError:
            continue
        if not msg:
            return  # the agent closed its end (or exited)
        try:
            request = json.loads(msg)
            if len(fds) == FDS and os.fork() == 0:
                code = 1
                try:
                    sock.close()
                    code = _child(request, fds)
                finally:
                    os._exit(code)
        except (ValueError, OSError) as e:
            print(f"warren convert_server: request refused: {e}", file=sys.stderr)
        finally:
            for fd in fds:
                os.close(fd)


def _child(request: dict[str, Any], fds: list[int]) -> int:
    src, out, result = fds
    gc.disable()  # a child lives for one layer, its memory bounded by RLIMIT_AS below
    drop(int(request["user"]), int(request["cpu_s"]))
    native = str(request.get("native") or "")
    if native:  # it installs its own filter (native/seccomp.c) before its first read
        _exec_native(native, fds, int(request["uid_base"]), int(request["max_bytes"]))
        got: dict[str, Any] = {"kind": "declined", "message": f"{native} could not be started"}
    else:
        tar = PipeSource(src, int(request["max_bytes"]))
        got = confined(lambda: _convert(tar, out, int(request["uid_base"])), seccomp.Fds(src, out, result))
    os.close(out)  # tar2sqfs sees the end of its tar now, not when the result is read
    _write_result(result, got)
    return 0


def drop(user: int, cpu_s: int) -> None:
    """The child's privileges gone before it reads a byte: ``user`` (a uid of this conversion's
    own, no groups), ``no_new_privs``, its CPU and memory limits."""
    # Nothing it execs (the native converter) gains privileges: no set-uid bit, no file
    # capability takes effect, whatever a crafted layer made it run.
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    os.setgroups([])
    os.setresgid(user, user, user)
    os.setresuid(user, user, user)  # also makes it undumpable: no other process of its uid
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))  # may ptrace it
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def confined(convert: Callable[[], dict[str, Any]], fds: seccomp.Fds | None = None) -> dict[str, Any]:
    """``convert()`` under the converter's seccomp filter (``seccomp.py``: an allow-list, reads
    and writes of ``fds`` only, its own memory, exit), or its failure as the result when it
    cannot be installed."""
    try:
        seccomp.confine(fds)
    except OSError as e:
        return {"kind": "error", "message": f"seccomp: {e}"}
    return convert()


def _exec_native(native: str, fds: list[int], uid_base: int, max_bytes: int) -> None:
    """Become the native converter on the same fds (returns only when it cannot be started)."""
    for fd in fds:
        os.set_inheritable(fd, True)
    argv = [native, *(str(fd) for fd in fds), str(uid_base), str(max_bytes)]
    try:
        # the agent's own program, argv of numbers
        os.execve(native, argv, minimal_env(os.environ))  # noqa: S606
    except OSError as e:
        print(f"warren convert_server: {native}: {e}", file=sys.stderr)


def _write_result(result: int, got: dict[str, Any]) -> None:
    data = json.dumps(got).encode()
    while data:
        data = data[os.write(result, data) :]


def _convert(tar: PipeSource, out: int, uid_base: int) -> dict[str, Any]:
    try:
        stats = convert_layer(tar, out, uid_base=uid_base)
    except BrokenPipeError:
        return {"kind": "broken_pipe"}  # tar2sqfs gave up: its exit status says why
    except NeedsExtraction as e:
        return {"kind": "needs_extraction", "message": str(e)}
    except LayerError as e:
        return {"kind": "refused", "message": str(e)}
    except MemoryError:
        return {"kind": "error", "message": "out of memory"}
    return {"kind": "ok", "stats": dataclasses.asdict(stats)}


def result_of(data: bytes) -> LayerStats | None:
    """A child's result: its stats, None when ``tar2sqfs`` stopped reading; raises the refusal
    (``LayerError``, ``NeedsExtraction``) it met, ``ConverterDeclined`` (the native converter's
    hand-over), or ``OSError`` when the child failed."""
    try:
        got = json.loads(data)
        kind = got["kind"]
        if kind == "ok":
            return LayerStats(**got["stats"])
        message = got.get("message", "?")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise OSError(f"the layer converter failed: {data[:200]!r}") from None
    if kind == "broken_pipe":
        return None
    if kind == "needs_extraction":
        raise NeedsExtraction(message)
    if kind == "refused":
        raise LayerError(message)
    if kind == "declined":
        raise ConverterDeclined(message)
    raise OSError(f"the layer converter failed: {message}")


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
