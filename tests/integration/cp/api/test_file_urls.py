"""Signed file URLs on a live platform: made with an API key, used without one, only for their
sandbox, path and operation, and only until they expire."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.harness.cp import PASSWORD
from tests.harness.platform import Platform
from warren import Sandbox
from warren.cp.services import file_urls

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), pytest.mark.shared_platform]


@pytest.fixture(scope="module")
def sbx(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(memory_mb=128, **platform.sdk()) as s:
        yield s


@pytest.fixture(scope="module")
def other(platform: Platform) -> Iterator[Sandbox]:
    with Sandbox.create(memory_mb=128, **platform.sdk()) as s:
        yield s


def _with(url: str, **changes: str) -> str:
    """``url`` with some query parameters changed."""
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    q.update(changes)
    return parts._replace(query=urlencode(q)).geturl()


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


def test_download_and_upload_without_a_key(sbx: Sandbox) -> None:
    sbx.files.write("/root/data.bin", b"\x00signed\xff" * 1000)
    d = sbx.files.download_url("/root/data.bin", expires=600)
    assert d.method == "GET" and d.expires_at > time.time()
    with httpx.Client(timeout=60) as http:  # no API key anywhere
        r = http.get(d.url)
        assert r.status_code == 200 and r.content == b"\x00signed\xff" * 1000, (d.url, r.text)
        assert http.get(d.url).status_code == 200  # reusable until it expires
        u = sbx.files.upload_url("/root/up/new.txt", expires=600)
        assert u.method == "PUT"
        assert http.put(u.url, content=b"uploaded").status_code == 204
        assert sbx.files.read("/root/up/new.txt") == "uploaded"
        assert http.post(u.url, content=b"again").status_code == 204
        assert sbx.files.read("/root/up/new.txt") == "again"
        missing = sbx.files.download_url("/root/nope")
        assert http.get(missing.url).status_code == 404


def test_only_its_sandbox_path_and_operation(sbx: Sandbox, other: Sandbox) -> None:
    sbx.files.write("/root/a.txt", "a")
    sbx.files.write("/root/b.txt", "b")
    other.files.write("/root/a.txt", "other")
    d = sbx.files.download_url("/root/a.txt")
    u = sbx.files.upload_url("/root/a.txt")
    sig = d.url.rsplit("sig=", 1)[1]
    tampered = ("B" if sig[0] == "A" else "A") + sig[1:]  # "A" + sig[1:] was sig itself 1 time in 64
    with httpx.Client(timeout=60) as http:
        refused = [
            http.get(_with(d.url, path="/root/b.txt")),  # another path
            http.get(d.url.replace(sbx.id, other.id)),  # another sandbox
            http.get(_with(d.url, sig=tampered)),  # tampered signature
            http.get(_with(d.url, exp=str(int(d.expires_at) + 3600))),  # a later expiry
            http.get(_with(d.url, user="root")),  # another user
            http.put(d.url.replace("/signed/download", "/signed/upload"), content=b"x"),  # download → upload
            http.get(u.url.replace("/signed/upload", "/signed/download")),  # upload → download
            http.get(_with(d.url, sig="")),
            http.get(_with(d.url, exp="soon")),
        ]
        for r in refused:
            assert r.status_code == 403, r.text
            assert _code(r) == "signature_invalid"
    assert sbx.files.read("/root/a.txt") == "a"
    assert other.files.read("/root/a.txt") == "other"


def test_expires(sbx: Sandbox) -> None:
    sbx.files.write("/root/e.txt", "e")
    with httpx.Client(timeout=60) as http:
        # A URL must serve once before it expires: 3 s is enough on a quiet machine and not
        # always on a loaded one, where a URL already expired at its first use is made again
        # with twice the time (rather than every run waiting out the slowest case's 20 s).
        for expires in (3, 6, 12, 24, 48):
            d = sbx.files.download_url("/root/e.txt", expires=expires)
            if (r := http.get(d.url)).status_code == 200:
                break
            assert r.status_code == 403 and _code(r) == "url_expired", r.text
        else:
            raise AssertionError(f"no signed URL served before it expired (the last one: {expires} s)")
        deadline = time.monotonic() + 90
        while (r := http.get(d.url)).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert r.status_code == 403 and _code(r) == "url_expired"


def test_making_urls_is_authenticated_and_bounded(platform: Platform, sbx: Sandbox) -> None:
    base = f"/v1/sandboxes/{sbx.id}/files"
    with httpx.Client(base_url=platform.url, timeout=60) as http:
        assert http.get(f"{base}/download-url", params={"path": "/root/x"}).status_code == 401
        for bad in (0, file_urls.MAX_EXPIRES_S + 1):
            r = http.get(
                f"{base}/upload-url", params={"path": "/x", "expires": bad}, headers=platform.headers
            )
            assert r.status_code == 400, r.text
        r = http.get(f"{base}/download-url", params={"path": ""}, headers=platform.headers)
        assert r.status_code == 400
        # Another team cannot make a URL for this sandbox.
        email = f"u{uuid.uuid4().hex[:10]}@example.com"
        r = http.post("/v1/auth/signup", json={"email": email, "password": PASSWORD, "name": "Other"})
        token = r.json()["token"]
        r = http.get(
            f"{base}/download-url", params={"path": "/root/x"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 404
