"""The preview access rules: tokens, signed URLs and their cookies, public ports."""

from __future__ import annotations

import uuid

import pytest

from warren import clock
from warren.cp.services import preview
from warren.cp.services.traffic_tokens import new_traffic_token
from warren.errors import Forbidden, Unauthorized

SECRET = "s" * 40


def _target(digest: str, public: frozenset[int] = frozenset(), sid: str = "sb-a") -> preview.PreviewTarget:
    return preview.PreviewTarget(
        sb_uuid=uuid.uuid4(), sandbox_id=sid, team_id=uuid.uuid4(), status="running", token_hash=digest,
        public_ports=public, auto_resume=False, timeout_sec=0, host_id=None, host_address="",
    )  # fmt: skip


def test_tokens() -> None:
    token, digest = new_traffic_token()
    other, _ = new_traffic_token()
    t = _target(digest)
    assert token.startswith("wtt_") and len(token) > 40 and token != other
    assert preview.authorize(t, 80, preview.Credentials(token=token), secret=SECRET) is False
    with pytest.raises(Forbidden) as ei:
        preview.authorize(t, 80, preview.Credentials(token=other), secret=SECRET)
    assert ei.value.code == "traffic_token_invalid"
    with pytest.raises(Unauthorized) as eu:
        preview.authorize(t, 80, preview.Credentials(), secret=SECRET)
    assert eu.value.code == "traffic_token_required"
    # A public port needs nothing; the others stay private.
    assert (
        preview.authorize(_target(digest, frozenset({80})), 80, preview.Credentials(), secret=SECRET) is False
    )


def test_signed_urls_and_cookies() -> None:
    _, digest = new_traffic_token()
    t = _target(digest)
    exp = int(clock.time_s()) + 60
    sig = preview.signature(SECRET, digest, "sb-a", 80, exp)
    assert preview.authorize(t, 80, preview.Credentials(sig=sig, exp=str(exp)), secret=SECRET) is True
    cookie = preview.cookie_value(t, 80, exp, SECRET)
    assert preview.authorize(t, 80, preview.Credentials(cookie=cookie), secret=SECRET) is False
    bad = (
        (t, 81, sig, str(exp)),  # another port
        (_target(digest, sid="sb-b"), 80, sig, str(exp)),  # another sandbox
        (_target(new_traffic_token()[1]), 80, sig, str(exp)),  # the token was rotated
        (t, 80, sig, str(exp + 1)),  # another expiry
        (t, 80, sig, "-1"),
        (t, 80, "", str(exp)),
    )
    for target, port, s, e in bad:
        with pytest.raises(Forbidden):
            preview.authorize(target, port, preview.Credentials(sig=s, exp=e), secret=SECRET)
    # A cookie for another port is no credential (401, not 403).
    with pytest.raises(Unauthorized):
        preview.authorize(t, 81, preview.Credentials(cookie=cookie), secret=SECRET)


def test_signed_url_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    _, digest = new_traffic_token()
    t = _target(digest)
    exp = int(clock.time_s()) + 60
    sig = preview.signature(SECRET, digest, "sb-a", 80, exp)
    monkeypatch.setattr(clock, "time_s", lambda: float(exp + 1))
    with pytest.raises(Forbidden) as ei:
        preview.authorize(t, 80, preview.Credentials(sig=sig, exp=str(exp)), secret=SECRET)
    assert ei.value.code == "signed_url_expired"


def test_all_ports_public_needs_no_token() -> None:
    """E2B's ``allowPublicTraffic: true`` (docs/e2b.md §1.2): every port, no credential."""
    token, digest = new_traffic_token()
    t = preview.PreviewTarget(
        sb_uuid=uuid.uuid4(), sandbox_id="sb-a", team_id=uuid.uuid4(), status="running", token_hash=digest,
        public_ports=frozenset(), auto_resume=False, timeout_sec=0, host_id=None, host_address="",
        all_ports_public=True,
    )  # fmt: skip
    for port in (1, 80, 49999, 65535):
        assert preview.authorize(t, port, preview.Credentials(), secret=SECRET) is False
        assert preview.authorize(t, port, preview.Credentials(token=token), secret=SECRET) is False
