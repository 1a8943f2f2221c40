"""Exec and files as a named user of the sandbox, through the agent's RPCs: the name comes from
the sandbox's own /etc/passwd, which the tenant controls (and may make hostile)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): these tests only create and destroy
# sandboxes of their own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


# What `useradd -m -u 1000 -s /bin/bash user` leaves behind, plus a group listing the user.
ADD_USER = """
set -e
echo 'user:x:1000:1000::/home/user:/bin/bash' >> /etc/passwd
echo 'user:x:1000:' >> /etc/group
echo 'staff2:x:2000:user' >> /etc/group
mkdir -p /home/user && chown 1000:1000 /home/user && chmod 0750 /home/user
echo secret > /root-only && chmod 0600 /root-only
"""


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    sid = agent.create(memory_mb=128).sandbox_id
    res = agent.exec(sid, "sh", "-c", ADD_USER)
    assert res.exit_code == 0, res.stderr
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def _code(err: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


def test_exec_as_user_runs_with_its_uid_groups_env_and_home(agent: AgentProcess, sb: str) -> None:
    script = 'id -u; id -G; echo "$HOME $USER $LOGNAME"; pwd; cat /proc/self/uid_map'
    res = agent.exec(sb, "sh", "-c", script, user="user")
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.decode().splitlines()
    assert lines[0] == "1000"
    assert sorted(lines[1].split()) == ["1000", "2000"]
    assert lines[2:4] == ["/home/user user user", "/home/user"]
    # Still inside the sandbox's user namespace: uid 1000 here is an unprivileged uid outside.
    inner, outer, size = (int(x) for x in lines[4].split())
    assert (inner, size) == (0, 65536) and outer >= 1_000_000_000  # the slot's range (uid_base)
    # The default is unchanged: root, in root's home.
    res = agent.exec(sb, "sh", "-c", 'id -u; echo "$HOME"; pwd')
    assert res.stdout == b"0\n/root\n/root\n"


def test_unknown_user_is_invalid_argument(agent: AgentProcess, sb: str) -> None:
    for user in ("mallory", "not a name", "x" * 40):
        with pytest.raises(grpc.RpcError) as ei:
            agent.exec(sb, "true", user=user)
        assert _code(ei.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as ei:
        agent.exec(sb, "true", user="mallory")
    assert _code(ei.value) == (grpc.StatusCode.INVALID_ARGUMENT, "no such user: mallory")
    with pytest.raises(grpc.RpcError) as ei:
        agent.stub.Stat(pb.StatRequest(sandbox_id=sb, path="/", user="mallory"), timeout=30)
    assert _code(ei.value) == (grpc.StatusCode.INVALID_ARGUMENT, "no such user: mallory")


def test_files_as_user_are_theirs_and_checked_as_theirs(agent: AgentProcess, sb: str) -> None:
    stub = agent.stub
    w = pb.WriteFileRequest(sandbox_id=sb, path="proj/a.txt", content=b"hi", user="user")
    assert stub.WriteFile(w, timeout=30).bytes_written == 2
    res = agent.exec(sb, "stat", "-c", "%u:%g %a", "/home/user/proj/a.txt", "/home/user/proj")
    assert res.stdout == b"1000:1000 644\n1000:1000 755\n"
    read = stub.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path="proj/a.txt", user="user"), timeout=30)
    assert read.content == b"hi"
    entry = stub.Stat(pb.StatRequest(sandbox_id=sb, path="proj", user="user"), timeout=30).entry
    assert (entry.path, entry.owner) == ("/home/user/proj", "user")
    # What root owns stays root's: a 0600 file, root's home, a root-owned dir.
    denied = [
        lambda: stub.ReadFile(pb.ReadFileRequest(sandbox_id=sb, path="/root-only", user="user"), timeout=30),
        lambda: stub.WriteFile(
            pb.WriteFileRequest(sandbox_id=sb, path="/root/planted", content=b"x", user="user"), timeout=30
        ),
        lambda: stub.WriteFile(
            pb.WriteFileRequest(sandbox_id=sb, path="/etc/passwd", content=b"x", user="user"), timeout=30
        ),
        lambda: stub.MakeDir(pb.MakeDirRequest(sandbox_id=sb, path="/usr/evil", user="user"), timeout=30),
        lambda: stub.Remove(pb.RemoveRequest(sandbox_id=sb, path="/root-only", user="user"), timeout=30),
        lambda: stub.ListDir(pb.ListDirRequest(sandbox_id=sb, path="/root", user="user"), timeout=30),
    ]
    for call in denied:
        with pytest.raises(grpc.RpcError) as ei:
            call()
        assert _code(ei.value)[0] == grpc.StatusCode.PERMISSION_DENIED
    res = agent.exec(
        sb, "sh", "-c", "cat /root-only; test ! -e /root/planted && test ! -e /usr/evil && echo ok"
    )
    assert res.stdout == b"secret\nok\n"
    assert b"user:x:1000" in agent.exec(sb, "cat", "/etc/passwd").stdout


def test_hostile_passwd_gives_clear_errors_and_no_host_effect(agent: AgentProcess) -> None:
    sid = agent.create(memory_mb=128).sandbox_id
    try:

        def refused_with(setup: str, needle: str) -> None:
            assert agent.exec(sid, "sh", "-c", setup).exit_code == 0
            with pytest.raises(grpc.RpcError) as ei:
                agent.exec(sid, "true", user="user")
            code, msg = _code(ei.value)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in msg, msg

        cp = "cp /etc/passwd /passwd.orig"
        restore = "rm -f /etc/passwd && cp /passwd.orig /etc/passwd && "
        refused_with(f"{cp} && head -c 6000000 /dev/zero | tr '\\0' x >> /etc/passwd", "larger than")
        refused_with(restore + "ln -sf /dev/zero /etc/passwd.z && mv /etc/passwd.z /etc/passwd",
                     "not a regular file")  # fmt: skip
        refused_with(restore + "ln -sf /proc/self/mem /etc/passwd.m && mv /etc/passwd.m /etc/passwd",
                     "cannot read /etc/passwd")  # fmt: skip
        refused_with(restore + "echo 'user:x:zz:1::/:/bin/sh' >> /etc/passwd", "no such user: user")
        refused_with(restore + "echo 'user:x:70000:70000::/:/bin/sh' >> /etc/passwd", "cannot become user")
        # A "user" that is uid 0 is the sandbox's own root: still the unprivileged uid outside.
        assert (
            agent.exec(sid, "sh", "-c", restore + "echo 'user:x:0:0::/:/bin/sh' >> /etc/passwd").exit_code
            == 0
        )
        res = agent.exec(sid, "sh", "-c", "id -u; cat /proc/self/uid_map", user="user")
        uid, inner, base, size = res.stdout.decode().split()
        assert (uid, inner, size) == ("0", "0", "65536") and int(base) > 1_000_000_000
        # Root, the default, never reads the file and keeps working whatever it holds.
        assert (
            agent.exec(
                sid, "sh", "-c", "ln -sf /dev/zero /etc/passwd.z && mv /etc/passwd.z /etc/passwd"
            ).exit_code
            == 0
        )
        assert agent.exec(sid, "true").exit_code == 0
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def test_template_user_and_workdir_are_the_defaults(agent: AgentProcess) -> None:
    config = pb.TemplateConfig(user="user", workdir="/srv")
    chain = pb.TemplateChain(base="minimal", config=config)
    sid = agent.create(memory_mb=128, chain=chain).sandbox_id
    try:
        # The template's user does not exist yet: everything but an explicit root says so.
        with pytest.raises(grpc.RpcError) as ei:
            agent.exec(sid, "true")
        assert _code(ei.value) == (grpc.StatusCode.INVALID_ARGUMENT, "no such user: user")
        res = agent.exec(sid, "sh", "-c", ADD_USER + "mkdir -p /srv && chown 1000 /srv", user="root")
        assert res.exit_code == 0, res.stderr
        res = agent.exec(sid, "sh", "-c", "whoami; pwd")
        assert res.stdout == b"user\n/srv\n"
        assert agent.exec(sid, "pwd", cwd="/tmp").stdout == b"/tmp\n"
        assert agent.exec(sid, "id", "-u", user="root").stdout == b"0\n"
        w = pb.WriteFileRequest(sandbox_id=sid, path="f", content=b"x")
        agent.stub.WriteFile(w, timeout=30)
        res = agent.exec(sid, "stat", "-c", "%u", "/home/user/f", user="root")
        assert res.stdout == b"1000\n"
    finally:
        agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)
