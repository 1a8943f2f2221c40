"""The agent's handle on its OCI spawner (oci_spawner.py): the OCI runtime's commands, run by a
small stdlib process that forks for each, instead of by the agent.

:func:`run` has :func:`warren.agent.proc.run`'s contract (a :class:`~warren.agent.proc.Result`,
:class:`~warren.agent.proc.CommandError` with the command's stderr when ``check``, the command
killed, with whatever it started, when it times out or the caller is cancelled), plus what the
agent could not do in a child of its own: ``hide`` (a mount to take away in the command's own
mount namespace: crun and the hybrid cgroup layout, runtime/oci.py), ``nofile`` (the
RLIMIT_NOFILE to run under, without a ``prlimit`` exec) and ``stdio`` (a directory where an
unnamed file is made to stand in for /dev/null as the command's stdio: a container's init
inherits it, and crun chowns it to the container's user).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path

from warren.agent.helper_process import HelperProcess, PerLoop, spawn_script
from warren.agent.proc import CommandError, Result

log = logging.getLogger("warren.agent")

# Beyond a command's own timeout (the spawner kills it then and answers): how long the agent
# waits before it takes the spawner itself for stuck and ends it.
_GRACE_S = 30.0


class SpawnerGone(CommandError):
    """The spawner ended (or stopped answering) before the command's answer came."""


class Spawner(HelperProcess):
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, object]]] = {}
        super().__init__(proc, "oci-spawner-answers")

    @classmethod
    async def start(cls) -> Spawner:
        # An answer is one line: up to the spawner's output cap, JSON-escaped.
        return cls(await spawn_script(Path(__file__).with_name("oci_spawner.py"), limit=64 << 20))

    async def _read_answers(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                answer = json.loads(line)
                fut = self._pending.pop(int(answer["id"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(answer)
        except (ValueError, KeyError, asyncio.LimitOverrunError) as e:
            log.error("event=oci_spawner_bad_answer error=%r", e)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # out of step with it: the next call starts another
        finally:  # ended: whatever is still waiting never gets its answer
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result({"rc": None, "why": "the OCI spawner ended"})
            self._pending.clear()

    def _send(self, body: dict[str, object]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(body).encode() + b"\n")

    async def call(
        self,
        argv: list[str],
        *,
        capture: bool,
        timeout: float,  # noqa: ASYNC109
        hide: str | None,
        nofile: int | None,
        stdio: str | None = None,
        passed: list[str] | None = None,
    ) -> dict[str, object]:
        """The spawner's answer for one command (its ``rc``, ``out``, ``err``, ``why``)."""
        if not self.alive:
            raise SpawnerGone(argv, -1, "the OCI spawner ended")
        job_id = next(self._ids)
        fut: asyncio.Future[dict[str, object]] = self.loop.create_future()
        self._pending[job_id] = fut
        self._send({"id": job_id, "argv": argv, "capture": capture, "timeout": timeout,
                    "hide": hide, "nofile": nofile, "stdio": stdio, "pass": passed or []})  # fmt: skip
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout + _GRACE_S)
        except TimeoutError:  # the spawner itself is stuck: end it (and so every wait on it)
            await self.close()
            why = f"the OCI spawner did not answer in {timeout + _GRACE_S:.0f} s"
            raise SpawnerGone(argv, -1, why) from None
        except asyncio.CancelledError:
            # The caller gave up: the command must not run on behind its rollback. Killed (its
            # process group), then waited for, so what it made is there for the cleanup to find.
            with contextlib.suppress(BaseException):
                self._send({"kill": job_id})
                await asyncio.wait_for(fut, _GRACE_S)
            raise


_spawner: PerLoop[Spawner] = PerLoop(Spawner.start)


async def spawner() -> Spawner:
    """This event loop's spawner, started (again) if there is none or it ended."""
    return await _spawner.get()


async def stop_spawner() -> None:
    """End the spawner (agent shutdown; it would end with the agent anyway)."""
    await _spawner.stop()


async def run(
    *argv: str,
    check: bool = True,
    capture: bool = True,
    timeout: float = 60.0,  # noqa: ASYNC109
    hide: str | None = None,
    nofile: int | None = None,
    stdio: str | None = None,
    passed: list[str] | None = None,
) -> Result:
    """Run ``argv`` through the spawner (see the module's docstring). ``capture=False``: its
    stdout and stderr go to /dev/null (a container's init inherits them), or with ``stdio`` to
    an unnamed file made in that directory. ``passed``: files the spawner opens for writing and
    leaves open as the command's fds 3, 4, ... (for ``--preserve-fds``)."""
    args = list(argv)
    answer = await (await spawner()).call(
        args, capture=capture, timeout=timeout, hide=hide, nofile=nofile, stdio=stdio, passed=passed
    )
    rc, why = answer.get("rc"), str(answer.get("why") or "")
    out, err = str(answer.get("out") or ""), str(answer.get("err") or "")
    if not isinstance(rc, int):
        raise SpawnerGone(args, -1, why or "no exit status")
    if why == "timed out":
        raise CommandError(args, -9, f"timed out after {timeout}s")
    if why:  # it did not run (a set-up step failed) or was killed: say so with its own stderr
        err = f"{why}\n{err}".strip()
    res = Result(rc, out, err)
    if check and rc != 0:
        raise CommandError(args, rc, res.stderr or res.stdout)
    return res
