"""A build context read in a child process (services/context_child.py, session 26): the child's
answers are checked as if hostile, its refusals are the errors the CP raised itself before, and
anything else is an internal error."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.harness import orphan
from warren.cp.services import context_child as cc
from warren.cp.services import tenant_threads
from warren.cp.services.template_spec import CopyStep, parse
from warren.cp.services.tenant_threads import ChildExit
from warren.errors import InternalError, InvalidRequest, PayloadTooLarge

DIGEST = "a" * 64


def _layer(tmp_path: Path, size: int = 1024) -> Path:
    out = tmp_path / "staging.tar"
    out.write_bytes(bytes(size))
    return out


def _ok(**fields: Any) -> dict[str, Any]:
    return {"digest": DIGEST, "size": 1024, "sources": [["app", True], ["a.txt", False]], **fields}


def test_a_good_answer_is_taken_with_the_cps_own_paths(tmp_path: Path) -> None:
    meta, staged = cc.staged_from_json(_ok(), _layer(tmp_path), 3, 1 << 20)
    assert (meta.digest, meta.size) == (DIGEST, 1024)
    assert [(s.path, s.name, s.is_dir) for s in staged] == [
        ("/.warren-build/copy/3/0", "app", True),
        ("/.warren-build/copy/3/1", "a.txt", False),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        _ok(digest="A" * 64),
        _ok(digest="a" * 63),
        _ok(size=1023),  # not the file's size
        _ok(size=True),
        _ok(size=2 << 20),  # past the layer limit
        _ok(sources=[]),
        _ok(sources=[["../etc", False]]),
        _ok(sources=[[".."], False]),
        _ok(sources=[["a/b", False]]),
        _ok(sources=[["", True]]),
        _ok(sources=[["a\x00", True]]),
        _ok(sources=[["a", 1]]),
        _ok(sources=[["a", True, "x"]]),
    ],
)
def test_a_hostile_answer_is_refused(tmp_path: Path, answer: Any) -> None:
    out = _layer(tmp_path)
    with pytest.raises(ValueError):
        cc.staged_from_json(answer, out, 1, 2 << 20 if answer is None else 1 << 20)


def test_a_layer_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(bytes(1024))
    os.symlink(tmp_path / "elsewhere", tmp_path / "staging.tar")
    with pytest.raises(ValueError, match="staging file"):
        cc.staged_from_json(_ok(), tmp_path / "staging.tar", 1, 1 << 20)


def test_refusals_are_the_errors_they_were() -> None:
    assert isinstance(cc.refusal({"kind": "invalid", "message": "m"}), InvalidRequest)
    assert isinstance(cc.refusal({"kind": "too_large", "message": "m"}), PayloadTooLarge)
    for bad in (
        {"kind": "internal", "message": "m"},
        {"kind": "invalid", "message": "\ud800"},
        {"kind": "invalid"},
    ):
        with pytest.raises(ValueError):
            cc.refusal(bad)


@pytest.mark.parametrize(
    ("status", "out", "error"),
    [
        (0, {"error": {"kind": "invalid", "message": "line 2: COPY x: not found"}}, InvalidRequest),
        (0, {"internal": "OSError: boom"}, InternalError),
        (0, {"error": {"kind": "nope", "message": "m"}}, InternalError),
        (0, {"ok": {"entries": -1}}, InternalError),
        (-9, {}, InternalError),  # killed (its memory, a cancel)
    ],
)
async def test_what_the_child_says(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, status: int, out: dict[str, Any], error: type[Exception]
) -> None:
    async def fake(team: object, argv: list[str], *, max_output: int) -> ChildExit:
        return ChildExit(status, json.dumps(out).encode(), b"")

    monkeypatch.setattr(tenant_threads, "run_child", fake)
    with pytest.raises(error):
        await cc.check_index("team", tmp_path / "c.tar")


def _run(*args: str) -> dict[str, Any]:
    """The child as the CP runs it (its own process: it sets its rlimit and nice)."""
    argv = [sys.executable, "-m", "warren.cp.services.context_child", args[0], str(os.getpid()), *args[1:]]
    got: dict[str, Any] = json.loads(subprocess.run(argv, capture_output=True, check=True).stdout)
    return got


def test_the_child_indexes_and_stages(tmp_path: Path) -> None:
    context = tmp_path / "c.tar"
    with tarfile.open(context, "w") as t:
        info = tarfile.TarInfo("app/main.py")
        info.size = 3
        t.addfile(info, io.BytesIO(b"hi\n"))
    (tmp_path / "no.tar").write_bytes(b"no tar at all" * 100)
    assert _run("index", str(context)) == {"ok": {"entries": 1}}
    refused = _run("index", str(tmp_path / "no.tar"))["error"]
    assert refused["kind"] == "invalid" and refused["message"].startswith(
        "the build context is not a tar file"
    )
    step = parse("FROM minimal\nCOPY app /srv/\n").steps[1]
    assert isinstance(step, CopyStep)
    request, out = tmp_path / "request.json", tmp_path / "staging.tar"
    request.write_text(json.dumps({"line": step.line, "sources": list(step.sources)}))
    answer = _run("stage", str(context), str(request), str(out), "4", str(1 << 20))["ok"]
    _meta, staged = cc.staged_from_json(answer, out, 4, 1 << 20)
    assert [(s.path, s.name, s.is_dir) for s in staged] == [("/.warren-build/copy/4/0", "app", True)]
    with tarfile.open(out) as t:
        assert ".warren-build/copy/4/0/main.py" in t.getnames()
    refused = _run("stage", str(context), str(request), str(out), "4", "100")["error"]
    assert refused == {
        "kind": "too_large",
        "message": "the COPY step's files are past a layer's limit of 0 MiB",
    }


LINKS = 8000  # a 1 MiB file and its links: 8 GiB of staging, many seconds to write


def test_the_child_dies_with_the_control_plane(tmp_path: Path) -> None:
    """A CP killed outright (here: a parent that exits while its child stages) takes its child
    with it, which would otherwise go on writing for nobody. The parent stops the child mid-
    staging before it exits: without the death signal the child stays, stopped, whatever the
    machine's load; with it the kernel's SIGKILL ends it."""
    context = tmp_path / "c.tar"
    with tarfile.open(context, "w") as t:
        blob = tarfile.TarInfo("d/blob")
        blob.size = 1 << 20
        t.addfile(blob, io.BytesIO(bytes(blob.size)))
        for i in range(LINKS):
            link = tarfile.TarInfo(f"d/l{i}")
            link.type, link.linkname = tarfile.LNKTYPE, "d/blob"
            t.addfile(link)
    request, out = tmp_path / "request.json", tmp_path / "staging.tar"
    request.write_text(json.dumps({"line": 2, "sources": ["d"]}))
    args = ["stage", "{pid}", str(context), str(request), str(out), "1", str(16 << 30)]
    with orphan.orphaned("warren.cp.services.context_child", args, out, min_size=8 << 20) as child:
        assert orphan.ends(child), "the child outlived its parent (it would go on staging)"
