"""Hostile-tenant probes of the surfaces added by issue 11/12: the quotas and limits API, the
egress admin API, create's ``disk_size_mb``, paged listings, uploads and the sign-in address.
Each probe sends what an attacker would (ints past int32/int64, negatives, floats, booleans,
lone surrogates, NUL, huge strings, another team's id, garbage cursors) and asserts the exact
answer: a 400/403/404, never a 500, never the other team's data.

On the worker's shared platform (``shared_platform``): the platform-wide limits are only ever
refused here (each probe asserts them unchanged), and what it does set is its own teams'."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from tests.harness.tenant import Tenant, signup
from warren.cp.services import rate_limits

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

# -1 is refused by the limits (a quota or a maximum is never negative); create reads <= 0 as
# "the default", as documented, so create is probed with the rest.
BAD_INTS: list[Any] = [2**31, 2**63, 2**64, -(2**63) - 1, 1.5, 1.0, True, False, "1", [1], {"a": 1}]
BAD_TEXT = ["\udfff", "a\x00b", "x" * 100_000]


def _raw(body: Any) -> dict[str, Any]:
    """``body`` as the JSON bytes an attacker sends: a lone surrogate as its \\u escape (httpx's
    own encoder cannot send one)."""
    return {"content": json.dumps(body), "headers": {"Content-Type": "application/json"}}


def _admin(platform: Platform, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=platform.url, headers=platform.user_headers, timeout=60) as c:
        return c.request(method, path, **(_raw(body) if body is not None else {}))


def _call(t: Tenant, method: str, path: str, body: Any = None) -> httpx.Response:
    with t.client() as c:
        return c.request(method, path, **(_raw(body) if body is not None else {}))


@pytest.fixture(scope="module")
def carol(platform: Platform) -> Tenant:
    """The team whose quotas the admin probes try to set (alice keeps the defaults)."""
    return signup(platform.url, "carol")


@pytest.mark.parametrize("value", [*BAD_INTS, -1])
def test_admin_limits_refuse_values_that_are_not_plain_in_range_ints(platform: Platform, value: Any) -> None:
    before = _admin(platform, "GET", "/v1/admin/limits").json()
    r = _admin(platform, "PUT", "/v1/admin/limits", {"max_vcpus": value})
    assert r.status_code == 400, r.text
    r = _admin(platform, "PUT", "/v1/admin/limits", {"quota_sandboxes": value})
    assert r.status_code == 400, r.text
    assert _admin(platform, "GET", "/v1/admin/limits").json() == before


@pytest.mark.parametrize("value", [*BAD_INTS, -1])
def test_admin_team_quotas_refuse_bad_values(platform: Platform, carol: Tenant, value: Any) -> None:
    path = f"/v1/admin/teams/{carol.team_id}/quotas"
    r = _admin(platform, "PUT", path, {"sandboxes": value})
    assert r.status_code == 400, r.text
    assert _admin(platform, "GET", path).json()["overrides"]["sandboxes"] is None


def test_admin_limits_refuse_unknown_and_strange_keys(platform: Platform) -> None:
    for body in ({"nope": 1}, {"\udfff": 1}, {"a\x00": 1}, {"x" * 100_000: 1}, [], "x", 5):
        r = _admin(platform, "PUT", "/v1/admin/limits", body)
        assert r.status_code == 400, (str(body)[:50], r.text[:300])


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/admin/limits", None),
        ("PUT", "/v1/admin/limits", {"max_vcpus": 64}),
        ("GET", "/v1/admin/teams/{bob}/quotas", None),
        ("PUT", "/v1/admin/teams/{alice}/quotas", {"sandboxes": 10_000}),
        ("GET", "/v1/admin/egress-ranges", None),
        ("GET", "/v1/admin/teams/{bob}/egress", None),
        ("PUT", "/v1/admin/teams/{alice}/egress", {"ranges": []}),
    ],
)
def test_tenants_are_not_admins(alice: Tenant, bob: Tenant, method: str, path: str, body: Any) -> None:
    path = path.format(alice=alice.team_id, bob=bob.team_id)
    # Admin routes take a user token only: an API key is 401 as on every user-only route.
    assert alice.w(method, path, body).status_code == 401
    with httpx.Client(base_url=alice.url, headers={"Authorization": f"Bearer {alice.token}"}) as c:
        assert c.request(method, path, json=body).status_code == 403


def test_another_teams_quotas_are_refused_as_every_team_route_refuses(alice: Tenant, bob: Tenant) -> None:
    mine = alice.w("GET", f"/v1/teams/{alice.team_id}/quotas")
    assert mine.status_code == 200 and mine.json()["team_id"] == alice.team_id
    theirs = alice.w("GET", f"/v1/teams/{bob.team_id}/quotas")
    assert theirs.status_code == 403, theirs.text
    assert "usage" not in theirs.text
    with httpx.Client(base_url=alice.url, headers={"Authorization": f"Bearer {alice.token}"}) as c:
        theirs = c.get(f"/v1/teams/{bob.team_id}/quotas")
        members = c.get(f"/v1/teams/{bob.team_id}/members")
    assert theirs.status_code == members.status_code == 403, (theirs.text, members.text)
    assert "usage" not in theirs.text


@pytest.mark.parametrize(
    "team",
    [
        "team_%ED%BF%BF",
        "team_%FF",
        "team_%00",
        "x" * 10_000,
        "team_00000000000000000000000000",
        "..",
        "%2e%2e",
    ],
)
def test_garbage_team_ids_are_400_or_404(platform: Platform, alice: Tenant, team: str) -> None:
    for method, path, body in (
        ("GET", f"/v1/admin/teams/{team}/quotas", None),
        ("PUT", f"/v1/admin/teams/{team}/quotas", {"sandboxes": 1}),
        ("GET", f"/v1/admin/teams/{team}/egress", None),
        ("PUT", f"/v1/admin/teams/{team}/egress", {"ranges": []}),
    ):
        r = _admin(platform, method, path, body)
        assert r.status_code in (400, 404), (method, path[:60], r.status_code, r.text)
    assert _call(alice, "GET", f"/v1/teams/{team}/quotas").status_code in (400, 403, 404)


def test_a_deleted_or_unknown_team_is_404(platform: Platform) -> None:
    unknown = "team_" + "0" * 26
    r = _admin(platform, "GET", f"/v1/admin/teams/{unknown}/quotas")
    assert r.status_code in (400, 404), r.text


def test_egress_refuses_bad_names(platform: Platform, carol: Tenant) -> None:
    path = f"/v1/admin/teams/{carol.team_id}/egress"
    bodies: list[Any] = [{"ranges": [t]} for t in BAD_TEXT]
    bodies += [{"ranges": ["nope"]}, {"ranges": ["a"] * 33}, {"ranges": [1]}, {"ranges": "corp"}, {}]
    for body in bodies:
        r = _admin(platform, "PUT", path, body)
        assert r.status_code == 400, r.text
    assert _admin(platform, "GET", path).json()["ranges"] == []


@pytest.mark.parametrize("value", [*BAD_INTS, 2**31 - 1])
def test_create_refuses_bad_disk_sizes(bob: Tenant, value: Any) -> None:
    r = _call(bob, "POST", "/v1/sandboxes", {"template": "minimal", "disk_size_mb": value})
    assert r.status_code == 400, r.text
    assert bob.w("GET", "/v1/sandboxes").json() == []


@pytest.fixture(scope="module")
def box(alice: Tenant) -> str:
    sid = alice.create()
    alice.sh(sid, "mkdir -p /tmp/d && cd /tmp/d && touch a b c && ln -s / root && ln -s . loop")
    return sid


@pytest.mark.parametrize(
    "body",
    [{"path": "/tmp/d", "limit": v} for v in [0, -1, 10_001, 2**31, 2**63, 2**64, 1.5, True, "10"]]
    + [{"path": "/tmp/d", "cursor": c} for c in ["x" * 16_385, "\udfff", "a\x00b", 5, None]]
    + [{"path": "/tmp/d", "depth": d} for d in [0, 33, 2**63, True]],
)
def test_listing_refuses_bad_pages(alice: Tenant, box: str, body: dict[str, Any]) -> None:
    r = _call(alice, "POST", f"/v1/sandboxes/{box}/files/list", body)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("cursor", ["garbage", "é" * 1000, "../../etc", "/", "\u202e", "x" * 16_384])
def test_garbage_cursors_never_500(alice: Tenant, box: str, cursor: str) -> None:
    r = _call(alice, "POST", f"/v1/sandboxes/{box}/files/list", {"path": "/tmp/d", "cursor": cursor})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert all(e["path"].startswith("/tmp/d/") for e in r.json())


def test_listing_does_not_follow_symlinks(alice: Tenant, box: str) -> None:
    r = alice.w("POST", f"/v1/sandboxes/{box}/files/list", {"path": "/tmp/d", "depth": 32})
    assert r.status_code == 200, r.text
    paths = {e["path"]: e["type"] for e in r.json()}
    assert paths == {
        "/tmp/d/a": "file", "/tmp/d/b": "file", "/tmp/d/c": "file",
        "/tmp/d/root": "symlink", "/tmp/d/loop": "symlink",
    }  # fmt: skip


def test_paging_walks_every_entry_once(alice: Tenant, box: str) -> None:
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        r = alice.w(
            "POST", f"/v1/sandboxes/{box}/files/list", {"path": "/tmp/d", "limit": 2, "cursor": cursor}
        )
        assert r.status_code == 200, r.text
        seen += [e["path"] for e in r.json()]
        if r.headers["X-Has-More"] != "true":
            break
        cursor = r.headers["X-Next-Cursor"]
    assert seen == sorted(set(seen)) and len(seen) == 5


def test_bob_cannot_list_or_upload_into_alices_box(alice: Tenant, bob: Tenant, box: str) -> None:
    r = bob.w("POST", f"/v1/sandboxes/{box}/files/list", {"path": "/tmp/d"})
    assert r.status_code == 404, r.text
    with bob.client() as c:
        r = c.post(f"/v1/sandboxes/{box}/files/stream/write", files={"path": (None, "/tmp/x"), "file": b"x"})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("path", ["\udfff", "a\x00b", "x" * 100_000, ""])
def test_upload_refuses_bad_paths(alice: Tenant, box: str, path: str) -> None:
    with alice.client() as c:
        data = path.encode("utf-8", "surrogatepass")
        r = c.post(f"/v1/sandboxes/{box}/files/stream/write", files={"path": (None, data), "file": b"x"})
    assert r.status_code == 400, r.text


def test_an_upload_cut_short_writes_nothing(alice: Tenant, box: str) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="path"\r\n\r\n/tmp/cut\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
    ).encode()
    with alice.client() as c:
        r = c.post(
            f"/v1/sandboxes/{box}/files/stream/write",
            content=head + b"x" * 1000,  # no closing boundary: the body ends mid-file
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert r.status_code == 400, r.text
    assert alice.x(box, "test -e /tmp/cut").json()["exit_code"] == 1


@pytest.mark.parametrize(
    "forwarded",
    [[""], [","], ["not-an-ip"], ["1.2.3.4, garbage"], ["x" * 100_000], ["::ffff:10.0.0.1"], ["é\udfff"],
     ["10.0.0.1, 10.0.0.2"], ["1.1.1.1", "2.2.2.2"]],
)  # fmt: skip
def test_malformed_forwarded_for_gives_a_bounded_key(forwarded: list[str]) -> None:
    addr = rate_limits.client_address("10.0.0.9", forwarded, "10.0.0.0/8")
    key = rate_limits.address_key(addr)
    assert len(key) <= 64
    assert rate_limits.client_address("8.8.8.8", forwarded, "10.0.0.0/8") == "8.8.8.8"


def test_malformed_forwarded_for_over_http_never_500(platform: Platform) -> None:
    for value in ["", ",,,", "not-an-ip", "x" * 8000, "1.2.3.4, \xff\xfe"]:
        with httpx.Client(base_url=platform.url, timeout=60) as c:
            r = c.post(
                "/v1/auth/login",
                json={"email": "nobody@example.com", "password": "wrong-password-1"},
                headers={"X-Forwarded-For": value.encode("latin-1")},  # type: ignore[dict-item]
            )
        assert r.status_code in (401, 429), r.text


def test_a_download_nobody_reads_holds_no_memory(platform: Platform, alice: Tenant, box: str) -> None:
    """A client that asks for a big file and never reads must be held back by TCP flow control,
    not buffered in the control plane."""
    alice.sh(box, "head -c 160M /dev/zero > /tmp/big")
    u = urlsplit(platform.url)
    body = json.dumps({"path": "/tmp/big"}).encode()
    before = platform.cp.rss()
    with socket.create_connection((u.hostname or "", u.port or 80)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(
            f"POST /v1/sandboxes/{box}/files/stream/read HTTP/1.1\r\nHost: x\r\n"
            f"X-API-Key: {alice.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert s.recv(12) == b"HTTP/1.1 200"
        grown = 0
        for _ in range(20):  # 2 s of not reading: a buffered copy would be 160 MiB
            time.sleep(0.1)
            grown = max(grown, platform.cp.rss() - before)
        assert grown < 64 * 1024 * 1024, grown
    assert alice.w("GET", f"/v1/teams/{alice.team_id}/quotas").status_code == 200
    alice.sh(box, "rm /tmp/big")


def test_a_file_name_that_is_not_utf8_never_500(alice: Tenant, box: str) -> None:
    """Linux names are bytes: a tenant's own file named 0xff must not break its listing or stat."""
    alice.sh(box, "mkdir -p /tmp/raw && touch /tmp/raw/ok \"/tmp/raw/$(printf 'bad\\377')\"")
    r = alice.w("POST", f"/v1/sandboxes/{box}/files/list", {"path": "/tmp/raw"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert "/tmp/raw/ok" in [e["path"] for e in r.json()], r.json()


def test_paging_through_names_that_are_not_ascii(alice: Tenant, box: str) -> None:
    """The next cursor is a path: a name in any script (or not UTF-8 at all) must page on."""
    names = ["中文", "é", "z", "\U0001f600", "bad\\377", "bad\\376"]
    alice.sh(
        box,
        "mkdir -p /tmp/u && cd /tmp/u && for n in "
        + " ".join(f"\"$(printf '{n}')\"" for n in names)
        + '; do touch "$n"; done',
    )
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        r = _call(
            alice, "POST", f"/v1/sandboxes/{box}/files/list", {"path": "/tmp/u", "limit": 1, "cursor": cursor}
        )
        assert r.status_code == 200, r.text
        seen += [e["path"] for e in r.json()]
        if r.headers["X-Has-More"] != "true":
            break
        cursor = r.headers["X-Next-Cursor"]
    assert len(seen) == len(names)


def _dashboard(platform: Platform) -> tuple[httpx.Client, str]:
    """The platform admin signed in to the dashboard: a client with its session and CSRF token."""
    c = httpx.Client(base_url=platform.url, headers={"Origin": platform.url}, timeout=60)
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/login").text)
    assert token is not None
    form = {"csrf_token": token[1], "email": platform.email, "password": PASSWORD}
    assert c.post("/login", data=form).status_code in (200, 303)
    token = re.search(r'name="csrf-token" content="([^"]+)"', c.get("/admin").text)
    assert token is not None
    return c, token[1]


@pytest.mark.parametrize("value", [True, "5", 1.0, 2**40, -1])
def test_the_dashboard_quota_dialog_refuses_what_the_api_refuses(
    platform: Platform, carol: Tenant, value: Any
) -> None:
    c, token = _dashboard(platform)
    try:
        r = c.post(
            "/dashboard/actions/admin/quotas",
            json={"team_id": carol.team_id, "snapshots": value},
            headers={"X-CSRF-Token": token},
        )
        assert r.status_code == 400, r.text
        # The session works: an all-empty dialog (null = leave as is) is a 200 that sets nothing.
        ok = c.post(
            "/dashboard/actions/admin/quotas",
            json={"team_id": carol.team_id, "snapshots": None},
            headers={"X-CSRF-Token": token},
        )
        assert ok.status_code == 200, ok.text
    finally:
        c.close()
    assert (
        _admin(platform, "GET", f"/v1/admin/teams/{carol.team_id}/quotas").json()["overrides"]["snapshots"]
        is None
    )
