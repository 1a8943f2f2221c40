"""Session 11's hostile tenant: a small Warrenfile that makes the control plane build huge
strings, and builds that fill PostgreSQL (the second half of this file).

The CP parses a build's spec in the request (``services/template_spec.parse``), before anything
runs, and substitutes variables the way Docker does. Nothing bounded what substitution produced:

* "billion laughs": ``ENV b=$a$a$a…`` then ``ENV c=$b$b$b…``, each line multiplying the one
  before (a 3 KiB spec made a 64 MB value; one more line, gigabytes: the CP's memory, every
  tenant's API with it);
* ``${a:-…}`` and ARG do the same without ENV;
* one ENV line of tens of thousands of variables, then RUN steps: every step carries the whole
  env (386 MiB held parsing a 216 KiB spec);
* relative WORKDIRs add up, and every later step holds the path;
* COPY words, each a substituted variable.

Expected: refused at submit (4xx, nothing recorded) holding a few MiB at most. The env a spec
declares is bounded like an exec's (256 variables, 128 KiB): every sandbox of the template gets it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import tracemalloc
from typing import Any

import httpx
import pytest

from tests.harness.cp import InProcessCP
from warren import ids
from warren.cp.services import template_builds as builds_svc
from warren.cp.services import templates as templates_svc
from warren.cp.services.template_spec import parse
from warren.errors import WarrenError

PEAK_BOUND = 16 << 20  # what one refused parse may hold; before the fix each below held 6-386 MiB

HOSTILE = {
    "env_laughs": "FROM minimal\nENV a=" + "x" * 1000 + "\nENV b=" + "$a" * 1000 + "\nENV c=" + "$b" * 64,
    "arg_laughs_in_braces": (
        "FROM minimal\nARG a=" + "x" * 1000 + "\nARG b=" + "${a}" * 1000 + "\nARG c=" + "${b:-x}" * 64
    ),
    "laughs_through_defaults": (
        "FROM minimal\nARG a="
        + "x" * 1000
        + "\nARG b="
        + "${nope:-$a$a$a$a}" * 250
        + "\nCOPY "
        + "$b " * 64
        + "/d/"
    ),
    "many_env_then_runs": (
        "FROM minimal\nENV " + " ".join(f"v{i}=1" for i in range(25000)) + "\n" + "RUN true\n" * 250
    ),
    "workdirs_that_add_up": "FROM minimal\nARG a=" + "x" * 200 + "\nWORKDIR ${a}\n" + "WORKDIR $a\n" * 250,
    "copy_words": "FROM minimal\nARG a=" + "x" * 1000 + "\nCOPY " + "$a " * 20000 + "/d/",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_spec_is_refused_holding_little(name: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(WarrenError) as refused:
            parse(HOSTILE[name])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refused.value.code in ("invalid_request", "too_large"), refused.value
    assert peak < PEAK_BOUND, f"{name}: parsing held {peak >> 20} MiB"


def test_ordinary_substitution_still_works() -> None:
    spec = parse(
        "FROM minimal\nARG v=1\nENV A=$v B=${v}2 C=${nope:-d} PATH=/opt/bin:$PATH\n"
        "WORKDIR /srv\nWORKDIR app\nCOPY ${A} $B ./\n" + "RUN true\n" * 200,
        build_args={"v": "7"},
    )
    assert spec.config.env["A"] == "7" and spec.config.env["B"] == "72" and spec.config.env["C"] == "d"
    assert spec.config.workdir == "/srv/app"
    assert len(spec.steps) == 1 + 1 + 1 + 2 + 1 + 200


async def test_a_hostile_spec_is_refused_at_submit_and_nothing_is_recorded(cp: InProcessCP) -> None:
    mallory = await cp.signup()
    for i, name in enumerate(sorted(HOSTILE)):
        tpl = f"laughs-{i}"
        r = await mallory.req("POST", "/v1/templates", json={"name": tpl, "spec": HOSTILE[name]})
        assert r.status_code in (400, 413), (name, r.status_code, r.text[:300])
        builds = await mallory.req("GET", f"/v1/templates/{tpl}/builds")
        assert builds.status_code in (200, 404), builds.text
        assert builds.status_code == 404 or builds.json() == [], (name, builds.text[:300])
    # Build args are substituted too: a large one used many times is the same attack.
    spec = "FROM minimal\nARG big\nENV a=" + "$big" * 64
    body = {"name": "laughs-args", "spec": spec, "build_args": {"big": "y" * 60000}}
    r = await mallory.req("POST", "/v1/templates", json=body)
    assert r.status_code in (400, 413), r.text[:300]


# ----------------------------------------------------------------- what builds leave behind
#
# A build whose spec runs no step (``FROM minimal`` + ``ENV``) needs no host and made a template
# version in ~0.1-0.3 s; a build that fails (``FROM`` a missing template) likewise, leaving its
# 256 KiB spec and its log. Nothing was ever deleted but by the tenant, and ``GET
# /v1/templates`` read every version's row whole: one API key wrote PostgreSQL without end.
# The bounds are constants; the tests lower them (the CP runs in this process).


async def _build(user: Any, name: str, spec: str) -> dict[str, Any]:
    r = await user.req("POST", "/v1/templates", json={"name": name, "spec": spec})
    assert r.status_code == 202, r.text[:300]
    build_id = r.json()["build_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        got = (await user.req("GET", f"/v1/templates/{name}/builds/{build_id}")).json()
        if got["status"] in ("ready", "failed"):
            return dict(got)
        await asyncio.sleep(0.05)
    raise AssertionError(f"build {build_id} did not end: {got}")


def _padding() -> str:
    """A comment of random text: kept in the spec, not compressible by PostgreSQL."""
    return "".join(f"# {secrets.token_hex(500)}\n" for _ in range(200))


async def test_a_team_cannot_pile_up_template_versions(
    cp: InProcessCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(templates_svc, "MAX_VERSIONS_PER_TEMPLATE", 3, raising=False)
    monkeypatch.setattr(templates_svc, "MAX_VERSIONS_PER_TEAM", 5, raising=False)
    mallory = await cp.signup()
    spec = "FROM minimal\nENV A=1\n"
    for _ in range(3):
        assert (await _build(mallory, "piled", spec))["status"] == "ready"
    r = await mallory.req("POST", "/v1/templates", json={"name": "piled", "spec": spec})
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text[:300]
    for _ in range(2):
        assert (await _build(mallory, "other", spec))["status"] == "ready"
    r = await mallory.req("POST", "/v1/templates", json={"name": "third", "spec": spec})
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text[:300]
    # An image import into the full team is refused before its upload is read.
    r = await mallory.req(
        "POST", "/v1/templates/import", data={"name": "third"}, files={"image": ("i.tar", b"\0" * 1024)}
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded", r.text[:300]
    # Another team is not held back by this one's versions; deleting frees the room.
    other = await cp.signup()
    assert (await _build(other, "piled", spec))["status"] == "ready"
    assert (await mallory.req("DELETE", "/v1/templates/piled")).status_code == 204
    assert (await _build(mallory, "third", spec))["status"] == "ready"


async def test_ended_builds_are_forgotten_past_the_bound(
    cp: InProcessCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builds_svc, "MAX_ENDED_BUILDS_KEPT", 4, raising=False)
    mallory = await cp.signup()
    kept = await _build(mallory, "keeper", "FROM minimal\nENV A=1\n" + _padding())
    assert kept["status"] == "ready"
    for _ in range(12):
        failed = await _build(mallory, "nothing", "FROM nothere\nRUN true\n" + _padding())
        assert failed["status"] == "failed"
    team = ids.parse_id(ids.Kind.TEAM, mallory.team_id)
    held = await cp.sql(
        "SELECT count(*), coalesce(sum(length(spec)), 0) FROM template_builds WHERE team_id = :t", t=team
    )
    count, spec_bytes = held[0]
    # The newest 4 ended builds, the one being submitted last, and the build a version names.
    assert count <= 4 + 1 + 1, (count, spec_bytes)
    assert spec_bytes < 7 * 210_000, spec_bytes
    # The version's build is still there to read, and so is the newest failure.
    version = (await mallory.req("GET", "/v1/templates/keeper")).json()["versions"][0]
    r = await mallory.req("GET", f"/v1/templates/keeper/builds/{version['build_id']}")
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text[:300]
    r = await mallory.req("GET", f"/v1/templates/nothing/builds/{failed['build_id']}")
    assert r.status_code == 200, r.text[:300]


async def _stream_status(http: httpx.AsyncClient, url: str) -> int:
    """Whether one more log stream is admitted: its status, the stream closed again."""
    r = await http.send(http.build_request("GET", url), stream=True)
    try:
        if r.status_code == 429:
            await r.aread()
            assert r.json()["error"]["code"] == "too_many_streams", r.text[:300]
        return r.status_code
    finally:
        await r.aclose()


async def test_build_log_streams_count_toward_the_teams_stream_cap(
    cp: InProcessCP, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each server-sent-events stream of a running build's log polls PostgreSQL twice every
    0.2 s for up to the build's time limit; they were in no count, so one key could open
    thousands on one long build. They now hold one of the team's stream slots each."""
    monkeypatch.setattr(cp.settings, "max_streams_per_team", 3)
    mallory = await cp.signup()
    built = await _build(mallory, "long", "FROM minimal\nENV A=1\n")
    # As a build whose RUN sleeps for half an hour looks while it runs (no host here to run one).
    where = "WHERE name = 'long' AND team_id = :t"
    team = ids.parse_id(ids.Kind.TEAM, mallory.team_id)
    await cp.sql(
        "UPDATE template_builds SET status = 'running', finished_at = NULL, "
        f"heartbeat_at = now() + interval '1 hour' {where}",
        t=team,
    )
    url = f"{cp.url}/v1/templates/long/builds/{built['build_id']}/log/stream"
    async with httpx.AsyncClient(headers=mallory.h, timeout=60) as http:
        opened: list[httpx.Response] = []
        readers = []  # kept: a line iterator dropped closes its response
        try:
            for _ in range(3):
                r = await http.send(http.build_request("GET", url), stream=True)
                opened.append(r)
                assert r.status_code == 200, await r.aread()
                readers.append(r.aiter_lines())
                await anext(readers[-1])  # the first event: the stream is being served
            assert await _stream_status(http, url) == 429
            await opened.pop().aclose()
            deadline = time.monotonic() + 30
            while (status := await _stream_status(http, url)) == 429 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert status == 200
            # A stream whose client leaves before reading gives its slot back too.
            for _ in range(5):
                assert await _stream_status(http, url) == 200
        finally:
            for o in opened:
                await o.aclose()
            await cp.sql(f"UPDATE template_builds SET status = 'failed', finished_at = now() {where}", t=team)
