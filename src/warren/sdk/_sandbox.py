"""``Sandbox`` and ``AsyncSandbox``: the two faces of one implementation (see ``_transport``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack

from warren import url_path
from warren.sdk import _preview
from warren.sdk._commands import AsyncCommands, Commands
from warren.sdk._config import ConnectionConfig
from warren.sdk._exceptions import NotFoundError, WarrenError
from warren.sdk._files import AsyncFiles, Files
from warren.sdk._models import MetricPoint, SandboxInfo, SnapshotInfo
from warren.sdk._pty import AsyncPty, Pty
from warren.sdk._transport import AsyncTransport, Http, Op, SyncTransport, awaiting, blocking

__all__ = ["AsyncSandbox", "ConnectOptions", "CreateOptions", "Sandbox"]

# Aliases, because inside the classes `list` names the method.
SandboxInfos = list[SandboxInfo]
SnapshotInfos = list[SnapshotInfo]
R = TypeVar("R")


class ConnectOptions(TypedDict, total=False):
    """Where and how to reach Warren. Unset values come from ``WARREN_API_KEY`` /
    ``WARREN_URL`` / ``WARREN_ACCESS_TOKEN``, then from ``warren login``'s config file."""

    api_key: str | None
    url: str | None
    access_token: str | None
    # Seconds an HTTP request may take (default 60). Unrelated to a sandbox's or a command's timeout.
    request_timeout: float | None


class CreateOptions(ConnectOptions, total=False):
    # Seconds of inactivity after which the sandbox is paused; None/0 = never.
    timeout: float | None
    vcpus: int | None
    memory_mb: int | None
    # Environment variables every command in the sandbox sees.
    envs: Mapping[str, str] | None
    # Outbound network access.
    internet: bool
    # Egress rules: {"allow_out": [...], "deny_out": [...]} of IPv4 addresses, CIDRs and domain
    # names (example.com, *.example.com); allow_out entries are exceptions to deny_out.
    network: Mapping[str, Sequence[str]] | None
    # The runtime tier: "runc", "crun" or "gvisor"; None = the platform's default.
    runtime: str | None


def _config(opts: Mapping[str, Any]) -> ConnectionConfig:
    return ConnectionConfig.resolve(
        api_key=opts.get("api_key"),
        url=opts.get("url"),
        access_token=opts.get("access_token"),
        request_timeout=opts.get("request_timeout"),
    )


# How every class-level call of the SDK (Sandbox, Template) uses a transport: `run_once` for a
# call that returns a value (its own connections, closed after); `open_handle` for one that
# returns a handle holding the connections (closed only if the call fails).


def run_once(op: Op[R], opts: Mapping[str, Any]) -> R:
    transport = SyncTransport(_config(opts))
    try:
        return transport.run(op)
    finally:
        transport.close()


async def run_once_async(op: Op[R], opts: Mapping[str, Any]) -> R:
    transport = AsyncTransport(_config(opts))
    try:
        return await transport.run(op)
    finally:
        await transport.close()


def open_handle(op: Op[R], opts: Mapping[str, Any]) -> tuple[SyncTransport, R]:
    transport = SyncTransport(_config(opts))
    try:
        return transport, transport.run(op)
    except BaseException:
        transport.close()
        raise


async def open_handle_async(op: Op[R], opts: Mapping[str, Any]) -> tuple[AsyncTransport, R]:
    transport = AsyncTransport(_config(opts))
    try:
        return transport, await transport.run(op)
    except BaseException:
        await transport.close()
        raise


def _create_op(template: str, opts: CreateOptions) -> Op[SandboxInfo]:
    body: dict[str, Any] = {"template": template}
    timeout = opts.get("timeout")
    if timeout:
        body["timeout_sec"] = max(1, math.ceil(timeout))
    if opts.get("vcpus"):
        body["vcpus"] = opts["vcpus"]
    if opts.get("memory_mb"):
        body["memory_mb"] = opts["memory_mb"]
    if opts.get("envs"):
        body["env"] = dict(opts["envs"] or {})
    if "internet" in opts:
        body["internet"] = bool(opts["internet"])
    if opts.get("network") is not None:
        body["network"] = {k: list(v) for k, v in (opts["network"] or {}).items()}
    if opts.get("runtime"):
        body["runtime"] = opts["runtime"]
    res = yield Http("POST", "/v1/sandboxes", json=body)
    return SandboxInfo.from_json(res.json())


def _connect_op(sandbox_id: str, resume: bool) -> Op[SandboxInfo]:
    url_path.sandbox_id(sandbox_id)  # a shape a path cannot leave (warren/url_path.py)
    res = yield Http("GET", f"/v1/sandboxes/{sandbox_id}")
    info = SandboxInfo.from_json(res.json())
    if info.id != sandbox_id:
        message = f"asked for {sandbox_id}, the server answered for {info.id!r}"
        raise WarrenError(message, code="wrong_sandbox")
    if resume and info.status == "paused":
        # Like E2B: connecting to a paused sandbox resumes it.
        res = yield Http("POST", f"/v1/sandboxes/{sandbox_id}/resume")
        info = SandboxInfo.from_json(res.json())
    return info


def _list_op() -> Op[list[SandboxInfo]]:
    res = yield Http("GET", "/v1/sandboxes")
    return [SandboxInfo.from_json(d) for d in res.json()]


def _list_snapshots_op(type: str | None) -> Op[list[SnapshotInfo]]:
    res = yield Http("GET", "/v1/snapshots", params={"type": type} if type else None)
    return [SnapshotInfo.from_json(d) for d in res.json()]


def _delete_snapshot_op(name: str) -> Op[None]:
    yield Http("DELETE", f"/v1/snapshots/{url_path.segment(name, 'snapshot name')}")


class _SandboxBase:
    _transport: Any

    def __init__(self, transport: Any, info: SandboxInfo) -> None:
        try:  # every path below is built on it
            url_path.sandbox_id(info.id)
        except url_path.PathSegmentError as e:
            raise WarrenError(f"the server answered with {e}", code="bad_response") from None
        self._transport = transport
        self._info = info

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self._info.status}>"

    @property
    def id(self) -> str:
        """The sandbox's ID (``sb-…``)."""
        return self._info.id

    @property
    def sandbox_id(self) -> str:
        """Alias of :attr:`id` (the E2B name)."""
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """What the API said about this sandbox last; :meth:`get_info` refreshes it."""
        return self._info

    @property
    def traffic_token(self) -> str | None:
        """The token that opens its private ports through the preview proxy (header
        ``X-Warren-Traffic-Token``): known to the object that created the sandbox or rotated it."""
        token = getattr(self, "_traffic_token", None) or self._info.raw.get("traffic_token")
        return str(token) if token else None

    def _get_info(self) -> Op[SandboxInfo]:
        """Ask the API for the sandbox's current state (and refresh :attr:`info`).

        Example::

            print(sbx.get_info().status)   # running | paused | stopped | error
        """
        res = yield Http("GET", f"/v1/sandboxes/{self.id}")
        self._info = SandboxInfo.from_json(res.json())
        return self._info

    def _kill(self) -> Op[bool]:
        """Destroy the sandbox and everything in it. False when it did not exist.

        Example::

            sbx.kill()
        """
        try:
            yield Http("DELETE", f"/v1/sandboxes/{self.id}")
        except NotFoundError:
            return False
        return True

    def _pause(self) -> Op[SandboxInfo]:
        """Freeze every process in the sandbox; memory and files are kept. Returns the new info.

        Example::

            sbx.pause()
            sbx.resume()
        """
        res = yield Http("POST", f"/v1/sandboxes/{self.id}/pause")
        self._info = SandboxInfo.from_json(res.json())
        return self._info

    def _resume(self) -> Op[SandboxInfo]:
        """Continue a paused sandbox where it stopped. Returns the new info.

        Example::

            sbx.resume()
        """
        res = yield Http("POST", f"/v1/sandboxes/{self.id}/resume")
        self._info = SandboxInfo.from_json(res.json())
        return self._info

    def _ping(self) -> Op[None]:
        """Reset the inactivity timer (the ``timeout`` given to ``create``) without running
        anything.

        Example::

            sbx.ping()
        """
        yield Http("POST", f"/v1/sandboxes/{self.id}/ping")

    def _rotate_access_token(self) -> Op[str]:
        """A new E2B envd access token for the sandbox (E2B's SDK's ``X-Access-Token``): the old
        one, and every E2B file URL signed with it, stop working at once. Returns the new token;
        E2B's ``Sandbox.connect`` also hands it out.

        Example::

            token = sbx.rotate_access_token()
        """
        res = yield Http("POST", f"/v1/sandboxes/{self.id}/access-token")
        token: str = res.json()["access_token"]
        return token

    def _snapshot(self, name: str | None = None, *, overwrite: bool = False) -> Op[SnapshotInfo]:
        """Save the sandbox as a template other sandboxes can start from. The sandbox is
        paused by this and stays paused (``resume()`` continues it).

        Args:
            name: the snapshot's name (default ``template-<hex>``); ``create(name)`` starts
                from it.
            overwrite: replace an existing snapshot of that name instead of failing with 409.

        Example::

            snap = sbx.snapshot("py-ready", overwrite=True)
            sbx.resume()
            copy = Sandbox.create(snap.name)
        """
        body: dict[str, Any] = {"sandbox_id": self.id}
        if name:
            body["name"] = name
        res = yield Http(
            "POST",
            "/v1/snapshots",
            json=body,
            params={"overwrite": "true"} if overwrite else None,
            timeout=330.0,
        )
        self._info = SandboxInfo.from_json({**self._info.raw, "status": "paused"})
        return SnapshotInfo.from_json(res.json())

    def _get_network(self) -> Op[dict[str, list[str]]]:
        """The sandbox's egress rules, normalized: ``{"allow_out": [...], "deny_out": [...]}``.

        Example::

            print(sbx.get_network()["allow_out"])
        """
        res = yield Http("GET", f"/v1/sandboxes/{self.id}/network")
        return dict(res.json())

    def _set_network(
        self, *, allow_out: Sequence[str] | None = None, deny_out: Sequence[str] | None = None
    ) -> Op[dict[str, list[str]]]:
        """Change the egress rules while the sandbox runs (or is paused); new connections
        follow them at once. A list left as None stays as it is; ``[]`` empties it.

        Args:
            allow_out: IPv4 addresses, CIDRs or names (``example.com``, ``*.example.com``)
                that are exceptions to ``deny_out``.
            deny_out: IPv4 addresses, CIDRs (``0.0.0.0/0``: everything) or names.

        Example::

            sbx.set_network(allow_out=["pypi.org", "*.pythonhosted.org"], deny_out=["0.0.0.0/0"])
        """
        body: dict[str, list[str]] = {}
        if allow_out is not None:
            body["allow_out"] = list(allow_out)
        if deny_out is not None:
            body["deny_out"] = list(deny_out)
        res = yield Http("PATCH", f"/v1/sandboxes/{self.id}/network", json=body)
        return dict(res.json())

    def _metrics(self, range: str = "10m") -> Op[list[MetricPoint]]:
        """CPU, memory and disk samples of the sandbox, oldest first.

        Args:
            range: how far back: ``5m``, ``10m``, ``1h``, ``2h``, ``6h``, ``12h`` or ``24h``.

        Example::

            last = sbx.metrics("5m")[-1]
            print(last.cpu_pct, last.mem_bytes)
        """
        res = yield Http("GET", f"/v1/sandboxes/{self.id}/metrics", params={"range": range})
        body = res.json()
        points = body.get("points", []) if isinstance(body, dict) else body
        return [MetricPoint.from_json(p) for p in points]


class Sandbox(_SandboxBase):
    """A sandbox, driven with blocking calls::

    with Sandbox.create() as sbx:
        print(sbx.commands.run("echo hi").stdout)
    """

    _transport: SyncTransport

    def __init__(self, transport: SyncTransport, info: SandboxInfo) -> None:
        super().__init__(transport, info)
        self.commands = Commands(transport, info.id)
        self.files = Files(transport, info.id)
        self.pty = Pty(transport, info.id)

    @classmethod
    def create(cls, template: str = "minimal", **opts: Unpack[CreateOptions]) -> Sandbox:
        """Start a sandbox and return once it runs.

        Args:
            template: ``minimal`` (the default), another platform template, or a snapshot's name.
            timeout: seconds of inactivity after which the sandbox is paused; None/0 = never.
            vcpus, memory_mb: its size (a snapshot keeps its own); the platform's defaults
                otherwise.
            envs: environment variables every command in the sandbox sees.
            internet: allow outbound network access (default True).
            network: egress rules, ``{"allow_out": [...], "deny_out": [...]}`` (IPv4 addresses,
                CIDRs and domain names such as ``example.com`` or ``*.example.com``; ``allow_out``
                entries are exceptions to ``deny_out``).
            runtime: the runtime tier, ``"runc"``, ``"crun"`` or ``"gvisor"`` (gVisor's user-space
                kernel between the sandbox and the host; its pause frees the memory, and its
                snapshots keep running processes); None = the platform's default. A memory
                snapshot starts on gvisor.
            api_key, url, access_token, request_timeout: where and how to reach Warren
                (default: ``WARREN_API_KEY`` / ``WARREN_URL`` / ``WARREN_ACCESS_TOKEN``, then the
                file ``warren login`` writes).

        Example::

            with Sandbox.create("minimal", timeout=600, envs={"APP_ENV": "dev"}) as sbx:
                print(sbx.commands.run("uname -a").stdout)
        """
        return cls(*open_handle(_create_op(template, opts), opts))

    @classmethod
    def connect(cls, sandbox_id: str, *, resume: bool = True, **opts: Unpack[ConnectOptions]) -> Sandbox:
        """Attach to an existing sandbox, resuming it if it is paused.

        Args:
            sandbox_id: the sandbox's ID (``sb-…``).
            resume: resume a paused sandbox (default); False leaves it as it is.
            api_key, url, access_token, request_timeout: as for :meth:`create`.

        Example::

            sbx = Sandbox.connect("sb-…")
            sbx.close()   # releases the connection; the sandbox keeps running
        """
        return cls(*open_handle(_connect_op(sandbox_id, resume), opts))

    @classmethod
    def list(cls, **opts: Unpack[ConnectOptions]) -> SandboxInfos:
        """The team's sandboxes that are not stopped, newest first.

        Args:
            api_key, url, access_token, request_timeout: as for :meth:`create`.

        Example::

            for info in Sandbox.list():
                print(info.id, info.status)
        """
        return run_once(_list_op(), opts)

    @classmethod
    def list_snapshots(cls, type: str | None = None, **opts: Unpack[ConnectOptions]) -> SnapshotInfos:
        """Templates usable by ``create``: the team's snapshots and the platform's templates.

        Args:
            type: ``base`` (platform templates) or ``snapshot`` (the team's); None = both.
            api_key, url, access_token, request_timeout: as for :meth:`create`.

        Example::

            names = [t.name for t in Sandbox.list_snapshots(type="snapshot")]
        """
        return run_once(_list_snapshots_op(type), opts)

    @classmethod
    def delete_snapshot(cls, name: str, **opts: Unpack[ConnectOptions]) -> None:
        """Delete one of the team's snapshots (its files on every host, then its record).

        Args:
            name: the snapshot's name.
            api_key, url, access_token, request_timeout: as for :meth:`create`.

        Example::

            Sandbox.delete_snapshot("py-ready")
        """
        run_once(_delete_snapshot_op(name), opts)

    def close(self) -> None:
        """Release the HTTP connections; the sandbox keeps running (``kill`` ends it).
        Leaving a ``with Sandbox.create() as sbx:`` block kills and closes.

        Example::

            sbx = Sandbox.connect("sb-…")
            try:
                sbx.commands.run("true")
            finally:
                sbx.close()
        """
        self._transport.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.kill()
        finally:
            self.close()

    get_info = blocking(_SandboxBase._get_info)
    kill = blocking(_SandboxBase._kill)
    pause = blocking(_SandboxBase._pause)
    resume = blocking(_SandboxBase._resume)
    ping = blocking(_SandboxBase._ping)
    rotate_access_token = blocking(_SandboxBase._rotate_access_token)
    snapshot = blocking(_SandboxBase._snapshot)
    metrics = blocking(_SandboxBase._metrics)
    get_host = blocking(_preview.get_host)
    get_url = blocking(_preview.get_url)
    set_preview = blocking(_preview.set_preview)
    rotate_traffic_token = blocking(_preview.rotate_traffic_token)
    get_network = blocking(_SandboxBase._get_network)
    set_network = blocking(_SandboxBase._set_network)


class AsyncSandbox(_SandboxBase):
    """The asyncio twin of :class:`Sandbox`: the same methods, awaited::

    async with await AsyncSandbox.create() as sbx:
        print((await sbx.commands.run("echo hi")).stdout)
    """

    _transport: AsyncTransport

    def __init__(self, transport: AsyncTransport, info: SandboxInfo) -> None:
        super().__init__(transport, info)
        self.commands = AsyncCommands(transport, info.id)
        self.files = AsyncFiles(transport, info.id)
        self.pty = AsyncPty(transport, info.id)

    @classmethod
    async def create(cls, template: str = "minimal", **opts: Unpack[CreateOptions]) -> AsyncSandbox:
        """Start a sandbox; the arguments are those of :meth:`Sandbox.create`.

        Example::

            async with await AsyncSandbox.create(timeout=600) as sbx:
                print((await sbx.commands.run("uname -a")).stdout)
        """
        return cls(*await open_handle_async(_create_op(template, opts), opts))

    @classmethod
    async def connect(
        cls, sandbox_id: str, *, resume: bool = True, **opts: Unpack[ConnectOptions]
    ) -> AsyncSandbox:
        """Attach to an existing sandbox; the arguments are those of :meth:`Sandbox.connect`.

        Example::

            sbx = await AsyncSandbox.connect("sb-…", resume=False)
        """
        return cls(*await open_handle_async(_connect_op(sandbox_id, resume), opts))

    @classmethod
    async def list(cls, **opts: Unpack[ConnectOptions]) -> SandboxInfos:
        """The team's sandboxes that are not stopped, newest first (see :meth:`Sandbox.list`).

        Example::

            infos = await AsyncSandbox.list()
        """
        return await run_once_async(_list_op(), opts)

    @classmethod
    async def list_snapshots(cls, type: str | None = None, **opts: Unpack[ConnectOptions]) -> SnapshotInfos:
        """Templates usable by ``create`` (see :meth:`Sandbox.list_snapshots`).

        Example::

            templates = await AsyncSandbox.list_snapshots(type="base")
        """
        return await run_once_async(_list_snapshots_op(type), opts)

    @classmethod
    async def delete_snapshot(cls, name: str, **opts: Unpack[ConnectOptions]) -> None:
        """Delete one of the team's snapshots (see :meth:`Sandbox.delete_snapshot`).

        Example::

            await AsyncSandbox.delete_snapshot("py-ready")
        """
        await run_once_async(_delete_snapshot_op(name), opts)

    async def close(self) -> None:
        """Release the HTTP connections; the sandbox keeps running (see :meth:`Sandbox.close`).

        Example::

            await sbx.close()
        """
        await self._transport.close()

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.kill()
        finally:
            await self.close()

    get_info = awaiting(_SandboxBase._get_info)
    kill = awaiting(_SandboxBase._kill)
    pause = awaiting(_SandboxBase._pause)
    resume = awaiting(_SandboxBase._resume)
    ping = awaiting(_SandboxBase._ping)
    rotate_access_token = awaiting(_SandboxBase._rotate_access_token)
    snapshot = awaiting(_SandboxBase._snapshot)
    metrics = awaiting(_SandboxBase._metrics)
    get_host = awaiting(_preview.get_host)
    get_url = awaiting(_preview.get_url)
    set_preview = awaiting(_preview.set_preview)
    rotate_traffic_token = awaiting(_preview.rotate_traffic_token)
    get_network = awaiting(_SandboxBase._get_network)
    set_network = awaiting(_SandboxBase._set_network)
