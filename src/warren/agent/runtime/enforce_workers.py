"""The socket watchdog's enforcement workers: at most ``size`` threads, one sandbox each, with
turns fair between teams.

An enforcement (socket_ceiling.py) holds its thread for up to about twice ``ENFORCE_S``, a cost
the tenant sets. Before session 22 the queue was first come, first served: a tenant with many
sandboxes past their ceilings filled every worker and the queue ahead of another team's
sandbox, which then stayed past its own ceiling for rounds of the tenant's enforcements. Now:

- a team holds at most ``size - 1`` workers at once, so one is free for another team's sandbox
  whenever a single team keeps the rest busy;
- a free worker takes the waiting sandbox whose team holds the fewest workers, the longest
  waiting first among equals (first come, first served when every sandbox is its own team).

A sandbox whose team is not known is a team of its own.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass

log = logging.getLogger("warren.agent")


@dataclass(frozen=True)
class _Job:
    seq: int  # the order of submission: the longest waiting first among equals
    sid: str
    team: str
    run: Callable[[], None]


class Workers:
    """At most ``size`` threads running jobs, one job per sandbox (queued or running), a team at
    most ``size - 1`` of them; more wait. Threads start on demand and end when no waiting job
    may start."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.team_cap = max(1, size - 1)
        self._cv = threading.Condition()
        self._queue: list[_Job] = []
        self._in: set[str] = set()  # queued or running
        self._running: dict[str, int] = {}  # team → its jobs running
        self._threads = 0
        self._seq = itertools.count()

    def __contains__(self, sid: object) -> bool:
        return sid in self._in

    def running(self, team: str) -> int:
        """How many of ``team``'s jobs run now."""
        with self._cv:
            return self._running.get(team, 0)

    def submit(self, sid: str, job: Callable[[], None], team: str | None = None) -> int:
        """Run ``job`` (``sid`` not in) for ``team`` (None: the sandbox's own): now, or once a
        thread is free and its team's turn comes; how many wait (0: a thread started for it)."""
        with self._cv:
            assert sid not in self._in, sid
            self._in.add(sid)
            mine = _Job(next(self._seq), sid, sid if team is None else team, job)
            self._queue.append(mine)
            first = self._next()
            if self._threads >= self.size or first is None:
                return len(self._queue)
            self._threads += 1
            waiting = 0 if first is mine else len(self._queue)
        try:
            threading.Thread(target=self._run, name="socket-ceiling", daemon=True).start()
        except RuntimeError:  # no thread to be had: undone, the next tick tries again
            with self._cv:
                self._threads -= 1
                for queued in [j for j in self._queue if j.sid == sid]:  # else a running thread took it
                    self._queue.remove(queued)
                    self._in.discard(sid)
            raise
        return waiting

    def drop(self, keep: Container[str]) -> None:
        """Queued jobs of sandboxes not in ``keep`` (gone, paused) are dropped."""
        with self._cv:
            for job in [j for j in self._queue if j.sid not in keep]:
                self._queue.remove(job)
                self._in.discard(job.sid)
            self._cv.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Until no job is queued or running; whether so."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._in, timeout)

    def _next(self) -> _Job | None:
        """The waiting job to start next (under the lock): its team under the cap, the fewest
        of its team running, the longest waiting."""
        ready = [j for j in self._queue if self._running.get(j.team, 0) < self.team_cap]
        return min(ready, key=lambda j: (self._running.get(j.team, 0), j.seq), default=None)

    def _run(self) -> None:
        while True:
            with self._cv:
                job = self._next()
                if job is None:
                    self._threads -= 1
                    return
                self._queue.remove(job)
                self._running[job.team] = self._running.get(job.team, 0) + 1
            try:
                job.run()
            except Exception:
                log.exception("event=background_error task=socket_ceiling sandbox=%s", job.sid)
            finally:
                with self._cv:
                    self._in.discard(job.sid)
                    left = self._running.pop(job.team) - 1
                    if left:
                        self._running[job.team] = left
                    self._cv.notify_all()
