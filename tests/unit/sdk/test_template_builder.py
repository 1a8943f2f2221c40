"""The SDK's template builder (`warren.sdk._template_spec`): a chain of calls gives the exact
Warrenfile text, which the control plane's own parser reads back to the values given (quoting),
and to the same steps as the hand-written equivalent; what cannot be one instruction line is
refused; the build context tar is deterministic; sync and async builders agree."""

from __future__ import annotations

import io
import os
import shlex
import tarfile
from pathlib import Path

import pytest

from warren import AsyncTemplate, Template
from warren.cp.services import template_spec
from warren.sdk._template_build import BuildInfo, TemplateBuildError, _sse_events
from warren.sdk._template_spec import TemplateSpec, quote_word

TRICKY = [
    "b c",
    "",
    'say "hi"',
    "it's",
    "$HOME and ${X:-y}",
    'back\\slash \\$ \\" end\\',
    "tab\there",
    "ünïcödé ✓",
    "a=b=c",
    "#not-a-comment",
    "semi;colon & amp | pipe > out",
    "`backticks`",
]


def parse(text: str, build_args: dict[str, str] | None = None) -> template_spec.Spec:
    return template_spec.parse(text, build_args)


def canonical(text: str) -> list[str]:
    return [s.canonical() for s in parse(text).steps]


def test_a_chain_gives_the_exact_warrenfile(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("hello")
    t = (
        Template()
        .from_template("minimal")
        .apt_install(["curl", "git"])
        .pip_install(["requests>=2.31", "rich"])
        .run("echo hi > /hello")
        .run(["python3", "-c", "print('a b')"])
        .copy(f, "/srv/f.txt")
        .env({"A": "b c", "PLAIN": "x"})
        .workdir("/srv")
        .user("nobody")
        .arg("VERSION", "1.0")
        .arg("EMPTY")
        .start_cmd(
            ["python3", "-m", "http.server", "8000"], ready="curl -sf localhost:8000", ready_timeout=30
        )
    )
    assert t.to_warrenfile() == (
        "FROM minimal\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
        "curl git && rm -rf /var/lib/apt/lists/*\n"
        "RUN pip install --no-cache-dir 'requests>=2.31' rich\n"
        "RUN echo hi > /hello\n"
        "RUN python3 -c 'print('\"'\"'a b'\"'\"')'\n"
        "COPY f.txt /srv/f.txt\n"
        'ENV A="b c" PLAIN=x\n'
        "WORKDIR /srv\n"
        "USER nobody\n"
        "ARG VERSION=1.0\n"
        "ARG EMPTY\n"
        "START python3 -m http.server 8000\n"
        "READY --timeout=30 curl -sf localhost:8000\n"
    )
    spec = parse(t.to_warrenfile())
    assert spec.config.env == {"A": "b c", "PLAIN": "x"}
    assert (spec.config.workdir, spec.config.user) == ("/srv", "nobody")
    assert spec.config.start_cmd == "python3 -m http.server 8000"
    assert (spec.config.ready_cmd, spec.config.ready_timeout_sec) == ("curl -sf localhost:8000", 30)
    run = [s for s in spec.steps if isinstance(s, template_spec.RunStep)]
    assert run[3].command == "python3 -c 'print('\"'\"'a b'\"'\"')'"
    copy = next(s for s in spec.steps if isinstance(s, template_spec.CopyStep))
    assert (copy.sources, copy.dest, copy.dest_is_dir) == (("f.txt",), "/srv/f.txt", False)
    assert [c.arcname for c in t.context_sources] == ["f.txt"]


def test_from_debian_and_tags() -> None:
    assert Template().from_debian().to_warrenfile() == "FROM debian:bookworm\n"
    assert Template().from_template("my-env:v2").run("true").to_warrenfile() == "FROM my-env:v2\nRUN true\n"
    assert parse(Template().from_debian("bookworm").to_warrenfile()).base.kind == "debian"


@pytest.mark.parametrize("value", TRICKY)
def test_env_arg_workdir_and_copy_values_reach_the_parser_unchanged(value: str, tmp_path: Path) -> None:
    t = Template().from_template("minimal").env({"V": value}).arg("A", value)
    spec = parse(t.to_warrenfile())
    assert spec.config.env["V"] == value
    arg = next(s for s in spec.steps if isinstance(s, template_spec.ArgStep))
    assert arg.value == value
    if value.strip():
        path = "/srv/" + value.strip()
        wd = parse(Template().from_template("minimal").workdir(path).to_warrenfile()).config.workdir
        assert wd == os.path.normpath(path)
        src = tmp_path / "src"
        src.write_text("x")
        text = Template().from_template("minimal").copy(src, path).to_warrenfile()
        copy = parse(text).steps[1]
        assert isinstance(copy, template_spec.CopyStep) and copy.dest == os.path.normpath(path)


@pytest.mark.parametrize("value", TRICKY)
def test_shell_commands_are_quoted_for_the_shell(value: str) -> None:
    spec = f"x{value}"  # a pip requirement may hold spaces ("requests >= 2"), never lead with "-"
    t = Template().from_template("minimal").run(["printf", "%s", value]).pip_install([spec, "y"])
    run, pip = parse(t.to_warrenfile()).steps[1:]
    assert isinstance(run, template_spec.RunStep) and isinstance(pip, template_spec.RunStep)
    assert shlex.split(run.command) == ["printf", "%s", value]
    assert shlex.split(pip.command) == ["pip", "install", "--no-cache-dir", spec, "y"]


def test_quote_word() -> None:
    assert quote_word("plain/path-1.0") == "plain/path-1.0"
    assert quote_word("b c") == '"b c"'
    assert quote_word('a"b\\c$d') == '"a\\"b\\\\c\\$d"'
    assert quote_word("") == '""'


@pytest.mark.parametrize(
    "make",
    [
        lambda t: t.run("echo a\necho b"),
        lambda t: t.run("echo a\r"),
        lambda t: t.run("echo \u2028"),
        lambda t: t.run("echo a \\"),
        lambda t: t.run('["echo", "a"]'),
        lambda t: t.run("--mount=type=cache echo"),
        lambda t: t.run(""),
        lambda t: t.run([]),
        lambda t: t.env({"A": "one\ntwo"}),
        lambda t: t.env({"A": "nul\x00"}),
        lambda t: t.env({"1A": "x"}),
        lambda t: t.env({"A B": "x"}),
        lambda t: t.env({}),
        lambda t: t.workdir("/a\nRUN evil"),
        lambda t: t.workdir(" "),
        lambda t: t.user("root\nRUN evil"),
        lambda t: t.user("bad user"),
        lambda t: t.arg("1X"),
        lambda t: t.arg("X", "a\x0bb"),
        lambda t: t.apt_install(["-o=Dpkg::Options::=--force-confnew"]),
        lambda t: t.apt_install(["curl\ngit"]),
        lambda t: t.apt_install([]),
        lambda t: t.apt_install(["two words"]),
        lambda t: t.pip_install(["--index-url=http://evil"]),
        lambda t: t.start_cmd("server\nevil"),
        lambda t: t.start_cmd("server", ready="ok", ready_timeout=0),
        lambda t: t.start_cmd("server", ready_timeout=5),
        lambda t: t.copy("/no/such/file", "/x"),
        lambda t: t.copy("/etc/hostname", "/x\ny"),
        lambda t: t.from_template("minimal"),
    ],
)
def test_refusals(make: object) -> None:
    with pytest.raises(ValueError):
        make(Template().from_template("minimal"))  # type: ignore[operator]


def test_a_step_before_from_and_a_bad_from_are_refused() -> None:
    with pytest.raises(ValueError, match="from_template"):
        Template().run("true")
    with pytest.raises(ValueError, match="from_template"):
        Template().to_warrenfile()
    with pytest.raises(ValueError):
        Template().from_template("Bad Name")
    with pytest.raises(ValueError):
        Template().from_debian("../x")


def test_the_builder_and_the_hand_written_spec_parse_to_the_same_steps(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "app").mkdir()
    built = (
        Template()
        .from_template("minimal")
        .run("echo hi > /hello")
        .env({"A": "b c"})
        .workdir("/srv")
        .copy(tmp_path / "f.txt", "/srv/f.txt")
        .copy(tmp_path / "app", "app/")
        .user("nobody")
        .start_cmd("sleep infinity", ready="true")
    )
    by_hand = (
        "FROM minimal\n"
        "RUN echo hi > /hello\n"
        "ENV A='b c'\n"
        "WORKDIR /srv\n"
        'COPY ["f.txt", "/srv/f.txt"]\n'
        "COPY app app/\n"
        "USER nobody\n"
        "CMD sleep infinity\n"
        "READY true\n"
    )
    assert canonical(built.to_warrenfile()) == canonical(by_hand)
    assert parse(built.to_warrenfile()).config == parse(by_hand).config


def test_each_call_returns_a_new_builder() -> None:
    base = Template().from_template("minimal").run("echo base")
    a, b = base.run("echo a"), base.env({"B": "1"})
    assert base.to_warrenfile() == "FROM minimal\nRUN echo base\n"
    assert a.to_warrenfile().endswith("RUN echo a\n") and "echo a" not in b.to_warrenfile()
    assert isinstance(a, Template)


def test_sync_and_async_builders_make_the_same_spec_and_context(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")

    def chain(t: TemplateSpec) -> TemplateSpec:
        return (
            t.from_template("minimal")
            .apt_install("curl")
            .copy(tmp_path / "f.txt", "/f.txt")
            .env({"A": "b c"})
            .start_cmd("srv", ready="true")
        )

    sync, asyn = chain(Template()), chain(AsyncTemplate())
    assert isinstance(asyn, AsyncTemplate)
    assert sync.to_warrenfile() == asyn.to_warrenfile()
    assert sync.context_sources == asyn.context_sources
    assert _tar(sync) == _tar(asyn)


def _tar(t: TemplateSpec) -> bytes:
    buf = io.BytesIO()
    t.write_context(buf)
    return buf.getvalue()


def test_copy_names_are_deterministic_and_distinct(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "conf.tar.gz").write_text(d)
    (tmp_path / "-x").write_text("dash")
    t = (
        Template()
        .from_template("minimal")
        .copy(tmp_path / "a" / "conf.tar.gz", "/a")
        .copy(tmp_path / "b" / "conf.tar.gz", "/b")
        .copy(tmp_path / "a" / "conf.tar.gz", "/again")
        .copy(tmp_path / "-x", "/x")
    )
    assert t.to_warrenfile().splitlines()[1:] == [
        "COPY conf.tar.gz /a",
        "COPY conf-2.tar.gz /b",
        "COPY conf.tar.gz /again",
        "COPY ./-x /x",
    ]
    with tarfile.open(fileobj=io.BytesIO(_tar(t))) as tar:
        names = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert names == {"conf.tar.gz": b"a", "conf-2.tar.gz": b"b", "-x": b"dash"}
    steps = parse(t.to_warrenfile()).steps
    assert [s.sources for s in steps if isinstance(s, template_spec.CopyStep)][-1] == ("-x",)


def test_the_context_tar_is_deterministic_root_owned_and_keeps_symlinks(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "sub").mkdir(parents=True)
    (app / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (app / "sub" / "run.sh").chmod(0o755)
    (app / "z.txt").write_text("z")
    (app / "link").symlink_to("/etc/passwd")
    os.mkfifo(app / "fifo")
    t = Template().from_template("minimal").copy(app, "/srv/app")
    first = _tar(t)
    assert first == _tar(t)
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["app", "app/link", "app/sub", "app/sub/run.sh", "app/z.txt"]
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)
    link = members[1]
    assert link.issym() and link.linkname == "/etc/passwd"
    assert members[3].mode == 0o755

    # A Warrenfile with its context directory gives the same entries for the same files.
    hand = Template.from_warrenfile("FROM minimal\nCOPY app /srv/app\n", context_dir=tmp_path)
    with tarfile.open(fileobj=io.BytesIO(_tar(hand))) as tar:
        by_dir = {m.name: m.get_info() for m in tar.getmembers()}
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert all(by_dir[m.name] == m.get_info() for m in tar.getmembers())


def test_from_warrenfile_sends_the_text_and_appends_calls(tmp_path: Path) -> None:
    text = "FROM minimal\n# a comment\nRUN echo 1\n"
    t = Template.from_warrenfile(text, context_dir=tmp_path)
    assert t.to_warrenfile() == text
    assert t.needs_context()
    (tmp_path / "f.txt").write_text("in the context dir")
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("elsewhere")
    more = t.copy(other / "f.txt", "/f")
    assert more.to_warrenfile() == text + "COPY f-2.txt /f\n"
    assert not Template().from_template("minimal").needs_context()


def test_server_sent_events_are_split_across_chunks() -> None:
    buf = bytearray()
    buf += b': keep-alive\n\nevent: log\ndata: {"data": "a\\n", "next_offset": 2}\n'
    assert _sse_events(buf) == []  # a keep-alive, then half an event
    buf += b'\nevent: status\r\ndata: {"status": "ready"}\r\n\r\ndata: x\ndata: y\n\nevent: partial'
    assert _sse_events(buf) == [
        ("log", '{"data": "a\\n", "next_offset": 2}'),
        ("status", '{"status": "ready"}'),
        ("message", "x\ny"),
    ]
    assert bytes(buf) == b"event: partial"


def test_build_error_carries_the_step_and_exit_code() -> None:
    info = BuildInfo.from_json(
        {
            "build_id": "b1",
            "name": "t",
            "status": "failed",
            "failed_step": 3,
            "exit_code": 7,
            "error": "RUN exited 7",
        }
    )
    e = TemplateBuildError(info, "last words\n")
    assert (e.exit_code, e.failed_step, e.log_tail, e.build_id) == (7, 3, "last words\n", "b1")
    assert "step 3" in str(e) and "code 7" in str(e) and e.code == "build_failed"
