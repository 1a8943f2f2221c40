"""A build's context and COPY's staging layer (services/template_context.py): what is staged and
how, what is refused, the host-side copy command; and the log's UTF-8 cut
(services/template_build_log.py)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from warren.cp.services.template_build_log import _utf8_whole
from warren.cp.services.template_context import BuildContext, copy_command, staging_layer, workdir_command
from warren.cp.services.template_spec import CopyStep, WorkdirStep, parse
from warren.errors import InvalidRequest, PayloadTooLarge

MAX = 1 << 30


def _context(tmp_path: Path, build: Callable[[tarfile.TarFile], None]) -> Path:
    path = tmp_path / "context.tar"
    with tarfile.open(path, "w") as t:
        build(t)
    return path


def _file(t: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644, uid: int = 1234) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, uid, 1_700_000_000
    t.addfile(info, io.BytesIO(data))


def _special(t: tarfile.TarFile, name: str, kind: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    t.addfile(info)


def _sample(t: tarfile.TarFile) -> None:
    _file(t, "./app/main.py", b"print('hi')\n", 0o755)
    _file(t, "app/lib/util.py", b"X = 1\n")
    _special(t, "app/link", tarfile.SYMTYPE, "/etc/passwd")
    _special(t, "app/hard", tarfile.LNKTYPE, "app/main.py")
    _file(t, "a.txt", b"a\n")
    _file(t, "b.txt", b"b\n")
    _file(t, "../escape.txt", b"never\n")
    _file(t, "/abs/c.txt", b"c\n")


def _copy(spec_line: str) -> CopyStep:
    step = parse(f"FROM minimal\nWORKDIR /srv\n{spec_line}").steps[2]
    assert isinstance(step, CopyStep)
    return step


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as t:
        return {m.name: m for m in t.getmembers()}


def test_a_directory_is_staged_whole_root_owned_links_kept(tmp_path: Path) -> None:
    ctx = BuildContext(_context(tmp_path, _sample))
    try:
        meta, staged = staging_layer(ctx, _copy("COPY app/ code/"), 3, tmp_path / "s.tar", MAX)
    finally:
        ctx.close()
    members = _members(tmp_path / "s.tar")
    top = ".warren-build/copy/3/0"
    assert set(members) == {
        ".warren-build",
        ".warren-build/copy",
        ".warren-build/copy/3",
        top,
        f"{top}/main.py",
        f"{top}/lib",
        f"{top}/lib/util.py",
        f"{top}/link",
        f"{top}/hard",
    }
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert members[f"{top}/main.py"].mode == 0o755 and members[f"{top}/main.py"].mtime == 1_700_000_000
    assert members[f"{top}/link"].issym() and members[f"{top}/link"].linkname == "/etc/passwd"
    assert members[f"{top}/hard"].isreg() and members[f"{top}/hard"].size == len(b"print('hi')\n")
    assert [(s.path, s.is_dir) for s in staged] == [(f"/{top}", True)]
    assert meta.size == (tmp_path / "s.tar").stat().st_size


def test_the_staging_layer_is_deterministic(tmp_path: Path) -> None:
    digests = set()
    for i in range(2):
        ctx = BuildContext(_context(tmp_path, _sample))
        meta, _ = staging_layer(ctx, _copy("COPY *.txt app/main.py /dest/"), 4, tmp_path / f"s{i}.tar", MAX)
        ctx.close()
        digests.add(meta.digest)
    assert len(digests) == 1


def test_globs_files_and_the_root(tmp_path: Path) -> None:
    ctx = BuildContext(_context(tmp_path, _sample))
    try:
        _, staged = staging_layer(ctx, _copy("COPY *.txt app/main.py /dest/"), 4, tmp_path / "s.tar", MAX)
        assert [(s.name, s.is_dir) for s in staged] == [
            ("a.txt", False),
            ("b.txt", False),
            ("main.py", False),
        ]
        _, staged = staging_layer(ctx, _copy("COPY /abs/c.txt ."), 5, tmp_path / "t.tar", MAX)
        assert [s.name for s in staged] == ["c.txt"]
        _, staged = staging_layer(ctx, _copy("COPY . /all"), 6, tmp_path / "u.tar", MAX)
        assert staged[0].is_dir
        names = set(_members(tmp_path / "u.tar"))
        assert ".warren-build/copy/6/0/abs/c.txt" in names
        assert not any("escape" in n for n in names)  # a member climbing out is never staged
    finally:
        ctx.close()


def test_refusals_name_the_line(tmp_path: Path) -> None:
    ctx = BuildContext(_context(tmp_path, _sample))
    try:
        with pytest.raises(InvalidRequest, match=r"^line 3: COPY nope.txt: not found"):
            staging_layer(ctx, _copy("COPY nope.txt /x"), 1, tmp_path / "s.tar", MAX)
        with pytest.raises(InvalidRequest, match=r"^line 3: COPY \*.md: nothing in the build context"):
            staging_layer(ctx, _copy("COPY *.md /x"), 1, tmp_path / "s.tar", MAX)
    finally:
        ctx.close()

    def devices(t: tarfile.TarFile) -> None:
        _special(t, "dev/null", tarfile.CHRTYPE)
        _special(t, "links/bad", tarfile.LNKTYPE, "../../etc/shadow")

    ctx = BuildContext(_context(tmp_path, devices))
    try:
        with pytest.raises(InvalidRequest, match="only files, directories and symlinks"):
            staging_layer(ctx, _copy("COPY dev /x"), 1, tmp_path / "s.tar", MAX)
        with pytest.raises(InvalidRequest, match="a hard link to no file of the context"):
            staging_layer(ctx, _copy("COPY links /x"), 1, tmp_path / "s.tar", MAX)
    finally:
        ctx.close()
    (tmp_path / "junk.tar").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InvalidRequest, match="not a tar file"):
        BuildContext(tmp_path / "junk.tar")


def test_no_context_copies_nothing(tmp_path: Path) -> None:
    ctx = BuildContext(None)
    with pytest.raises(InvalidRequest, match="not found in the build context"):
        staging_layer(ctx, _copy("COPY a.txt /x"), 1, tmp_path / "s.tar", MAX)


def test_copy_commands() -> None:
    ctx_dir = "/.warren-build/copy/3/0"
    from warren.cp.services.template_context import Staged

    into = copy_command(_copy("COPY app/ code/"), [Staged(ctx_dir, "app", True)])
    assert into.splitlines() == [
        "set -e",
        "/bin/mkdir -p -- /srv/code",
        f"/usr/bin/find {ctx_dir} -mindepth 1 -maxdepth 1 -exec /bin/cp -a -t /srv/code -- {{}} +",
        "/bin/rm -rf /.warren-build",
    ]
    one = copy_command(_copy("COPY a.txt 'my file'"), [Staged(ctx_dir, "a.txt", False)])
    assert "/bin/mkdir -p -- /srv" in one and f"/bin/cp -a -- {ctx_dir}/a.txt '/srv/my file'" in one
    assert workdir_command(WorkdirStep(1, "/a b")) == "/bin/mkdir -p -- '/a b'"


def test_utf8_reads_never_end_inside_a_character() -> None:
    text = "aé€😀".encode()
    for cut in range(len(text) + 1):
        whole = _utf8_whole(text[:cut])
        whole.decode()  # never raises
        assert text[:cut].startswith(whole) and cut - len(whole) < 4
    assert _utf8_whole(b"ab\xff") == b"ab\xff"  # invalid bytes pass (decoded with replacement)


def test_hard_links_stage_no_more_than_the_limit(tmp_path: Path) -> None:
    """Each hard link stages its target's bytes again: 64 links to 64 KiB is 4 MiB, refused
    under a 1 MiB limit before the file grows past it (session 10's attack)."""

    def links(t: tarfile.TarFile) -> None:
        _file(t, "d/blob", bytes(64 << 10))
        for i in range(64):
            _special(t, f"d/l{i}", tarfile.LNKTYPE, "d/blob")

    ctx = BuildContext(_context(tmp_path, links))
    try:
        with pytest.raises(PayloadTooLarge, match=r"limit of 1 MiB"):
            staging_layer(ctx, _copy("COPY d /x"), 1, tmp_path / "s.tar", 1 << 20)
        assert (tmp_path / "s.tar").stat().st_size <= 1 << 20
    finally:
        ctx.close()


def test_a_sparse_member_is_refused(tmp_path: Path) -> None:
    """A GNU sparse member claims any size in its header (session 10's attack)."""
    hole = tmp_path / "hole"
    with open(hole, "wb") as f:
        f.truncate(1 << 30)
    path = tmp_path / "sparse.tar"
    subprocess.run(
        ["tar", "--sparse", "--format=gnu", "-C", str(tmp_path), "-cf", str(path), "hole"], check=True
    )
    with pytest.raises(InvalidRequest, match="sparse files are not supported"):
        BuildContext(path)
