"""The HostAgent gRPC servicer: thin. Each method converts messages and calls SandboxManager.

Errors become gRPC status codes in one place (:func:`status_for`), per SPEC §0.5 / §5.3:
NotFound → NOT_FOUND, InvalidRequest → INVALID_ARGUMENT, InvalidState/Conflict →
FAILED_PRECONDITION, an exec timeout → DEADLINE_EXCEEDED, anything else → INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from warren.agent.guest_client import EntryInfo, ExecSession, GuestError
from warren.agent.manager import ExecTimeout, Sandbox, SandboxManager
from warren.errors import Conflict, InvalidRequest, NotFound, WarrenError
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

log = logging.getLogger("warren.agent.rpc")

_GUEST_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    "is_a_directory": grpc.StatusCode.INVALID_ARGUMENT,
    "not_a_directory": grpc.StatusCode.INVALID_ARGUMENT,
    "exists": grpc.StatusCode.INVALID_ARGUMENT,
    "permission": grpc.StatusCode.PERMISSION_DENIED,
    "no_space": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


def status_for(e: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, NotFound):
        return grpc.StatusCode.NOT_FOUND, e.message
    if isinstance(e, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, e.message
    if isinstance(e, Conflict):
        return grpc.StatusCode.FAILED_PRECONDITION, e.message
    if isinstance(e, ExecTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED, e.message
    if isinstance(e, GuestError):
        code = _GUEST_CODES.get(e.kind, grpc.StatusCode.INTERNAL)
        # The guest's own words say what is missing (a file, a command, a process).
        return code, e.message if e.kind == "not_found" else f"guest: {e}"
    if isinstance(e, WarrenError):
        return grpc.StatusCode.INTERNAL, e.message
    return grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"


async def _abort(context: grpc.aio.ServicerContext, e: BaseException, method: str) -> None:
    code, msg = status_for(e)
    if code == grpc.StatusCode.INTERNAL:
        log.error("event=rpc_error method=%s error=%s", method, msg, exc_info=not isinstance(e, WarrenError))
    await context.abort(code, msg)


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def _mapped_errors(handler: _Handler) -> _Handler:
    """For unary-response RPCs: any error of the call ends it with its mapped status code
    (``status_for``), in one place instead of a try/except in every method."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise  # the handler aborted on purpose with its own status
        except Exception as e:
            await _abort(context, e, handler.__name__)

    return cast(_Handler, wrapper)


def _selector(sel: pb.ProcessSelector) -> int | str:
    which = sel.WhichOneof("selector")
    if which == "pid":
        return sel.pid
    if which == "tag" and sel.tag:
        return sel.tag
    raise InvalidRequest("process selector (pid or tag) is required")


def _info(sb: Sandbox) -> pb.SandboxInfo:
    return pb.SandboxInfo(
        sandbox_id=sb.id,
        status=sb.status,
        template=sb.template,
        vcpus=sb.vcpus,
        memory_mb=sb.memory_mb,
        host_ip=sb.host_ip,
        created_at_unix=int(sb.created_at),
        last_active_at_unix=int(sb.last_active_at),
        timeout_sec=sb.timeout_sec,
        team_id=sb.team_id,
        template_id=sb.template_id,
        disk_size_mb=sb.disk_size_mb,
        internet=sb.internet,
    )


def _entry(e: EntryInfo) -> pb.EntryInfo:
    return pb.EntryInfo(
        name=e.name,
        type=e.type,
        path=e.path,
        size=e.size,
        mode=e.mode,
        permissions=e.permissions,
        owner=e.owner,
        group=e.group,
        modified_time_unix=int(e.modified_time),
        symlink_target=e.symlink_target or "",
    )


def _event(ev: Any) -> pb.ExecEvent | None:
    if ev.kind == "start":
        return pb.ExecEvent(start=pb.ExecEvent.Start(pid=ev.pid))
    if ev.kind == "stdout":
        return pb.ExecEvent(stdout=ev.data)
    if ev.kind == "stderr":
        return pb.ExecEvent(stderr=ev.data)
    if ev.kind == "exit":
        err = ev.error or ("timed out" if getattr(ev, "timed_out", False) else "")
        return pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=ev.exit_code, error=err))
    if ev.kind == "error":
        return pb.ExecEvent(exit=pb.ExecEvent.Exit(exit_code=-1, error=ev.error or "guest connection lost"))
    return None


class HostAgentServicer(pb_grpc.HostAgentServicer):
    def __init__(self, manager: SandboxManager, *, on_terminate: Callable[[], None] | None = None) -> None:
        self.m = manager
        self._on_terminate = on_terminate

    # -------------------------------------------------------------------------- lifecycle

    @_mapped_errors
    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: Any) -> pb.CreateSandboxResponse:
        sb = await self.m.create(
            sandbox_id=request.sandbox_id,
            team_id=request.team_id,
            template_id=request.template_id,
            template=request.template,
            vcpus=request.vcpus,
            memory_mb=request.memory_mb,
            disk_size_mb=request.disk_size_mb,
            timeout_sec=request.timeout_sec,
            internet=request.internet if request.HasField("internet") else True,
            env=dict(request.env),
        )
        return pb.CreateSandboxResponse(sandbox_id=sb.id, status=sb.status, host_ip=sb.host_ip)

    @_mapped_errors
    async def DestroySandbox(
        self, request: pb.DestroySandboxRequest, context: Any
    ) -> pb.DestroySandboxResponse:
        await self.m.destroy(request.sandbox_id)
        return pb.DestroySandboxResponse()

    @_mapped_errors
    async def PauseSandbox(self, request: pb.PauseSandboxRequest, context: Any) -> pb.PauseSandboxResponse:
        await self.m.pause(request.sandbox_id)
        return pb.PauseSandboxResponse()

    @_mapped_errors
    async def ResumeSandbox(self, request: pb.ResumeSandboxRequest, context: Any) -> pb.ResumeSandboxResponse:
        sb = await self.m.resume(request.sandbox_id, request.timeout_sec)
        return pb.ResumeSandboxResponse(sandbox_id=sb.id, status=sb.status, host_ip=sb.host_ip)

    @_mapped_errors
    async def PingSandbox(self, request: pb.PingSandboxRequest, context: Any) -> pb.PingSandboxResponse:
        await self.m.ping(request.sandbox_id)
        return pb.PingSandboxResponse()

    async def ListSandboxes(self, request: pb.ListSandboxesRequest, context: Any) -> pb.ListSandboxesResponse:
        sandboxes, auto = self.m.list_sandboxes()
        return pb.ListSandboxesResponse(sandboxes=[_info(s) for s in sandboxes], auto_paused_sandbox_ids=auto)

    async def PauseAll(self, request: pb.PauseAllRequest, context: Any) -> pb.PauseAllResponse:
        return pb.PauseAllResponse(sandbox_ids=await self.m.pause_all())

    async def Terminate(self, request: pb.TerminateRequest, context: Any) -> pb.TerminateResponse:
        # Asynchronous (SPEC §3.5): answer first, then destroy everything and stop.
        if self._on_terminate is not None:
            asyncio.get_running_loop().call_soon(self._on_terminate)
        return pb.TerminateResponse()

    # -------------------------------------------------------------------------- processes

    @_mapped_errors
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        res = await self.m.exec(
            request.sandbox_id,
            request.cmd,
            list(request.args),
            env=dict(request.env),
            cwd=request.cwd,
            timeout_sec=request.timeout_sec,
            stdin=request.stdin if request.stdin else None,
        )
        return pb.ExecResponse(stdout=res.stdout, stderr=res.stderr, exit_code=res.exit_code)

    async def ExecStream(
        self, request_iterator: AsyncIterator[pb.ExecStreamRequest], context: Any
    ) -> AsyncIterator[pb.ExecEvent]:
        session: ExecSession | None = None
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("msg") != "start":
                raise InvalidRequest("the first ExecStream message must be `start`")
            st = first.start
            session = await self.m.exec_stream(
                st.sandbox_id, st.cmd, list(st.args), env=dict(st.env), cwd=st.cwd,
                timeout_sec=st.timeout_sec, tag=st.tag, background=st.background,
            )  # fmt: skip
        except Exception as e:
            await _abort(context, e, "ExecStream")
            return
        assert session is not None
        pump = asyncio.create_task(self._pump_input(request_iterator, session, st.sandbox_id))
        try:
            async for out in self._relay(st.sandbox_id, session):
                yield out
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            await session.close()

    async def _relay(self, sandbox_id: str, session: ExecSession) -> AsyncIterator[pb.ExecEvent]:
        """A session's events as RPC events, up to its exit; the sandbox is in use meanwhile."""
        with self.m.in_use(sandbox_id):
            async for ev in session:
                out = _event(ev)
                if out is not None:
                    yield out
                if ev.kind in ("exit", "error"):
                    break

    async def _pump_input(
        self, requests: AsyncIterator[pb.ExecStreamRequest], session: ExecSession, sb_id: str
    ) -> None:
        with contextlib.suppress(GuestError, grpc.RpcError, asyncio.CancelledError):
            async for msg in requests:
                which = msg.WhichOneof("msg")
                if which == "stdin":
                    await session.send_stdin(msg.stdin)
                elif which == "close_stdin":
                    await session.close_stdin()
                elif which == "signal":
                    await session.signal(msg.signal)
                self.m.touch(sb_id)

    @_mapped_errors
    async def ListProcesses(self, request: pb.ListProcessesRequest, context: Any) -> pb.ListProcessesResponse:
        procs = await self.m.list_processes(request.sandbox_id)
        return pb.ListProcessesResponse(
            processes=[pb.ProcessInfo(pid=p.pid, tag=p.tag or "", cmd=p.cmd, args=p.args) for p in procs]
        )

    @_mapped_errors
    async def SignalProcess(self, request: pb.SignalProcessRequest, context: Any) -> pb.SignalProcessResponse:
        await self.m.signal(request.sandbox_id, _selector(request.process), request.signal or 15)
        return pb.SignalProcessResponse()

    @_mapped_errors
    async def SendStdin(self, request: pb.SendStdinRequest, context: Any) -> pb.SendStdinResponse:
        await self.m.send_stdin(request.sandbox_id, _selector(request.process), request.data)
        return pb.SendStdinResponse()

    @_mapped_errors
    async def CloseStdin(self, request: pb.CloseStdinRequest, context: Any) -> pb.CloseStdinResponse:
        await self.m.close_stdin(request.sandbox_id, _selector(request.process))
        return pb.CloseStdinResponse()

    async def AttachProcess(
        self, request: pb.AttachProcessRequest, context: Any
    ) -> AsyncIterator[pb.ExecEvent]:
        try:
            session = await self.m.attach(request.sandbox_id, _selector(request.process))
        except Exception as e:
            await _abort(context, e, "AttachProcess")
            return
        try:
            async for out in self._relay(request.sandbox_id, session):
                yield out
        finally:
            await session.close()

    # ------------------------------------------------------------------------------ files

    @_mapped_errors
    async def WriteFile(self, request: pb.WriteFileRequest, context: Any) -> pb.WriteFileResponse:
        async def one() -> AsyncIterator[bytes]:
            yield request.content

        n = await self.m.write_file(request.sandbox_id, request.path, one(), request.mode)
        return pb.WriteFileResponse(bytes_written=n)

    @_mapped_errors
    async def ReadFile(self, request: pb.ReadFileRequest, context: Any) -> pb.ReadFileResponse:
        content = b"".join([c async for c in self.m.read_file(request.sandbox_id, request.path)])
        return pb.ReadFileResponse(content=content)

    @_mapped_errors
    async def WriteFileStream(
        self, request_iterator: AsyncIterator[pb.WriteFileStreamRequest], context: Any
    ) -> pb.WriteFileResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidRequest("empty WriteFileStream")
        if first.WhichOneof("msg") != "meta":
            raise InvalidRequest("the first WriteFileStream message must be `meta`")
        meta = first.meta

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in request_iterator:
                if msg.WhichOneof("msg") != "chunk":
                    raise InvalidRequest("only `chunk` messages may follow `meta`")
                yield msg.chunk

        n = await self.m.write_file(meta.sandbox_id, meta.path, chunks(), meta.mode)
        return pb.WriteFileResponse(bytes_written=n)

    async def ReadFileStream(
        self, request: pb.ReadFileRequest, context: Any
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        try:
            async for chunk in self.m.read_file(request.sandbox_id, request.path):
                yield pb.ReadFileStreamResponse(chunk=chunk)
        except Exception as e:
            await _abort(context, e, "ReadFileStream")

    @_mapped_errors
    async def ListDir(self, request: pb.ListDirRequest, context: Any) -> pb.ListDirResponse:
        entries = await self.m.list_dir(request.sandbox_id, request.path, request.depth)
        return pb.ListDirResponse(entries=[_entry(e) for e in entries])

    @_mapped_errors
    async def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        entry = await self.m.stat(request.sandbox_id, request.path)
        return pb.StatResponse(entry=_entry(entry))

    @_mapped_errors
    async def MakeDir(self, request: pb.MakeDirRequest, context: Any) -> pb.MakeDirResponse:
        await self.m.make_dir(request.sandbox_id, request.path)
        return pb.MakeDirResponse(created=True)

    @_mapped_errors
    async def Remove(self, request: pb.RemoveRequest, context: Any) -> pb.RemoveResponse:
        await self.m.remove(request.sandbox_id, request.path)
        return pb.RemoveResponse()

    @_mapped_errors
    async def Move(self, request: pb.MoveRequest, context: Any) -> pb.MoveResponse:
        await self.m.move(request.sandbox_id, request.source, request.destination)
        return pb.MoveResponse()

    # ------------------------------------------------------------------ snapshots, metrics

    @_mapped_errors
    async def CreateSnapshot(
        self, request: pb.CreateSnapshotRequest, context: Any
    ) -> pb.CreateSnapshotResponse:
        size = await self.m.create_snapshot(request.sandbox_id, request.team_id, request.template_id)
        return pb.CreateSnapshotResponse(name=request.name, size_bytes=size, kind="filesystem")

    @_mapped_errors
    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: Any
    ) -> pb.DeleteSnapshotResponse:
        await self.m.delete_snapshot(request.team_id, request.template_id)
        return pb.DeleteSnapshotResponse()

    @_mapped_errors
    async def GetSandboxMetrics(
        self, request: pb.GetSandboxMetricsRequest, context: Any
    ) -> pb.GetSandboxMetricsResponse:
        points = self.m.metrics(request.sandbox_id, request.range)
        return pb.GetSandboxMetricsResponse(
            points=[
                pb.MetricPoint(timestamp_unix=t, cpu_pct=c, mem_bytes=m, disk_bytes=d)
                for t, c, m, d in points
            ]
        )
