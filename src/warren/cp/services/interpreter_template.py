"""The ``code-interpreter-v1`` template (docs/e2b.md §4): its Warrenfile
(``cp/templates/code-interpreter-v1.Warrenfile``) and the build context it needs.

The context holds the interpreter server's sources (``src/warren/interpreter/``, ``.py`` files
only), ``requirements.txt`` (pinned: :data:`REQUIREMENTS`) and the wheels they resolve to for the
sandbox's Python (Debian bookworm's CPython 3.11, glibc 2.36, the host's architecture). The
wheels are downloaded **on this machine** by its own pip, with whatever index, proxy and
certificates it is configured with, so the build sandbox needs no network and no pip: the
Warrenfile runs pip from its own wheel.

Two ways to use it: :func:`write_context_dir` for ``warren template build`` (a directory, the
Warrenfile inside), and :func:`context_tar` for the platform build at start
(``WARREN_BUILD_INTERPRETER_TEMPLATE``, ``services/platform_templates.py``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from warren.cp.services import platform_templates
from warren.cp.services.template_builds import BuildRunner
from warren.errors import InternalError

log = logging.getLogger("warren.platform_templates")

NAME = "code-interpreter-v1"
SPEC = Path(__file__).resolve().parent.parent / "templates" / f"{NAME}.Warrenfile"
PACKAGE = Path(__file__).resolve().parents[2] / "interpreter"
# The same versions as the dev dependencies the server's unit tests run on (pyproject.toml).
REQUIREMENTS = ("pip==26.3", "jupyter_client==8.10.0", "ipykernel==7.4.0", "matplotlib==3.11.2")
SANDBOX_PYTHON = "3.11"
SANDBOX_GLIBC = 36  # glibc 2.36
DOWNLOAD_TIMEOUT_S = 900.0


def server_files() -> list[Path]:
    """The server's sources, in name order."""
    return sorted(p for p in PACKAGE.iterdir() if p.suffix == ".py" and p.is_file())


def requirements_text() -> str:
    return "".join(r + "\n" for r in REQUIREMENTS)


def sources_digest() -> str:
    """sha256 over what the context holds besides the wheels (which the pins decide)."""
    h = hashlib.sha256(requirements_text().encode())
    for p in server_files():
        h.update(b"\0" + p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def spec_text() -> str:
    """The Warrenfile, with the sources' digest in a comment: a platform build skips a spec it
    already built, so the spec must change when the server does."""
    return f"# sources sha256 {sources_digest()}\n" + SPEC.read_text()


def platform_tags(machine: str) -> list[str]:
    """Every manylinux tag the sandbox's glibc runs (pip expands none of them itself)."""
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(SANDBOX_GLIBC, 4, -1)]
    return [*tags, f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]


def download_wheels(dest: Path, *, arch: str | None = None) -> None:
    """The wheels of :data:`REQUIREMENTS` (with their dependencies) for the sandbox's Python."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--implementation", "cp", "--python-version", SANDBOX_PYTHON,
        *(a for tag in platform_tags(arch or platform.machine()) for a in ("--platform", tag)),
        "--dest", str(dest), *REQUIREMENTS,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip download failed: {done.stderr.strip()[-2000:]}")


def write_context_dir(dest: Path, *, wheels: Path | None = None) -> Path:
    """A build context in ``dest`` (made if missing): ``Warrenfile``, ``requirements.txt``,
    ``interpreter/``, ``wheels/`` (copied from ``wheels`` when given, else downloaded).

    Example::

        ctx = write_context_dir(Path("ctx"))
        # warren template build -n code-interpreter-v1 -f ctx/Warrenfile ctx
    """
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "Warrenfile").write_text(spec_text())
    (dest / "requirements.txt").write_text(requirements_text())
    server = dest / "interpreter"
    shutil.rmtree(server, ignore_errors=True)
    server.mkdir()
    for p in server_files():
        shutil.copyfile(p, server / p.name)
    if wheels is not None:
        shutil.copytree(wheels, dest / "wheels", dirs_exist_ok=True)
    else:
        download_wheels(dest / "wheels")
    return dest


def _add(tar: tarfile.TarFile, name: str, path: Path) -> None:
    """One entry, root-owned, mtime 0: the same sources make the same context, so a rebuild
    hits the build cache."""
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid = 0, 0, 0
    if path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.size, info.mode = path.stat().st_size, 0o644
    with path.open("rb") as f:
        tar.addfile(info, f)


def context_tar(context_dir: Path) -> tuple[Path, str]:
    """The context directory (as :func:`write_context_dir` makes it, the Warrenfile aside) as a
    tar in a temporary file, and the tar's sha256: what a build takes as its context."""
    fd, name = tempfile.mkstemp(prefix="warren-interpreter-ctx-", suffix=".tar")
    path = Path(name)
    h = hashlib.sha256()
    try:
        with open(fd, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "requirements.txt", context_dir / "requirements.txt")
            for d in ("interpreter", "wheels"):
                _add(tar, d, context_dir / d)
                for p in sorted((context_dir / d).iterdir()):
                    _add(tar, f"{d}/{p.name}", p)
        with path.open("rb") as r:
            while chunk := r.read(1 << 20):
                h.update(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, h.hexdigest()


async def make_context() -> tuple[Path, str]:
    """A fresh build context tar (wheels downloaded now), for the platform build."""
    with tempfile.TemporaryDirectory(prefix="warren-interpreter-") as tmp:
        try:
            await asyncio.to_thread(write_context_dir, Path(tmp))
            return await asyncio.to_thread(context_tar, Path(tmp))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            raise InternalError(f"the code interpreter's build context: {e}", code="context_failed") from e


def interpreter_template(engine: AsyncEngine, runner: BuildRunner) -> platform_templates.PlatformTemplate:
    """The background task that builds the platform's ``code-interpreter-v1`` when its spec or
    server changed (``WARREN_BUILD_INTERPRETER_TEMPLATE``; the rules are ``base``'s:
    ``platform_templates.ensure``)."""
    return platform_templates.PlatformTemplate(engine, runner, NAME, spec_text, make_context)
