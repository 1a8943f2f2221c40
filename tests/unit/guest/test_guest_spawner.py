"""Commands as a user started by the guest's spare child (``guest_agent/spawner.py``): the guest
as PID 1 of its own pid namespace, its /etc/passwd and /etc/group the test's (as in
``test_guest_users.py``), so every command after the first goes through a spare."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.guest.guest_helpers import RunningGuest
from tests.unit.guest.test_guest_pid1 import _can_unshare_pid
from tests.unit.guest.test_guest_users import world  # noqa: F401 (the users world, shared)
from warren.agent.guest_client import GuestClient, GuestError

pytestmark = pytest.mark.root


@pytest.fixture
def user_init_guest(start_guest: Callable[..., RunningGuest], world: Path) -> RunningGuest:  # noqa: F811
    reason = _can_unshare_pid()
    if reason:
        pytest.skip(reason)
    etc = world / "etc"
    script = (
        f'mount --bind {etc / "passwd"} /etc/passwd && mount --bind {etc / "group"} /etc/group && exec "$@"'
    )
    return start_guest(
        "unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--propagation", "private",
        "sh", "-c", script, "sh",
    )  # fmt: skip


async def _spares(c: GuestClient) -> list[int]:
    """PID 1's children that are guests themselves (its spare), seen from inside."""
    script = (
        'for d in /proc/[0-9]*; do p=${d#/proc/}; [ "$p" = 1 ] && continue; '
        'grep -q "^PPid:[[:space:]]*1$" $d/status 2>/dev/null && '
        'tr "\\0" " " < $d/cmdline 2>/dev/null | grep -q "guest[.]py" && echo $p; done; true'
    )
    r = await c.exec("sh", ["-c", script])
    return [int(x) for x in r.stdout.split()]


async def _wait_for_spare(c: GuestClient) -> int:
    for _ in range(600):
        found = await _spares(c)
        if found:
            assert len(found) == 1, f"one spare at a time, found {found}"
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no spare was forked after a command as a user")


async def test_commands_as_a_user_through_the_spare(user_init_guest: RunningGuest, world: Path) -> None:  # noqa: F811
    c = user_init_guest.client
    home = str(world / "home" / "user")
    first = await c.exec("id", ["-u"], user="user")  # no spare yet: the fork path
    assert first.stdout == b"1000\n"
    spare = await _wait_for_spare(c)
    script = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME"; pwd; cat; echo err >&2; exit 3'
    r = await c.exec("sh", ["-c", script], user="user", stdin=b"input\n")
    uid, gid, groups, env, cwd, fed = r.stdout.decode().splitlines()
    assert (uid, gid, sorted(groups.split())) == ("1000", "1000", ["1000", "29"])
    assert (env, cwd, fed) == (f"{home} user user", home, "input")
    assert (r.stderr, r.exit_code) == (b"err\n", 3)
    # It was the spare's to start (that process is gone), and a new spare waits for the next.
    again = await _wait_for_spare(c)
    assert again != spare
    # The command runs in its own process group, as the guest's own children do.
    r = await c.exec("sh", ["-c", "echo $$; cut -d' ' -f5 /proc/$$/stat"], user="user")
    pid, pgid = r.stdout.split()
    assert pgid == pid


async def test_the_spare_reports_what_the_user_may_not_do(user_init_guest: RunningGuest) -> None:
    c = user_init_guest.client
    await c.exec("true", [], user="user")
    for _ in range(2):  # each refusal consumes a spare; the next one is forked all the same
        await _wait_for_spare(c)
        with pytest.raises(GuestError) as ei:
            await c.exec("pwd", [], user="user", cwd="/root")
        assert ei.value.kind == "permission"
        assert "cwd /root" in ei.value.message
    await _wait_for_spare(c)
    await c.exec("sh", ["-c", "printf '#!/bin/sh\\necho hi\\n' > /tmp/root-only && chmod 700 /tmp/root-only"])
    with pytest.raises(GuestError) as ei:
        await c.exec("/tmp/root-only", [], user="user")
    assert ei.value.kind == "permission"
    assert "spawn /tmp/root-only" in ei.value.message


async def test_exit_statuses_of_many_commands_as_a_user(user_init_guest: RunningGuest) -> None:
    c = user_init_guest.client
    await c.exec("true", [], user="user")
    # Concurrent commands: some through spares, some forked; each re-parented command's status
    # must reach its own exec, whichever parent it had when it exited.
    codes = await asyncio.gather(*(c.exec("sh", ["-c", f"exit {i}"], user="user") for i in range(30)))
    assert [r.exit_code for r in codes] == list(range(30))
    for i in range(10):  # sequential: each through a fresh spare
        await _wait_for_spare(c)
        r = await c.exec("sh", ["-c", f"exit {i + 40}"], user="user")
        assert r.exit_code == i + 40
    r = await c.exec("sh", ["-c", "cat /proc/[0-9]*/stat 2>/dev/null"])
    zombies = [ln for ln in r.stdout.decode().splitlines() if ln.rsplit(")", 1)[1].split()[0] == "Z"]
    assert zombies == []


async def test_a_killed_spare_is_replaced_and_sigterm_ends_the_guest(user_init_guest: RunningGuest) -> None:
    c = user_init_guest.client
    await c.exec("true", [], user="user")
    spare = await _wait_for_spare(c)
    await c.exec("kill", ["-9", str(spare)])  # as the OOM killer would (it prefers the spare)
    r = await c.exec("id", ["-un"], user="user")  # the dead spare is noticed: the fork path
    assert r.stdout == b"user\n"
    await _wait_for_spare(c)
    # SIGTERM as init: the spare goes with everything else and the guest exits.
    children = Path(f"/proc/{user_init_guest.pid}/task/{user_init_guest.pid}/children").read_text().split()
    os.kill(int(children[0]), signal.SIGTERM)
    assert await asyncio.to_thread(user_init_guest.proc.wait, 30) == 0
