"""Bounds on what a guest can make the host agent hold: unary exec output, listing pages, and
frames from a guest that has been taken over (sandbox root can rewrite the guest's memory or
replace its socket, so the client treats every frame as hostile)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from warren.agent.guest_client import GuestClient, GuestError


async def test_unary_exec_output_cap_kills_the_command(client: GuestClient, tmp_path: Path) -> None:
    # 2 GB asked for; the client stops at the cap and closing the session kills the writer.
    marker = tmp_path / "still-running"
    script = f"head -c 2000000000 /dev/zero; touch {marker}"
    with pytest.raises(GuestError) as ei:
        await client.exec("/bin/sh", ["-c", script], timeout=60, max_output=1 << 20)
    assert ei.value.kind == "output_too_large"
    assert "streaming exec" in ei.value.message and str(1 << 20) in ei.value.message
    await asyncio.sleep(0.3)
    assert not marker.exists()  # the shell died with its session, it never got past head


async def test_unary_exec_cap_counts_stdout_and_stderr_together(client: GuestClient) -> None:
    ok = await client.exec(
        "/bin/sh", ["-c", "head -c 600 /dev/zero; head -c 400 /dev/zero >&2"], max_output=1000
    )
    assert len(ok.stdout) == 600 and len(ok.stderr) == 400
    with pytest.raises(GuestError) as ei:
        await client.exec(
            "/bin/sh", ["-c", "head -c 600 /dev/zero; head -c 401 /dev/zero >&2"], max_output=1000
        )
    assert ei.value.kind == "output_too_large"


async def test_listing_pages_cover_everything_once(client: GuestClient, tmp_path: Path) -> None:
    names = [f"f{i:04d}-{'é' if i % 7 == 0 else ''}" for i in range(2500)]
    for n in names:
        (tmp_path / n).touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "inner").touch()
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        page = await client.list_dir(str(tmp_path), depth=2, limit=1000, cursor=cursor)
        assert len(page.entries) <= 1000
        seen += [e.path for e in page.entries]
        pages += 1
        if not page.has_more:
            assert page.next_cursor == ""
            break
        cursor = page.next_cursor
        assert cursor.isascii()
    expected = sorted(
        [str(tmp_path / n) for n in names] + [str(tmp_path / "sub"), str(tmp_path / "sub/inner")]
    )
    assert seen == expected and pages == 3
    # No limit given: the guest's default page (1000), and it says there is more.
    first = await client.list_dir(str(tmp_path))
    assert len(first.entries) == 1000 and first.has_more
    with pytest.raises(GuestError) as ei:
        await client.list_dir(str(tmp_path), limit=10001)
    assert ei.value.kind == "invalid_argument"
    with pytest.raises(GuestError) as ei:
        await client.list_dir(str(tmp_path), cursor="%%%not-base64")
    assert ei.value.kind == "invalid_argument"


async def test_listing_page_stops_at_about_a_mebibyte(client: GuestClient, tmp_path: Path) -> None:
    # 4000 names of 250 characters: far more than 1 MiB of JSON at limit=10000.
    for i in range(4000):
        (tmp_path / (f"{i:05d}" + "x" * 245)).touch()
    total, cursor, pages = 0, "", 0
    while True:
        page = await client.list_dir(str(tmp_path), limit=10000, cursor=cursor)
        # As the guest sent them: the E2B fields (metadata, a symlink's target) are absent here.
        e2b = ("metadata", "target_type", "target_mode", "resolved_target")
        wire = [{k: v for k, v in e.__dict__.items() if v or k not in e2b} for e in page.entries]
        assert len(json.dumps(wire)) < 1.1 * (1 << 20)
        total += len(page.entries)
        pages += 1
        if not page.has_more:
            break
        cursor = page.next_cursor
    assert total == 4000 and pages >= 2


async def test_stat_follow(client: GuestClient, tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"x" * 5000)
    (tmp_path / "link").symlink_to("target")
    assert (await client.stat(str(tmp_path / "link"))).type == "symlink"
    followed = await client.stat(str(tmp_path / "link"), follow=True)
    assert followed.type == "file" and followed.size == 5000


# --- a hostile guest ------------------------------------------------------------------------


def frame(kind: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + bytes((kind,)) + payload


@pytest.fixture
def evil(tmp_path: Path) -> Iterator[tuple[str, list[bytes]]]:
    """A unix socket that answers every connection with the next scripted reply."""
    path = str(tmp_path / "evil.sock")
    replies: list[bytes] = []
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if replies:
                    with contextlib.suppress(OSError):
                        conn.sendall(replies.pop(0))

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path, replies
    srv.close()


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("kind", [4, 2, 7])  # RESULT, DATA, STDOUT
async def test_oversized_frames_are_refused_before_reading(evil: tuple[str, list[bytes]], kind: int) -> None:
    path, replies = evil
    # A header that announces 200 MiB (then a little data): refused at the header.
    replies.append((200 << 20).to_bytes(4, "big") + bytes((kind,)) + b"x" * 1000)
    before = _max_rss_mb()
    client = GuestClient(path, op_timeout=5)
    with pytest.raises(GuestError) as ei:
        await client.list_dir("/")
    assert ei.value.kind in ("too_large",)
    assert _max_rss_mb() - before < 50


@pytest.mark.parametrize(
    "reply",
    [
        frame(4, b"[1, 2, 3]"),
        frame(4, b"{not json"),
        frame(4, json.dumps({"entries": [{"type": "file", "name": 5}]}).encode()),
        frame(
            4,
            json.dumps(
                {
                    "entries": [
                        {
                            "type": "file",
                            "name": "a",
                            "path": "/a",
                            "size": 2**70,
                            "mode": 0,
                            "permissions": "",
                            "owner": "",
                            "group": "",
                            "modified_time": 0,
                        }
                    ]
                }
            ).encode(),
        ),
        frame(4, json.dumps({"entries": "nope"}).encode()),
        frame(4, b"[" * 100000 + b"]" * 100000),
    ],
)
async def test_malformed_guest_answers_are_errors(evil: tuple[str, list[bytes]], reply: bytes) -> None:
    path, replies = evil
    replies.append(reply)
    with pytest.raises(GuestError) as ei:
        await GuestClient(path, op_timeout=5).list_dir("/")
    assert ei.value.kind == "internal"


async def test_hostile_exit_event_is_an_error(evil: tuple[str, list[bytes]]) -> None:
    path, replies = evil
    replies.append(
        frame(6, b'{"type":"start","pid":7}') + frame(6, b'{"type":"exit","exit_code":99999999999}')
    )
    with pytest.raises(GuestError) as ei:
        await GuestClient(path).exec("/bin/true", [])
    assert ei.value.kind == "unavailable" and "invalid exit code" in ei.value.message
    replies.append(frame(6, b'{"type":"start","pid":"x"}'))
    with pytest.raises(GuestError):
        await GuestClient(path).exec("/bin/true", [])
    assert os.path.exists(path)
