"""SysV shared memory as Linux's ``kernel.shm_rmid_forced`` leaves it, in a gVisor sandbox.

runc and crun sandboxes set that sysctl in their IPC namespace (agent/runtime/
kernel_limits.py): a segment goes once nothing is attached to it any more, or with its creator
if it never was, so its pages are process memory an OOM kill frees. runsc (2022-12-19) ignores
it: a segment outlived its maker, no kill freed it, and as ``nobody`` a 128 MiB sandbox filled
its host cgroup to 209 of 224 MiB in ~1.3 s with segments nothing held (session 32), past the
tenant's limit, where the memory watch could only kill processes that held none of it.

So a thread of its own (:func:`run`) sweeps every :data:`EVERY` seconds, and the memory watch
(memwatch.py) sweeps before each kill: the segments with nothing attached that were attached
once (Linux removes those at the detach), or whose creator has exited, are removed
(``IPC_RMID``, which frees them at once). The guest is root of the sandbox's IPC namespace
(``CAP_IPC_OWNER`` there), so ``nobody``'s segments too.

``ctypes`` is loaded by that thread, :data:`FIRST_AFTER` seconds after the guest starts. Loaded
in the watch's own thread at its first sweep, it left the watch blind while it loaded, and a hog
started then outran it to the host cgroup's limit (session 33's clean-clone run; reverted then).
Loaded as the guest starts, it made gVisor's create → first exec 25-70 ms slower (p50 of 15,
two runs each way: 1208 and 1198 ms against 1183 and 1128); loaded 2 s later, 1152 against 1150
(means of four alternating runs; session 34). Until it is loaded a kill goes ahead unswept, and
what the killed process left is removed by the first sweep.

Finding them: gVisor hands segment ids out in order from 1; ``shmctl(0, SHM_INFO)`` answers the
last id used and the pages of every segment, and ``IPC_STAT`` by id a segment's size, creator,
last attach or detach pid and attach count (measured on this runsc, session 33). A sweep looks
downward from the last id until the sizes seen add up to the pages in use, at most
:data:`IDS_PER_SWEEP` ids at a time: a churn of creates and removes raises the last id, so a
long look goes on from where it stopped at the next sweep. Nothing in use, one system call.
"""

import _thread
import os
import time
from typing import Any

from .protocol import log

IPC_RMID, IPC_STAT, SHM_INFO = 0, 2, 14
EVERY = 1.0  # seconds between the thread's sweeps
FIRST_AFTER = 2.0  # the first (its ctypes load): after the guest's start and its first command
PAGE = 4096
IDS_PER_SWEEP = 4096  # ids looked at per sweep: ~4096 system calls, tens of ms under ptrace
# struct shmid_ds (x86_64): shm_segsz, shm_cpid, shm_lpid, shm_nattch; struct shm_info: used_ids,
# shm_tot (pages).
_SEGSZ, _CPID, _LPID, _NATTCH = 48, 80, 84, 88
_USED_IDS, _SHM_TOT = 0, 8


class Sweeper:
    """The watch's one sweeper (its position in a long look is kept between sweeps)."""

    def __init__(self) -> None:
        self._lib: Any = None  # libc, through ctypes
        self._buf: Any = None  # the answers' buffer
        self._resume = 0  # the id the next sweep starts from (0: the last one used)
        self._lock = _thread.allocate_lock()  # the thread's sweeps and the watch's
        self.off = False  # no ctypes, or shmctl refused: the sweep does nothing

    def load(self) -> bool:
        """libc through ``ctypes`` (its first import: tens of ms under gVisor); False: none."""
        try:
            import ctypes

            self._lib = ctypes.CDLL(None, use_errno=True)
            self._buf = ctypes.create_string_buffer(256)
        except (ImportError, OSError, AttributeError):
            self.off = True
        return not self.off

    def _shmctl(self, shmid: int, cmd: int) -> bool:
        return bool(self._lib.shmctl(shmid, cmd, self._buf) >= 0)

    def _field(self, offset: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self._buf.raw[offset : offset + size], "little", signed=signed)

    def sweep(self) -> int:
        """Remove the orphaned segments; how many (logged when any)."""
        if self.off or self._lib is None:
            return 0
        with self._lock:
            return self._sweep()

    def _sweep(self) -> int:
        if not self._shmctl(0, SHM_INFO):
            self.off = True
            return 0
        last, pages = self._field(_USED_IDS, 4, signed=True), self._field(_SHM_TOT, 8)
        if pages <= 0 or last <= 0:
            self._resume = 0
            return 0
        shmid = self._resume if 0 < self._resume <= last else last
        seen = removed = freed = 0
        for _ in range(IDS_PER_SWEEP):
            if shmid < 1 or seen >= pages:
                shmid = 0
                break
            if self._shmctl(shmid, IPC_STAT):
                size = self._field(_SEGSZ, 8)
                seen += -(-size // PAGE)
                if self._orphaned() and self._shmctl(shmid, IPC_RMID):
                    removed, freed = removed + 1, freed + size
            shmid -= 1
        self._resume = shmid
        if removed:
            log(f"shared memory: removed {removed} segments nothing was attached to ({freed >> 20} MiB)")
        return removed

    def _orphaned(self) -> bool:
        """Nothing attached, and it was once (its last attach or detach) or its creator is gone."""
        if self._field(_NATTCH, 8):
            return False
        if self._field(_LPID, 4, signed=True):
            return True
        creator = self._field(_CPID, 4, signed=True)
        try:
            os.kill(creator, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


sweeper = Sweeper()  # the guest's one (memwatch.py sweeps with it before a kill)


def run() -> None:
    """The sweeping thread: loads ``ctypes`` once the guest has started, then sweeps every
    :data:`EVERY` seconds (a thread blocked in sleep does not stop a checkpoint)."""
    time.sleep(FIRST_AFTER)
    if not sweeper.load():
        return
    while True:
        try:
            sweeper.sweep()
        except Exception as e:  # never let the thread die silently
            log(f"shared memory: {e!r}")
        time.sleep(EVERY)


def start() -> None:
    _thread.start_new_thread(run, ())
