"""Session 17's attack on session 16's gVisor wake (agent/runtime/gvisor_memwake.py), from inside
a sandbox: the pipe the host wakes the guest's memory watch with (the guest's stdin) and the
guest's stderr file, which the agent drains into its own log.

* **The pipe and the file, as ``nobody``** (held): neither ``/proc/1/fd/0`` nor ``/proc/1/fd/2``
  opens, for reading or writing, and no descriptor a command starts with is one of them. So
  ``nobody`` cannot forge a record (a forged "host near its limit" makes the guest kill the
  largest process, root's too), steal the beats, or write to the agent's log. Sandbox root can
  (its own sandbox: it may kill anything there anyway).
* **The agent's log, as sandbox root** (fixed): the drain was bounded per beat (16 lines, 4 KiB
  read) but not over time. Root writing control bytes to ``/proc/1/fd/2`` kept ~17 KB a second
  of one sandbox in the agent's log (187 lines, 200 KB in 12 s: 4 KiB a beat, each control byte
  escaped to 4 characters), for as long as it liked: ~1.4 GB a day a sandbox. Expected: the
  lines come from a bucket (64, then 1 a second), each at most 256 characters, the dropped
  bytes counted once a minute. Before: 336 lines in 22 s (bound 87); after: 84 lines, 30 KB.
  Left (root, its own sandbox's lines only): the drain follows the file's size, and root's
  writes through its own descriptor move the size past the guest's offset, so the guest's next
  lines land in the part already drained and are not logged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.leaks import wait_no_leaks
from tests.harness.shared_agent import shared_agent
from warren.agent.runtime import gvisor_memwake as mw
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

SPAM_S = 10  # before its fix ~15 lines a second were logged: ~190 against a bound of ~78


# The worker's shared agent (tests/harness/shared_agent.py): the module only creates and
# destroys sandboxes of its own, and reads only their lines of the agent's log (since its test began).
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


@pytest.fixture
def sandbox(agent: AgentProcess) -> Iterator[str]:
    r = agent.create(memory_mb=512, runtime="gvisor")
    try:
        yield r.sandbox_id
    finally:
        try:
            agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=r.sandbox_id), timeout=120)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e  # type: ignore[attr-defined]
        assert wait_no_leaks(agent, r.sandbox_id, r.host_ip) == []


PROBE = r"""
import errno, os
for p in ("/proc/1/fd/0", "/proc/1/fd/2"):
    for mode in (os.O_WRONLY, os.O_RDONLY):
        try:
            os.close(os.open(p, mode | os.O_NONBLOCK)); print(p, mode, "open")
        except OSError as e:
            print(p, mode, errno.errorcode[e.errno])
links = []
for n in sorted(os.listdir("/proc/self/fd")):
    try:
        links.append(os.readlink("/proc/self/fd/" + n))
    except OSError:
        pass  # the listing's own descriptor
print("fds", *links)
"""

GUEST_FDS = "import os; print(*(os.readlink('/proc/1/fd/%d' % n) for n in (0, 2)))"


def test_nobody_reaches_neither_the_wake_pipe_nor_the_guests_stderr(
    agent: AgentProcess, sandbox: str
) -> None:
    got = agent.py(sandbox, PROBE, user="nobody").stdout.decode().splitlines()
    opens = [ln for ln in got if not ln.startswith("fds ")]
    assert len(opens) == 4 and all(ln.endswith(" EACCES") for ln in opens), got
    guest = agent.py(sandbox, GUEST_FDS, user="root").stdout.decode().split()
    assert len(guest) == 2 and all(g.startswith("host:") for g in guest), guest  # donated host fds
    own = next(ln for ln in got if ln.startswith("fds ")).split()[1:]
    assert not set(guest) & set(own), (guest, own)


# Sandbox root writes lines of control bytes to the guest's stderr as fast as the run tmpfs
# takes them (it is drained and punched every second).
SPAM = rf"""
import os, time
fd = os.open("/proc/1/fd/2", os.O_WRONLY)
line = b"\x01" * 255 + b"\n"
end, n = time.monotonic() + {SPAM_S}, 0
while time.monotonic() < end:
    try:
        n += os.write(fd, line * 16)
    except OSError:
        time.sleep(0.01)
print(n)
"""


def _logged(agent: AgentProcess, sb_id: str, since: int) -> list[str]:
    with agent.log_path.open("rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [ln for ln in text.splitlines() if "event=guest_stderr" in ln and f"sandbox_id={sb_id} " in ln]


def test_root_flooding_the_guests_stderr_keeps_a_bounded_share_of_the_agents_log(
    agent: AgentProcess, sandbox: str
) -> None:
    since = agent.log_path.stat().st_size
    started = time.monotonic()
    res = agent.py(sandbox, SPAM, user="root", timeout_sec=SPAM_S + 60)
    assert res.exit_code == 0, res
    written = int(res.stdout)
    time.sleep(2 * mw.BEAT)  # the drain's last beats
    elapsed = time.monotonic() - started
    lines = [ln for ln in _logged(agent, sandbox, since) if "event=guest_stderr " in ln]
    logged = sum(len(ln) for ln in lines)
    print(f"root wrote {written} bytes in {SPAM_S} s; the agent logged {len(lines)} lines, {logged} bytes")
    assert written > 64 * 1024, "the flood did not get going"
    most = mw.LOG_BURST + int(mw.LOG_RATE * elapsed) + 1
    assert len(lines) <= most, f"{len(lines)} lines of one sandbox's stderr in {elapsed:.0f} s (bound {most})"
    assert max(len(ln) for ln in lines) <= mw.LINE_CHARS + 200, max(lines, key=len)
