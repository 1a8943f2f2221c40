"""Unix descriptors in flight, attacked from inside a sandbox (session 15).

The kernel counts the descriptors a user has in flight over unix sockets (SCM_RIGHTS, sent and
not yet received) per host uid (``user_struct->unix_inflight``) and refuses a send past the
sender's RLIMIT_NOFILE with ETOOMANYREFS. Every runc/crun sandbox used to map its uids to the
same host range, so ``nobody`` in one sandbox that sent ~4300 descriptors over a socketpair and
never read them left every other sandbox's ``nobody`` unable to pass a single descriptor, and the
agent's file calls as that user (the guest passes descriptors to act as a named user) failing.
Now each sandbox runs as a host range of its own (templates.uid_base, idmap.py).

Each attack holds all it can in a background process that outlives its exec, then checks that
another sandbox's same user still sends a descriptor and that a file call as it still works.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root

# A user 1000 (what `useradd -m -u 1000 user` leaves), so the attack can run as it.
ADD_USER = """
set -e
echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd
echo 'user:x:1000:' >> /etc/group
mkdir -p /home/user && chown 1000:1000 /home/user
"""

# Runs as the attacker: a holder sends descriptors of /dev/null, 253 a message (SCM_MAX_FD),
# over a socketpair it never reads, until the kernel refuses; it writes its tally and sleeps.
HOLD = r"""
import array, json, os, socket, time
out = f"/tmp/held-{os.getuid()}"
if os.fork() == 0:
    os.setsid()
    a, b = socket.socketpair()
    null = os.open("/dev/null", os.O_RDONLY)
    fds, held, err = [null] * 253, 0, 0
    while True:
        try:
            a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(array.array("i", fds)))])
        except OSError as e:
            err = e.errno
            break
        held += len(fds)
        if held > 100_000:
            break
    with open(out + ".tmp", "w") as f:
        json.dump({"held": held, "errno": err}, f)
    os.rename(out + ".tmp", out)
    time.sleep(3600)
    os._exit(0)
deadline = time.monotonic() + 60
while not os.path.exists(out):
    assert time.monotonic() < deadline, "the holder did not report"
    time.sleep(0.05)
print(open(out).read())
"""

# Run by the victim: one descriptor over a socketpair, received back; the errno of the send.
VICTIM = r"""
import array, json, os, socket
a, b = socket.socketpair()
fd = os.open("/dev/null", os.O_RDONLY)
try:
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(array.array("i", [fd])))])
    msg, anc, _, _ = b.recvmsg(1, socket.CMSG_SPACE(4))
    print(json.dumps({"errno": 0, "got": len(anc)}))
except OSError as e:
    print(json.dumps({"errno": e.errno, "got": 0}))
"""

USERS = {"nobody": "nobody", "root": "", "user": "user"}  # the attacker's user: its RPC name


@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request, "runc") as a:
        yield a


def new_sandbox(agent: AgentProcess) -> str:
    sid = agent.create(memory_mb=256).sandbox_id
    res = agent.exec(sid, "sh", "-c", ADD_USER)
    assert res.exit_code == 0, res.stderr
    return sid


@pytest.fixture
def sandboxes(agent: AgentProcess) -> Iterator[list[str]]:
    """Three fresh sandboxes: the attacks' holders die with theirs."""
    sids = [new_sandbox(agent) for _ in range(3)]
    yield sids
    for sid in sids:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def hold(agent: AgentProcess, sb: str, user: str) -> dict[str, int]:
    res = agent.py(sb, HOLD, user=USERS[user], timeout_sec=90)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    held: dict[str, int] = json.loads(res.stdout)
    return held


def assert_unharmed(agent: AgentProcess, sb: str, user: str) -> None:
    res = agent.py(sb, VICTIM, user=USERS[user], timeout_sec=60)
    assert res.exit_code == 0, res.stderr.decode()[-2000:]
    sent = json.loads(res.stdout)
    # The agent's file calls as a named user pass descriptors inside the guest.
    path, name = f"/tmp/file-call-{user}", USERS[user]
    try:
        w = pb.WriteFileRequest(sandbox_id=sb, path=path, content=b"still works", user=name)
        agent.stub.WriteFile(w, timeout=30)
        r = agent.stub.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path=path, user=name), timeout=30)
        file_call = r.content.decode()
    except grpc.RpcError as e:
        file_call = f"{e.code()}: {e.details()}"  # type: ignore[attr-defined]
    got = {"sent": sent, "file_call": file_call}
    assert got == {"sent": {"errno": 0, "got": 1}, "file_call": "still works"}, (
        f"{user} in a neighbour: {got}"
    )


def assert_held_all(held: dict[str, int]) -> None:
    # RLIMIT_NOFILE is 4096 in a sandbox: the kernel refuses once past it, a message later.
    assert held["held"] >= 4300 and held["errno"] == errno.ETOOMANYREFS, held


@pytest.mark.parametrize("user", ["nobody", "root", "user"])
def test_descriptors_in_flight_held_by_one_sandbox(
    agent: AgentProcess, sandboxes: list[str], user: str
) -> None:
    attacker, victim, _ = sandboxes
    assert_held_all(hold(agent, attacker, user))
    assert_unharmed(agent, victim, user)


def test_two_attacker_sandboxes_each_hold_only_their_own(agent: AgentProcess, sandboxes: list[str]) -> None:
    first, second, victim = sandboxes
    assert_held_all(hold(agent, first, "nobody"))
    # With one shared count the second attacker got nothing at all.
    assert_held_all(hold(agent, second, "nobody"))
    assert_unharmed(agent, victim, "nobody")
