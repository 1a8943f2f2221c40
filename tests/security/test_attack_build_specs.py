"""Session 11's hostile tenant: a small Warrenfile that makes the control plane build huge strings.

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

import tracemalloc

import pytest

from tests.harness.cp import InProcessCP
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
