"""``bench/soak.py --trace-agents``: imported by every Python process the soak starts (this
directory is put first on their ``PYTHONPATH``); in a host agent only, it starts a thread that,
each time the soak drops a ``take-<n>`` file into ``$WARREN_SOAK_TRACE_DIR``, dumps a
``tracemalloc`` snapshot (after a ``gc.collect()``) as ``<pid>-<n>.snap``. Tracing starts at the
first one (after the warm-up: tracing from the start would slow the agent's imports past its
start deadline), so the last snapshot holds what was allocated since and is still alive."""

from __future__ import annotations

import os


def _agent() -> bool:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return b"warren.agent" in f.read().split(b"\0")
    except OSError:
        return False


def _start(out: str) -> None:
    import gc
    import threading
    import time
    import tracemalloc

    def loop() -> None:
        done: set[str] = set()
        while True:
            time.sleep(0.5)
            try:
                asks = [n for n in os.listdir(out) if n.startswith("take-") and n not in done]
            except OSError:
                continue
            for ask in sorted(asks):
                done.add(ask)
                if not tracemalloc.is_tracing():
                    tracemalloc.start(12)
                gc.collect()
                snap = tracemalloc.take_snapshot()
                path = os.path.join(out, f"{os.getpid()}-{ask[5:]}.snap")
                snap.dump(path + ".tmp")
                os.rename(path + ".tmp", path)

    threading.Thread(target=loop, name="soak-tracemalloc", daemon=True).start()


if os.environ.get("WARREN_SOAK_TRACE_DIR") and _agent():
    _start(os.environ["WARREN_SOAK_TRACE_DIR"])
