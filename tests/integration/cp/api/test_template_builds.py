"""Template builds through the REST API on a live platform (a CP process and a real agent):
a Warrenfile with FROM, ARG, RUN (pip installing a wheel from the context, with pip itself
from the context: no index is reachable), ENV, WORKDIR, COPY, USER, START and READY builds, and
a sandbox of it has all of it; a failing RUN leaves its output, exit code and no template; a
rebuild reuses the unchanged prefix; the log reads by offset and streams; refusals."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import io
import json
import os
import tarfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.harness.cp import InProcessCP
from tests.harness.environ import environ
from tests.harness.platform import Platform
from warren import ids
from warren.cp.db.engine import to_async_url
from warren.cp.services.template_builds import STALE, STOPPED, sweep_stale

pytestmark = pytest.mark.root

WHEEL = "hello_pkg-1.0-py3-none-any.whl"
PIP = "--no-index --disable-pip-version-check --no-cache-dir --break-system-packages"
SPEC = f"""\
# a template with everything
FROM minimal
ARG GREETING=hello
RUN useradd -m -u 1000 app
COPY pip.zip {WHEEL} /tmp/build/
RUN python3 /tmp/build/pip.zip/pip install {PIP} /tmp/build/{WHEEL} \\
    && rm -rf /tmp/build
ENV APP_MODE=prod GREETING_TEXT="$GREETING world"
WORKDIR /srv/app
COPY site/ ./
USER app
START python3 -m http.server 8080 --bind 127.0.0.1
READY python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/index.html')"
"""


def _wheel() -> bytes:
    """A pure-Python wheel written by hand: one module and its dist-info."""
    files = {
        "hello_pkg/__init__.py": b"GREETING = 'hello from a wheel'\n",
        "hello_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello-pkg\nVersion: 1.0\n",
        "hello_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("hello_pkg-1.0.dist-info/RECORD,,")
    files["hello_pkg-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _pip_zip() -> bytes:
    """pip itself, zipped from this interpreter's install: `python3 pip.zip/pip` runs it."""
    spec = importlib.util.find_spec("pip")
    assert spec is not None and spec.origin is not None
    root = Path(spec.origin).parent
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(root.rglob("*")):
            if "__pycache__" not in p.parts and p.is_file():
                z.write(p, p.relative_to(root.parent).as_posix())
    return buf.getvalue()


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CONTEXT_CAP_MB = 8


@pytest.fixture(scope="module", autouse=True)
def small_context_cap() -> Iterator[None]:
    """The CP process reads its settings from the environment: a context cap a test can pass."""
    with environ({"WARREN_BUILD_MAX_CONTEXT_MB": str(CONTEXT_CAP_MB)}):
        yield


@pytest.fixture(scope="module")
def context_tar() -> bytes:
    return _tar(
        {
            "pip.zip": _pip_zip(),
            WHEEL: _wheel(),
            "site/index.html": b"<h1>built by warren</h1>\n",
            "site/data/notes.txt": b"copied\n",
            "unused.txt": b"not copied\n",
        }
    )


@pytest.fixture
async def http(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.url, headers=platform.headers, timeout=120) as client:
        yield client


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def submit(
    http: httpx.AsyncClient,
    name: str,
    spec: str,
    context: bytes | None = None,
    **extra: Any,
) -> httpx.Response:
    if context is None:
        return await http.post("/v1/templates", json={"name": name, "spec": spec, **extra})
    data = {"name": name, "spec": spec, **{k: json.dumps(v) for k, v in extra.items()}}
    return await http.post("/v1/templates", data=data, files={"context": ("context.tar", context)})


async def wait_build(http: httpx.AsyncClient, name: str, build_id: str) -> dict[str, Any]:
    for _ in range(3000):
        r = await http.get(f"/v1/templates/{name}/builds/{build_id}")
        assert r.status_code == 200, r.text
        if r.json()["status"] in ("ready", "failed"):
            return dict(r.json())
        await asyncio.sleep(0.1)
    raise AssertionError(f"build {build_id} did not end")


async def full_log(http: httpx.AsyncClient, name: str, build_id: str) -> str:
    out, offset = [], 0
    while True:
        r = await http.get(f"/v1/templates/{name}/builds/{build_id}/log", params={"offset": offset})
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["offset"] == offset
        out.append(page["data"])
        offset = page["next_offset"]
        if page["done"]:
            return "".join(out)


async def build_ok(
    http: httpx.AsyncClient, name: str, spec: str, context: bytes | None = None, **extra: Any
) -> dict[str, Any]:
    r = await submit(http, name, spec, context, **extra)
    assert r.status_code == 202, r.text
    build = await wait_build(http, name, r.json()["build_id"])
    assert build["status"] == "ready", (build, await full_log(http, name, build["build_id"]))
    return build


async def sh(http: httpx.AsyncClient, sandbox: str, command: str) -> dict[str, Any]:
    r = await http.post(f"/v1/sandboxes/{sandbox}/exec", json={"cmd": "/bin/sh", "args": ["-c", command]})
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_full_spec_builds_and_its_sandbox_has_everything(
    http: httpx.AsyncClient, context_tar: bytes
) -> None:
    name = _name("full")
    build = await build_ok(http, name, SPEC, context_tar, tags=["stable"])
    assert build["version"] == 1 and build["steps"] == 11 and build["step"] == 11
    log = await full_log(http, name, build["build_id"])
    assert "Step 1/11: FROM minimal" in log and "Step 5/11: RUN python3 /tmp/build/pip.zip/pip" in log
    assert "Successfully installed hello-pkg-1.0" in log and f"Template {name}:v1 is ready" in log
    assert "Checking that the template starts" in log

    r = await http.get(f"/v1/templates/{name}")
    assert r.status_code == 200, r.text
    (version,) = r.json()["versions"]
    assert version["tags"] == ["v1", "stable"] and version["source"] == "build"
    assert version["base"] == "minimal" and len(version["layers"]) == 5  # 2 RUN, 2 COPY, 1 WORKDIR
    assert version["config"]["env"] == {"APP_MODE": "prod", "GREETING_TEXT": "hello world"}
    assert version["config"]["workdir"] == "/srv/app" and version["config"]["user"] == "app"
    assert version["size_bytes"] > 0

    r = await http.post("/v1/sandboxes", json={"template": f"{name}:stable"})
    assert r.status_code == 201, r.text
    sb = r.json()["id"]
    try:
        # The server answered before the create did (READY), so it answers now.
        page = await sh(
            http,
            sb,
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/').read().decode())\"",
        )
        assert "built by warren" in page["stdout"], page
        out = await sh(
            http,
            sb,
            'python3 -c "import hello_pkg; print(hello_pkg.GREETING)"; echo "$APP_MODE/$GREETING_TEXT"; '
            "pwd; whoami; cat index.html data/notes.txt; ls /srv/app; stat -c %U /home/app; "
            "test -e /.warren-build && echo staging-left || echo no-staging; "
            "test -e /tmp/build || echo clean",
        )
        assert out["exit_code"] == 0, out
        assert out["stdout"].splitlines() == [
            "hello from a wheel",
            "prod/hello world",
            "/srv/app",
            "app",
            "<h1>built by warren</h1>",
            "copied",
            "data",
            "index.html",
            "app",  # COPY did not take the home's owner away (copied on the host, not remade)
            "no-staging",
            "clean",
        ], out
    finally:
        await http.delete(f"/v1/sandboxes/{sb}")


async def test_a_failing_run_fails_the_build_with_its_output_and_leaves_no_template(
    http: httpx.AsyncClient,
) -> None:
    name = _name("fails")
    spec = "FROM minimal\nENV X=1\nRUN echo before-the-failure && echo oops >&2 && exit 7\nRUN echo never"
    r = await submit(http, name, spec)
    assert r.status_code == 202, r.text
    build = await wait_build(http, name, r.json()["build_id"])
    assert build["status"] == "failed" and build["failed_step"] == 3 and build["exit_code"] == 7
    assert "before-the-failure" in build["error"] and "oops" in build["error"]
    assert build["version"] is None
    log = await full_log(http, name, build["build_id"])
    assert "Step 3/4: RUN echo before-the-failure" in log and "Step 4/4" not in log
    assert "error: step 3: the command exited with 7" in log
    assert (await http.get(f"/v1/templates/{name}")).status_code == 404
    names = [t["name"] for t in (await http.get("/v1/templates")).json()]
    assert name not in names and "minimal" in names
    listed = (await http.get(f"/v1/templates/{name}/builds")).json()
    assert [b["build_id"] for b in listed] == [build["build_id"]]


async def test_a_template_whose_sandboxes_cannot_start_is_not_written(http: httpx.AsyncClient) -> None:
    name = _name("nopy")
    r = await submit(http, name, "FROM minimal\nRUN echo bye && rm /usr/bin/python3.11\n")
    assert r.status_code == 202, r.text
    build = await wait_build(http, name, r.json()["build_id"])
    assert build["status"] == "failed" and build["failed_step"] == 2, build
    assert "does not start" in build["error"] and "python3" in build["error"], build
    assert (await http.get(f"/v1/templates/{name}")).status_code == 404


async def test_a_rebuild_reuses_the_unchanged_prefix(http: httpx.AsyncClient, platform: Platform) -> None:
    name = _name("cache")
    first = "FROM minimal\nRUN echo one > /one\nWORKDIR /w\nRUN echo two > two\nRUN echo three > three\n"
    b1 = await build_ok(http, name, first)
    assert b1["cached_steps"] == 0
    second = first.replace("echo three", "echo THREE")
    b2 = await build_ok(http, name, second, tags=["latest-try"])
    assert b2["cached_steps"] == 3 and b2["version"] == 2
    log = await full_log(http, name, b2["build_id"])
    assert log.count(" ---> CACHED ") == 3
    step5 = log.split("Step 5/5:")[1]
    assert "CACHED" not in step5
    versions = (await http.get(f"/v1/templates/{name}")).json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["layers"][:3] == versions[1]["layers"][:3]
    assert versions[0]["layers"][3] != versions[1]["layers"][3]
    # Each hit moved its entry's used_at (the GC drops entries unused for the cache TTL).
    hits = await platform.sql(
        "SELECT count(*) FROM build_cache WHERE layer = ANY(:l) AND used_at > created_at",
        l=versions[1]["layers"][:3],
    )
    assert hits[0][0] == 3
    # Sandboxes of each version see their own step.
    for ref, want in ((f"{name}:v1", "three"), (name, "THREE")):
        r = await http.post("/v1/sandboxes", json={"template": ref})
        assert r.status_code == 201, r.text
        try:
            out = await sh(http, r.json()["id"], "cat /one /w/two /w/three")
            assert out["stdout"].split() == ["one", "two", want]
        finally:
            await http.delete(f"/v1/sandboxes/{r.json()['id']}")


async def test_a_build_makes_its_from_chain_young(http: httpx.AsyncClient, platform: Platform) -> None:
    """A build records its FROM template's layers again as it starts: if that template is
    deleted mid-build, the GC's grace period keeps the layers until the new version names them."""
    parent = _name("parent")
    await build_ok(http, parent, "FROM minimal\nRUN echo parent > /parent\n")
    layers = (await http.get(f"/v1/templates/{parent}")).json()["versions"][0]["layers"]
    aged = "UPDATE layers SET created_at = now() - interval '2 hours' WHERE digest = ANY(:l)"
    assert await platform.sql(aged, l=layers) == len(layers)
    child = _name("child")
    await build_ok(http, child, f"FROM {parent}\nRUN echo child > /child\n")
    young = await platform.sql(
        "SELECT count(*) FROM layers WHERE digest = ANY(:l) AND created_at > now() - interval '10 minutes'",
        l=layers,
    )
    assert young[0][0] == len(layers)


async def test_the_log_reads_by_offset_and_streams(http: httpx.AsyncClient) -> None:
    name = _name("log")
    spec = "FROM minimal\nRUN for i in 1 2 3 4 5; do echo line-$i-é; done\n"
    r = await submit(http, name, spec)
    build_id = r.json()["build_id"]
    events: list[tuple[str, Any]] = []
    async with http.stream("GET", f"/v1/templates/{name}/builds/{build_id}/log/stream") as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    statuses = [e["status"] for k, e in events if k == "status"]
    assert statuses[-1] == "ready" and events[-1][0] == "status"  # the end comes last
    streamed = "".join(e["data"] for k, e in events if k == "log")
    assert "line-5-é" in streamed and f"Template {name}:v1 is ready" in streamed
    whole = await full_log(http, name, build_id)
    assert streamed == whole
    # Small reads never split a character, and chain up to the whole.
    pieces, offset = [], 0
    while True:
        page = (
            await http.get(
                f"/v1/templates/{name}/builds/{build_id}/log", params={"offset": offset, "limit": 7}
            )
        ).json()
        pieces.append(page["data"])
        offset = page["next_offset"]
        if page["done"]:
            break
    assert "".join(pieces) == whole


async def test_refusals(http: httpx.AsyncClient, platform: Platform) -> None:
    r = await submit(http, _name("bad"), "FROM minimal\nRUN true\nEXPOSE 80\n")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("line 3:"), r.text
    # With a context: refused when the fields arrive, before the upload is read.
    r = await submit(http, _name("bad"), "FROM minimal\nCOPY --chown=app a /a\n", b"x" * (1 << 20))
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("line 2: COPY --chown"), r.text
    big = _tar({"big.bin": os.urandom(CONTEXT_CAP_MB << 20)})
    r = await submit(http, _name("big"), "FROM minimal\nCOPY big.bin /\n", big)
    assert r.status_code == 413, r.text
    r = await submit(http, "minimal", "FROM minimal\n")
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_reserved", r.text
    r = await submit(http, _name("tags"), "FROM minimal\n", tags=["v2"])
    assert r.status_code == 400, r.text
    r = await submit(http, "bad/name", "FROM minimal\n")
    assert r.status_code == 400, r.text
    r = await submit(http, _name("args"), "FROM minimal\n", build_args={"NOPE": "1"})
    assert r.status_code == 400 and "NOPE" in r.text, r.text
    r = await submit(http, _name("from"), "FROM no-such-template\nRUN true\n")
    assert r.status_code == 202  # FROM resolves when the build runs
    build = await wait_build(http, r.json()["name"], r.json()["build_id"])
    assert build["status"] == "failed" and "no-such-template" in build["error"], build
    r = await http.get(f"/v1/templates/x/builds/{build['build_id']}")
    assert r.status_code == 404  # a build is found under its own template's name only
    r = await http.delete("/v1/templates/minimal")
    assert r.status_code == 403, r.text
    r = await http.delete("/v1/templates/never-built")
    assert r.status_code == 404, r.text
    # A snapshot is deleted through the snapshot API, which audits it (and removes a pre-store
    # snapshot's files from its host).
    snap, team = _name("snap"), ids.parse_id(ids.Kind.TEAM, platform.team_id)
    await platform.sql(
        "INSERT INTO templates (id, name, type, team_id, source) VALUES (:i, :n, 'snapshot', :t, 'snapshot')",
        i=uuid.uuid4(), n=snap, t=team,
    )  # fmt: skip
    r = await http.delete(f"/v1/templates/{snap}")
    assert r.status_code == 409 and f"DELETE /v1/snapshots/{snap}" in r.json()["error"]["message"], r.text
    assert "live on a host" not in r.text
    r = await http.delete(f"/v1/snapshots/{snap}")
    assert r.status_code == 204, r.text


async def test_a_replica_that_stops_fails_its_builds(http: httpx.AsyncClient, platform: Platform) -> None:
    """A second CP replica (same database, same home: the CA and the store) takes a build and
    stops while it runs: the build ends failed, "control plane stopped", at its step."""
    replica = await InProcessCP(platform.cp.db_url, platform.cp.home, run_workers=False).start()
    name = _name("stopped")
    try:
        r = await replica.http.post(
            "/v1/templates", json={"name": name, "spec": "FROM minimal\nRUN echo started; sleep 600"},
            headers=platform.headers,
        )  # fmt: skip
        assert r.status_code == 202, r.text
        build_id = r.json()["build_id"]
        for _ in range(600):
            if "started" in (await full_log_so_far(http, name, build_id)):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the step never started")
    finally:
        await replica.stop()
    build = (await http.get(f"/v1/templates/{name}/builds/{build_id}")).json()
    assert build["status"] == "failed" and build["error"].endswith(STOPPED) and build["failed_step"] == 2, (
        build
    )
    assert (await http.get(f"/v1/templates/{name}")).status_code == 404


async def full_log_so_far(http: httpx.AsyncClient, name: str, build_id: str) -> str:
    r = await http.get(f"/v1/templates/{name}/builds/{build_id}/log")
    return str(r.json()["data"])


async def test_the_sweep_fails_builds_whose_heartbeat_is_stale(
    http: httpx.AsyncClient, platform: Platform
) -> None:
    team = ids.parse_id(ids.Kind.TEAM, platform.team_id)
    name = _name("orphan")
    stale, fresh = ids.new_uuid(), ids.new_uuid()
    for build_id, age in ((stale, "10 minutes"), (fresh, "1 second")):
        await platform.sql(
            "INSERT INTO template_builds (id, team_id, name, spec, status, heartbeat_at) "
            f"VALUES (:id, :team, :name, 'FROM minimal', 'running', now() - interval '{age}')",
            id=build_id, team=team, name=name,
        )  # fmt: skip
    engine = create_async_engine(to_async_url(platform.cp.db_url))
    try:
        assert await sweep_stale(engine, 60) == 1
    finally:
        await engine.dispose()
    listed = {b["build_id"]: b for b in (await http.get(f"/v1/templates/{name}/builds")).json()}
    gone, alive = listed[ids.format_id(ids.Kind.BUILD, stale)], listed[ids.format_id(ids.Kind.BUILD, fresh)]
    assert gone["status"] == "failed" and gone["error"] == STALE and gone["finished_at"]
    assert alive["status"] == "running"
    await platform.sql("DELETE FROM template_builds WHERE id = :id", id=fresh)


async def test_a_team_runs_a_bounded_number_of_builds(http: httpx.AsyncClient, platform: Platform) -> None:
    team = ids.parse_id(ids.Kind.TEAM, platform.team_id)
    running = [ids.new_uuid(), ids.new_uuid()]  # WARREN_BUILD_MAX_PER_TEAM: 2
    for build_id in running:
        await platform.sql(
            "INSERT INTO template_builds (id, team_id, name, spec, status, heartbeat_at) "
            "VALUES (:id, :team, 'busy', 'FROM minimal', 'running', now())",
            id=build_id, team=team,
        )  # fmt: skip
    try:
        r = await submit(http, _name("third"), "FROM minimal\n")
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_builds", r.text
    finally:
        await platform.sql("DELETE FROM template_builds WHERE id = ANY(:ids)", ids=running)
    r = await submit(http, _name("third"), "FROM minimal\n")
    assert r.status_code == 202, r.text
