"""``Template`` and ``AsyncTemplate``: build templates from Python, follow builds, and read the
team's templates. The builder is ``_template_spec.TemplateSpec`` (pure: calls → Warrenfile
text + build context); the requests are the ops of ``_template_build``, driven by the sync or
the async transport like every other SDK call (see ``_transport``).

::

    from warren import Sandbox, Template

    info = (
        Template()
        .from_template("minimal")
        .run("echo hi > /hello")
        .env({"GREETING": "hello world"})
        .copy("./app", "/srv/app")
        .workdir("/srv/app")
        .build("my-app", on_log=lambda s: print(s, end=""))
    )
    with Sandbox.create(info.name) as sbx:
        print(sbx.commands.run("cat /hello").stdout)
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Unpack

from warren.sdk._sandbox import ConnectOptions, open_handle, open_handle_async, run_once, run_once_async
from warren.sdk._template_build import (
    BuildInfo,
    LogChunk,
    OnLog,
    OnStatus,
    TemplateInfo,
    build_path,
    delete_template_op,
    follow_op,
    get_build_op,
    get_template_op,
    import_op,
    list_builds_op,
    list_templates_op,
    make_context,
    read_log_op,
    result_op,
    submit_op,
)
from warren.sdk._template_spec import TemplateSpec
from warren.sdk._transport import AsyncTransport, Http, Op, SyncTransport, awaiting, blocking

__all__ = ["AsyncTemplate", "AsyncTemplateBuild", "Template", "TemplateBuild"]

# Aliases, because inside the classes `list` names a method.
TemplateInfos = list[TemplateInfo]
BuildInfos = list[BuildInfo]
ImageSource = str | os.PathLike[str] | BinaryIO


class _BuildBase:
    """A build that was submitted: follow it, read its log, wait for its template."""

    _transport: Any

    def __init__(self, transport: Any, info: BuildInfo, name: str) -> None:
        self._transport = transport
        self._info = info
        self._name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name} {self.id} {self._info.status}>"

    @property
    def id(self) -> str:
        """The build's ID."""
        return self._info.id

    @property
    def name(self) -> str:
        """The template's name."""
        return self._name

    @property
    def info(self) -> BuildInfo:
        """What the API said about the build last; :meth:`refresh` asks again."""
        return self._info

    def _refresh(self) -> Op[BuildInfo]:
        """The build's current state (and :attr:`info` updated).

        Example::

            print(build.refresh().status)   # queued | running | ready | failed
        """
        self._info = yield from get_build_op(self._name, self.id)
        return self._info

    def _cancel(self) -> Op[BuildInfo]:
        """Cancel the build: it ends ``failed`` with the error "cancelled by the team", its
        running step stopped within seconds (and :attr:`info` updated).

        Raises:
            ConflictError: the build has ended already (``code == "build_finished"``).

        Example::

            with Template.get_build("my-app", build_id) as build:
                print(build.cancel().error)   # cancelled by the team
        """
        res = yield Http("POST", f"{build_path(self._name, self.id)}/cancel")
        self._info = BuildInfo.from_json(res.json())
        return self._info

    def _read_log(self, offset: int = 0) -> Op[LogChunk]:
        """The log from byte ``offset`` on, as far as it is written; pass ``next_offset`` on.

        Example::

            chunk = build.read_log(0)
            print(chunk.data, end="")
            chunk = build.read_log(chunk.next_offset)
        """
        return (yield from read_log_op(self._name, self.id, offset))

    def _follow(
        self,
        *,
        on_log: OnLog | None = None,
        on_status: OnStatus | None = None,
        timeout: float | None = None,
        offset: int = 0,
        stream: bool = True,
    ) -> Op[BuildInfo]:
        """Follow the log to the build's end (live, from ``offset``), calling ``on_log(text)`` for
        each piece and ``on_status(BuildInfo)`` when the status or step changes; the final
        state, ready or failed, without raising. ``stream=False`` polls the log with offsets
        instead of reading the event stream (for a proxy that holds event streams back).

        Example::

            final = build.follow(on_log=lambda s: print(s, end=""))
        """
        final, _ = yield from follow_op(
            self._name,
            self.id,
            on_log=on_log,
            on_status=on_status,
            timeout=timeout,
            offset=offset,
            stream=stream,
        )
        self._info = final
        return final

    def _wait(
        self,
        *,
        on_log: OnLog | None = None,
        on_status: OnStatus | None = None,
        timeout: float | None = None,
    ) -> Op[TemplateInfo]:
        """Follow the build to its end and return the template it made.

        Raises:
            TemplateBuildError: the build failed (``exit_code``, ``failed_step``, ``log_tail``).
            WarrenTimeoutError: ``timeout`` seconds passed first (the build goes on).

        Example::

            info = build.wait(on_log=lambda s: print(s, end=""), timeout=1800)
        """
        final, tail = yield from follow_op(
            self._name, self.id, on_log=on_log, on_status=on_status, timeout=timeout
        )
        self._info = final
        return (yield from result_op(self._name, final, tail))


class TemplateBuild(_BuildBase):
    """A submitted build, driven with blocking calls (``Template.start_build``,
    ``Template.get_build``)::

    with Template.get_build("my-app", build_id) as build:
        build.follow(on_log=lambda s: print(s, end=""))
    """

    _transport: SyncTransport

    def close(self) -> None:
        """Release the HTTP connections (the build itself goes on)."""
        self._transport.close()

    def __enter__(self) -> TemplateBuild:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    refresh = blocking(_BuildBase._refresh)
    cancel = blocking(_BuildBase._cancel)
    read_log = blocking(_BuildBase._read_log)
    follow = blocking(_BuildBase._follow)
    wait = blocking(_BuildBase._wait)


class AsyncTemplateBuild(_BuildBase):
    """The asyncio twin of :class:`TemplateBuild`: the same methods, awaited."""

    _transport: AsyncTransport

    async def close(self) -> None:
        """Release the HTTP connections (the build itself goes on)."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncTemplateBuild:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    refresh = awaiting(_BuildBase._refresh)
    cancel = awaiting(_BuildBase._cancel)
    read_log = awaiting(_BuildBase._read_log)
    follow = awaiting(_BuildBase._follow)
    wait = awaiting(_BuildBase._wait)


def _open_image(image: ImageSource) -> tuple[Any, bool]:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).open("rb"), True
    return image, False


class _SpecOps(TemplateSpec):
    """The ops of building this spec, which ``Template`` and ``AsyncTemplate`` each run on their
    transport. ``_context`` makes the build context tar (off the event loop in the async SDK)."""

    def _context(self) -> Any:
        return make_context(self)

    def _build_op(
        self,
        name: str,
        tags: Sequence[str] | None,
        build_args: Mapping[str, str] | None,
        on_log: OnLog | None,
        on_status: OnStatus | None,
        timeout: float | None,
    ) -> Op[TemplateInfo]:
        build = yield from self._submit_op(name, tags, build_args)
        final, tail = yield from follow_op(
            name, build.id, on_log=on_log, on_status=on_status, timeout=timeout
        )
        return (yield from result_op(name, final, tail))

    def _submit_op(
        self, name: str, tags: Sequence[str] | None, build_args: Mapping[str, str] | None
    ) -> Op[BuildInfo]:
        return submit_op(self, name, tags, build_args, self._context)


class Template(_SpecOps):
    """A template to build, written as a chain of calls (see :class:`TemplateSpec` for each
    step), and the team's templates (``list``, ``get``, ``delete``, ``import_image``).

    Example::

        info = (Template().from_template("minimal")
                .apt_install(["curl"]).pip_install(["requests"])
                .copy("./app", "/srv/app").workdir("/srv/app")
                .start_cmd("python3 -m http.server 8000", ready="curl -sf localhost:8000")
                .build("web", tags=["stable"], on_log=lambda s: print(s, end="")))
    """

    def build(
        self,
        name: str,
        *,
        tags: Sequence[str] | None = None,
        build_args: Mapping[str, str] | None = None,
        on_log: OnLog | None = None,
        on_status: OnStatus | None = None,
        timeout: float | None = None,
        **opts: Unpack[ConnectOptions],
    ) -> TemplateInfo:
        """Upload the spec and its context, follow the build and return the template it made
        (a new version of ``name`` when it exists).

        Args:
            name: the template's name (``Sandbox.create(name)`` starts from it).
            tags: more tags for the new version (every version also gets ``v<N>``).
            build_args: values of the spec's ``ARG`` s.
            on_log: called with each piece of the build's log as it is written.
            on_status: called with a :class:`BuildInfo` when the status or the step changes.
            timeout: stop following after this many seconds (``WarrenTimeoutError``; the
                build itself goes on, limited by the server's build time limit).
            api_key, url, access_token, request_timeout: as for ``Sandbox.create``.

        Raises:
            TemplateBuildError: a step failed (``exit_code``, ``failed_step``, ``log_tail``).

        Example::

            Template().from_template("minimal").run("echo hi > /hello").build("hello")
        """
        return run_once(self._build_op(name, tags, build_args, on_log, on_status, timeout), opts)

    def start_build(
        self,
        name: str,
        *,
        tags: Sequence[str] | None = None,
        build_args: Mapping[str, str] | None = None,
        **opts: Unpack[ConnectOptions],
    ) -> TemplateBuild:
        """Submit the build and return at once with its handle (``follow``, ``wait``,
        ``read_log``); close the handle when done.

        Example::

            with Template().from_template("minimal").run("make").start_build("app") as b:
                print(b.id)
                info = b.wait()
        """
        return TemplateBuild(*open_handle(self._submit_op(name, tags, build_args), opts), name)

    @classmethod
    def get_build(cls, name: str, build_id: str, **opts: Unpack[ConnectOptions]) -> TemplateBuild:
        """A handle on one of the template's builds (close it when done).

        Example::

            with Template.get_build("app", build_id) as b:
                b.follow(on_log=lambda s: print(s, end=""))
        """
        return TemplateBuild(*open_handle(get_build_op(name, build_id), opts), name)

    @classmethod
    def list(cls, **opts: Unpack[ConnectOptions]) -> TemplateInfos:
        """The templates the team can use (its own and the platform's), newest version each.

        Example::

            for t in Template.list():
                print(t.name, t.version, t.tags)
        """
        return run_once(list_templates_op(), opts)

    @classmethod
    def get(cls, name: str, **opts: Unpack[ConnectOptions]) -> TemplateInfo:
        """One template, with its versions (newest first).

        Example::

            info = Template.get("app")
            print(info.version, info.tag_versions.get("stable"))
        """
        return run_once(get_template_op(name), opts)

    @classmethod
    def builds(cls, name: str, **opts: Unpack[ConnectOptions]) -> BuildInfos:
        """The template's builds, newest first.

        Example::

            last = Template.builds("app")[0]
            print(last.status, last.exit_code)
        """
        return run_once(list_builds_op(name), opts)

    @classmethod
    def delete(cls, name: str, *, version: int | None = None, **opts: Unpack[ConnectOptions]) -> None:
        """Delete the team's template: every version, or only ``version`` (running sandboxes
        keep theirs).

        Example::

            Template.delete("app", version=1)
        """
        run_once(delete_template_op(name, version), opts)

    @classmethod
    def import_image(
        cls,
        name: str,
        image: ImageSource,
        *,
        tags: Sequence[str] | None = None,
        **opts: Unpack[ConnectOptions],
    ) -> TemplateInfo:
        """Make a template from an OCI image layout or ``docker save`` tar (a path or a binary
        file), streamed; the image's Env, WorkingDir, User and Cmd become its defaults.

        Example::

            Template.import_image("py", "python-slim.tar", tags=["3.12"])
        """
        f, owned = _open_image(image)
        try:
            return run_once(import_op(name, f, tags), opts)
        finally:
            if owned:
                f.close()


class AsyncTemplate(_SpecOps):
    """The asyncio twin of :class:`Template`: the same builder and the same calls, awaited::

    info = await AsyncTemplate().from_template("minimal").run("echo hi > /hello").build("hello")
    """

    async def build(
        self,
        name: str,
        *,
        tags: Sequence[str] | None = None,
        build_args: Mapping[str, str] | None = None,
        on_log: OnLog | None = None,
        on_status: OnStatus | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the sync API's, for following only
        **opts: Unpack[ConnectOptions],
    ) -> TemplateInfo:
        """Build and return the template (see :meth:`Template.build`); callbacks may be
        coroutine functions. The context tar is written off the event loop."""
        return await run_once_async(self._build_op(name, tags, build_args, on_log, on_status, timeout), opts)

    def _context(self) -> Any:
        return asyncio.to_thread(make_context, self)

    async def start_build(
        self,
        name: str,
        *,
        tags: Sequence[str] | None = None,
        build_args: Mapping[str, str] | None = None,
        **opts: Unpack[ConnectOptions],
    ) -> AsyncTemplateBuild:
        """Submit the build and return its handle (see :meth:`Template.start_build`)."""
        op = self._submit_op(name, tags, build_args)
        return AsyncTemplateBuild(*await open_handle_async(op, opts), name)

    @classmethod
    async def get_build(cls, name: str, build_id: str, **opts: Unpack[ConnectOptions]) -> AsyncTemplateBuild:
        """A handle on one of the template's builds (see :meth:`Template.get_build`)."""
        return AsyncTemplateBuild(*await open_handle_async(get_build_op(name, build_id), opts), name)

    @classmethod
    async def list(cls, **opts: Unpack[ConnectOptions]) -> TemplateInfos:
        """The templates the team can use (see :meth:`Template.list`)."""
        return await run_once_async(list_templates_op(), opts)

    @classmethod
    async def get(cls, name: str, **opts: Unpack[ConnectOptions]) -> TemplateInfo:
        """One template with its versions (see :meth:`Template.get`)."""
        return await run_once_async(get_template_op(name), opts)

    @classmethod
    async def builds(cls, name: str, **opts: Unpack[ConnectOptions]) -> BuildInfos:
        """The template's builds, newest first (see :meth:`Template.builds`)."""
        return await run_once_async(list_builds_op(name), opts)

    @classmethod
    async def delete(cls, name: str, *, version: int | None = None, **opts: Unpack[ConnectOptions]) -> None:
        """Delete the team's template, or one version (see :meth:`Template.delete`)."""
        await run_once_async(delete_template_op(name, version), opts)

    @classmethod
    async def import_image(
        cls,
        name: str,
        image: ImageSource,
        *,
        tags: Sequence[str] | None = None,
        **opts: Unpack[ConnectOptions],
    ) -> TemplateInfo:
        """Import an OCI image tar (see :meth:`Template.import_image`)."""
        f, owned = _open_image(image)
        try:
            return await run_once_async(import_op(name, f, tags), opts)
        finally:
            if owned:
                f.close()
