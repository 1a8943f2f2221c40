"""envd's filesystem service and ``/files`` on the E2B listener, by raw Connect and HTTP requests
(docs/e2b.md §3.2): what E2B's SDK sends at every envd version and what it never sends. Attack
tests: paths that climb out or symlink out (they stay inside the sandbox), a gzip bomb, an
oversized multipart body, bad and expired signatures, metadata header floods, another
sandbox's watcher."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.cp import JWT_SECRET
from tests.harness.e2b import E2B_TEST_TEMPLATE, build_test_template
from tests.harness.platform import Platform, running_platform
from tests.integration.e2b.envd_wire import envelope, envelopes
from warren.cp.services.envd_tokens import envd_access_token

pytestmark = pytest.mark.root

DOMAIN = "e2b-files.test"
UPLOAD_CAP = 1 << 20  # WARREN_MAX_UPLOAD_BYTES for this module's platform


@pytest.fixture(scope="module")
async def platform(db_url: str, platform_dir: Path) -> AsyncIterator[Platform]:
    """The module's platform with a preview domain (host-name routing) and a 1 MiB upload cap."""
    async with running_platform(
        db_url, platform_dir, {"WARREN_PREVIEW_DOMAIN": DOMAIN, "WARREN_MAX_UPLOAD_BYTES": str(UPLOAD_CAP)}
    ) as p:
        yield p


class Fs:
    """One sandbox's envd: Connect calls to ``filesystem.Filesystem`` and ``/files``."""

    def __init__(self, url: str, sandbox_id: str) -> None:
        self.url, self.id = url, sandbox_id
        self.token = envd_access_token(JWT_SECRET, sandbox_id)

    def headers(self, user: str | None = None, **extra: str) -> dict[str, str]:
        h = {"E2b-Sandbox-Id": self.id, "E2b-Sandbox-Port": "49983", "X-Access-Token": self.token}
        if user is not None:
            h["Authorization"] = "Basic " + base64.b64encode(f"{user}:".encode()).decode()
        return h | extra

    def rpc(self, method: str, msg: dict[str, Any], user: str | None = None) -> httpx.Response:
        h = self.headers(user, **{"Content-Type": "application/json", "Connect-Protocol-Version": "1"})
        return httpx.post(f"{self.url}/filesystem.Filesystem/{method}", json=msg, headers=h, timeout=60)

    def ok(self, method: str, msg: dict[str, Any], user: str | None = None) -> dict[str, Any]:
        r = self.rpc(method, msg, user)
        assert r.status_code == 200, (method, r.status_code, r.text)
        body: dict[str, Any] = r.json()
        return body

    def upload(self, path: str, data: bytes, **headers: str) -> httpx.Response:
        h = self.headers(**{"Content-Type": "application/octet-stream"} | headers)
        return httpx.post(f"{self.url}/files", params={"path": path}, content=data, headers=h, timeout=60)

    def download(self, path: str, **headers: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}/files", params={"path": path}, headers=self.headers(**headers), timeout=60
        )


@pytest.fixture(scope="module")
def template(platform: Platform) -> str:
    return build_test_template(platform)


@pytest.fixture(scope="module")
def fs(platform: Platform, template: str) -> Iterator[Fs]:
    from warren.sdk import Sandbox

    with Sandbox.create(template=E2B_TEST_TEMPLATE, **platform.sdk()) as sbx:
        yield Fs(platform.cp.e2b_url, sbx.id)


def run(platform: Platform, sandbox_id: str, cmd: str) -> str:
    from warren.sdk import Sandbox

    sbx = Sandbox.connect(sandbox_id, **platform.sdk())
    res = sbx.commands.run(cmd, user="root")
    assert res.exit_code == 0, res.stderr
    return res.stdout


def test_stat_list_mkdir_move_remove(fs: Fs) -> None:
    up = fs.upload("wire/a.txt", b"hello")
    assert up.status_code == 200, up.text
    assert up.json() == [{"name": "a.txt", "type": "file", "path": "/home/user/wire/a.txt"}]
    e = fs.ok("Stat", {"path": "wire/a.txt"})["entry"]
    assert e["type"] == "FILE_TYPE_FILE" and e["size"] == "5" and e["owner"] == "user"
    assert e["permissions"] == "-rw-r--r--" and e["mode"] == 0o644 and e["modifiedTime"].endswith("Z")
    assert e["path"] == "/home/user/wire/a.txt" and e["isSymlink"] is False
    assert fs.ok("Stat", {"path": "~/wire/a.txt"})["entry"]["path"] == "/home/user/wire/a.txt"
    assert fs.ok("Stat", {"path": "~"})["entry"]["path"] == "/home/user"
    assert fs.rpc("Stat", {"path": "wire/a.txt"}, user="root").status_code == 404  # under /root

    made = fs.ok("MakeDir", {"path": "wire/sub/deep"})["entry"]
    assert made["type"] == "FILE_TYPE_DIRECTORY" and made["owner"] == "user"
    again = fs.rpc("MakeDir", {"path": "wire/sub/deep"})
    assert again.status_code == 409 and again.json()["code"] == "already_exists"
    names = {e["name"] for e in fs.ok("ListDir", {"path": "wire"})["entries"]}
    assert names == {"a.txt", "sub"}
    deep = {e["path"] for e in fs.ok("ListDir", {"path": "wire", "depth": 3})["entries"]}
    assert "/home/user/wire/sub/deep" in deep
    moved = fs.ok("Move", {"source": "wire/a.txt", "destination": "wire/sub/b.txt"})["entry"]
    assert moved["path"] == "/home/user/wire/sub/b.txt"
    assert fs.ok("Remove", {"path": "wire"}) == {}
    missing = fs.rpc("Stat", {"path": "wire"})
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_symlinks_report_their_target(platform: Platform, fs: Fs) -> None:
    run(platform, fs.id, "mkdir -p /home/user/ln && cd /home/user/ln && echo hi > f && "
        "ln -s f to-file && ln -s /home/user to-dir && ln -s nowhere dangling")  # fmt: skip
    by = {e["name"]: e for e in fs.ok("ListDir", {"path": "ln"})["entries"]}
    assert by["to-file"]["type"] == "FILE_TYPE_FILE" and by["to-file"]["isSymlink"] is True
    assert by["to-file"]["symlinkTarget"] == "/home/user/ln/f"
    assert by["to-dir"]["type"] == "FILE_TYPE_DIRECTORY" and by["to-dir"]["symlinkTarget"] == "/home/user"
    assert by["dangling"]["type"] == "FILE_TYPE_SYMLINK" and by["dangling"]["isSymlink"] is True
    assert "symlinkTarget" not in by["f"] and by["f"]["isSymlink"] is False


def test_paths_stay_inside_the_sandbox(platform: Platform, fs: Fs) -> None:
    """``..`` and symlinks resolve inside the sandbox: the host's files are never reached."""
    marker = Path("/tmp") / f"warren-host-marker-{os.getpid()}"
    marker.write_text("host secret")
    try:
        run(platform, fs.id, f"ln -sfn / /home/user/up && ln -sfn {marker} /home/user/marker")
        for path in (f"../../../../..{marker}", f"up/..{marker}", "marker"):
            r = fs.download(path)
            assert r.status_code == 404, (path, r.status_code, r.text)
        octets = fs.headers(**{"Content-Type": "application/octet-stream"})
        as_root = {"path": "/home/user/up/etc/escaped", "username": "root"}
        up = httpx.post(f"{fs.url}/files", params=as_root, content=b"x", headers=octets, timeout=60)
        assert up.status_code == 200, up.text
        assert fs.ok("Stat", {"path": "/etc/escaped"})["entry"]["owner"] == "root"  # the sandbox's /etc
        assert not Path("/etc/escaped").exists()
        assert fs.download("../../etc/escaped").content == b"x"
        listed = {e["path"] for e in fs.ok("ListDir", {"path": "../../../.."})["entries"]}
        assert "/etc" in listed and not any(p.startswith("/var/lib/warren") for p in listed)
    finally:
        marker.unlink()


def test_download_streams_and_gzips(fs: Fs) -> None:
    data = os.urandom(300_000) + b"z" * 300_000
    assert fs.upload("dl/big.bin", data).status_code == 200
    with httpx.stream(
        "GET", f"{fs.url}/files", params={"path": "dl/big.bin"}, timeout=60,
        headers=fs.headers(**{"Accept-Encoding": "gzip"}),
    ) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        raw = b"".join(r.iter_raw())
    assert gzip.decompress(raw) == data and len(raw) < len(data)
    plain = fs.download("dl/big.bin", **{"Accept-Encoding": "identity"})
    assert plain.content == data and "content-encoding" not in plain.headers
    missing = fs.download("dl/none")
    assert missing.status_code == 404 and missing.json()["code"] == 404
    assert fs.download("dl").status_code == 400  # a directory


def test_uploads_multipart_octet_gzip(fs: Fs) -> None:
    files = [("file", ("mp/one.txt", b"1")), ("file", ("/home/user/mp/two.txt", b"22"))]
    r = httpx.post(f"{fs.url}/files", files=files, headers=fs.headers(), timeout=60)
    assert r.status_code == 200, r.text
    assert [e["path"] for e in r.json()] == ["/home/user/mp/one.txt", "/home/user/mp/two.txt"]
    one = httpx.post(f"{fs.url}/files", params={"path": "mp/named"}, files=[("file", ("x", b"n"))],
                     headers=fs.headers(), timeout=60)  # fmt: skip
    assert one.json()[0]["path"] == "/home/user/mp/named"
    gz = fs.upload(
        "mp/gz.txt", gzip.compress(b"inflated") + gzip.compress(b" twice"), **{"Content-Encoding": "gzip"}
    )
    assert gz.status_code == 200, gz.text
    assert fs.download("mp/gz.txt").content == b"inflated twice"
    assert fs.upload("mp/bad.gz", b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    assert (
        fs.upload("mp/trunc.gz", gzip.compress(b"x" * 1000)[:20], **{"Content-Encoding": "gzip"}).status_code
        == 400
    )
    assert fs.upload("mp/br", b"x", **{"Content-Encoding": "br"}).status_code == 400
    root = httpx.post(f"{fs.url}/files", params={"path": "mp/rootfile", "username": "root"}, timeout=60,
                      files=[("file", ("x", b"r"))], headers=fs.headers())  # fmt: skip
    assert root.json()[0]["path"] == "/root/mp/rootfile"
    assert fs.ok("Stat", {"path": "/root/mp/rootfile"}, user="root")["entry"]["owner"] == "root"


def test_gzip_bomb_is_refused(fs: Fs) -> None:
    """10 MiB of zeros in ~10 KiB of gzip, over a 1 MiB cap: 413, and no file is left."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = bomb.compress(b"\0" * (10 << 20)) + bomb.flush()
    assert len(body) < 64 * 1024
    r = fs.upload("bomb/out", body, **{"Content-Encoding": "gzip"})
    assert r.status_code == 413 and r.json()["code"] == 413
    assert fs.rpc("Stat", {"path": "bomb/out"}).status_code == 404


def test_oversized_multipart_is_refused(fs: Fs) -> None:
    big = [("file", ("over/big", b"x" * (UPLOAD_CAP + 1)))]
    r = httpx.post(f"{fs.url}/files", files=big, headers=fs.headers(), timeout=60)
    assert r.status_code == 413, r.text
    assert fs.rpc("Stat", {"path": "over/big"}).status_code == 404
    many = [("file", (f"over/{i}", b"")) for i in range(101)]
    r = httpx.post(f"{fs.url}/files", files=many, headers=fs.headers(), timeout=60)
    assert r.status_code == 413, r.text
    field = {"other": "y" * 10_000}
    r = httpx.post(
        f"{fs.url}/files", data=field, files=[("file", ("over/f", b"x"))], headers=fs.headers(), timeout=60
    )
    assert r.status_code == 400, r.text


def test_metadata(fs: Fs) -> None:
    r = fs.upload("md/f", b"x", **{"X-Metadata-Author": "Ada", "X-Metadata-purpose": "test run"})
    assert r.status_code == 200, r.text
    assert r.json()[0]["metadata"] == {"author": "Ada", "purpose": "test run"}
    e = fs.ok("Stat", {"path": "md/f"})["entry"]
    assert e["metadata"] == {"author": "Ada", "purpose": "test run"}
    assert fs.ok("ListDir", {"path": "md"})["entries"][0]["metadata"] == e["metadata"]
    assert fs.upload("md/f", b"y", **{"X-Metadata-Other": "1"}).json()[0]["metadata"] == {"other": "1"}
    assert "metadata" not in fs.upload("md/f", b"z").json()[0]  # replaced: none now
    assert fs.ok("Stat", {"path": "md/f"})["entry"]["metadata"] == {}


def test_metadata_floods_are_refused(fs: Fs) -> None:
    flood = {f"X-Metadata-k{i}": "v" for i in range(33)}
    assert fs.upload("md/flood", b"x", **flood).status_code == 400
    assert fs.upload("md/flood", b"x", **{"X-Metadata-k": "v" * 5000}).status_code == 400
    assert fs.upload("md/flood", b"x", **{"X-Metadata-" + "k" * 200: "v"}).status_code == 400
    raw = [
        (k.encode(), v.encode())
        for k, v in fs.headers(**{"Content-Type": "application/octet-stream"}).items()
    ]
    r = httpx.post(f"{fs.url}/files", params={"path": "md/flood"}, content=b"x", timeout=60,
                   headers=[*raw, (b"X-Metadata-k", "caf\u00e9".encode())])  # fmt: skip
    assert r.status_code == 400
    assert fs.rpc("Stat", {"path": "md/flood"}).status_code == 404


def _signed(fs: Fs, path: str, op: str, user: str = "", exp: int | None = None) -> dict[str, str]:
    raw = f"{path}:{op}:{user}:{fs.token}" + (f":{exp}" if exp is not None else "")
    sig = "v1_" + base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=").decode()
    q = {"path": path, "signature": sig}
    if user:
        q["username"] = user
    if exp is not None:
        q["signature_expiration"] = str(exp)
    return q


def test_signed_urls(fs: Fs) -> None:
    bare = {"E2b-Sandbox-Id": fs.id}
    exp = int(time.time()) + 60
    q = _signed(fs, "signed.txt", "write", exp=exp)
    r = httpx.post(
        f"{fs.url}/files", params=q, files=[("file", ("elsewhere", b"S"))], headers=bare, timeout=60
    )
    assert r.status_code == 200 and r.json()[0]["path"] == "/home/user/signed.txt", r.text
    got = httpx.get(f"{fs.url}/files", params=_signed(fs, "signed.txt", "read"), headers=bare, timeout=60)
    assert got.content == b"S"
    as_root = _signed(fs, "/root/.profile", "read", user="root")
    assert httpx.get(f"{fs.url}/files", params=as_root, headers=bare, timeout=60).status_code == 200
    bad = [
        _signed(fs, "signed.txt", "write"),  # the write signature does not read
        _signed(fs, "other.txt", "read") | {"path": "signed.txt"},  # another path's
        _signed(fs, "signed.txt", "read", exp=exp) | {"signature_expiration": str(exp + 1)},
        _signed(fs, "signed.txt", "read", exp=int(time.time()) - 1),  # expired
        _signed(fs, "signed.txt", "read") | {"username": "root"},  # another user
        {"path": "signed.txt", "signature": "v1_" + "A" * 43},
        {"path": "signed.txt", "signature": "x" * 5000},
    ]
    for params in bad:
        r = httpx.get(f"{fs.url}/files", params=params, headers=bare, timeout=60)
        assert r.status_code == 401 and r.json()["code"] == 401, (params, r.text)
    other = Fs(fs.url, "sb-" + "0" * 25)
    r = httpx.get(f"{fs.url}/files", params=_signed(other, "signed.txt", "read"), headers=bare, timeout=60)
    assert r.status_code == 401
    # By host name, as the SDK's URLs are when E2B_SANDBOX_URL is unset.
    host = {"Host": f"49983-{fs.id}.{DOMAIN}"}
    assert (
        httpx.get(
            f"{fs.url}/files", params=_signed(fs, "signed.txt", "read"), headers=host, timeout=60
        ).content
        == b"S"
    )
    # No sandbox at all (E2B_SANDBOX_URL set): a clear refusal, not a search.
    r = httpx.get(f"{fs.url}/files", params=_signed(fs, "signed.txt", "read"), timeout=60)
    assert r.status_code == 400 and "names no sandbox" in r.json()["message"]


def test_watch_stream_and_watchers(fs: Fs) -> None:
    fs.ok("MakeDir", {"path": "w/sub"})
    wid = fs.ok("CreateWatcher", {"path": "w", "recursive": True, "includeEntry": True})["watcherId"]
    fs.upload("w/sub/new.txt", b"1")
    fs.ok("Move", {"source": "w/sub/new.txt", "destination": "w/renamed.txt"})
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while not any(e["type"] == "EVENT_TYPE_CREATE" and e["name"] == "renamed.txt" for e in events):
        assert time.monotonic() < deadline, events
        events += fs.ok("GetWatcherEvents", {"watcherId": wid}).get("events", [])
    names = {(e["name"], e["type"]) for e in events}
    assert ("sub/new.txt", "EVENT_TYPE_CREATE") in names and ("sub/new.txt", "EVENT_TYPE_RENAME") in names
    created = next(e for e in events if e["name"] == "renamed.txt")
    assert created["entry"]["path"] == "/home/user/w/renamed.txt"
    assert fs.ok("RemoveWatcher", {"watcherId": wid}) == {}
    gone = fs.rpc("GetWatcherEvents", {"watcherId": wid})
    assert gone.status_code == 404
    forged = fs.rpc("GetWatcherEvents", {"watcherId": "wch-nope.0Lw"})
    assert forged.status_code == 404

    h = fs.headers(**{"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1",
                      "Keepalive-Ping-Interval": "1", "Connect-Timeout-Ms": "2500"})  # fmt: skip
    body = envelope({"path": "w", "recursive": False})
    with httpx.stream(
        "POST", f"{fs.url}/filesystem.Filesystem/WatchDir", content=body, headers=h, timeout=30
    ) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_bytes())
    items = envelopes(raw)
    assert items[0] == (0, {"start": {}})
    assert (0, {"keepalive": {}}) in items
    flags, last = items[-1]
    assert flags == 2 and last["error"]["code"] == "deadline_exceeded"
    missing = envelopes(httpx.post(f"{fs.url}/filesystem.Filesystem/WatchDir", headers=h, timeout=30,
                                   content=envelope({"path": "w/none"})).content)  # fmt: skip
    assert missing[-1][0] == 2 and missing[-1][1]["error"]["code"] == "not_found"


def test_bad_requests(fs: Fs) -> None:
    assert fs.rpc("Stat", {"path": 5}).json()["code"] == "invalid_argument"
    assert fs.rpc("Stat", {"path": "a\u0000b"}).json()["code"] == "invalid_argument"
    assert fs.rpc("ListDir", {"path": "", "depth": 1000}).json()["code"] == "invalid_argument"
    assert fs.rpc("Move", {"source": "", "destination": "x"}).json()["code"] == "invalid_argument"
    assert fs.rpc("MakeDir", {"path": "x" * 5000}).json()["code"] == "invalid_argument"
    assert fs.upload("", b"x").status_code == 400
    r = httpx.post(
        f"{fs.url}/files",
        params={"path": "t"},
        content=b"x",
        headers=fs.headers(**{"Content-Type": "text/plain"}),
        timeout=60,
    )
    assert r.status_code == 400


def test_other_sandboxes_and_paused_ones(platform: Platform, fs: Fs) -> None:
    """A watcher id is good only in its own sandbox; a paused sandbox is "not running" to the
    SDK (502 "was not found" on /files, ``unavailable`` on RPCs), as a gone one is."""
    from warren.sdk import Sandbox

    wid = fs.ok("CreateWatcher", {"path": "~"})["watcherId"]
    with Sandbox.create(template=E2B_TEST_TEMPLATE, **platform.sdk()) as other:
        theirs = Fs(fs.url, other.id)
        assert theirs.rpc("GetWatcherEvents", {"watcherId": wid}).status_code == 404
        assert theirs.rpc("RemoveWatcher", {"watcherId": wid}).status_code == 404
        other.pause()
        r = theirs.download(".profile")
        assert r.status_code == 502 and "was not found" in r.json()["message"]
        r = theirs.rpc("Stat", {"path": ".profile"})
        assert r.json()["code"] == "unavailable" and "was not found" in r.json()["message"]
    r = theirs.upload("x", b"x")  # killed
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    assert fs.ok("RemoveWatcher", {"watcherId": wid}) == {}
