"""Layer codec throughput: extract_layer (and write_layer, digest_file) on two shapes of layer.

    sudo .venv/bin/python bench/layer_extract.py [--big-mb 200] [--files 20000] [--runs 3]

Layers: (a) one file of --big-mb MB of random data; (b) --files small files (~5 KB each, about
100 MB) in 200 directories. Per layer, the best of --runs, in MB/s of tar bytes:
  digest        digest_file (sha256 of the tar, 1 MiB reads)
  extract path  extract_layer from the tar's path (file data moves with copy_file_range)
  hashed stream extract_layer from a stream hashed on the way (HashingReader over the open
                file): receive + sha256 + extract in one pass, what a layer fetch does
  write         write_layer of the extracted tree back to a tar (hashed)
  floor         the same tree made by a bare loop (mkdir; open, write, fchown, utime, close per
                file, data already in memory, no tar): what the filesystem alone costs
The issue's target is a layer fetch at ≥ 200 MB/s (docs/templates.md §2). Runs in a temp dir
on the filesystem of --dir (default /var/tmp); data lands in the page cache (no sync), which
is what a fetch followed by a sandbox start sees.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from warren.layers import HashingReader, digest_file, extract_layer, write_layer

UID_BASE = 1_000_000_000


def make_big(path: Path, mb: int) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("data/big.bin")
        ti.size = mb * 1_000_000
        block = os.urandom(1 << 20)
        t.addfile(ti, _Repeat(block, ti.size))


class _Repeat(io.RawIOBase):
    def __init__(self, block: bytes, size: int) -> None:
        self._block, self._left = block, size

    def read(self, n: int = -1) -> bytes:
        n = min(self._left, len(self._block) if n < 0 else n, len(self._block))
        self._left -= n
        return self._block[:n]


def make_small(path: Path, files: int) -> None:
    rnd = os.urandom(1 << 20)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for i in range(files):
            if i % (files // 200 or 1) == 0:
                ti = tarfile.TarInfo(f"usr/lib/d{i // (files // 200 or 1):03d}")
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            size = 1000 + (i * 7919) % 8000
            ti = tarfile.TarInfo(f"usr/lib/d{i // (files // 200 or 1):03d}/f{i:05d}.py")
            ti.size, ti.mode, ti.mtime = size, 0o644, 1_700_000_000
            off = (i * 4099) % ((1 << 20) - size)
            t.addfile(ti, io.BytesIO(rnd[off : off + size]))


def load_tree(root: Path) -> list[tuple[str, bytes | None]]:
    """(relative path, data) of every file, (relative path, None) of every directory."""
    out: list[tuple[str, bytes | None]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out += [(os.path.join(rel, d), None) for d in sorted(dirnames)]
        out += [(os.path.join(rel, f), Path(dirpath, f).read_bytes()) for f in sorted(filenames)]
    return out


def make_tree(tree: list[tuple[str, bytes | None]], dest: Path) -> None:
    os.mkdir(dest, 0o700)
    for rel, data in tree:
        path = dest / rel
        if data is None:
            os.mkdir(path, 0o755)
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.fchown(fd, UID_BASE, UID_BASE)
        os.utime(fd, ns=(0, 0))
        os.close(fd)


def best(runs: int, fn: Callable[[Path], object], work: Path) -> float:
    """The best time of `fn(dest)` over fresh destinations. Nothing is deleted between runs:
    right after a big tree is removed, ext4 here creates files several times slower for a while,
    which would measure the previous run's cleanup instead of this one."""
    times = []
    for _ in range(runs):
        dest = work / f"dest-{next(_seq)}"
        t0 = time.perf_counter()
        fn(dest)
        times.append(time.perf_counter() - t0)
    return min(times)


_seq = itertools.count()


def bench(name: str, tar: Path, work: Path, runs: int) -> list[tuple[str, str, float, float]]:
    size = tar.stat().st_size

    def hashed_stream(dest: Path) -> None:
        with open(tar, "rb", buffering=0) as f:
            reader = HashingReader(f)
            extract_layer(reader, dest, uid_base=UID_BASE)
            reader.meta()

    def write(dest: Path) -> None:
        with open(dest, "wb") as f:
            write_layer(tree_dir, f, uid_base=UID_BASE)

    tree_dir = work / f"tree-{next(_seq)}"
    extract_layer(tar, tree_dir, uid_base=UID_BASE)
    tree = load_tree(tree_dir)
    rows = [
        ("digest", best(runs, lambda _: digest_file(tar), work)),
        ("extract path", best(runs, lambda dest: extract_layer(tar, dest, uid_base=UID_BASE), work)),
        ("hashed stream", best(runs, hashed_stream, work)),
        ("write", best(runs, write, work)),
        ("floor", best(runs, lambda dest: make_tree(tree, dest), work)),
    ]
    return [(name, what, t, size / t / 1e6) for what, t in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: extraction chowns into the mapped uid range")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="warren-bench-layers-") as tmp:
        work = Path(tmp)
        big, small = work / "big.tar", work / "small.tar"
        make_big(big, args.big_mb)
        make_small(small, args.files)
        rows = bench(f"1 file, {args.big_mb} MB", big, work, args.runs)
        rows += bench(f"{args.files} files", small, work, args.runs)
    print(f"{'layer':<18} {'operation':<14} {'seconds':>8} {'MB/s':>8}")
    for name, what, t, rate in rows:
        print(f"{name:<18} {what:<14} {t:>8.3f} {rate:>8.0f}")


if __name__ == "__main__":
    main()
