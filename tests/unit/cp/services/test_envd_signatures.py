"""E2B's signed file URLs (cp/services/envd_signatures.py): the SDK's own signatures verify;
any change of path, operation, user, sandbox or expiry does not; an expired URL is refused."""

from __future__ import annotations

from typing import Any

import pytest
from e2b.sandbox.signature import get_signature

from warren import clock
from warren.cp.services import envd_signatures
from warren.cp.services.envd_tokens import envd_access_token
from warren.errors import Unauthorized

SECRET = "s" * 32
SB = "sb-" + "a" * 25


def _sdk(path: str, op: str, user: str | None, expires_s: int | None = None) -> tuple[str, str | None]:
    s = get_signature(path, op, user, envd_access_token(SECRET, SB), expires_s)  # type: ignore[arg-type]
    return s["signature"], None if s["expiration"] is None else str(s["expiration"])


def test_the_sdks_signatures_verify() -> None:
    sig, _ = _sdk("/home/user/a b.txt", "read", None)
    envd_signatures.verify(SECRET, SB, "/home/user/a b.txt", "read", "", sig, None)
    sig, exp = _sdk("x", "write", "root", 60)
    envd_signatures.verify(SECRET, SB, "x", "write", "root", sig, exp)


@pytest.mark.parametrize(
    "change",
    [
        {"path": "y"},
        {"op": "write"},
        {"user": "root"},
        {"sandbox": "sb-" + "b" * 25},
        {"exp": "99999999999"},
        {"exp": "-1"},
        {"exp": "1" * 13},
        {"sig": "v2_abc"},
        {"sig": "v1_" + "A" * 500},
        {"sig": "v1_\u00e9"},
    ],
)
def test_changed_urls_are_refused(change: dict[str, str]) -> None:
    sig, exp = _sdk("x", "read", None, 60)
    assert exp is not None
    args: dict[str, Any] = {
        "path": "x",
        "op": "read",
        "user": "",
        "sandbox": SB,
        "exp": exp,
        "sig": sig,
    } | change
    with pytest.raises(Unauthorized):
        envd_signatures.verify(
            SECRET, args["sandbox"], args["path"], args["op"], args["user"], args["sig"], args["exp"]
        )


def test_expired_urls_are_refused() -> None:
    sig, exp = _sdk("x", "read", None, 10)
    assert exp is not None
    try:
        clock.advance(11)
        with pytest.raises(Unauthorized, match="expired"):
            envd_signatures.verify(SECRET, SB, "x", "read", "", sig, exp)
    finally:
        clock.reset()
