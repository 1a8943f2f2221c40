"""The blocking SDK against a live platform: every method, its errors, and the hard cases
(stdin, 5 MB of output, non-UTF-8 bytes, exec in a paused sandbox)."""

from __future__ import annotations

import hashlib
import io
import threading
import time
import uuid

import pytest

from tests.harness.platform import Platform
from warren import Sandbox
from warren.sdk import (
    AuthenticationError,
    CommandExitError,
    CommandHandle,
    InvalidArgumentError,
    InvalidStateError,
    NotFoundError,
    SandboxInfo,
    WarrenError,
    WarrenTimeoutError,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(600), pytest.mark.shared_platform]


# --------------------------------------------------------------------------------- lifecycle


def test_create_info_list_connect_and_context_manager_kills(platform: Platform) -> None:
    with Sandbox.create(timeout=120, vcpus=1, memory_mb=256, **platform.sdk()) as sbx:
        assert sbx.id.startswith("sb-") and sbx.sandbox_id == sbx.id
        assert isinstance(sbx.info, SandboxInfo)
        assert (sbx.info.status, sbx.info.vcpus, sbx.info.memory_mb, sbx.info.timeout_sec) == (
            "running", 1, 256, 120,
        )  # fmt: skip
        assert sbx.id in [s.id for s in Sandbox.list(**platform.sdk())]
        other = Sandbox.connect(sbx.id, **platform.sdk())
        assert other.commands.run("echo from-connect").stdout == "from-connect\n"
        other.close()
        assert sbx.get_info().status == "running"
        sid = sbx.id
    # __exit__ killed it: hidden from the list, stopped when fetched by id.
    assert sid not in [s.id for s in Sandbox.list(**platform.sdk())]
    with pytest.raises(NotFoundError):
        Sandbox.connect("sb-" + "0" * 25, **platform.sdk())


def test_kill_twice_and_envs(platform: Platform) -> None:
    sbx = Sandbox.create(envs={"GREETING": "hello"}, **platform.sdk())
    try:
        assert sbx.commands.run("echo $GREETING").stdout == "hello\n"
        assert sbx.commands.run("echo $GREETING", envs={"GREETING": "override"}).stdout == "override\n"
    finally:
        assert sbx.kill() is True
        sbx.close()


def test_pause_resume_and_exec_in_paused_sandbox_is_409(sbx: Sandbox) -> None:
    sbx.files.write("/root/state.txt", "kept")
    assert sbx.pause().status == "paused"
    with pytest.raises(InvalidStateError) as e:
        sbx.commands.run("true")
    assert (e.value.status, e.value.code) == (409, "invalid_state")
    with pytest.raises(InvalidStateError):
        sbx.commands.run("cat", stdin=True, background=True)  # the stream route says the same
    with pytest.raises(InvalidStateError):
        sbx.files.read("/root/state.txt")
    assert sbx.resume().status == "running"
    assert sbx.files.read("/root/state.txt") == "kept"
    # connect() resumes a paused sandbox, like E2B.
    sbx.pause()
    again = Sandbox.connect(sbx.id, url=sbx._transport.config.url, api_key=sbx._transport.config.api_key)
    assert again.info.status == "running"
    again.close()
    sbx.ping()


def test_errors_are_typed(platform: Platform, sbx: Sandbox) -> None:
    with pytest.raises(AuthenticationError) as e:
        Sandbox.list(url=platform.url, api_key="wrn_" + "0" * 32)
    assert e.value.status == 401 and e.value.code == "unauthorized"
    with pytest.raises(NotFoundError, match="template"):
        Sandbox.create("no-such-template", **platform.sdk())
    with pytest.raises(InvalidArgumentError):
        Sandbox.connect("not-an-id", **platform.sdk())
    with pytest.raises(InvalidArgumentError):
        sbx.metrics("3d")
    with pytest.raises(WarrenError) as w:
        Sandbox.list(url="http://127.0.0.1:9", api_key=platform.api_key)
    assert w.value.code == "connection_error"


def test_metrics(sbx: Sandbox) -> None:
    sbx.commands.run("head -c 2000000 /dev/urandom | sha256sum")
    deadline = time.monotonic() + 60  # sampled every few seconds; later on a loaded machine
    points = sbx.metrics()
    while not points and time.monotonic() < deadline:
        time.sleep(0.5)
        points = sbx.metrics("5m")
    assert points, "the agent samples running sandboxes"
    assert points[-1].mem_bytes > 0
    assert all(p.timestamp for p in points)
    for r in ("5m", "10m", "1h", "2h", "6h", "12h", "24h"):
        sbx.metrics(r)


# ---------------------------------------------------------------------------------- commands


def test_run_shell_argv_cwd_env_exit_codes(sbx: Sandbox) -> None:
    r = sbx.commands.run("echo hi; echo oops >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "oops\n", 3)
    assert r.duration_ms is not None and r.duration_ms >= 0
    assert sbx.commands.run(["printf", "%s|", "a b", "c"]).stdout == "a b|c|"
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run(["sh", "-c", "echo $A$B"], envs={"A": "1", "B": "2"}).stdout == "12\n"
    with pytest.raises(CommandExitError) as e:
        sbx.commands.run("echo out; exit 7", check=True)
    assert e.value.exit_code == 7 and e.value.stdout == "out\n"
    assert sbx.commands.run("true", check=True).exit_code == 0


def test_run_with_stdin_text_and_bytes(sbx: Sandbox) -> None:
    assert sbx.commands.run("cat", stdin="piped\n").stdout == "piped\n"
    r = sbx.commands.run("od -An -tx1", stdin=b"\x00\xff")
    assert r.stdout.split() == ["00", "ff"]


def test_timeout_kills_the_command(sbx: Sandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(WarrenTimeoutError):
        sbx.commands.run("sleep 300", timeout=1)
    assert time.monotonic() - t0 < 120  # at its timeout, not the command's end (300 s)
    with pytest.raises(WarrenTimeoutError):  # the streaming path too
        sbx.commands.run("sleep 300", timeout=1, on_stdout=lambda s: None)
    # still usable afterwards
    assert sbx.commands.run("echo alive").stdout == "alive\n"


def test_non_utf8_output(sbx: Sandbox) -> None:
    r = sbx.commands.run(r"printf 'ok\377\376\n'; printf '\200' >&2")
    assert r.stdout_bytes == b"ok\xff\xfe\n" and r.stderr_bytes == b"\x80"
    assert r.stdout == "ok\ufffd\ufffd\n"
    seen: list[str] = []
    r2 = sbx.commands.run(r"printf 'x\377y'", on_stdout=seen.append)
    assert r2.stdout_bytes == b"x\xffy" and seen


def test_five_megabytes_of_output(sbx: Sandbox) -> None:
    script = "python3 -c \"import sys; [sys.stdout.write('%07d' % i + 'abc\\n') for i in range(500000)]\""
    expected = b"".join(b"%07dabc\n" % i for i in range(500000))
    assert len(expected) > 5_000_000
    r = sbx.commands.run(script, timeout=120)
    assert r.exit_code == 0 and r.stdout_bytes == expected
    chunks: list[str] = []
    r = sbx.commands.run(script, timeout=120, on_stdout=chunks.append)
    assert r.stdout_bytes == expected
    assert "".join(chunks).encode() == expected
    assert len(chunks) > 1  # streamed, not one blob at the end


def test_streaming_callbacks_arrive_before_exit(sbx: Sandbox) -> None:
    # The command ends only after the test has seen its first line (no timing to go wrong on
    # a loaded machine): output delivered only at the exit would never let it end.
    go = f"/tmp/go-{uuid.uuid4().hex}"
    seen: list[str] = []
    helpers: list[threading.Thread] = []

    def on_stdout(s: str) -> None:
        seen.append(s)
        if not helpers and "first" in "".join(seen):
            helpers.append(threading.Thread(target=lambda: sbx.commands.run(f"touch {go}")))
            helpers[0].start()

    r = sbx.commands.run(
        f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second", on_stdout=on_stdout, timeout=120
    )
    for t in helpers:
        t.join(60)
    assert r.exit_code == 0 and "".join(seen) == "first\nsecond\n", seen


def test_stream_exec_reads_stdin_and_echoes_it(sbx: Sandbox) -> None:
    h = sbx.commands.run("cat", background=True, stdin=True)
    assert isinstance(h, CommandHandle) and h.pid > 0
    h.send_stdin("hello\n")
    h.send_stdin(b"\xffbinary\n")
    h.close_stdin()
    r = h.wait()
    assert r.exit_code == 0 and r.stdout_bytes == b"hello\n\xffbinary\n"


def test_background_list_attach_signal_kill(sbx: Sandbox) -> None:
    h = sbx.commands.run("echo started; sleep 60", background=True, tag="sleeper")
    procs = {p.pid: p for p in sbx.commands.list()}
    assert h.pid in procs and procs[h.pid].tag == "sleeper"
    h.disconnect()  # the process keeps running without us
    assert h.pid in {p.pid for p in sbx.commands.list()}
    attached = sbx.commands.connect(h.pid)
    assert sbx.commands.kill(h.pid) is True
    r = attached.wait()
    assert r.exit_code != 0 and "started" in r.stdout  # replayed output, then the kill
    assert sbx.commands.kill(h.pid) is False
    with pytest.raises(NotFoundError):
        sbx.commands.connect(999999)

    trapper = "trap 'echo got-term; exit 0' TERM; touch /tmp/trapping; while :; do sleep 0.1; done"
    h2 = sbx.commands.run(trapper, background=True, tag="trapper")
    deadline = time.monotonic() + 60  # the trap is set before the signal comes (a fixed 0.5 s was not)
    while sbx.commands.run("test -e /tmp/trapping").exit_code != 0:
        assert time.monotonic() < deadline, "the trapper never started"
        time.sleep(0.1)
    assert sbx.commands.send_signal("trapper", 15) is True
    assert "got-term" in h2.wait().stdout

    h3 = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h3.pid, "via-rest\n")
    h3.disconnect()
    attached3 = sbx.commands.connect(h3.pid)
    attached3.close_stdin()
    assert attached3.wait().stdout == "via-rest\n"
    assert attached3.kill() is False  # it has exited: nothing to kill


# ------------------------------------------------------------------------------------- files


def test_files_roundtrip_and_fs_operations(sbx: Sandbox) -> None:
    sbx.files.write("/root/dir/sub/a.txt", "héllo")
    assert sbx.files.read("/root/dir/sub/a.txt") == "héllo"
    sbx.files.write("/root/dir/b.bin", b"\x00\x01\xff")
    assert sbx.files.read("/root/dir/b.bin", format="bytes") == b"\x00\x01\xff"
    sbx.files.write("/root/dir/b.bin", b"replaced")
    assert sbx.files.read("/root/dir/b.bin") == "replaced"

    info = sbx.files.get_info("/root/dir/sub/a.txt")
    assert (info.name, info.type, info.size, info.path) == ("a.txt", "file", 6, "/root/dir/sub/a.txt")
    assert sbx.files.get_info("/root/dir").is_dir
    assert sbx.files.exists("/root/dir/b.bin") and not sbx.files.exists("/root/nope")

    top = {e.name for e in sbx.files.list("/root/dir")}
    assert top == {"sub", "b.bin"}
    deep = {e.path for e in sbx.files.list("/root/dir", depth=2)}
    assert "/root/dir/sub/a.txt" in deep

    assert sbx.files.make_dir("/root/new/deeper") is True
    assert sbx.files.make_dir("/root/new/deeper") is False
    moved = sbx.files.rename("/root/dir/b.bin", "/root/new/b.bin")
    assert moved.path == "/root/new/b.bin" and not sbx.files.exists("/root/dir/b.bin")
    sbx.files.remove("/root/new")
    assert not sbx.files.exists("/root/new/b.bin")
    # the command side sees the same filesystem
    assert sbx.commands.run("cat /root/dir/sub/a.txt").stdout == "héllo"


def test_file_errors(sbx: Sandbox) -> None:
    with pytest.raises(NotFoundError):
        sbx.files.read("/root/missing")
    with pytest.raises(NotFoundError):
        sbx.files.read_stream("/root/missing")  # raised at once, before any iteration
    with pytest.raises(NotFoundError):
        sbx.files.get_info("/root/missing")
    with pytest.raises(NotFoundError):
        sbx.files.list("/root/missing")
    with pytest.raises(NotFoundError):
        sbx.files.remove("/root/missing")
    with pytest.raises(NotFoundError):
        sbx.files.rename("/root/missing", "/root/x")
    with pytest.raises(InvalidArgumentError):
        sbx.files.read("relative/path")


def test_streaming_files_from_file_objects_and_iterators(sbx: Sandbox) -> None:
    blob = bytes(range(256)) * 4096 * 3  # 3 MiB
    sbx.files.write_stream("/root/s1.bin", io.BytesIO(blob))
    sbx.files.write_stream("/root/s2.bin", iter([blob[:1000], b"", blob[1000:]]))
    sent: list[int] = []
    sbx.files.write_stream("/root/s3.bin", blob, progress=sent.append)
    assert sum(sent) == len(blob)
    sbx.files.write("/root/s4.bin", io.BytesIO(blob))  # a file object goes by stream too
    for name in ("s1", "s2", "s3", "s4"):
        got = b"".join(sbx.files.read_stream(f"/root/{name}.bin"))
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob).digest(), name
    assert sbx.commands.run("sha256sum /root/s1.bin").stdout.split()[0] == hashlib.sha256(blob).hexdigest()
    sbx.files.write("/root/empty", b"")
    assert b"".join(sbx.files.read_stream("/root/empty")) == b""
    assert sbx.files.read("/root/empty", format="bytes") == b""
