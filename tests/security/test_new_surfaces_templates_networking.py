"""Issues 13 and 14's surfaces attacked the way a hostile tenant would: hostile JSON (lone
surrogates, numbers past int64, wrong types) on the template, preview and network routes, and
another team's ids. Each must be a clean 4xx, never a 500, and nothing of bob's is reachable."""

from __future__ import annotations

import json

import pytest

from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

SURROGATE = '"\\ud800"'  # a lone surrogate, as raw JSON text


def raw(t: Tenant, method: str, path: str, body: str) -> int:
    with t.client(60) as c:
        r = c.request(method, path, content=body.encode(), headers={"Content-Type": "application/json"})
    assert r.status_code < 500, (path, body, r.status_code, r.text)
    return r.status_code


def test_hostile_bodies_on_the_new_routes_are_4xx(alice: Tenant) -> None:
    sid = alice.create()
    cases = [
        ("POST", "/v1/templates", '{"name": ' + SURROGATE + ', "spec": "FROM minimal"}'),
        ("POST", "/v1/templates", '{"name": "t1", "spec": ' + SURROGATE + "}"),
        ("POST", "/v1/templates", '{"name": "t1", "spec": "FROM minimal", "build_args": {"A": 1e400}}'),
        ("POST", "/v1/templates", '{"name": "t1", "spec": "FROM minimal", "tags": [' + SURROGATE + "]}"),
        ("POST", "/v1/templates", '{"name": "t1", "spec": "FROM minimal\\nRUN \\u0000"}'),
        ("PATCH", f"/v1/sandboxes/{sid}", '{"public_ports": [99999999999999999999999]}'),
        ("PATCH", f"/v1/sandboxes/{sid}", '{"public_ports": [2147483648]}'),
        ("PATCH", f"/v1/sandboxes/{sid}", '{"public_ports": [true]}'),
        ("PATCH", f"/v1/sandboxes/{sid}/network", '{"allow_out": [' + SURROGATE + "]}"),
        ("PATCH", f"/v1/sandboxes/{sid}/network", '{"allow_out": ["' + "a" * 100_000 + '.com"]}'),
        ("PATCH", f"/v1/sandboxes/{sid}/network", '{"deny_out": ["0.0.0.0/0"], "allow_out": "x"}'),
        ("POST", f"/v1/sandboxes/{sid}/watchers", '{"path": ' + SURROGATE + "}"),
        ("POST", f"/v1/sandboxes/{sid}/preview/signed-url", '{"port": 4294967296}'),
    ]
    for method, path, body in cases:
        assert 400 <= raw(alice, method, path, body) < 500, (method, path, body)
    for path in (
        f"/v1/sandboxes/{sid}/files/download-url?path=%ED%A0%80&expires=60",
        f"/v1/sandboxes/{sid}/files/download-url?path=/x&expires=99999999999999999999",
        f"/v1/sandboxes/{sid}/ports/8000/",
    ):
        with alice.client(60) as c:
            r = c.get(path)
        assert r.status_code < 500, (path, r.status_code, r.text)


def test_another_teams_ids_are_404_on_the_new_routes(alice: Tenant, bob: Tenant) -> None:
    sid = bob.create()
    for method, path, body in [
        ("PATCH", f"/v1/sandboxes/{sid}", {"public_ports": [8000]}),
        ("GET", f"/v1/sandboxes/{sid}/network", None),
        ("PATCH", f"/v1/sandboxes/{sid}/network", {"deny_out": ["0.0.0.0/0"]}),
        ("POST", f"/v1/sandboxes/{sid}/traffic-token", None),
        ("POST", f"/v1/sandboxes/{sid}/watchers", {"path": "/tmp"}),
        ("GET", f"/v1/sandboxes/{sid}/files/download-url?path=/etc/hostname&expires=60", None),
    ]:
        r = alice.w(method, path, body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    assert json.loads(bob.w("GET", f"/v1/sandboxes/{sid}/network").text)["deny_out"] == []
