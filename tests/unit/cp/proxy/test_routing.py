"""Which requests the preview proxy takes, and what it tells the sandbox's server."""

from __future__ import annotations

from warren.cp.proxy.routing import Route, hop_by_hop, route

SB = "sb-9rcms1jf9vmj8l4zaah0mih2f"


def test_path_routing() -> None:
    assert route(f"/v1/sandboxes/{SB}/ports/8000/a/b", "", "") == Route(
        SB, 8000, "/a/b", f"/v1/sandboxes/{SB}/ports/8000", by_host=False
    )
    assert route(f"/v1/sandboxes/{SB}/ports/8000", "", "") == Route(
        SB, 8000, "/", f"/v1/sandboxes/{SB}/ports/8000", by_host=False
    )
    # The API's own routes are not proxied, nor is anything off the pattern.
    for path in (f"/v1/sandboxes/{SB}", f"/v1/sandboxes/{SB}/preview", f"/v1/sandboxes/{SB}/portsx/1/",
                 "/v1/sandboxes/x/ports/80/", f"/v1/sandboxes/{SB}/ports/123456/"):  # fmt: skip
        assert route(path, "", "") is None
    assert route(f"/v1/sandboxes/{SB}/ports/8000/", "", "", by_path=False) is None


def test_host_routing() -> None:
    r = route("/x?y", f"8000-{SB}.Preview.Test:443", "preview.test")
    assert r == Route(SB, 8000, "/x?y", "", by_host=True)
    assert route("/", f"8000-{SB}.preview.test", "") is None  # no domain: off
    assert route("/", f"8000-{SB}.evil.test", "preview.test") is None
    assert route("/", f"8000-{SB}.xpreview.test", "preview.test") is None
    assert route("/", f"{SB}.preview.test", "preview.test") is None


def test_hop_by_hop_includes_what_connection_names() -> None:
    drop = hop_by_hop([(b"Connection", b"close, X-Secret"), (b"x-other", b"1")])
    assert {b"x-secret", b"close", b"transfer-encoding", b"upgrade"} <= drop
    assert b"x-other" not in drop
