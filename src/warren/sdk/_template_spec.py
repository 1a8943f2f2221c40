"""The template builder's pure half: a chain of calls → the Warrenfile text it stands for, and
the local files its ``COPY`` steps name → one build-context tar.

The text is what a person would write by hand (``FROM minimal``, ``RUN apt-get …``,
``ENV A="b c"``, ``COPY f.txt /srv/f.txt``), so the builder and the equivalent hand-written spec
parse to the same steps, hence the same cache keys and the same layers. Quoting follows the
Warrenfile's (Docker's) word rules: shell commands are quoted with :mod:`shlex` for the shell
that runs them; ENV values, ARG defaults and paths are bare when they are plain words, else a
double-quoted string (JSON-style, with ``$`` escaped too, since the Warrenfile substitutes
variables). Every instruction is one line: a value that would split or continue a line is
refused here, with the call that made it, rather than by the server as a confusing parse error.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import stat
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Self

__all__ = ["CopySource", "TemplateSpec", "quote_word", "write_context"]

# Characters str.splitlines() breaks on (the server splits the spec with it), and NUL.
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\x00]")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_./:,+=@%-]+$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
_APT_PACKAGE = re.compile(r"^[A-Za-z0-9][^\s]*$")

Command = str | Sequence[str]


def _one_line(what: str, value: str) -> str:
    if _LINE_BREAKS.search(value):
        raise ValueError(f"{what}: {value[:60]!r} has a line break or NUL; each instruction is one line")
    return value


def quote_word(value: str) -> str:
    """``value`` as one Warrenfile word: bare when plain, else ``"…"`` with ``\\``, ``"`` and
    ``$`` escaped (the parser would substitute ``$NAME``)."""
    if _SAFE_WORD.match(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def _shell(what: str, cmd: Command) -> str:
    """A command for ``/bin/sh -c``: a string as it is, a list shell-quoted word by word."""
    if isinstance(cmd, str):
        text = _one_line(what, cmd).strip()
    else:
        words = list(cmd)
        if not words or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{what}: a command list must be non-empty strings")
        text = shlex.join(words)
    if not text:
        raise ValueError(f"{what}: the command is empty")
    _one_line(what, text)
    if text.endswith("\\"):
        raise ValueError(f"{what}: a command may not end with a backslash (it would continue the line)")
    if text.startswith("--"):
        raise ValueError(f"{what}: a command may not start with '--' (it reads as an option)")
    if text.startswith("["):
        try:
            json.loads(text)
        except ValueError:
            pass
        else:  # the parser would take it for the exec form `["cmd", "arg"]`
            raise ValueError(f"{what}: {text[:60]!r} reads as a JSON exec form; pass a list instead")
    return text


def _packages(what: str, pkgs: str | Iterable[str], pattern: re.Pattern[str] | None = None) -> str:
    """Package names shell-quoted; an option (``-…``) is refused, so a name is never one."""
    names = [pkgs] if isinstance(pkgs, str) else list(pkgs)
    if not names:
        raise ValueError(f"{what}: no packages given")
    for name in names:
        if not isinstance(name, str) or not name.strip() or name.startswith("-"):
            raise ValueError(f"{what}: {name!r} is not a package (options are not accepted)")
        if pattern is not None and not pattern.match(name):
            raise ValueError(f"{what}: {name!r} is not a package name")
        _one_line(what, name)
    return " ".join(shlex.quote(n) for n in names)


@dataclass(frozen=True)
class CopySource:
    """A local file or directory that goes into the build context as ``arcname``."""

    local: Path
    arcname: str


@dataclass(frozen=True)
class _State:
    lines: tuple[str, ...] = ()
    copies: tuple[CopySource, ...] = ()
    has_from: bool = False
    context_dir: Path | None = None


class TemplateSpec:
    """The chainable builder. Each call returns a new builder (the old one is unchanged), so a
    common prefix can be shared::

        base = Template().from_template("minimal").apt_install(["curl"])
        web = base.copy("./site", "/srv/site").start_cmd("python3 -m http.server 8000",
                                                         ready="curl -sf localhost:8000")
        print(web.to_warrenfile())
    """

    def __init__(self) -> None:
        self._state = _State()

    @classmethod
    def from_warrenfile(cls, text: str, context_dir: str | os.PathLike[str] | None = None) -> Self:
        """A builder that stands for a hand-written Warrenfile (sent as it is) and the directory
        its ``COPY`` sources are relative to. More calls append instructions.

        Example::

            Template.from_warrenfile(Path("Warrenfile").read_text(), context_dir=".").build("app")
        """
        new = cls()
        lines = tuple(text.splitlines())
        ctx = Path(context_dir) if context_dir is not None else None
        if ctx is not None and not ctx.is_dir():
            raise ValueError(f"context_dir {ctx}: not a directory")
        new._state = _State(lines=lines, has_from=True, context_dir=ctx)
        return new

    def _add(self, line: str, copy: CopySource | None = None) -> Self:
        if not self._state.has_from:
            raise ValueError("start with from_template(...) or from_debian(...)")
        return self._with(replace(self._state, lines=(*self._state.lines, line)), copy)

    def _with(self, state: _State, copy: CopySource | None = None) -> Self:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        if copy is not None:
            state = replace(state, copies=(*state.copies, copy))
        new._state = state
        return new

    # ------------------------------------------------------------------------------- FROM

    def from_template(self, name: str) -> Self:
        """Start from a template or snapshot the team can see: ``minimal``, ``base``, ``my-env``
        or ``my-env:v2`` (a tag)."""
        if self._state.has_from:
            raise ValueError("the template already has a FROM (one base per template)")
        if not _TEMPLATE_REF.match(name):
            raise ValueError(f"from_template: {name!r} is not a template name[:tag]")
        return self._with(replace(self._state, lines=(f"FROM {name}",), has_from=True))

    def from_debian(self, suite: str = "bookworm") -> Self:
        """Start from a fresh Debian (debootstrapped by the build), e.g. ``bookworm``."""
        if not re.match(r"^[a-z]+$", suite):
            raise ValueError(f"from_debian: {suite!r} is not a Debian suite name")
        return self.from_template(f"debian:{suite}")

    # ----------------------------------------------------------------------- layer steps

    def run(self, cmd: Command) -> Self:
        """A ``RUN`` step: a string runs through ``/bin/sh -c`` as it is; a list is one argv,
        shell-quoted."""
        return self._add(f"RUN {_shell('run', cmd)}")

    def apt_install(self, packages: str | Iterable[str]) -> Self:
        """Install Debian packages in one ``RUN`` (update, install without recommends, clean)."""
        names = _packages("apt_install", packages, _APT_PACKAGE)
        return self._add(
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {names} && rm -rf /var/lib/apt/lists/*"
        )

    def pip_install(self, packages: str | Iterable[str]) -> Self:
        """Install Python packages in one ``RUN pip install --no-cache-dir …`` (version specs
        such as ``"requests>=2.31"`` are quoted)."""
        return self._add(f"RUN pip install --no-cache-dir {_packages('pip_install', packages)}")

    def copy(self, local: str | os.PathLike[str], remote: str) -> Self:
        """A ``COPY`` of a local file or directory (its contents, like Docker) to ``remote``
        (relative to the current ``workdir``; a trailing ``/`` means "into this directory").
        The files go into the build context under their own name (``name-2`` and so on when
        two differ), read when the build starts."""
        path = Path(local)
        if not path.exists() and not path.is_symlink():
            raise ValueError(f"copy: {path}: no such file or directory")
        _one_line("copy", remote)
        if not remote.strip():
            raise ValueError("copy: the destination is empty")
        source = self._copy_source(path)
        text = f"COPY {quote_word(source.arcname)} {quote_word(remote)}"
        known = source in self._state.copies
        return self._add(text, None if known else source)

    def _copy_source(self, path: Path) -> CopySource:
        resolved = path.absolute()
        taken = {c.arcname: c for c in self._state.copies}
        for c in self._state.copies:
            if c.local == resolved:
                return c
        base = _one_line("copy", resolved.name or "root")
        stem, dot, ext = base.partition(".") if not base.startswith(".") else (base, "", "")
        arcname, n = base, 1
        while arcname in taken or self._in_context_dir(arcname):
            n += 1
            arcname = f"{stem}-{n}{dot}{ext}"
        if arcname.startswith("-"):
            arcname = "./" + arcname  # never read as a COPY option
        return CopySource(resolved, arcname)

    def _in_context_dir(self, arcname: str) -> bool:
        ctx = self._state.context_dir
        return ctx is not None and (ctx / arcname).exists()

    def workdir(self, path: str) -> Self:
        """``WORKDIR``: created if missing; later relative paths, commands and every sandbox of
        the template start there."""
        if not path.strip():
            raise ValueError("workdir: the path is empty")
        return self._add(f"WORKDIR {quote_word(_one_line('workdir', path))}")

    # ---------------------------------------------------------------------- config steps

    def env(self, values: Mapping[str, str]) -> Self:
        """``ENV``: set for the following steps and for every sandbox of the template."""
        if not values:
            raise ValueError("env: no variables given")
        pairs = []
        for key, value in values.items():
            if not isinstance(key, str) or not _NAME.match(key):
                raise ValueError(f"env: {key!r} is not a variable name")
            if not isinstance(value, str):
                raise ValueError(f"env: the value of {key} must be a string")
            pairs.append(f"{key}={quote_word(_one_line(f'env {key}', value))}")
        return self._add("ENV " + " ".join(pairs))

    def arg(self, name: str, default: str | None = None) -> Self:
        """``ARG``: a build argument (``build(..., build_args={name: value})``), visible to the
        following steps; not kept in the template."""
        if not _NAME.match(name):
            raise ValueError(f"arg: {name!r} is not a variable name")
        if default is None:
            return self._add(f"ARG {name}")
        return self._add(f"ARG {name}={quote_word(_one_line(f'arg {name}', default))}")

    def user(self, name: str) -> Self:
        """``USER``: the user the following ``RUN`` steps, the start command and (by default)
        every exec of the template's sandboxes run as (``name`` or ``name:group``)."""
        if not _USER.match(name):
            raise ValueError(f"user: {name!r} is not a user name or uid")
        return self._add(f"USER {name}")

    def start_cmd(
        self, cmd: Command, ready: Command | None = None, *, ready_timeout: int | None = None
    ) -> Self:
        """``START`` (and ``READY``): a command every sandbox of the template starts at boot,
        and a check create runs until it exits 0 (every 100 ms, up to ``ready_timeout`` seconds,
        60 by default) before it hands the sandbox out.

        Example::

            .start_cmd("python3 -m http.server 8000", ready="curl -sf localhost:8000")
        """
        new = self._add(f"START {_shell('start_cmd', cmd)}")
        if ready is None:
            if ready_timeout is not None:
                raise ValueError("start_cmd: ready_timeout needs a ready command")
            return new
        flag = ""
        if ready_timeout is not None:
            if isinstance(ready_timeout, bool) or not isinstance(ready_timeout, int) or ready_timeout < 1:
                raise ValueError("start_cmd: ready_timeout must be a positive number of seconds")
            flag = f"--timeout={ready_timeout} "
        return new._add(f"READY {flag}{_shell('ready', ready)}")

    # ---------------------------------------------------------------------------- output

    def to_warrenfile(self) -> str:
        """The Warrenfile this builder stands for, exactly as it is sent."""
        if not self._state.has_from:
            raise ValueError("start with from_template(...) or from_debian(...)")
        return "\n".join(self._state.lines) + "\n"

    @property
    def context_sources(self) -> tuple[CopySource, ...]:
        """What goes into the build context: the local files ``copy`` named."""
        return self._state.copies

    @property
    def context_dir(self) -> Path | None:
        return self._state.context_dir

    def needs_context(self) -> bool:
        return bool(self._state.copies) or self._state.context_dir is not None

    def write_context(self, out: IO[bytes]) -> None:
        """The build context as an uncompressed tar, written to ``out``."""
        write_context(out, self._state.context_dir, self._state.copies)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._state.lines)} instructions>"


# ---------------------------------------------------------------------------- context tar


def _tarinfo(path: Path, arcname: str) -> tarfile.TarInfo | None:
    """A tar entry with the file's mode and mtime, owned by root (never the local uid): the
    same file gives the same entry wherever the context is made (SDK or CLI)."""
    st = path.lstat()
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(path)
    elif stat.S_ISREG(st.st_mode):
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    else:
        return None  # sockets, fifos and devices have no place in a template
    return info


def _add_tree(tar: tarfile.TarFile, root: Path, arcname: str) -> None:
    """``root`` (a file, symlink or directory) as ``arcname``, a directory's entries sorted.
    Symlinks are stored as links, never followed (like Docker)."""
    entries = [(root, arcname)]
    while entries:
        path, name = entries.pop()
        info = _tarinfo(path, name)
        if info is None:
            continue
        if name:  # the context directory's root itself has no entry
            if info.type == tarfile.REGTYPE:
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        if info.type == tarfile.DIRTYPE:
            children = sorted(os.listdir(path), reverse=True)  # popped in sorted order
            entries.extend((path / c, posixpath.join(name, c) if name else c) for c in children)


def write_context(out: IO[bytes], context_dir: Path | None, copies: Sequence[CopySource]) -> None:
    """A build-context tar: ``context_dir``'s contents at the root, then each copied source
    under its ``arcname``."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        if context_dir is not None:
            _add_tree(tar, context_dir, "")
        for c in copies:
            _add_tree(tar, c.local, c.arcname.removeprefix("./"))
