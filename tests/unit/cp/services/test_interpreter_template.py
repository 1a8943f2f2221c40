"""The ``code-interpreter-v1`` template's spec and build context (docs/e2b.md §4)."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from warren.cp.services import interpreter_template as it
from warren.cp.services.template_spec import parse


def _wheels(tmp: Path) -> Path:
    d = tmp / "cache"
    d.mkdir()
    (d / "pip-1-py3-none-any.whl").write_bytes(b"not really a wheel")
    return d


def test_the_spec_parses_to_the_server_on_its_port() -> None:
    text = it.spec_text()
    assert text.startswith(f"# sources sha256 {it.sources_digest()}\n")
    spec = parse(text, {})
    assert (spec.config.user, spec.config.workdir) == ("user", "/home/user")
    assert "python -m warren.interpreter" in spec.config.start_cmd and "--port 49999" in spec.config.start_cmd
    assert "49999/health" in spec.config.ready_cmd
    assert spec.config.env["PATH"].startswith("/opt/warren/venv/bin:")


def test_context_dir_and_tar(tmp_path: Path) -> None:
    ctx = it.write_context_dir(tmp_path / "ctx", wheels=_wheels(tmp_path))
    assert (ctx / "Warrenfile").read_text() == it.spec_text()
    assert (ctx / "requirements.txt").read_text().splitlines() == list(it.REQUIREMENTS)
    assert sorted(p.name for p in (ctx / "interpreter").iterdir()) == [p.name for p in it.server_files()]
    assert "__main__.py" in {p.name for p in it.server_files()}
    path, digest = it.context_tar(ctx)
    try:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert all(m.uid == 0 and m.mtime == 0 for m in tar.getmembers())
        assert "Warrenfile" not in names
        assert {"requirements.txt", "wheels/pip-1-py3-none-any.whl", "interpreter/server.py"} <= set(names)
        again, digest2 = it.context_tar(ctx)  # the same sources: the same context (build cache hits)
        again.unlink()
        assert digest2 == digest
    finally:
        path.unlink()


def test_wheels_for_every_manylinux_the_sandbox_runs() -> None:
    tags = it.platform_tags("x86_64")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(tags)
    assert "manylinux_2_37_x86_64" not in tags
