"""``warren template``: build templates from a Warrenfile, import OCI images, list, show,
follow build logs, cancel builds and delete.

Everything goes through the SDK's ``Template`` (the same calls a program makes). A build's log
is printed as it is written, with a header per step; its exit code is 0 only when the template
is ready.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.text import Text

from warren.cli.client.connection import connection_config
from warren.cli.client.output import (
    JsonOpt,
    api_errors,
    err,
    fail,
    human_size,
    out,
    print_json,
    print_rows,
    shown,
    table,
    timestamp,
    write_log,
)
from warren.cli.groups import command_group
from warren.sdk import BuildInfo, PageCursors, Template, TemplateBuild, TemplateInfo

__all__ = ["app"]

app = command_group(
    "template",
    "Build templates from a Warrenfile, import OCI images, and manage them.",
    example="warren template build --name my-env -f Warrenfile . && warren sandbox create --template my-env",
)

NameArg = Annotated[str, typer.Argument(help="Template name.", show_default=False)]
STATUS_COLORS = {"queued": "yellow", "running": "cyan", "ready": "green", "failed": "red"}


def _conn() -> dict[str, Any]:
    cfg = connection_config()
    return {"url": cfg.url, "api_key": cfg.api_key, "access_token": cfg.access_token}


def _status(status: str) -> Text:
    # A table's cell: a Text, coloured (a markup string would be shown as it is) and shown.
    return Text(status, style=STATUS_COLORS.get(status, "white"))


_STEP = re.compile(r"^Step (\d+)/(\d+): (.*)$")
_HEADS = ("Step ", " ---> ")
# The start of a colour sequence a chunk of the log ends in: held for the next chunk.
_SGR_START = re.compile(r"\x1b(\[[0-9;]{0,32})?\Z")
# The reads `template logs` replays a log in: 1 GiB at the server's 1 MiB a read, where a log is
# at most WARREN_BUILD_MAX_LOG_MB (16 by default). A server that names more is refused.
MAX_LOG_READS = 1024


class _Progress:
    """Prints the build's log as it comes, its step lines as headers: ``Step 3/9: RUN …`` (the
    server's) as ``[3/9] RUN …`` and a cache hit as ``CACHED``. Output that cannot be a step
    line is written at once, so a progress bar without newlines still shows live. The log is
    the build's RUN steps' (someone else's): its colours are kept, any other control shown
    (``write_log``), and the colours are reset at its end."""

    def __init__(self) -> None:
        self.pending = ""
        self.coloured = False

    def log(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = ""
        last = lines.pop()  # what follows the last newline: a line not finished yet
        for line in lines:
            self._line(line + "\n")
        if any(h.startswith(last) or last.startswith(h) for h in _HEADS):
            self.pending = last  # maybe a step line: wait for its end
        elif last:
            cut = m.start() if (m := _SGR_START.search(last)) else len(last)
            self.pending = last[cut:]  # a colour's start, shown whole once its end comes
            if cut:
                self._line(last[:cut])

    def _line(self, line: str) -> None:
        text = line.rstrip("\n")
        m = _STEP.match(text)
        if m:
            out.print(f"[{m[1]}/{m[2]}] {m[3]}", style="bold", highlight=False, markup=False, soft_wrap=True)
        elif text.startswith(" ---> CACHED"):
            out.print(
                f"  CACHED{text.removeprefix(' ---> CACHED')}", style="yellow", highlight=False, markup=False
            )
        elif text.startswith(" ---> "):
            out.print(f"  {text.strip()}", style="dim", highlight=False, markup=False, soft_wrap=True)
        else:
            self.coloured = self.coloured or "\x1b[" in line
            write_log(line)

    def flush(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        if self.coloured:  # a colour (or concealed text) the log left on ends with it
            sys.stdout.write("\x1b[0m")
            sys.stdout.flush()
            self.coloured = False


def _finish(build: BuildInfo, name: str) -> NoReturn:
    """Exit 0 for a ready template; for a failed build, the failing step's exit code (1 when
    it had none) after a line that says which step failed and why."""
    if build.status == "ready":
        version = f" v{build.version}" if build.version else ""
        ready = Text.assemble(("ready", "green"), f" {shown(name)}{version}")
        out.print(ready, highlight=False, soft_wrap=True)
        raise typer.Exit(0)
    step = f"step {build.failed_step}" if build.failed_step else "the build"
    code = f" exited with code {build.exit_code}" if build.exit_code is not None else " failed"
    # The error's first line is the reason; the lines after it, the step's last output, were
    # just printed with the log.
    reason = (build.error.splitlines() or [""])[0].removeprefix(f"{step}: ")
    why = f": {reason}" if reason else ""
    failed = Text.assemble(("Error:", "red"), f" {shown(f'{name}: {step}{code}{why}')}")
    err.print(failed, highlight=False, soft_wrap=True)
    exit_code = build.exit_code if build.exit_code is not None and 0 < build.exit_code < 256 else 1
    raise typer.Exit(exit_code)


def _follow(build: TemplateBuild, progress: _Progress, offset: int = 0) -> NoReturn:
    try:
        final = build.follow(on_log=progress.log, offset=offset)
        progress.flush()
    except KeyboardInterrupt:
        progress.flush()
        err.print(
            f"\nStopped following. The build goes on in the control plane; follow it again with:\n"
            f"  warren template logs {build.name} {build.id} --follow",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(130) from None
    _finish(final, build.name)


def _build_args(items: list[str] | None) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            fail(f"--build-arg wants KEY=VALUE, got {item!r}")
        args[key] = value
    return args


@app.command("build")
def template_build(
    name: Annotated[str, typer.Option("--name", "-n", help="The template's name.", show_default=False)],
    file: Annotated[
        Path, typer.Option("--file", "-f", help="The Warrenfile ('-' for stdin).", show_default=False)
    ],
    context_dir: Annotated[
        Path | None,
        typer.Argument(help="Directory COPY sources are relative to (sent as a tar).", show_default=False),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Tag the new version; repeatable.")
    ] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="KEY=VALUE for an ARG; repeatable.")
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Print the build id and return.")] = False,
) -> None:
    """Build a template from a Warrenfile, printing its log live.

    Each build makes a new version of NAME. The log comes with a header per step. Exits 0 only
    when the template is ready; when a step fails, with that step's exit code (1 if it had
    none). Ctrl-C stops following, not the build.

    A Warrenfile is a Dockerfile subset: FROM (minimal, a template[:tag], debian:bookworm),
    RUN, COPY, ENV, ARG, WORKDIR, USER, START (or CMD) and READY [--timeout=N].

    Examples:

        warren template build --name web -f Warrenfile .

        warren template build -n web -f Warrenfile . --tag stable --build-arg VERSION=1.2

        printf 'FROM minimal\\nRUN echo hi > /hello\\n' | warren template build -n hello -f -
    """
    try:
        text = sys.stdin.read() if str(file) == "-" else file.read_text()
    except OSError as e:
        fail(f"{file}: {e.strerror or e}")
    if context_dir is not None and not context_dir.is_dir():
        fail(f"{context_dir}: not a directory")
    spec = Template.from_warrenfile(text, context_dir=context_dir)
    with api_errors():
        build = spec.start_build(name, tags=tag or None, build_args=_build_args(build_arg) or None, **_conn())
        with build:
            err.print(f"build {build.id} of {name}", highlight=False, markup=False, soft_wrap=True)
            if detach:
                out.print(build.id, highlight=False)
                raise typer.Exit(0)
            _follow(build, _Progress())


@app.command("logs")
def template_logs(
    name: NameArg,
    build_id: Annotated[str, typer.Argument(help="The build's id.", show_default=False)],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow the log until the build ends.")
    ] = False,
) -> None:
    """Print a build's log (--follow: live, until the build ends).

    With --follow the exit code is build's: 0 when the template is ready.

    Example: warren template logs web bld-… --follow
    """
    with api_errors(), Template.get_build(name, build_id, **_conn()) as build:
        if follow:
            _follow(build, _Progress())
        offset, progress = 0, _Progress()
        offsets = PageCursors(f"build {build_id}'s log", MAX_LOG_READS, first=offset)
        while True:
            chunk = build.read_log(offset)
            progress.log(chunk.data)
            if not chunk.data or chunk.next_offset <= offset:
                break
            offset = offsets.follow(chunk.next_offset)
        progress.flush()
        if build.info.status in ("ready", "failed"):
            _finish(build.refresh(), name)
        err.print(f"build is {build.info.status}", highlight=False, markup=False, soft_wrap=True)


@app.command("cancel")
def template_cancel(
    name: NameArg,
    build_id: Annotated[str, typer.Argument(help="The build's id.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Cancel a queued or running build: it ends failed, its running step is stopped.

    A build that has ended already: an error (build_finished).

    Example: warren template cancel web bld-…
    """
    with api_errors(), Template.get_build(name, build_id, **_conn()) as build:
        info = build.cancel()
    if json_out:
        print_json(info)
    else:
        out.print(f"cancelled build {info.id} of {name} ({info.status})", highlight=False, markup=False)


@app.command("import")
def template_import(
    name: Annotated[str, typer.Option("--name", "-n", help="The template's name.", show_default=False)],
    image: Annotated[
        Path, typer.Argument(help="An OCI image layout or `docker save` tar.", show_default=False)
    ],
    tag: Annotated[
        list[str] | None, typer.Option("--tag", "-t", help="Tag the new version; repeatable.")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Make a template from an OCI image tar (OCI layout or `docker save`).

    The image's layers become the template's, and its Env, WorkingDir, User and Cmd its defaults.

    Example: docker save python:3.12-slim -o py.tar && warren template import --name py py.tar
    """
    if not image.is_file():
        fail(f"{image}: no such file")
    with api_errors():
        info = Template.import_image(name, image, tags=tag or None, **_conn())
    if json_out:
        print_json(info)
    else:
        out.print(f"{info.name} v{info.version} ({human_size(info.size_bytes)})", highlight=False)


_COLUMNS = ("NAME", "SOURCE", "VERSION", "VERSIONS", "TAGS", "SIZE", "CREATED", "")


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    t = TemplateInfo.from_json(r)
    tags = ", ".join(
        x for x in sorted(t.tag_versions) if x != f"v{t.version}" and t.tag_versions[x] == t.version
    )
    return (
        t.name, t.source, f"v{t.version}", str(t.version_count), tags, human_size(t.size_bytes),
        timestamp(t.created_at), "platform" if t.platform else "",
    )  # fmt: skip


@app.command("list")
def template_list(json_out: JsonOpt = False) -> None:
    """List the team's and the platform's templates (newest version each).

    Example: warren template list --json
    """
    with api_errors():
        rows = Template.list(**_conn())
    print_rows([t.raw for t in rows], json_out, _COLUMNS, _cells)


@app.command("show")
def template_show(name: NameArg, json_out: JsonOpt = False) -> None:
    """Show a template's versions and its builds.

    Example: warren template show web
    """
    with api_errors():
        info = Template.get(name, **_conn())
        builds = [] if info.platform else Template.builds(name, **_conn())
    if json_out:
        print_json({**info.raw, "builds": [b.raw for b in builds]})
        return
    out.print(f"[bold]{info.name}[/bold]{' (platform)' if info.platform else ''}", highlight=False)
    versions = table("VERSION", "TAGS", "SOURCE", "LAYERS", "SIZE", "CREATED")
    for v in info.versions:
        versions.add_row(
            f"v{v.version}", ", ".join(v.tags), v.source, str(len(v.layers)), human_size(v.size_bytes),
            timestamp(v.created_at),
        )  # fmt: skip
    out.print(versions)
    if builds:
        out.print()
        t = table("ID", "STATUS", "STEP", "EXIT", "CREATED", "ERROR")
        for b in builds:
            exit_code = "" if b.exit_code is None else str(b.exit_code)
            t.add_row(
                b.id,
                _status(b.status),
                f"{b.step}/{b.steps}",
                exit_code,
                timestamp(b.created_at),
                b.error[:80],
            )
        out.print(t)


@app.command("delete")
def template_delete(
    name: NameArg,
    version: Annotated[int | None, typer.Option(help="Delete this version only.")] = None,
) -> None:
    """Delete a template, every version of it (or --version N).

    Sandboxes running from it keep their version.

    Example: warren template delete web --version 1
    """
    with api_errors():
        Template.delete(name, version=version, **_conn())
    out.print(f"deleted {name}" + (f" v{version}" if version else ""), highlight=False)
