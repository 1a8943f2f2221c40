"""Directory watch through the agent's RPCs on a real sandbox: WatchDir streams, polling
watchers (CreateWatcher/PollWatcher/RemoveWatcher), their bounds and their scope."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from tests.harness.agent import AgentProcess
from tests.harness.shared_agent import shared_agent
from warren.agent import watch_rpc
from warren.guest.guest_agent import watch as guest_watch
from warren.rpc import hostagent_pb2 as pb

pytestmark = pytest.mark.root


# The worker's shared agent (tests/harness/shared_agent.py): these tests only create and destroy
# sandboxes of their own.
@pytest.fixture(scope="module")
def agent(request: pytest.FixtureRequest) -> Iterator[AgentProcess]:
    with shared_agent(request) as a:
        yield a


# A new subdirectory and a file in it, made faster than its watch can be added: the scan of
# the new directory reports what was already there.
TREE = """
set -e
echo one > /w/a.txt
echo two >> /w/a.txt
mkdir -p /w/sub/new
echo three > /w/sub/new/f.txt
mv /w/a.txt /w/b.txt
rm /w/b.txt
"""


@pytest.fixture(scope="module")
def sb(agent: AgentProcess) -> Iterator[str]:
    # Room for 10k directories: the sandbox's disk (and its inodes) is sized by its memory.
    sid = agent.create(memory_mb=512).sandbox_id
    yield sid
    agent.stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=sid), timeout=60)


def _fresh(agent: AgentProcess, sb: str, path: str) -> None:
    assert agent.exec(sb, "sh", "-c", f"rm -rf {path} && mkdir -p {path}").exit_code == 0


def _code(err: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(err, grpc.Call)
    return err.code(), err.details() or ""


def _assert_tree_events(events: list[pb.WatchEvent]) -> None:
    seen = [(e.type, e.path) for e in events]
    order = [
        ("create", "/w/a.txt"),
        ("write", "/w/a.txt"),
        ("create", "/w/sub"),
        ("create", "/w/sub/new"),
        ("create", "/w/sub/new/f.txt"),
        ("rename", "/w/b.txt"),
        ("remove", "/w/b.txt"),
    ]
    idx = [seen.index(x) for x in order]
    assert idx == sorted(idx), seen
    rename = events[seen.index(("rename", "/w/b.txt"))]
    assert rename.old_path == "/w/a.txt"
    assert not events[seen.index(("remove", "/w/b.txt"))].HasField("entry")
    assert events[seen.index(("create", "/w/sub"))].entry.type == "dir"


def test_streamed_watch_reports_a_tree_in_order(agent: AgentProcess, sb: str) -> None:
    _fresh(agent, sb, "/w")
    call = agent.stub.WatchDir(pb.WatchDirRequest(sandbox_id=sb, path="/w", recursive=True), timeout=60)
    try:
        stream = iter(call)
        assert next(stream).type == "started"
        assert agent.exec(sb, "sh", "-c", TREE).exit_code == 0
        events: list[pb.WatchEvent] = []
        while not any(e.type == "remove" for e in events):
            events.append(next(stream))
    finally:
        call.cancel()
    _assert_tree_events(events)


def _poll_until(
    agent: AgentProcess, sb: str, wid: str, done: Callable[[list[pb.WatchEvent]], bool]
) -> tuple[list[pb.WatchEvent], bool]:
    events: list[pb.WatchEvent] = []
    overflowed = False
    deadline = time.monotonic() + 30
    while not done(events):
        assert time.monotonic() < deadline, [(e.type, e.path) for e in events]
        r = agent.stub.PollWatcher(pb.PollWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)
        events.extend(r.events)
        overflowed |= r.overflowed
        if not r.events:
            time.sleep(0.02)
    return events, overflowed


def test_polling_watcher_reports_a_tree_in_order(agent: AgentProcess, sb: str) -> None:
    _fresh(agent, sb, "/w")
    req = pb.WatchDirRequest(sandbox_id=sb, path="/w", recursive=True)
    wid = agent.stub.CreateWatcher(req, timeout=30).watcher_id
    assert wid.startswith("wch-")
    assert agent.exec(sb, "sh", "-c", TREE).exit_code == 0
    events, overflowed = _poll_until(agent, sb, wid, lambda evs: any(e.type == "remove" for e in evs))
    assert not overflowed
    _assert_tree_events(events)
    agent.stub.RemoveWatcher(pb.RemoveWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)
    with pytest.raises(grpc.RpcError) as ei:
        agent.stub.PollWatcher(pb.PollWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.NOT_FOUND


def test_polling_watcher_flags_overflow(agent: AgentProcess, sb: str) -> None:
    _fresh(agent, sb, "/o")
    wid = agent.stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=sb, path="/o"), timeout=30).watcher_id
    # Far more events than a watcher holds, all made before the first poll.
    n = watch_rpc.MAX_POLL_EVENTS * 5
    script = f"import os\nfor i in range({n}): open(f'/o/{{i}}', 'w').close()"
    assert agent.exec(sb, "python3", "-c", script).exit_code == 0
    events: list[pb.WatchEvent] = []
    overflowed = False
    deadline = time.monotonic() + 30
    while not overflowed:
        assert time.monotonic() < deadline, len(events)
        r = agent.stub.PollWatcher(pb.PollWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)
        assert len(r.events) <= watch_rpc.MAX_POLL_EVENTS
        events.extend(r.events)
        overflowed = r.overflowed
    # The oldest were kept (in order), the newest dropped and flagged.
    assert events[0].path == "/o/0"
    agent.stub.RemoveWatcher(pb.RemoveWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)


def test_missing_path_and_bounds(agent: AgentProcess, sb: str) -> None:
    stub = agent.stub
    with pytest.raises(grpc.RpcError) as ei:
        stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=sb, path="/nope"), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as ei:
        next(iter(stub.WatchDir(pb.WatchDirRequest(sandbox_id=sb, path="/nope"), timeout=30)))
    assert _code(ei.value)[0] == grpc.StatusCode.NOT_FOUND
    # Hostile: 10k directories. The watch is refused with the cap in the message.
    script = "import os\nfor i in range(10000): os.makedirs(f'/many/{i}')"
    assert agent.exec(sb, "python3", "-c", script).exit_code == 0
    with pytest.raises(grpc.RpcError) as ei:
        stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=sb, path="/many", recursive=True), timeout=60)
    code, msg = _code(ei.value)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and str(guest_watch.MAX_WATCH_DIRS) in msg
    # Watchers per sandbox are capped too.
    made = [
        stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=sb, path="/tmp"), timeout=30).watcher_id
        for _ in range(watch_rpc.MAX_WATCHERS)
    ]
    with pytest.raises(grpc.RpcError) as ei:
        stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=sb, path="/tmp"), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    for wid in made:
        stub.RemoveWatcher(pb.RemoveWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)


def test_watchers_belong_to_their_sandbox(agent: AgentProcess, sb: str) -> None:
    stub = agent.stub
    other = agent.create(memory_mb=128).sandbox_id
    wid = stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=other, path="/tmp"), timeout=30).watcher_id
    with pytest.raises(grpc.RpcError) as ei:
        stub.PollWatcher(pb.PollWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as ei:
        stub.RemoveWatcher(pb.RemoveWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.NOT_FOUND
    # The sandbox goes: so does its watcher.
    stub.DestroySandbox(pb.DestroySandboxRequest(sandbox_id=other), timeout=60)
    with pytest.raises(grpc.RpcError) as ei:
        stub.PollWatcher(pb.PollWatcherRequest(sandbox_id=other, watcher_id=wid), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.NOT_FOUND


def test_watch_as_a_user_needs_their_access(agent: AgentProcess, sb: str) -> None:
    setup = (
        "grep -q '^wuser:' /etc/passwd || echo 'wuser:x:1000:1000::/home/wuser:/bin/sh' >> /etc/passwd; "
        "mkdir -p /home/wuser/proj /secret && chown -R 1000:1000 /home/wuser && chmod 0700 /secret"
    )
    assert agent.exec(sb, "sh", "-c", setup).exit_code == 0
    stub = agent.stub
    with pytest.raises(grpc.RpcError) as ei:
        stub.CreateWatcher(pb.WatchDirRequest(sandbox_id=sb, path="/secret", user="wuser"), timeout=30)
    assert _code(ei.value)[0] == grpc.StatusCode.PERMISSION_DENIED
    # A relative path is under their home.
    wid = stub.CreateWatcher(
        pb.WatchDirRequest(sandbox_id=sb, path="proj", user="wuser"), timeout=30
    ).watcher_id
    assert agent.exec(sb, "touch", "/home/wuser/proj/x").exit_code == 0
    _poll_until(agent, sb, wid, lambda evs: any(e.path == "/home/wuser/proj/x" for e in evs))
    stub.RemoveWatcher(pb.RemoveWatcherRequest(sandbox_id=sb, watcher_id=wid), timeout=30)


def test_a_cancelled_watch_releases_its_guest_watch(agent: AgentProcess, sb: str) -> None:
    # More watches than the guest allows at once, one after the other: each cancel ends the
    # guest's watch (its inotify fd and its count).
    for _ in range(guest_watch.MAX_WATCH_OPS + 8):
        call = agent.stub.WatchDir(pb.WatchDirRequest(sandbox_id=sb, path="/tmp"), timeout=30)
        assert next(iter(call)).type == "started"
        call.cancel()
