"""The gVisor tier through the REST API (issue 16, "Done when"): a live platform (a CP process and
a real agent offering runsc, tests/harness/platform.py) and sandboxes created with
``"runtime": "gvisor"``: gVisor's kernel, exec and files, the memory limit, ``internet: false``,
team isolation, pause to disk with a counter going on after the resume, a memory snapshot forked
into two sandboxes counting on independently, and nothing left on the host after a destroy.
The agent's own view of the same (memory freed by a pause, re-adoption after ``kill -9``, a
corrupt image) is tests/integration/agent/test_gvisor.py.

One platform for the module; each test makes (and destroys, checking for leftovers) its own
sandboxes, those it needs at once side by side (a gVisor create and a counter's start mostly
wait).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.harness import netns
from tests.harness.cp import PASSWORD
from tests.harness.leaks import runsc_leftovers, wait_no_leaks
from tests.harness.platform import Platform, running_platform
from warren import Sandbox
from warren.cli.main import app as cli_app

pytestmark = [pytest.mark.root, pytest.mark.timeout(900)]

# Written by rename, so a reader never sees the file truncated and not yet rewritten.
COUNTER = (
    "import os, time\ni = 0\nwhile True:\n"
    "    open('/tmp/counter.new', 'w').write(str(i)); os.replace('/tmp/counter.new', '/tmp/counter')\n"
    "    i += 1; time.sleep(0.01)\n"
)
KILL_COUNTER = (
    "import os\nfor p in os.listdir('/proc'):\n"
    "    if p.isdigit() and b'counter.new' in open(f'/proc/{p}/cmdline', 'rb').read():\n"
    "        os.kill(int(p), 9)\n"
)
FETCH = (
    "import urllib.request, sys; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)"
)
MONITOR_S = 2  # WARREN_MONITOR_INTERVAL_S for this module's CP
# A "remote" server behind its own veth, at TEST-NET-3 addresses no other test uses: no packet
# leaves the machine.
INET_HOST, INET_PEER = "203.0.113.101", "203.0.113.102"


async def wait_for(what: str, fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if got := await fn():
            return got
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


class Api:
    """The platform's REST API as one team's API key (or a user's JWT) sees it."""

    def __init__(self, platform: Platform, http: httpx.AsyncClient) -> None:
        self.platform = platform
        self.http = http

    async def create(self, expect: int = 201, **body: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/sandboxes", json={"runtime": "gvisor", "memory_mb": 256, **body})
        assert r.status_code == expect, r.text
        return dict(r.json())

    async def get(self, sid: str) -> dict[str, Any]:
        r = await self.http.get(f"/v1/sandboxes/{sid}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def post(self, path: str, expect: int = 200, **kw: Any) -> Any:
        r = await self.http.post(path, **kw)
        assert r.status_code == expect, r.text
        return r.json() if r.content else None

    async def run(self, sid: str, cmd: str, *args: str, timeout: int = 60) -> httpx.Response:
        body = {"cmd": cmd, "args": list(args), "timeout_sec": timeout}
        return await self.http.post(f"/v1/sandboxes/{sid}/exec", json=body)

    async def sh(self, sid: str, script: str, timeout: int = 60) -> dict[str, Any]:
        r = await self.run(sid, "/bin/sh", "-c", script, timeout=timeout)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def py(self, sid: str, code: str, *args: str, timeout: int = 60) -> httpx.Response:
        return await self.run(sid, "python3", "-c", code, *args, timeout=timeout)

    async def counter(self, sid: str) -> int:
        got = await self.sh(sid, "cat /tmp/counter")
        assert got["exit_code"] == 0, got
        return int(got["stdout"])

    async def start_counter(self, sid: str) -> int:
        """A background Python counter; returns once it has counted past 200 (a counter started
        again from zero could not be mistaken for one that went on). The wait runs in the guest,
        one exec (an exec through the API every 0.1 s was most of what a start cost). The file has
        no newline: ``read`` sets ``v`` and answers 1."""
        script = (
            f"python3 -c {shlex.quote(COUNTER)} >/dev/null 2>&1 &\n"
            "v=0; i=0\n"
            'while [ "$v" -le 200 ] && [ $i -lt 300 ]; do\n'
            "  sleep 0.2; i=$((i + 1)); read -r v < /tmp/counter 2>/dev/null; v=${v:-0}\n"
            "done\n"
            "echo $v"
        )
        got = await self.sh(sid, script, timeout=90)
        v = int(got["stdout"])
        assert v > 200, f"the counter did not pass 200: {got}"
        return v

    async def create_two(self, first: dict[str, Any], second: dict[str, Any]) -> list[dict[str, Any]]:
        """Two sandboxes created side by side (``first`` and ``second`` their bodies)."""
        return list(await asyncio.gather(self.create(**first), self.create(**second)))

    async def destroy_all(self, *sbs: dict[str, Any]) -> None:
        """:meth:`destroy_clean` of each, side by side."""
        await asyncio.gather(*(self.destroy_clean(sb) for sb in sbs))

    async def destroy_clean(self, sb: dict[str, Any]) -> None:
        """Destroy (already gone is fine) and check the host keeps nothing of it."""
        r = await self.http.delete(f"/v1/sandboxes/{sb['id']}")
        assert r.status_code == 204, r.text
        agent = self.platform.agents[0]
        assert await asyncio.to_thread(wait_no_leaks, agent, sb["id"], sb["host_ip"]) == []

        async def no_runsc() -> bool:
            return runsc_leftovers(agent.data_dir, sb["id"]) == []

        assert await wait_for("runsc to leave nothing", no_runsc) is True


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    """The module's platform, its host monitor passing every MONITOR_S s instead of every 30 s:
    the inactivity-pause test waits for a pass to record what the agent did (up to 30 s of a
    worker's time, every run, at the default)."""
    if os.geteuid() != 0:
        pytest.skip("real agents need root (namespaces, cgroups, overlayfs)")
    async with running_platform(db_url, platform_dir, {"WARREN_MONITOR_INTERVAL_S": str(MONITOR_S)}) as p:
        yield p


@pytest.fixture(scope="module")
async def api(platform: Platform) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=180) as http:
        yield Api(platform, http)


@pytest.fixture(scope="module")
def fake_internet() -> Iterator[str]:
    with netns.fake_internet(INET_HOST, INET_PEER) as url:
        yield url


async def test_a_gvisor_sandbox_runs_on_gvisors_kernel(api: Api, platform: Platform) -> None:
    hosts = (await api.http.get("/v1/hosts", headers=platform.user_headers)).json()
    assert len(hosts) == 1 and "gvisor" in hosts[0]["runtimes"] and "runc" in hosts[0]["runtimes"]
    sb, plain = await api.create_two({}, {"runtime": "runc", "memory_mb": 128})
    try:
        assert sb["runtime"] == "gvisor" and "paused_state" not in sb
        assert (await api.get(sb["id"]))["runtime"] == "gvisor"
        listed = {s["id"]: s["runtime"] for s in (await api.http.get("/v1/sandboxes")).json()}
        assert listed[sb["id"]] == "gvisor" and listed[plain["id"]] == "runc"
        kernel = (await api.sh(sb["id"], "uname -r"))["stdout"].strip()
        assert kernel != os.uname().release  # gVisor's, not the host's
        assert (await api.sh(plain["id"], "uname -r"))["stdout"].strip() == os.uname().release
        got = await api.sh(sb["id"], "echo out; echo err >&2; exit 7")
        assert (got["stdout"], got["stderr"], got["exit_code"]) == ("out\n", "err\n", 7)
        r = await api.py(sb["id"], "import sys; sys.stdout.buffer.write(bytes(range(256)))")
        assert r.status_code == 200 and r.json()["encoding"] == "base64"
    finally:
        await api.destroy_all(sb, plain)


async def test_files_round_trip(api: Api) -> None:
    sb = await api.create()
    try:
        for name, data in (("empty", b""), ("one", b"\x00"), ("big", os.urandom(20 << 20))):
            path = f"/root/{name}.bin"
            await api.post(
                f"/v1/sandboxes/{sb['id']}/files/write", 204, data={"path": path}, files={"file": ("f", data)}
            )
            r = await api.http.post(f"/v1/sandboxes/{sb['id']}/files/read", json={"path": path})
            assert r.status_code == 200 and r.content == data, (name, r.status_code, len(r.content))
            size = await api.sh(sb["id"], f"wc -c < {path}")
            assert int(size["stdout"]) == len(data)
    finally:
        await api.destroy_clean(sb)


async def test_a_memory_hog_is_killed_inside_and_its_neighbour_lives(api: Api) -> None:
    """gVisor's kernel has no OOM killer: the guest enforces the limit inside
    (guest_agent/memwatch.py), so at the limit the hog gets SIGKILL, as on runc; its sandbox
    goes on answering and the neighbour is untouched."""
    neighbour, hog = await api.create_two({}, {"memory_mb": 128})
    try:
        await api.sh(neighbour["id"], "echo kept > /tmp/mark")
        r = await api.py(hog["id"], f"x = bytearray({256 << 20})\nprint('all of it')", timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["exit_code"] in (-9, 137) and "all of it" not in r.json()["stdout"], r.text
        assert (await api.sh(hog["id"], "echo alive"))["stdout"] == "alive\n"
        assert (await api.get(hog["id"]))["status"] == "running"
        assert (await api.sh(neighbour["id"], "cat /tmp/mark"))["stdout"] == "kept\n"
        assert (await api.get(neighbour["id"]))["status"] == "running"
    finally:
        await api.destroy_all(hog, neighbour)


async def test_internet_on_and_off(api: Api, fake_internet: str) -> None:
    on, off = await api.create_two({"memory_mb": 128}, {"memory_mb": 128, "internet": False})
    try:
        assert off["internet"] is False
        got = (await api.py(on["id"], FETCH, fake_internet, "30")).json()
        assert got["stdout"] == "200\n", got
        refused = (await api.py(off["id"], FETCH, fake_internet, "3")).json()
        assert refused["exit_code"] != 0 and refused["stdout"] == ""
    finally:
        await api.destroy_all(on, off)


async def test_another_team_cannot_reach_a_gvisor_sandbox(api: Api, platform: Platform) -> None:
    sb = await api.create(memory_mb=128)
    try:
        email = f"other{uuid.uuid4().hex[:10]}@example.com"
        r = await api.http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "O"})
        assert r.status_code == 201, r.text
        other = {"Authorization": f"Bearer {r.json()['token']}"}
        sid = sb["id"]
        async with httpx.AsyncClient(base_url=platform.url, headers=other, timeout=60) as them:
            for method, path, body in (
                ("GET", f"/v1/sandboxes/{sid}", None),
                ("POST", f"/v1/sandboxes/{sid}/exec", {"cmd": "true"}),
                ("POST", f"/v1/sandboxes/{sid}/files/read", {"path": "/etc/hostname"}),
                ("POST", f"/v1/sandboxes/{sid}/pause", None),
                ("DELETE", f"/v1/sandboxes/{sid}", None),
            ):
                got = await them.request(method, path, json=body)
                assert got.status_code == 404, (method, path, got.text)
            r = await them.post("/v1/snapshots", json={"sandbox_id": sid, "name": "theirs"})
            assert r.status_code == 404, r.text
            assert (await them.get("/v1/sandboxes")).json() == []
        assert (await api.get(sid))["status"] == "running"
        assert (await api.sh(sid, "echo mine"))["stdout"] == "mine\n"
    finally:
        await api.destroy_clean(sb)


async def test_pause_is_to_disk_and_a_counter_goes_on_after_resume(api: Api) -> None:
    sb = await api.create()
    try:
        reached = await api.start_counter(sb["id"])
        paused = await api.post(f"/v1/sandboxes/{sb['id']}/pause")
        assert (paused["status"], paused["paused_state"]) == ("paused", "disk")
        assert (await api.get(sb["id"]))["paused_state"] == "disk"
        listed = {s["id"]: s for s in (await api.http.get("/v1/sandboxes")).json()}
        assert listed[sb["id"]]["paused_state"] == "disk"
        assert (await api.run(sb["id"], "true")).status_code == 409  # paused: no exec
        resumed = await api.post(f"/v1/sandboxes/{sb['id']}/resume")
        assert resumed["status"] == "running" and "paused_state" not in resumed
        first = await api.counter(sb["id"])
        assert first >= reached  # went on from its value: a restarted counter would be far lower

        async def moved_on() -> bool:
            return await api.counter(sb["id"]) > first

        await wait_for("the counter to move on", moved_on)
    finally:
        await api.destroy_clean(sb)


async def test_a_memory_snapshot_forks_into_independent_counters(api: Api) -> None:
    src = await api.create()
    name = f"counting-{uuid.uuid4().hex[:8]}"
    forks: list[dict[str, Any]] = []
    try:
        at_snapshot = await api.start_counter(src["id"])
        snap = await api.post("/v1/snapshots", 201, json={"sandbox_id": src["id"], "name": name})
        assert (snap["kind"], snap["type"], snap["vcpus"], snap["memory_mb"]) == (
            "memory",
            "snapshot",
            1,
            256,
        )
        source = await api.get(src["id"])
        assert (source["status"], source["paused_state"]) == ("paused", "disk")
        listed = (await api.http.get("/v1/snapshots", params={"type": "snapshot"})).json()
        assert [s["kind"] for s in listed if s["name"] == name] == ["memory"]
        # A memory snapshot starts on gVisor only: asking for another runtime is a 400.
        refused = await api.http.post("/v1/sandboxes", json={"template": name, "runtime": "runc"})
        assert refused.status_code == 400 and "memory snapshot" in refused.json()["error"]["message"]
        made = await asyncio.gather(
            *(api.http.post("/v1/sandboxes", json={"template": name}) for _ in range(2))
        )  # no runtime: gvisor
        for r in made:
            if r.status_code == 201:
                forks.append(r.json())
        assert [r.status_code for r in made] == [201, 201], [r.text for r in made]
        assert [f["runtime"] for f in forks] == ["gvisor", "gvisor"]
        assert len({f["id"] for f in forks}) == 2 and len({f["host_ip"] for f in forks}) == 2
        for f in forks:
            assert await api.counter(f["id"]) >= at_snapshot
            names = (await api.sh(f["id"], "cat /etc/hostname; echo $HOSTNAME"))["stdout"]
            assert names.split() == [f["id"], f["id"]]
        # Independent: stopping one's counter leaves the other's counting.
        assert (await api.py(forks[0]["id"], KILL_COUNTER)).status_code == 200
        stopped = await api.counter(forks[0]["id"])
        other = await api.counter(forks[1]["id"])

        async def second_counts_on() -> bool:
            return await api.counter(forks[1]["id"]) > other + 10

        await wait_for("the second fork to count on", second_counts_on)
        assert await api.counter(forks[0]["id"]) in (stopped, stopped + 1)
        # The snapshot's delete leaves its forks working, and the source resumes where it was.
        assert (await api.http.delete(f"/v1/snapshots/{name}")).status_code == 204
        assert (await api.sh(forks[1]["id"], "echo ok"))["stdout"] == "ok\n"
        await api.post(f"/v1/sandboxes/{src['id']}/resume")
        assert await api.counter(src["id"]) >= at_snapshot
        gone = await api.http.post("/v1/sandboxes", json={"template": name})
        assert gone.status_code == 404, gone.text
    finally:
        await api.destroy_all(*forks, src)


async def test_the_sdk_and_the_cli_ask_for_gvisor(api: Api, platform: Platform, tmp_path: Path) -> None:
    with await asyncio.to_thread(
        lambda: Sandbox.create(runtime="gvisor", memory_mb=128, **platform.sdk())
    ) as s:
        assert s.info.runtime == "gvisor"
        sdk_made = await api.get(s.id)
    await api.destroy_clean(sdk_made)
    env = {"XDG_CONFIG_HOME": str(tmp_path), "WARREN_URL": platform.url, "WARREN_API_KEY": platform.api_key}
    args = ["sandbox", "create", "--runtime", "gvisor", "--memory-mb", "128", "--json"]
    r = await asyncio.to_thread(lambda: CliRunner().invoke(cli_app, args, env=env, catch_exceptions=False))
    assert r.exit_code == 0, r.stderr
    cli_made = await api.get(json.loads(r.stdout)["id"])
    assert cli_made["runtime"] == "gvisor"
    await api.destroy_clean(cli_made)


async def test_the_inactivity_pause_is_to_disk_too(api: Api) -> None:
    """The agent's TTL reaper pauses an idle gVisor sandbox to disk; the CP's host monitor (a
    pass every MONITOR_S seconds here) records it paused, and how."""
    sb = await api.create(memory_mb=128, timeout_sec=2)
    try:

        async def auto_paused() -> dict[str, Any] | None:
            got = await api.get(sb["id"])
            return got if got["status"] == "paused" else None

        got = await wait_for("the monitor to see the auto-pause", auto_paused, timeout=120)
        assert got["paused_state"] == "disk"
        resumed = await api.post(f"/v1/sandboxes/{sb['id']}/resume")
        # (It may be idle-paused again soon after: its timeout is 2 s.)
        assert resumed["status"] == "running" and "paused_state" not in resumed
    finally:
        await api.destroy_clean(sb)


async def test_after_a_kill9_of_the_agent_its_gvisor_sandboxes_are_back(api: Api, platform: Platform) -> None:
    """Last in the module: it restarts the agent. A running and a disk-paused gVisor sandbox are
    re-adopted and usable through the API again; the paused one's counter goes on at resume."""
    running, paused = await api.create_two({}, {})
    try:
        _, reached = await asyncio.gather(api.start_counter(running["id"]), api.start_counter(paused["id"]))
        assert (await api.post(f"/v1/sandboxes/{paused['id']}/pause"))["paused_state"] == "disk"
        agent = platform.agents[0]
        await asyncio.to_thread(agent.kill9)
        await agent.astart()

        async def answers() -> bool:
            r = await api.run(running["id"], "echo", "back")
            return r.status_code == 200 and r.json()["stdout"] == "back\n"

        await wait_for("the re-adopted sandbox to answer", answers)
        before = await api.counter(running["id"])

        async def counts_on() -> bool:
            return await api.counter(running["id"]) > before

        await wait_for("the running counter to go on", counts_on)
        again = await api.get(paused["id"])
        assert (again["status"], again["paused_state"], again["runtime"]) == ("paused", "disk", "gvisor")
        await api.post(f"/v1/sandboxes/{paused['id']}/resume")
        assert await api.counter(paused["id"]) >= reached
    finally:
        await api.destroy_all(running, paused)
