"""Client commands of the ``warren`` CLI: login, sandboxes, files, snapshots, hosts, API keys.

Everything goes through the public REST API (sandbox work through the Python SDK), with the URL
and credentials from the options, ``WARREN_URL`` / ``WARREN_API_KEY`` / ``WARREN_ACCESS_TOKEN``,
or the file written by ``warren login``. Every listing takes ``--json`` for scripts; errors are
one line on stderr and exit code 1; ``sandbox exec`` exits with the command's own exit code.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from warren.sdk import Sandbox, WarrenError
from warren.sdk._config import DEFAULT_URL, ConnectionConfig, config_path, load_config_file
from warren.sdk._exceptions import error_from_response

__all__ = ["file_app", "host_app", "key_app", "login", "sandbox_app", "snapshot_app"]

out = Console()
err = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SandboxArg = Annotated[str, typer.Argument(help="Sandbox ID (sb-…).", show_default=False)]


# ------------------------------------------------------------------------------------ helpers


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]Error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """One readable line for every API error instead of a traceback."""
    try:
        yield
    except WarrenError as e:
        _fail(str(e).replace("[", "\\["))


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        raw = getattr(obj, "raw", None)
        if isinstance(raw, dict) and raw:
            return raw
        return {k: _jsonable(v) for k, v in asdict(obj).items() if k != "raw"}
    if isinstance(obj, list):
        return [_jsonable(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return obj.strftime("%Y-%m-%dT%H:%M:%SZ")
    return obj


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(obj), indent=2, ensure_ascii=False) + "\n")


def _ts(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.replace("T", " ").rstrip("Z")
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _api(*, user: bool = False) -> ConnectionConfig:
    cfg = ConnectionConfig.resolve()
    if user:
        # Hosts and API keys are account-level: they need a user token, not an API key.
        cfg = ConnectionConfig(url=cfg.url, access_token=_user_token(), request_timeout=cfg.request_timeout)
    elif not cfg.api_key and not cfg.access_token:
        _fail("not logged in: run `warren login` or set WARREN_API_KEY")
    return cfg


def _user_token() -> str:
    token = os.environ.get("WARREN_ACCESS_TOKEN") or load_config_file().get("token")
    if not token:
        _fail("this command needs a user login: run `warren login --email …` (API keys are not enough)")
    return str(token)


def _rest(method: str, path: str, *, user: bool = False, **kwargs: Any) -> Any:
    """One REST call; errors become the SDK's typed exceptions."""
    cfg = _api(user=user)
    try:
        r = httpx.request(
            method, cfg.url + path, headers=cfg.auth_headers(), timeout=cfg.request_timeout, **kwargs
        )
    except httpx.HTTPError as e:
        _fail(f"cannot reach Warren at {cfg.url}: {e}")
    if r.status_code >= 400:
        raise error_from_response(r.status_code, r.content)
    return r.json() if r.content else None


def _connect(sandbox_id: str) -> Sandbox:
    cfg = _api()
    # The CLI never resumes behind the user's back: a paused sandbox answers 409.
    return Sandbox.connect(
        sandbox_id, resume=False, url=cfg.url, api_key=cfg.api_key, access_token=cfg.access_token
    )


def _table(*columns: str) -> Table:
    """A borderless table whose ID / NAME columns are never cut, however narrow the terminal:
    people copy them into the next command."""
    t = Table(box=None, header_style="bold")
    for col in columns:
        if col in ("ID", "NAME", "PATH", "STATUS"):
            t.add_column(col, no_wrap=True, min_width=28 if col == "ID" else None)
        else:
            t.add_column(col, justify="right" if col == "SIZE" else "left")
    return t


def _sandbox_table(rows: list[dict[str, Any]]) -> Table:
    t = _table("ID", "STATUS", "TEMPLATE", "VCPUS", "MEMORY", "TIMEOUT", "CREATED")
    colors = {"running": "green", "paused": "yellow", "stopped": "dim", "error": "red", "missing": "red"}
    for r in rows:
        status = r.get("status", "")
        t.add_row(
            r["id"],
            f"[{colors.get(status, 'white')}]{status}[/]",
            r.get("template", ""),
            str(r.get("vcpus", "")),
            f"{r.get('memory_mb', '')} MB",
            f"{r.get('timeout_sec')} s" if r.get("timeout_sec") else "none",
            _ts(r.get("created_at")),
        )
    return t


# -------------------------------------------------------------------------------------- login


def login(
    url: Annotated[str, typer.Option(help="Control plane URL.", envvar="WARREN_URL")] = DEFAULT_URL,
    api_key: Annotated[str | None, typer.Option("--api-key", help="Store this API key (wrn_…).")] = None,
    email: Annotated[str | None, typer.Option(help="Log in with email and password.")] = None,
    password: Annotated[
        str | None, typer.Option(help="Password (prompted when omitted).", envvar="WARREN_PASSWORD")
    ] = None,
    key_name: Annotated[
        str, typer.Option(help="Name of the API key created for this machine.")
    ] = "warren-cli",
    json_out: JsonOpt = False,
) -> None:
    """Save the URL and credentials in ~/.config/warren/config.json (mode 0600).

    With --email the CLI logs in, keeps the user token (needed for hosts and API keys) and
    creates an API key for sandbox work. With --api-key it just stores the key.

    Examples:

        warren login --url https://warren.example.com --email me@example.com

        warren login --api-key wrn_0123…
    """
    url = url.rstrip("/")
    data: dict[str, Any] = {"url": url}
    if email:
        if password is None:
            password = getpass.getpass("Password: ")
        try:
            r = httpx.post(f"{url}/v1/auth/login", json={"email": email, "password": password}, timeout=30)
        except httpx.HTTPError as e:
            _fail(f"cannot reach Warren at {url}: {e}")
        if r.status_code >= 400:
            with _errors():
                raise error_from_response(r.status_code, r.content)
        auth = r.json()
        data.update(token=auth["token"], email=auth["email"], team_id=auth["team_id"])
        if not api_key:
            k = httpx.post(
                f"{url}/v1/api-keys",
                json={"name": key_name},
                headers={"Authorization": f"Bearer {auth['token']}"},
                timeout=30,
            )
            if k.status_code >= 400:
                with _errors():
                    raise error_from_response(k.status_code, k.content)
            api_key = k.json()["key"]
    elif not api_key:
        _fail("give --email (and a password) or --api-key")
    data["api_key"] = api_key
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(path, 0o600)
    if json_out:
        _print_json({"url": url, "config": str(path), "email": data.get("email")})
    else:
        who = f" as {data['email']}" if data.get("email") else ""
        out.print(f"Logged in to {url}{who}. Credentials saved in {path}")


# ----------------------------------------------------------------------------------- sandbox

sandbox_app = typer.Typer(
    name="sandbox",
    help="Create, inspect and drive sandboxes.\n\nExample: warren sandbox create --template minimal",
    no_args_is_help=True,
)


@sandbox_app.command("create")
def sandbox_create(
    template: Annotated[str, typer.Option(help="Template or snapshot name.")] = "minimal",
    vcpus: Annotated[int | None, typer.Option(help="vCPUs (a snapshot keeps its own).")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory in MB (a snapshot keeps its own).")] = None,
    timeout: Annotated[int, typer.Option(help="Seconds of inactivity before auto-pause; 0 = never.")] = 0,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")] = None,
    internet: Annotated[bool, typer.Option(help="Allow outbound network access.")] = True,
    json_out: JsonOpt = False,
) -> None:
    """Start a sandbox.

    Example: warren sandbox create --template my-snapshot -e DEBUG=1
    """
    envs = {}
    for item in env or []:
        if "=" not in item:
            _fail(f"--env wants KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        envs[k] = v
    cfg = _api()
    with _errors():
        sbx = Sandbox.create(
            template,
            timeout=timeout or None,
            vcpus=vcpus,
            memory_mb=memory_mb,
            envs=envs or None,
            internet=internet,
            url=cfg.url,
            api_key=cfg.api_key,
            access_token=cfg.access_token,
        )
        sbx.close()
    if json_out:
        _print_json(sbx.info)
    else:
        out.print(sbx.id)


@sandbox_app.command("list")
def sandbox_list(json_out: JsonOpt = False) -> None:
    """List the team's sandboxes (stopped ones are hidden)."""
    with _errors():
        rows = _rest("GET", "/v1/sandboxes")
    if json_out:
        _print_json(rows)
    elif not rows:
        out.print("No sandboxes.")
    else:
        out.print(_sandbox_table(rows))


@sandbox_app.command("get")
def sandbox_get(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Show one sandbox (in any status)."""
    with _errors():
        row = _rest("GET", f"/v1/sandboxes/{sandbox_id}")
    if json_out:
        _print_json(row)
    else:
        out.print(_sandbox_table([row]))


@sandbox_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sandbox_exec(
    sandbox_id: SandboxArg,
    command: Annotated[list[str], typer.Argument(help="A shell command line, or argv after --.")],
    timeout: Annotated[float, typer.Option(help="Seconds before the command is killed; 0 = none.")] = 60,
    cwd: Annotated[str | None, typer.Option(help="Working directory.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE, repeatable.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a command and exit with its exit code. Output streams as it is produced.

    One argument runs through /bin/sh -c; several are run as argv without a shell.

    Examples:

        warren sandbox exec sb-… 'ls -la /tmp | head'

        warren sandbox exec sb-… -- python3 -c 'print(1)'
    """
    envs = dict(item.split("=", 1) for item in env or [] if "=" in item)
    cmd: str | list[str] = command[0] if len(command) == 1 else command
    with _errors():
        sbx = _connect(sandbox_id)
        try:
            if json_out:
                r = sbx.commands.run(cmd, timeout=timeout or None, cwd=cwd, envs=envs)
                _print_json(
                    {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "error": r.error}
                )
            else:
                r = sbx.commands.run(
                    cmd,
                    timeout=timeout or None,
                    cwd=cwd,
                    envs=envs,
                    on_stdout=lambda s: (sys.stdout.write(s), sys.stdout.flush()),
                    on_stderr=lambda s: (sys.stderr.write(s), sys.stderr.flush()),
                )
                if r.error:
                    err.print(f"[yellow]{r.error}[/yellow]")
        finally:
            sbx.close()
    raise typer.Exit(r.exit_code if 0 <= r.exit_code < 256 else 1)


def _lifecycle(verb: str, sandbox_id: str, json_out: bool) -> None:
    with _errors():
        if verb == "kill":
            _rest("DELETE", f"/v1/sandboxes/{sandbox_id}")
            row: Any = {"id": sandbox_id, "status": "stopped"}
        else:
            row = _rest("POST", f"/v1/sandboxes/{sandbox_id}/{verb}")
    if json_out:
        _print_json(row)
    else:
        out.print(f"{sandbox_id}: {row['status']}")


@sandbox_app.command("kill")
def sandbox_kill(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Destroy a sandbox."""
    _lifecycle("kill", sandbox_id, json_out)


@sandbox_app.command("pause")
def sandbox_pause(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Pause (freeze) a running sandbox; memory is kept."""
    _lifecycle("pause", sandbox_id, json_out)


@sandbox_app.command("resume")
def sandbox_resume(sandbox_id: SandboxArg, json_out: JsonOpt = False) -> None:
    """Resume a paused sandbox."""
    _lifecycle("resume", sandbox_id, json_out)


# A real terminal inside the sandbox: python's pty module gives the shell a tty (echo, line
# editing, job control, Ctrl-C), so the local side can pass raw keystrokes straight through.
_PTY_SHELL = r"""
import os, pty, sys
os.environ.setdefault("TERM", os.environ.get("WARREN_TERM") or "xterm-256color")
shell = "exec bash -l" if os.path.exists("/bin/bash") else "exec sh -l"
st = pty.spawn(["/bin/sh", "-c", "stty rows %s cols %s 2>/dev/null; " + shell])
sys.exit(os.waitstatus_to_exitcode(st) if st > 255 or st < 0 else st)
"""


@sandbox_app.command("shell")
def sandbox_shell(sandbox_id: SandboxArg) -> None:
    """Open an interactive shell in the sandbox (a terminal over the exec stream).

    Example: warren sandbox shell sb-…   (exit the shell, or Ctrl-D, to leave)
    """
    import shutil

    cols, rows = shutil.get_terminal_size((80, 24))
    script = _PTY_SHELL % (rows, cols)
    is_tty = sys.stdin.isatty()
    with _errors():
        sbx = _connect(sandbox_id)
        try:
            handle = sbx.commands.run(
                ["python3", "-c", script],
                background=True,
                stdin=True,
                timeout=None,
                envs={"WARREN_TERM": os.environ.get("TERM", "xterm-256color")},
                on_stdout=lambda s: (sys.stdout.write(s), sys.stdout.flush()),
                on_stderr=lambda s: (sys.stderr.write(s), sys.stderr.flush()),
            )
            exit_code = _interact(handle, is_tty)
        finally:
            sbx.close()
    raise typer.Exit(exit_code if 0 <= exit_code < 256 else 1)


def _interact(handle: Any, is_tty: bool) -> int:
    """Raw local terminal; keystrokes go out as stdin frames; output is written as it comes."""
    fd = sys.stdin.fileno()
    saved: Any = None
    if is_tty:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setraw(fd)
    stop = threading.Event()

    def pump() -> None:
        try:
            while not stop.is_set():
                data = os.read(fd, 4096)
                if not data:
                    handle.close_stdin()
                    return
                handle.send_stdin(data)
        except (OSError, WarrenError):
            return

    reader = threading.Thread(target=pump, daemon=True, name="warren-shell-stdin")
    reader.start()
    try:
        result = handle.wait()
        return int(result.exit_code)
    finally:
        stop.set()
        if saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        with contextlib.suppress(WarrenError):
            handle.kill()


# -------------------------------------------------------------------------------------- files

file_app = typer.Typer(
    name="files",
    help="Copy files in and out of a sandbox, and list directories.\n\n"
    "Example: warren files put sb-… ./data.csv /root/data.csv",
    no_args_is_help=True,
)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
        disable=not err.is_terminal,
    )


@file_app.command("put")
def files_put(
    sandbox_id: SandboxArg,
    local: Annotated[Path, typer.Argument(help="Local file ('-' for stdin).", show_default=False)],
    remote: Annotated[str, typer.Argument(help="Absolute path in the sandbox.", show_default=False)],
) -> None:
    """Upload a file of any size (streamed, with a progress bar)."""
    with _errors():
        sbx = _connect(sandbox_id)
        try:
            if str(local) == "-":
                sbx.files.write_stream(remote, sys.stdin.buffer)
                return
            if not local.is_file():
                _fail(f"{local}: no such file")
            with _progress() as progress, local.open("rb") as f:
                task = progress.add_task(f"put {local.name}", total=local.stat().st_size)
                sbx.files.write_stream(remote, f, progress=lambda n: progress.advance(task, n))
        finally:
            sbx.close()


@file_app.command("get")
def files_get(
    sandbox_id: SandboxArg,
    remote: Annotated[str, typer.Argument(help="Path in the sandbox.", show_default=False)],
    local: Annotated[Path, typer.Argument(help="Local file ('-' for stdout).", show_default=False)],
) -> None:
    """Download a file of any size (streamed, with a progress bar). A transfer that breaks
    midway fails and leaves no partial file behind."""
    with _errors():
        sbx = _connect(sandbox_id)
        try:
            if str(local) == "-":
                for chunk in sbx.files.read_stream(remote):
                    sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                return
            size = sbx.files.get_info(remote).size
            part = local.with_name(local.name + ".part")
            try:
                with _progress() as progress, part.open("wb") as f:
                    task = progress.add_task(f"get {Path(remote).name}", total=size)
                    for chunk in sbx.files.read_stream(remote):
                        f.write(chunk)
                        progress.advance(task, len(chunk))
                part.replace(local)
            finally:
                part.unlink(missing_ok=True)
        finally:
            sbx.close()


@file_app.command("ls")
def files_ls(
    sandbox_id: SandboxArg,
    path: Annotated[str, typer.Argument(help="Directory in the sandbox.")] = "/",
    depth: Annotated[int, typer.Option(help="Levels to descend.")] = 1,
    json_out: JsonOpt = False,
) -> None:
    """List a directory."""
    with _errors():
        sbx = _connect(sandbox_id)
        try:
            entries = sbx.files.list(path, depth=depth)
        finally:
            sbx.close()
    if json_out:
        _print_json(entries)
        return
    t = _table("PERMISSIONS", "OWNER", "SIZE", "MODIFIED", "PATH")
    for e in entries:
        name = e.path + ("/" if e.is_dir else "") + (f" -> {e.symlink_target}" if e.symlink_target else "")
        t.add_row(e.permissions, e.owner, _size(e.size), _ts(e.modified_time), name)
    out.print(t)


# ---------------------------------------------------------------------------------- snapshots

snapshot_app = typer.Typer(
    name="snapshot",
    help="Save sandboxes as templates and manage them.\n\n"
    "Example: warren snapshot create sb-… --name py-ready && warren sandbox create --template py-ready",
    no_args_is_help=True,
)


@snapshot_app.command("create")
def snapshot_create(
    sandbox_id: SandboxArg,
    name: Annotated[str | None, typer.Option(help="Snapshot name (default template-<hex>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing snapshot of that name.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Snapshot a running or paused sandbox. The sandbox is left paused."""
    body: dict[str, Any] = {"sandbox_id": sandbox_id}
    if name:
        body["name"] = name
    with _errors():
        t = _rest("POST", "/v1/snapshots", json=body, params={"overwrite": "true"} if overwrite else None)
    if json_out:
        _print_json(t)
    else:
        out.print(f"{t['name']} ({t['kind']}, {_size(t['size_bytes'])})")


@snapshot_app.command("list")
def snapshot_list(
    type_: Annotated[str | None, typer.Option("--type", help="base or snapshot.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """List the team's snapshots and the platform templates."""
    with _errors():
        rows = _rest("GET", "/v1/snapshots", params={"type": type_} if type_ else None)
    if json_out:
        _print_json(rows)
        return
    t = _table("NAME", "TYPE", "KIND", "VCPUS", "MEMORY", "SIZE", "CREATED", "")
    for r in rows:
        t.add_row(
            r["name"],
            r["type"],
            r.get("kind", ""),
            str(r.get("vcpus", "")),
            f"{r['memory_mb']} MB" if r.get("memory_mb") else "",
            _size(r.get("size_bytes", 0)),
            _ts(r.get("created_at")),
            "platform" if r.get("platform") else "",
        )
    out.print(t)


@snapshot_app.command("delete")
def snapshot_delete(name: Annotated[str, typer.Argument(show_default=False)]) -> None:
    """Delete a snapshot (its files on every host, then its record)."""
    with _errors():
        _rest("DELETE", f"/v1/snapshots/{name}")
    out.print(f"deleted {name}")


# -------------------------------------------------------------------------------------- hosts

host_app = typer.Typer(
    name="host",
    help="Register and manage hosts (needs `warren login --email`).\n\n"
    "Example: warren host create --type byoc --team-id team-…",
    no_args_is_help=True,
)


@host_app.command("create")
def host_create(
    type_: Annotated[str, typer.Option("--type", help="regular (admins) or byoc.")] = "regular",
    team_id: Annotated[str | None, typer.Option(help="Team of a byoc host.")] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    availability_zone: Annotated[str | None, typer.Option()] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a host and print its one-time registration token (valid 1 hour)."""
    body = {
        k: v
        for k, v in {
            "type": type_,
            "team_id": team_id,
            "provider": provider,
            "availability_zone": availability_zone,
        }.items()
        if v
    }
    with _errors():
        r = _rest("POST", "/v1/hosts", user=True, json=body)
    if json_out:
        _print_json(r)
        return
    out.print(f"host {r['host']['id']} created. Register its agent within the hour with:")
    out.print(f"  warren agent --register {r['registration_token']} --cp-url {_api(user=True).url}")


@host_app.command("list")
def host_list(json_out: JsonOpt = False) -> None:
    """List the hosts you can see."""
    with _errors():
        rows = _rest("GET", "/v1/hosts", user=True)
    if json_out:
        _print_json(rows)
        return
    t = _table("ID", "TYPE", "STATUS", "ADDRESS", "CPU", "MEMORY", "LAST HEARTBEAT")
    for r in rows:
        t.add_row(
            r["id"],
            r.get("type", ""),
            r.get("status", ""),
            r.get("address", ""),
            str(r.get("cpu_cores", "")),
            f"{r['memory_mb']} MB" if r.get("memory_mb") else "",
            _ts(r.get("last_heartbeat_at")),
        )
    out.print(t)


@host_app.command("delete")
def host_delete(
    host_id: Annotated[str, typer.Argument(show_default=False)],
    force: Annotated[bool, typer.Option(help="Also destroy its active sandboxes.")] = False,
) -> None:
    """Delete a host (refused while it has active sandboxes, unless --force)."""
    with _errors():
        _rest("DELETE", f"/v1/hosts/{host_id}", user=True, params={"force": "true"} if force else None)
    out.print(f"deleted {host_id}")


# --------------------------------------------------------------------------------------- keys

key_app = typer.Typer(
    name="key",
    help="Manage the team's API keys (needs `warren login --email`).\n\nExample: warren key create --name ci",
    no_args_is_help=True,
)


@key_app.command("create")
def key_create(
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Create an API key; the key itself is shown only this once."""
    with _errors():
        r = _rest("POST", "/v1/api-keys", user=True, json={"name": name} if name else {})
    if json_out:
        _print_json(r)
    else:
        out.print(f"{r['id']}  {r['name']}")
        out.print(f"key: {r['key']}   (shown only once)")


@key_app.command("list")
def key_list(json_out: JsonOpt = False) -> None:
    """List the team's API keys."""
    with _errors():
        rows = _rest("GET", "/v1/api-keys", user=True)
    if json_out:
        _print_json(rows)
        return
    t = _table("ID", "NAME", "PREFIX", "CREATED BY", "CREATED", "LAST USED")
    for r in rows:
        t.add_row(
            r["id"],
            r.get("name", ""),
            r.get("key_prefix", "") + "…",
            r.get("creator_email", ""),
            _ts(r.get("created_at")),
            _ts(r.get("last_used")),
        )
    out.print(t)


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(show_default=False)]) -> None:
    """Revoke an API key."""
    with _errors():
        _rest("DELETE", f"/v1/api-keys/{key_id}", user=True)
    out.print(f"revoked {key_id}")
