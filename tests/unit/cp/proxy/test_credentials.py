"""Which headers the preview proxy keeps from a sandbox's server (cp/proxy/credentials.py), and
the signed URL's parameters (cp/proxy/app.py); the live attack is in
tests/security/test_attack_preview_cookies.py."""

from __future__ import annotations

import base64
import uuid

import jwt
import pytest

from warren.cp.proxy import app
from warren.cp.proxy.credentials import is_platform
from warren.cp.proxy.routing import Route
from warren.cp.security.api_keys import generate_api_key
from warren.cp.security.tokens import issue_host_jwt, issue_user_jwt, signed_with

SECRET = "s" * 40
USER = issue_user_jwt(SECRET, user_id=uuid.uuid4(), team_id=uuid.uuid4(), role="o", email="a@b.c", name="a")
HOST = issue_host_jwt(SECRET, uuid.uuid4())
OTHER = jwt.encode({"sub": "x"}, "o" * 40, algorithm="HS256")
KEY = generate_api_key().plaintext
# Fixed ids: the values above are made at import, and xdist's workers must collect one set of names.
CASE_IDS = [
    "key", "jwt-as-key", "apps-key", "bearer-key", "bare-key", "bearer-user-jwt", "host-jwt-spaced",
    "jwt-scheme", "foreign-jwt", "apps-bearer", "basic-with-key", "empty",
]  # fmt: skip


def test_signed_with_tells_the_platforms_jwts_from_others() -> None:
    assert signed_with(SECRET, USER) and signed_with(SECRET, HOST)
    assert not signed_with(SECRET, OTHER)
    assert not signed_with(SECRET, USER[:-2] + ("AA" if not USER.endswith("AA") else "BB"))
    for junk in ("", "a.b.c", "..", USER + ".x", "é" + USER, KEY):
        assert not signed_with(SECRET, junk), junk


@pytest.mark.parametrize(
    ("name", "value", "platform"),
    [
        (b"x-api-key", KEY, True),
        (b"x-api-key", USER, True),
        (b"x-api-key", "the-apps-key", False),
        (b"authorization", f"Bearer {KEY}", True),
        (b"authorization", KEY, True),
        (b"authorization", f"Bearer {USER}", True),
        (b"authorization", f"bearer \t {HOST} ", True),
        (b"authorization", f"JWT {USER}", True),
        (b"authorization", f"Bearer {OTHER}", False),
        (b"authorization", "Bearer the-apps-token", False),
        (b"authorization", "Basic " + base64.b64encode(f"u:{KEY}".encode()).decode(), False),
        (b"authorization", "", False),
    ],
    ids=CASE_IDS,
)
def test_is_platform(name: bytes, value: str, platform: bool) -> None:
    assert is_platform(name, value.encode(), SECRET) is platform


def test_forwarded_headers_keep_the_apps_auth_and_drop_the_platforms() -> None:
    headers = [
        (b"host", b"h"),
        (b"authorization", f"Bearer {USER}".encode()),
        (b"x-api-key", KEY.encode()),
        (b"authorization", b"Basic dTpw"),
        (b"x-api-key", b"app"),
        (b"cookie", b"a=1; warren_session=x"),
    ]
    route = Route("sb-1", 8000, "/", "", by_host=True)
    out = app._forward_headers(route, {"headers": headers, "scheme": "http"}, SECRET)
    assert (b"authorization", b"Basic dTpw") in out and (b"x-api-key", b"app") in out
    assert (b"cookie", b"a=1") in out
    assert not [v for _, v in out if USER.encode() in v or KEY.encode() in v], out


@pytest.mark.parametrize(
    ("query", "sig", "clean"),
    [
        (b"a=1", None, b"a=1"),
        (b"exp=5&a=%20", None, b"exp=5&a=%20"),  # the app's own exp, its encoding kept
        (b"a=1&warren_sig=S&exp=9", "S", b"a=1"),
        (b"a=1&warren%5Fsig=S&exp=9", "S", b"a=1"),
        (b"a=1&%77arren_sig=S&ex%70=9", "S", b"a=1"),
        (b"b=%20&warren_%73%69%67=S&exp=9", "S", b"b=+"),
        (b"b=%20&WARREN%5Fsig=S", None, b"b=%20&WARREN%5Fsig=S"),  # another name: the app's
        (b"x=warren_sig=1", None, b"x=warren_sig=1"),
    ],
)
def test_the_signature_checked_is_the_one_taken_out(query: bytes, sig: str | None, clean: bytes) -> None:
    scope = {"query_string": query, "headers": []}
    assert app._credentials(scope).sig == sig
    assert app._clean_query(scope) == clean
