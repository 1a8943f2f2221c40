"""Session 12: the compiled layer converter (native/layer_convert.c) against hostile layer tars.

The program parses tenant-controlled tars (a tenant's build steps and snapshots make them) and
must, for every input, either decline it or write the very bytes the Python converter writes
(tests/unit/layers/test_native_convert.py states the contract). These are the attacks that
broke it, run as the tenant would: a crafted tar handed to the real built program.

- A member the converter writes nothing for (the root entry ``./``, a whiteout, an opaque
  marker, aufs' ``.wh..wh.`` names) may still carry file data when its type is regular. The
  Python reader skips that data (``tarfmt.members``); the program went on parsing it as tar
  headers, so a tar hidden in the data was installed and the members after it were not: the
  image held other files than the layer every other reader sees.
- Its table of names hashed them with plain FNV-1a and indexed it by the low bits, which
  depend only on the names' low bits: names computed offline to share them (65 536 of them, a
  32 MiB tar) cost 16 s of CPU instead of 0.14, quadratic in their number. The hash now starts
  from a random key and is mixed before it is used.
- After ``execve`` the program, running as nobody, was dumpable again (the Python child it
  replaces is not: ``setresuid`` made it so): any other process of nobody on the host (another
  tenant's conversion, ``tar2sqfs``) could ptrace it or read its ``/proc`` files.

And a seeded, compact regression corpus (mutated plain layers: sizes, truncation, PAX records,
names at the field boundaries, checksums) run through the program built with ASan and UBSan, in
both of its copy modes (files: through its buffer; pipes: spliced).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import resource
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.layers.test_native_convert import BASE, LIMIT, python, same_or_declined
from warren.agent import layer_convert

BLOCK = 512
NATIVE = Path(__file__).resolve().parents[2] / "native"
SANITIZERS = {
    "ASAN_OPTIONS": "detect_leaks=0:exitcode=99",
    "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98:print_stacktrace=1",
}


# ------------------------------------------------------------------------ crafting tars


def header(
    name: bytes, typ: bytes = b"0", size: int = 0, *, link: bytes = b"", mtime: int = 1_700_000_000
) -> bytes:
    """A ustar header block with its checksum, whatever the fields say."""
    blk = bytearray(BLOCK)
    blk[0 : min(len(name), 100)] = name[:100]
    blk[100:108] = b"0000644\0"
    blk[108:124] = b"0000000\0" * 2
    blk[124:136] = b"%011o\0" % size if size < 8**11 else b"%012o" % size
    blk[136:148] = b"%011o\0" % mtime if mtime < 8**11 else b"%012o" % mtime
    blk[156:157] = typ
    blk[157 : 157 + min(len(link), 100)] = link[:100]
    blk[257:265] = b"ustar\x0000"
    return with_checksum(blk)


def with_checksum(blk: bytearray) -> bytes:
    blk[148:156] = b" " * 8
    blk[148:156] = b"%06o\0 " % sum(blk)
    return bytes(blk)


def record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes, data: bytes = b"", typ: bytes = b"0", pax: bytes = b"", link: bytes = b"") -> bytes:
    before = header(b"././@PaxHeader", b"x", len(pax)) + padded(pax) if pax else b""
    return before + header(name[:100], typ, len(data), link=link) + padded(data)


END = bytes(2 * BLOCK)
# A tar inside a member's data: what a reader that does not skip that data would install.
SMUGGLED = member(b"smuggled", b"not in the layer") + END


# ------------------------------------------------------ the data of a member with no output

CARRIERS = {
    "root ./": b"./",
    "root .": b".",
    "root /": b"/",
    "whiteout": b".wh.gone",
    "opaque marker": b"d/.wh..wh..opq",
    "aufs hard link dir": b".wh..wh.plnk",
}


@pytest.mark.parametrize("typ", [b"0", b"7"], ids=["reg", "contiguous"])
@pytest.mark.parametrize("carrier", list(CARRIERS))
def test_the_data_of_a_member_written_as_nothing_is_skipped(tmp_path: Path, carrier: str, typ: bytes) -> None:
    """The attacker's layer: a regular-typed member the converter drops, its data a whole tar,
    then the layer's real file. Every reader sees `real` and no `smuggled`; so must the image."""
    before = member(b"d/", typ=b"5") if carrier == "opaque marker" else b""
    data = before + member(CARRIERS[carrier], SMUGGLED, typ) + member(b"real", b"the layer's") + END
    kind = same_or_declined(tmp_path, data)
    if kind == "ok":
        out = (tmp_path / "native-out.tar").read_bytes()
        assert b"smuggled" not in out and b"real" in out


def test_a_root_entry_whose_data_is_cut_short_is_declined(tmp_path: Path) -> None:
    """The Python converter refuses it (truncated); the program must not accept it."""
    data = member(b"ok", b"x") + header(b"./", b"0", 3 << 20) + bytes(4 * BLOCK)
    assert python(tmp_path, data)[0]["kind"] == "LayerError"
    assert same_or_declined(tmp_path, data) == "declined"


# ---------------------------------------------------------------- names that collide

# The attacker's offline step: names whose FNV-1a agree in their low B bits, K blocks of 3
# characters, M blocks per step taking the same state to the same state (mod 2**B).
COLLIDE_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#define P 1099511628211ULL
static const char A[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
static uint64_t step(uint64_t h, int i) {
    for (int j = 0; j < 3; j++, i /= 62) h = (h ^ (unsigned char)A[i % 62]) * P;
    return h;
}
int main(int argc, char **argv) {
    int b = atoi(argv[1]), k = atoi(argv[2]), m = atoi(argv[3]), all = 62 * 62 * 62;
    uint64_t mask = (1ULL << b) - 1, t = 1469598103934665603ULL;
    uint32_t *count = calloc(mask + 1, 4);
    int blocks[16][16];
    for (int s = 0; s < k; s++) {
        uint64_t best = 0, next = 0;
        uint32_t most = 0;
        for (uint64_t i = 0; i <= mask; i++) count[i] = 0;
        for (int i = 0; i < all; i++) {
            uint64_t h = step(t, i) & mask;
            if (++count[h] > most) most = count[h], best = h;
        }
        for (int i = 0, got = 0; got < m; i++)
            if ((step(t, i) & mask) == best) blocks[s][got++] = i, next = step(t, i);
        t = next;
    }
    long total = 1;
    for (int s = 0; s < k; s++) total *= m;
    for (long n = 0; n < total; n++) {
        long x = n;
        for (int s = 0; s < k; s++, x /= m)
            for (int j = 0, i = blocks[s][x % m]; j < 3; j++, i /= 62) putchar(A[i % 62]);
        putchar('\n');
    }
    return 0;
}
"""


def test_names_chosen_to_collide_in_the_name_table_cost_no_more(tmp_path: Path) -> None:
    """65 536 names sharing the low 18 bits of their FNV-1a (the table's index at that size):
    the conversion must stay within a CPU budget ~40x what distinct names need (RLIMIT_CPU, as
    the agent sets one: not a clock)."""
    native = layer_convert.native_converter()
    assert native is not None, "the compiled converter is not built: run `make setup`"
    (tmp_path / "collide.c").write_text(COLLIDE_C)
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "collide"), str(tmp_path / "collide.c")], check=True)
    names = subprocess.run([str(tmp_path / "collide"), "18", "8", "4"], check=True, capture_output=True)
    names_list = names.stdout.split()
    assert len(set(names_list)) == 4**8
    src = tmp_path / "flood.tar"
    src.write_bytes(b"".join(header(n, b"0") for n in names_list) + END)
    with open(src, "rb") as fin, open(os.devnull, "wb") as fout:
        res_r, res_w = os.pipe()
        proc = subprocess.Popen(
            [native, str(fin.fileno()), str(fout.fileno()), str(res_w), str(BASE), str(LIMIT)],
            pass_fds=(fin.fileno(), fout.fileno(), res_w),
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (5, 5)),
        )
        os.close(res_w)
        with open(res_r, "rb") as f:
            result = f.read()
        assert proc.wait() == 0, "killed by its CPU limit"
    assert json.loads(result)["stats"]["files"] == 4**8


# ------------------------------------------------------------- the exec'd program's process


def children_running(parent: int, exe: str) -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid == parent and os.readlink(f"/proc/{entry}/exe") == exe:
                yield int(entry)
        except (OSError, ValueError, IndexError):
            continue


def as_nobody_probe(pid: int) -> dict[str, str]:
    """What another process of nobody can do to ``pid``: PTRACE_ATTACH, read its environ."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(layer_convert.NOBODY, layer_convert.NOBODY, layer_convert.NOBODY)
            os.setresuid(layer_convert.NOBODY, layer_convert.NOBODY, layer_convert.NOBODY)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
            got = {}
            if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
                got["ptrace"] = "attached"
                os.waitpid(pid, 0)
                libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
            else:
                got["ptrace"] = os.strerror(ctypes.get_errno())
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    got["environ"] = f"read {len(f.read())} bytes"
            except OSError as e:
                got["environ"] = e.strerror or str(e)
            os.write(w, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    with open(r, "rb") as f:
        data = f.read()
    os.waitpid(child, 0)
    return dict(json.loads(data))


@pytest.mark.root  # the converter's child drops to nobody before it execs the program
def test_another_nobody_process_cannot_trace_the_converter() -> None:
    native = layer_convert.native_converter()
    assert native is not None, "the compiled converter is not built: run `make setup`"
    layer_convert.warm()
    server = layer_convert._server
    assert server is not None
    with converter_running(server[0].pid, native=True, exe=native) as pid:
        got = as_nobody_probe(pid)
        assert got["ptrace"] != "attached", got
        assert not got["environ"].startswith("read"), got


@contextlib.contextmanager
def converter_running(server_pid: int, *, native: bool, exe: str) -> Iterator[int]:
    """A real conversion through the converter server, held open (its tar not ended) while the
    caller probes the converter's process (its pid); then ended and checked to finish."""
    r, w = os.pipe()
    conv = layer_convert.Conversion(w, uid_base=BASE, max_bytes=LIMIT, cpu_s=60, native=native)
    os.close(w)
    try:
        conv.put(member(b"a", b"a"))  # no end yet: the converter waits for the rest
        deadline = time.monotonic() + 60
        pids: list[int] = []
        while not pids and time.monotonic() < deadline:
            pids = list(children_running(server_pid, os.path.realpath(exe)))
            time.sleep(0.05)
        assert pids, "the converter's process was not found"
        yield pids[0]
        conv.put(END)
        conv.close()
        while os.read(r, 1 << 20):
            pass
        assert conv.result() is not None
    finally:
        conv.discard()
        os.close(r)


# ------------------------------------------------- the seeded corpus, under ASan and UBSan


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("asan") / "warren-layer-convert-asan"
    # As the Makefile's $(CONVERTER) rule (native/layer_sqfs*.c is the image writer, another program).
    sources = [str(NATIVE / n) for n in ("layer_convert.c", "tar_fmt.c", "seccomp.c")]
    cmd = [
        "gcc",
        "-O1",
        "-g",
        "-fsanitize=address,undefined",
        "-fno-omit-frame-pointer",
        "-o",
        str(out),
        *sources,
    ]
    subprocess.run(cmd, check=True)
    return str(out)


def run(binary: str, data: bytes, limit: int, *, pipes: bool, tmp: Path) -> tuple[dict[str, object], bytes]:
    """The program on ``data``, its input and output files (copied through its buffer) or pipes
    (spliced); fails on a sanitizer report or a non-zero exit."""
    env = {**os.environ, **SANITIZERS}
    if pipes:
        fin, feed = os.pipe()
        drain, fout = os.pipe()
    else:
        (tmp / "in.tar").write_bytes(data)
        fin = os.open(tmp / "in.tar", os.O_RDONLY)
        fout = os.open(tmp / "out.tar", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    res_r, res_w = os.pipe()
    proc = subprocess.Popen(
        [binary, str(fin), str(fout), str(res_w), str(BASE), str(limit)],
        pass_fds=(fin, fout, res_w),
        env=env,
        stderr=subprocess.PIPE,
    )
    for fd in (fin, fout, res_w):
        os.close(fd)
    out = bytearray()
    threads = []
    if pipes:
        threads = [
            threading.Thread(target=_feed, args=(feed, data)),
            threading.Thread(target=_drain, args=(drain, out)),
        ]
        for t in threads:
            t.start()
    with open(res_r, "rb") as f:
        result = f.read()
    _, err = proc.communicate(timeout=120)
    for t in threads:
        t.join()
    assert proc.returncode == 0, err.decode(errors="replace")[-4000:]
    assert b"runtime error" not in err, err.decode(errors="replace")[-4000:]
    return json.loads(result), bytes(out) if pipes else (tmp / "out.tar").read_bytes()


def _feed(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 1 << 16]) :]
    except BrokenPipeError:
        pass  # the program stopped reading: declined
    finally:
        os.close(fd)


def _drain(fd: int, out: bytearray) -> None:
    with open(fd, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            out += chunk


NAMES = [b"a", b"usr", b"bin", b"python3", b"e" * 60, b"f" * 99, b"g" * 100, b"h" * 150]


def plain_layer(rnd: random.Random) -> bytes:
    """Mostly what the program accepts: files, dirs, links, long names in PAX records, the odd
    root entry or whiteout with data."""
    dirs: list[bytes] = []
    files: list[bytes] = []
    out = bytearray()
    for i in range(rnd.randint(1, 12)):
        name = rnd.choice(NAMES) + b"%d" % i
        if dirs and rnd.random() < 0.6:
            name = rnd.choice(dirs) + b"/" + name
        typ = rnd.choice([b"0", b"0", b"5", b"2", b"1", b"6", b"7"] if files else [b"0", b"5"])
        if rnd.random() < 0.06:
            name = rnd.choice([b"./", b".", b".wh.x%d" % i, b".wh..wh.plnk%d" % i])
            typ = b"0"
        data = rnd.randbytes(rnd.choice([0, 1, 511, 512, 513, 3000, 70_000])) if typ in (b"0", b"7") else b""
        if name.startswith(b".") and rnd.random() < 0.5:
            data = member(b"hidden%d" % i, b"h")  # a member in its data, which no reader sees
        link = {b"2": rnd.choice([b"/etc", b"t" * 101]), b"1": rnd.choice(files) if files else b""}.get(
            typ, b""
        )
        pax = b""
        if len(name) > 100 or len(link) > 100 or rnd.random() < 0.2:
            pax = record(b"path", name) + (record(b"linkpath", link) if link else b"")
            pax += rnd.choice(
                [b"", record(b"mtime", b"1.5"), record(b"uid", b"00012"), record(b"size", b"%d" % len(data))]
            )
        out += member(name, data, typ, pax, link)
        (dirs if typ == b"5" else files).append(name)
    return bytes(out + END)


def mutated(rnd: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    blocks = max(1, len(buf) // BLOCK)
    for _ in range(rnd.randint(1, 3)):
        at = rnd.randrange(blocks) * BLOCK
        move = rnd.randrange(6)
        if move == 0:  # cut, on a block boundary or inside one
            del buf[at + rnd.choice([0, 0, rnd.randrange(BLOCK)]) :]
        elif move == 1 and at + 136 <= len(buf):  # a size field: huge, negative, not octal
            buf[at + 124 : at + 136] = rnd.choice(
                [
                    b"77777777777\0",
                    b"777777777777",
                    b"-0000000001\0",
                    b"0000000008\0\0",
                    b"\xff" * 12,
                    b" 1 \0" + bytes(8),
                ]
            )
        elif move == 2 and at + BLOCK <= len(buf):  # a PAX record: bad length, no newline, huge value
            rec = rnd.choice(
                [
                    b"99999999999999999999 path=x\n",
                    b"18446744073709551615 a=b\n",
                    b"5 =\n",
                    b"9 path=x",
                    b"0 x=\n",
                ]
            )
            buf[at + BLOCK : at + BLOCK] = padded(rec)
            buf[at : at + BLOCK] = header(b"././@PaxHeader", b"x", len(rec))
        elif move == 3:  # a byte of a header field
            i = at + rnd.choice([0, 99, 100, 124, 135, 148, 155, 156, 157, 257, 345])
            if i < len(buf):
                buf[i] = rnd.choice([0, 0x20, 0x2F, 0x37, 0x38, 0x80, 0xFF, ord("5"), ord("x")])
        elif move == 4:  # a block repeated
            buf[at:at] = buf[at : at + BLOCK]
        else:  # a bit
            i = rnd.randrange(len(buf)) if buf else 0
            if buf:
                buf[i] ^= 1 << rnd.randrange(8)
    for at in range(0, len(buf) - BLOCK + 1, BLOCK):  # most mutations should pass the checksum
        if buf[at + 257 : at + 262] == b"ustar" and rnd.random() < 0.9:
            buf[at : at + BLOCK] = with_checksum(bytearray(buf[at : at + BLOCK]))
    return bytes(buf)


CORPUS_SEEDS = range(0, 120)


def test_a_seeded_corpus_is_converted_the_same_or_declined_under_sanitizers(
    tmp_path: Path, sanitized: str
) -> None:
    kinds = []
    for seed in CORPUS_SEEDS:
        rnd = random.Random(seed)
        data = plain_layer(rnd)
        if seed % 3:
            data = mutated(rnd, data)
        limit = LIMIT if seed % 7 else max(BLOCK, len(data) - rnd.randrange(1, 4) * BLOCK)
        got, out = run(sanitized, data, limit, pipes=seed % 2 == 1, tmp=tmp_path)
        assert got["kind"] in ("ok", "declined"), (seed, got)
        if got["kind"] == "ok":
            want, want_out = python(tmp_path, data, limit)
            assert want["kind"] == "ok", (seed, want)
            assert (got["stats"], out) == (want["stats"], want_out), seed
        kinds.append(got["kind"])
    assert kinds.count("ok") >= len(kinds) // 4, kinds  # the accepting path is exercised
