"""Work a tenant sizes, in child processes, in turns fair between teams (the name is its
history: it was thread work).

A CP worker's short blocking calls (the template store's chunk reads and writes, asyncio's own
``getaddrinfo`` when a connection is opened) run in asyncio's default executor: ``min(32,
cpu + 4)`` threads, 6 on a 2-core machine. Work whose length a tenant chooses ran there too, in
one call each: an image import's ``read_image`` (every layer decompressed, parsed and written
out), a build's context index and its COPY steps' staging tars. Four teams' imports (two each,
the per-team limit) held all six threads for as long as their images made them, and every other
team's store read or connection waited behind them (session 23: a warm-pool set whose layer
is pushed from the store, 0.16 s alone, took 32 s). That work then got threads of its own, where
it still held the GIL against the event loop for seconds.

Now it runs in a child process (:meth:`TenantThreads.run_child`): an image's read (session 25,
layers/image_child.py), a build context's index and its COPY steps' staging (session 26,
services/context_child.py). :data:`WORKERS` children run at once per process; a turn is one
child, and a free one goes to the team holding the fewest, then to the team served longest ago,
then to the first come (warren/fair_turns.py), so one team's burst queues behind itself. A
cancelled caller kills its child and keeps the turn until it is reaped, so the children never
outnumber the turns. Both children answer with one JSON document, which :func:`child_answer`
checks as hostile and maps to the errors the work raised in the CP before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from warren.aio import outlast
from warren.errors import InternalError, WarrenError
from warren.fair_turns import FairTurns

T = TypeVar("T")

WORKERS = 2  # children at once per CP process, one a turn
STDERR_TAIL = 2048  # of a child's stderr, kept for the log (a traceback's last lines)


class TenantThreads:
    """The process's fair turns for tenant-sized work."""

    def __init__(self, workers: int = WORKERS) -> None:
        self.turns = FairTurns(workers)

    async def run_child(self, team: str, argv: Sequence[str], *, max_output: int) -> ChildExit:
        """``argv`` as a child process in ``team``'s turn: how it ended."""
        async with self.turns.turn(team):
            return await child_output(argv, max_output)


class ChildExit(NamedTuple):
    status: int  # its exit status (-N: killed by signal N)
    stdout: bytes  # all of it (at most the caller's max_output)
    stderr: bytes  # its last STDERR_TAIL bytes: what the CP logs when the answer is not one


async def child_output(argv: Sequence[str], max_output: int) -> ChildExit:
    """Run ``argv`` (stdin closed, a bare environment: none of the CP's secrets); how it ended.
    Past ``max_output`` bytes of stdout, ``ValueError``. The child is killed when this ends
    otherwise (cancelled, or past its output), and reaped before it returns."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH")}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    stderr = asyncio.ensure_future(_tail(proc.stderr, STDERR_TAIL))
    try:
        chunks, size = [], 0
        while chunk := await proc.stdout.read(1 << 16):
            size += len(chunk)
            if size > max_output:
                raise ValueError(f"{argv[:3]}: output past {max_output} bytes")
            chunks.append(chunk)
        status = await proc.wait()
        return ChildExit(status, b"".join(chunks), await stderr)
    except BaseException:
        stderr.cancel()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await outlast(asyncio.ensure_future(proc.wait()))  # reaped: the turn outlasts the child
        raise


async def _tail(stream: asyncio.StreamReader, keep: int) -> bytes:
    """The last ``keep`` bytes of ``stream`` (read to its end: a chatty child never blocks)."""
    tail = b""
    while chunk := await stream.read(1 << 16):
        tail = (tail + chunk)[-keep:]
    return tail


_THREADS = TenantThreads()


async def run_child(team: object, argv: Sequence[str], *, max_output: int) -> ChildExit:
    """``argv`` as a child process in ``team``'s fair turn: how it ended."""
    return await _THREADS.run_child(str(team), argv, max_output=max_output)


async def child_answer(
    team: object,
    argv: Sequence[str],
    *,
    max_output: int,
    answer: str,
    parse: Callable[[Any], T],
    refusal: Callable[[Any], WarrenError],
    log: logging.Logger,
    event: str,
    failure: str,
) -> T:
    """What a child that reads a tenant's input says (:func:`run_child`), checked as hostile. Its
    stdout is one JSON document: ``{answer: …}``, taken through ``parse``; ``{"error": …}``, its
    refusal, raised as ``refusal(error)`` (the error the work raised in the CP before). Anything
    else (``parse`` or ``refusal`` raising ``ValueError``, an exit status not 0, output past
    ``max_output``, ``{"internal": …}``) is logged to ``log`` as ``event`` and raised as
    ``InternalError(failure)``."""
    run = ChildExit(-1, b"", b"")
    try:
        run = await run_child(team, argv, max_output=max_output)
        doc = json.loads(run.stdout) if run.status == 0 else None
        if isinstance(doc, dict) and "error" in doc:
            raise refusal(doc["error"])
        if isinstance(doc, dict) and answer in doc:
            return parse(doc[answer])
    except (ValueError, OSError) as e:
        log.error("event=%s status=%s error=%s stderr=%r", event, run.status, str(e)[:500], run.stderr)
    else:
        log.error("event=%s status=%s output=%r stderr=%r", event, run.status, run.stdout[:500], run.stderr)
    raise InternalError(failure)
