"""``Sandbox`` and ``AsyncSandbox``: the two faces of one implementation (see ``_transport``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypedDict, Unpack

from warren.sdk._commands import AsyncCommands, Commands
from warren.sdk._config import ConnectionConfig
from warren.sdk._exceptions import NotFoundError
from warren.sdk._files import AsyncFiles, Files
from warren.sdk._models import MetricPoint, SandboxInfo, SnapshotInfo
from warren.sdk._transport import AsyncTransport, Http, Op, SyncTransport, awaiting, blocking

__all__ = ["AsyncSandbox", "ConnectOptions", "CreateOptions", "Sandbox"]

# Aliases, because inside the classes `list` names the method.
SandboxInfos = list[SandboxInfo]
SnapshotInfos = list[SnapshotInfo]


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


def _config(opts: Mapping[str, Any]) -> ConnectionConfig:
    return ConnectionConfig.resolve(
        api_key=opts.get("api_key"),
        url=opts.get("url"),
        access_token=opts.get("access_token"),
        request_timeout=opts.get("request_timeout"),
    )


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
    res = yield Http("POST", "/v1/sandboxes", json=body)
    return SandboxInfo.from_json(res.json())


def _connect_op(sandbox_id: str, resume: bool) -> Op[SandboxInfo]:
    res = yield Http("GET", f"/v1/sandboxes/{sandbox_id}")
    info = SandboxInfo.from_json(res.json())
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
    yield Http("DELETE", f"/v1/snapshots/{name}")


class _SandboxBase:
    _transport: Any

    def __init__(self, transport: Any, info: SandboxInfo) -> None:
        self._transport = transport
        self._info = info

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self._info.status}>"

    @property
    def id(self) -> str:
        return self._info.id

    @property
    def sandbox_id(self) -> str:
        """Alias of :attr:`id` (the E2B name)."""
        return self._info.id

    @property
    def info(self) -> SandboxInfo:
        """What the API said about this sandbox last; :meth:`get_info` refreshes it."""
        return self._info

    def _get_info(self) -> Op[SandboxInfo]:
        res = yield Http("GET", f"/v1/sandboxes/{self.id}")
        self._info = SandboxInfo.from_json(res.json())
        return self._info

    def _kill(self) -> Op[bool]:
        """Destroy the sandbox. False when it did not exist."""
        try:
            yield Http("DELETE", f"/v1/sandboxes/{self.id}")
        except NotFoundError:
            return False
        return True

    def _pause(self) -> Op[SandboxInfo]:
        res = yield Http("POST", f"/v1/sandboxes/{self.id}/pause")
        self._info = SandboxInfo.from_json(res.json())
        return self._info

    def _resume(self) -> Op[SandboxInfo]:
        res = yield Http("POST", f"/v1/sandboxes/{self.id}/resume")
        self._info = SandboxInfo.from_json(res.json())
        return self._info

    def _ping(self) -> Op[None]:
        """Reset the inactivity timer."""
        yield Http("POST", f"/v1/sandboxes/{self.id}/ping")

    def _snapshot(self, name: str | None = None, *, overwrite: bool = False) -> Op[SnapshotInfo]:
        """Save the sandbox as a template other sandboxes can start from. The sandbox is
        paused by this and stays paused (``resume()`` continues it)."""
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

    def _metrics(self, range: str = "10m") -> Op[list[MetricPoint]]:
        """CPU, memory and disk samples: ``range`` is 5m, 10m, 1h, 2h, 6h, 12h or 24h."""
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

    @classmethod
    def create(cls, template: str = "minimal", **opts: Unpack[CreateOptions]) -> Sandbox:
        """Start a sandbox from ``template`` (``minimal`` or a snapshot's name)."""
        transport = SyncTransport(_config(opts))
        try:
            return cls(transport, transport.run(_create_op(template, opts)))
        except BaseException:
            transport.close()
            raise

    @classmethod
    def connect(cls, sandbox_id: str, *, resume: bool = True, **opts: Unpack[ConnectOptions]) -> Sandbox:
        """Attach to an existing sandbox, resuming it if it is paused (``resume=False`` leaves
        it as it is)."""
        transport = SyncTransport(_config(opts))
        try:
            return cls(transport, transport.run(_connect_op(sandbox_id, resume)))
        except BaseException:
            transport.close()
            raise

    @classmethod
    def list(cls, **opts: Unpack[ConnectOptions]) -> SandboxInfos:
        """The team's sandboxes that are not stopped, newest first."""
        return cls._oneshot(_list_op(), opts)

    @classmethod
    def list_snapshots(cls, type: str | None = None, **opts: Unpack[ConnectOptions]) -> SnapshotInfos:
        """Templates usable by ``create``: the team's snapshots and the platform's templates."""
        return cls._oneshot(_list_snapshots_op(type), opts)

    @classmethod
    def delete_snapshot(cls, name: str, **opts: Unpack[ConnectOptions]) -> None:
        cls._oneshot(_delete_snapshot_op(name), opts)

    @staticmethod
    def _oneshot(op: Op[Any], opts: Mapping[str, Any]) -> Any:
        transport = SyncTransport(_config(opts))
        try:
            return transport.run(op)
        finally:
            transport.close()

    def close(self) -> None:
        """Release the HTTP connections (the sandbox keeps running)."""
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
    snapshot = blocking(_SandboxBase._snapshot)
    metrics = blocking(_SandboxBase._metrics)


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

    @classmethod
    async def create(cls, template: str = "minimal", **opts: Unpack[CreateOptions]) -> AsyncSandbox:
        transport = AsyncTransport(_config(opts))
        try:
            return cls(transport, await transport.run(_create_op(template, opts)))
        except BaseException:
            await transport.close()
            raise

    @classmethod
    async def connect(
        cls, sandbox_id: str, *, resume: bool = True, **opts: Unpack[ConnectOptions]
    ) -> AsyncSandbox:
        transport = AsyncTransport(_config(opts))
        try:
            return cls(transport, await transport.run(_connect_op(sandbox_id, resume)))
        except BaseException:
            await transport.close()
            raise

    @classmethod
    async def list(cls, **opts: Unpack[ConnectOptions]) -> SandboxInfos:
        result: SandboxInfos = await cls._oneshot(_list_op(), opts)
        return result

    @classmethod
    async def list_snapshots(cls, type: str | None = None, **opts: Unpack[ConnectOptions]) -> SnapshotInfos:
        result: SnapshotInfos = await cls._oneshot(_list_snapshots_op(type), opts)
        return result

    @classmethod
    async def delete_snapshot(cls, name: str, **opts: Unpack[ConnectOptions]) -> None:
        await cls._oneshot(_delete_snapshot_op(name), opts)

    @staticmethod
    async def _oneshot(op: Op[Any], opts: Mapping[str, Any]) -> Any:
        transport = AsyncTransport(_config(opts))
        try:
            return await transport.run(op)
        finally:
            await transport.close()

    async def close(self) -> None:
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
    snapshot = awaiting(_SandboxBase._snapshot)
    metrics = awaiting(_SandboxBase._metrics)
