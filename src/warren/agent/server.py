"""The HostAgent gRPC servicer: thin. Each method converts messages and calls SandboxManager.

Errors become gRPC status codes in one place, ``rpc_errors.status_for`` (docs/spec.md §0.5,
docs/spec.md §5.3). The template-store RPCs are the ``server_store.TemplateStoreRpcs`` mixin.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from warren import egress_rules
from warren.agent import dial, dial_data, pty_rpc, watch_rpc
from warren.agent import exec_credit as ec
from warren.agent.egress_update import update_network
from warren.agent.egress_usage import sandbox_egress
from warren.agent.exec_credit import READ_AHEAD, CreditedExec
from warren.agent.guest_client import EntryInfo
from warren.agent.guest_wire import DETACHED_ATTACH, STREAM_LIMIT, ExecSession, GuestError, answers
from warren.agent.manager import SandboxManager
from warren.agent.record import HostSandbox
from warren.agent.rpc_errors import ExecTimeout, abort, mapped_errors, relay
from warren.agent.server_store import TemplateStoreRpcs, chain_of
from warren.aio import cancel_and_wait
from warren.errors import InvalidRequest
from warren.rpc import hostagent_pb2 as pb
from warren.rpc import hostagent_pb2_grpc as pb_grpc

log = logging.getLogger("warren.agent.rpc")

DEFAULT_EXEC_TIMEOUT = 30
# A POSIX user name is at most 32 characters (the guest checks the name itself).
MAX_USER_NAME = 32


# A unary ReadFile answers one message: well under the 64 MiB gRPC cap (ReadFileStream: any size).
_MAX_UNARY_READ = 32 << 20


def _selector(sel: pb.ProcessSelector) -> int | str:
    which = sel.WhichOneof("selector")
    if which == "pid":
        return sel.pid
    if which == "tag" and sel.tag:
        return sel.tag
    raise InvalidRequest("process selector (pid or tag) is required")


def _info(sb: HostSandbox) -> pb.SandboxInfo:
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
        runtime=sb.runtime,
        paused_state=sb.paused_state if sb.status == "paused" else "",
    )


def _egress(e: pb.EgressRules) -> egress_rules.EgressRules:
    return egress_rules.parse(list(e.allow_out), list(e.deny_out))


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
        metadata=e.metadata,
        target_type=e.target_type,
        target_mode=e.target_mode,
        resolved_target=e.resolved_target,
    )


def _path(path: str) -> str:
    # The guest resolves paths inside the sandbox's own mount namespace, so `..` and symlinks
    # cannot leave its rootfs; here we only refuse what is malformed.
    if not path or "\0" in path:
        raise InvalidRequest("path is required")
    return path


def _cmd(cmd: str) -> str:
    if not cmd:
        raise InvalidRequest("cmd is required")
    return cmd


def _event(ev: Any) -> pb.ExecEvent | None:
    if ev.kind == "detached":  # a background process's client that did not read (lag.py)
        raise GuestError("detached", DETACHED_ATTACH)
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


class HostAgentServicer(TemplateStoreRpcs, pb_grpc.HostAgentServicer):
    def __init__(self, manager: SandboxManager, *, on_terminate: Callable[[], None] | None = None) -> None:
        self.m = manager
        self._on_terminate = on_terminate

    # -------------------------------------------------------------------------- lifecycle

    @mapped_errors
    async def CreateSandbox(self, request: pb.CreateSandboxRequest, context: Any) -> pb.CreateSandboxResponse:
        chain, config = chain_of(request.chain) if request.HasField("chain") else (None, None)
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
            egress_allow=list(request.egress_allow),
            chain=chain,
            config=config,
            egress=_egress(request.egress),
            runtime=request.runtime,
            owner_team=request.owner_team_id,
            owner_account=request.owner_account_id,
        )
        return pb.CreateSandboxResponse(
            sandbox_id=sb.id, status=sb.status, host_ip=sb.host_ip, disk_size_mb=sb.disk_size_mb
        )

    @mapped_errors
    async def UpdateNetwork(self, request: pb.UpdateNetworkRequest, context: Any) -> pb.UpdateNetworkResponse:
        await update_network(self.m, request.sandbox_id, _egress(request.egress))
        return pb.UpdateNetworkResponse()

    @mapped_errors
    async def SetWarmPool(self, request: pb.SetWarmPoolRequest, context: Any) -> pb.SetWarmPoolResponse:
        chain, config = chain_of(request.chain) if request.HasField("chain") else (None, None)
        await self.m.warm_pools.set(request.template, request.size, chain, config)
        return pb.SetWarmPoolResponse(
            pools=[
                pb.WarmPoolStatus(template=p.template, target=p.target, ready=p.ready)
                for p in self.m.warm_pools.statuses()
            ]
        )

    @mapped_errors
    async def DestroySandbox(
        self, request: pb.DestroySandboxRequest, context: Any
    ) -> pb.DestroySandboxResponse:
        await self.m.destroy(request.sandbox_id)
        return pb.DestroySandboxResponse()

    @mapped_errors
    async def PauseSandbox(self, request: pb.PauseSandboxRequest, context: Any) -> pb.PauseSandboxResponse:
        await self.m.pause(request.sandbox_id, resume_after=request.resume_after)
        return pb.PauseSandboxResponse(paused_state=self.m.sandbox(request.sandbox_id).paused_state)

    @mapped_errors
    async def ResumeSandbox(self, request: pb.ResumeSandboxRequest, context: Any) -> pb.ResumeSandboxResponse:
        sb = await self.m.resume(request.sandbox_id, request.timeout_sec)
        return pb.ResumeSandboxResponse(sandbox_id=sb.id, status=sb.status, host_ip=sb.host_ip)

    @mapped_errors
    async def PingSandbox(self, request: pb.PingSandboxRequest, context: Any) -> pb.PingSandboxResponse:
        await self.m.ping(request.sandbox_id)
        return pb.PingSandboxResponse()

    async def ListSandboxes(self, request: pb.ListSandboxesRequest, context: Any) -> pb.ListSandboxesResponse:
        sandboxes, auto = self.m.list_sandboxes()
        infos = [_info(s) for s in sandboxes]
        sent = await sandbox_egress(self.m, sandboxes)  # per-team egress (egress_usage.py)
        for info in infos:
            if info.sandbox_id in sent:
                info.egress_bytes = sent[info.sandbox_id]
        ended = [
            pb.SandboxEgress(sandbox_id=k, egress_bytes=v) for k, v in self.m.network.ended.entries().items()
        ]
        return pb.ListSandboxesResponse(
            sandboxes=infos, auto_paused_sandbox_ids=auto,
            creating_sandbox_ids=self.m.creating(), reports_creating=True, ended_egress=ended,
        )  # fmt: skip

    async def PauseAll(self, request: pb.PauseAllRequest, context: Any) -> pb.PauseAllResponse:
        return pb.PauseAllResponse(sandbox_ids=await self.m.pause_all())

    async def Terminate(self, request: pb.TerminateRequest, context: Any) -> pb.TerminateResponse:
        # Asynchronous (docs/spec.md §3.5): answer first, then destroy everything and stop.
        if self._on_terminate is not None:
            asyncio.get_running_loop().call_soon(self._on_terminate)
        return pb.TerminateResponse()

    # -------------------------------------------------------------------------- processes

    @mapped_errors
    async def Exec(self, request: pb.ExecRequest, context: Any) -> pb.ExecResponse:
        r = request
        cmd, guest = _cmd(r.cmd), await self.m.ready_guest(r.sandbox_id)
        timeout = r.timeout_sec if r.timeout_sec > 0 else DEFAULT_EXEC_TIMEOUT
        user, cwd = self._exec_as(r.sandbox_id, r.user, r.cwd)
        with self.m.in_use(r.sandbox_id):
            res = await guest.exec(cmd, list(r.args), env=dict(r.env) or None, cwd=cwd,
                                   timeout=timeout, stdin=r.stdin or None, user=user)  # fmt: skip
        if res.timed_out:
            raise ExecTimeout(f"command timed out after {timeout}s")
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
            cmd, guest = _cmd(st.cmd), await self.m.ready_guest(st.sandbox_id)
            self.m.touch(st.sandbox_id)
            user, cwd = self._exec_as(st.sandbox_id, st.user, st.cwd)
            session = await guest.exec_stream(
                cmd, list(st.args), env=dict(st.env) or None, cwd=cwd,
                timeout=st.timeout_sec or None, tag=st.tag or None, background=st.background, user=user,
                backpressure=st.backpressure, read_ahead=READ_AHEAD if st.credit else STREAM_LIMIT,
            )  # fmt: skip
        except Exception as e:
            await abort(context, e, "ExecStream")
            return
        assert session is not None
        if st.background and not st.backpressure:  # its client is not waited for: may be cut
            session.alive = answers(lambda: self.m.guest(st.sandbox_id))
        if st.credit:  # both directions bounded per stream (exec_credit)
            sid = st.sandbox_id
            credited = CreditedExec(session, _event, lambda: self.m.touch(sid))
            try:
                with self.m.in_use(sid):
                    async for out in credited.events(request_iterator):
                        yield out
            except GuestError as e:  # its container died (guest_wire.NOT_RUNNING), or detached
                await abort(context, e, "ExecStream")
            finally:
                await session.close()
            return
        pump = asyncio.create_task(self._pump_input(request_iterator, session, st.sandbox_id))
        try:
            async for out in self._relay(st.sandbox_id, session):
                yield out
        except GuestError as e:
            await abort(context, e, "ExecStream")
        finally:
            await cancel_and_wait(pump)
            await session.close()

    def _as(self, sandbox_id: str, user: str) -> str:
        """The user a call runs as: its own, else the template's (``""``: the guest's, root)."""
        if len(user) > MAX_USER_NAME:
            raise InvalidRequest(f"user: at most {MAX_USER_NAME} characters")
        return user or self.m.template_config(sandbox_id).user

    def _exec_as(self, sandbox_id: str, user: str, cwd: str) -> tuple[str, str | None]:
        """An exec's user and cwd: the request's, else the template's user and workdir (no
        workdir: the guest starts in the user's home)."""
        return self._as(sandbox_id, user), cwd or self.m.template_config(sandbox_id).workdir or None

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

    async def PtyStream(
        self, request_iterator: AsyncIterator[pb.PtyRequest], context: Any
    ) -> AsyncIterator[pb.PtyEvent]:
        # Errors up to the first event (bad start, unknown pid, guest refusals) end the call
        # with their mapped status, like ExecStream; the relay itself is in pty_rpc.
        try:
            first = await anext(aiter(request_iterator), None)
            sid = pty_rpc.sandbox_of(first)
            assert first is not None
            st = first.start
            user, cwd = self._exec_as(sid, st.user, st.cwd) if first.HasField("start") else ("", None)
            events = pty_rpc.pty_stream(self.m, first, request_iterator, user=user, cwd=cwd)
            started = await anext(events)
        except Exception as e:
            await abort(context, e, "PtyStream")
            return
        async with contextlib.aclosing(relay(context, events, "PtyStream", first=started)) as msgs:
            async for msg in msgs:
                yield msg

    @mapped_errors
    async def PtyControl(self, request: pb.PtyControlRequest, context: Any) -> pb.PtyControlResponse:
        await pty_rpc.control(await self.m.ready_guest(request.sandbox_id), request)
        return pb.PtyControlResponse()

    @mapped_errors
    async def ListProcesses(self, request: pb.ListProcessesRequest, context: Any) -> pb.ListProcessesResponse:
        guest = await self.m.ready_guest(request.sandbox_id)
        procs = await guest.list_processes()
        return pb.ListProcessesResponse(
            processes=[
                pb.ProcessInfo(pid=p.pid, tag=p.tag or "", cmd=p.cmd, args=p.args, running=p.running)
                for p in procs
            ]
        )

    @mapped_errors
    async def SignalProcess(self, request: pb.SignalProcessRequest, context: Any) -> pb.SignalProcessResponse:
        guest = await self.m.ready_guest(request.sandbox_id)
        await guest.signal(_selector(request.process), request.signal or 15)
        return pb.SignalProcessResponse()

    @mapped_errors
    async def SendStdin(self, request: pb.SendStdinRequest, context: Any) -> pb.SendStdinResponse:
        guest = await self.m.ready_guest(request.sandbox_id)
        await guest.send_stdin(_selector(request.process), request.data)
        return pb.SendStdinResponse()

    @mapped_errors
    async def CloseStdin(self, request: pb.CloseStdinRequest, context: Any) -> pb.CloseStdinResponse:
        guest = await self.m.ready_guest(request.sandbox_id)
        await guest.close_stdin(_selector(request.process))
        return pb.CloseStdinResponse()

    async def AttachProcess(
        self, request: pb.AttachProcessRequest, context: Any
    ) -> AsyncIterator[pb.ExecEvent]:
        sid = request.sandbox_id
        try:
            guest = await self.m.ready_guest(sid)
            session = await guest.attach(_selector(request.process))
        except Exception as e:
            await abort(context, e, "AttachProcess")
            return
        session.alive = answers(lambda: self.m.guest(sid))  # the guest may detach this client
        try:
            async for out in self._relay(sid, session):
                yield out
        except GuestError as e:  # its container died (guest_wire.NOT_RUNNING), or it detached
            await abort(context, e, "AttachProcess")
        finally:
            await session.close()

    # ------------------------------------------------------------------------------ files

    @mapped_errors
    async def WriteFile(self, request: pb.WriteFileRequest, context: Any) -> pb.WriteFileResponse:
        async def one() -> AsyncIterator[bytes]:
            yield request.content

        guest, user = await self.m.ready_guest(request.sandbox_id), self._as(request.sandbox_id, request.user)
        n = await guest.write_file(_path(request.path), one(), request.mode or None, user=user)
        return pb.WriteFileResponse(bytes_written=n)

    @mapped_errors
    async def ReadFile(self, request: pb.ReadFileRequest, context: Any) -> pb.ReadFileResponse:
        content = bytearray()
        user = self._as(request.sandbox_id, request.user)
        guest = await self.m.ready_guest(request.sandbox_id)
        async for chunk in guest.read_file(_path(request.path), user=user):
            content += chunk
            if len(content) > _MAX_UNARY_READ:
                raise GuestError(
                    "too_large", f"file is larger than {_MAX_UNARY_READ} bytes; use ReadFileStream"
                )
        return pb.ReadFileResponse(content=bytes(content))

    @mapped_errors
    async def WriteFileStream(
        self, request_iterator: AsyncIterator[pb.WriteFileStreamRequest], context: Any
    ) -> pb.WriteFileResponse:
        meta = await ec.upload_meta(request_iterator)
        write = await self._file_write(meta)
        n = await write(ec.upload_chunks(meta, request_iterator, context))
        return pb.WriteFileResponse(bytes_written=n)

    async def WriteFileCredit(
        self, request_iterator: AsyncIterator[pb.WriteFileStreamRequest], context: Any
    ) -> AsyncIterator[pb.WriteFileCreditEvent]:
        """WriteFileStream with flow credit (exec_credit.credited_write)."""
        windows = ec.file_windows(self.m.settings)
        try:
            await context.send_initial_metadata(windows.metadata())
            meta = await ec.upload_meta(request_iterator)
            write = await self._file_write(meta)
            grower = windows.grower(self.m.sandbox(meta.sandbox_id).tenant, meta)
        except Exception as e:
            await abort(context, e, "WriteFileCredit")
            return
        chunks = ec.upload_chunks(meta, request_iterator, context, grower)
        events = ec.credited_write(write, chunks, grower, stops_on_refusal=meta.stops_on_refusal)
        async with contextlib.aclosing(relay(context, events, "WriteFileCredit")) as msgs:
            async for msg in msgs:
                yield msg

    async def _file_write(self, meta: pb.WriteFileMeta) -> Callable[[AsyncIterator[bytes]], Awaitable[int]]:
        """The guest's write of the upload ``meta`` names, over the chunks it is given."""
        guest, user = await self.m.ready_guest(meta.sandbox_id), self._as(meta.sandbox_id, meta.user)
        path, metadata = _path(meta.path), dict(meta.metadata)
        return functools.partial(guest.write_file, path, mode=meta.mode or None, user=user, metadata=metadata)

    async def ReadFileStream(
        self, request: pb.ReadFileRequest, context: Any
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        try:
            guest = await self.m.ready_guest(request.sandbox_id)
            user = self._as(request.sandbox_id, request.user)
            async for chunk in guest.read_file(_path(request.path), user=user):
                yield pb.ReadFileStreamResponse(chunk=chunk)
        except Exception as e:
            await abort(context, e, "ReadFileStream")

    async def ReadFileCredit(
        self, request_iterator: AsyncIterator[pb.ReadFileCreditRequest], context: Any
    ) -> AsyncIterator[pb.ReadFileStreamResponse]:
        """ReadFileStream with flow credit (exec_credit.credited_read). Errors before the first
        chunk (no such file, ...) end the call with their status, as ReadFileStream's."""
        windows = ec.file_windows(self.m.settings)
        try:
            await context.send_initial_metadata(windows.metadata())
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("msg") != "open":
                raise InvalidRequest("the first ReadFileCredit message must be `open`")
            r = first.open
            guest, user = await self.m.ready_guest(r.sandbox_id), self._as(r.sandbox_id, r.user)
            chunks = guest.read_file(_path(r.path), user=user, read_ahead=READ_AHEAD)
            allowance = windows.allowance(self.m.sandbox(r.sandbox_id).tenant)
            events = ec.credited_read(chunks, request_iterator, allowance)
            started = await anext(events, None)
        except Exception as e:
            await abort(context, e, "ReadFileCredit")
            return
        if started is None:  # an empty file
            return
        async with contextlib.aclosing(relay(context, events, "ReadFileCredit", first=started)) as msgs:
            async for msg in msgs:
                yield msg

    @mapped_errors
    async def ListDir(self, request: pb.ListDirRequest, context: Any) -> pb.ListDirResponse:
        r = request
        guest, user = await self.m.ready_guest(r.sandbox_id), self._as(r.sandbox_id, r.user)
        page = await guest.list_dir(_path(r.path), max(1, r.depth), limit=r.limit, cursor=r.cursor, user=user)
        return pb.ListDirResponse(
            entries=[_entry(e) for e in page.entries], next_cursor=page.next_cursor, has_more=page.has_more
        )

    @mapped_errors
    async def Stat(self, request: pb.StatRequest, context: Any) -> pb.StatResponse:
        guest, user = await self.m.ready_guest(request.sandbox_id), self._as(request.sandbox_id, request.user)
        entry = await guest.stat(_path(request.path), follow=request.follow_symlinks, user=user)
        return pb.StatResponse(entry=_entry(entry))

    @mapped_errors
    async def MakeDir(self, request: pb.MakeDirRequest, context: Any) -> pb.MakeDirResponse:
        user = self._as(request.sandbox_id, request.user)
        guest = await self.m.ready_guest(request.sandbox_id)
        await guest.make_dir(_path(request.path), user=user)
        return pb.MakeDirResponse(created=True)

    @mapped_errors
    async def Remove(self, request: pb.RemoveRequest, context: Any) -> pb.RemoveResponse:
        user = self._as(request.sandbox_id, request.user)
        guest = await self.m.ready_guest(request.sandbox_id)
        await guest.remove(_path(request.path), user=user)
        return pb.RemoveResponse()

    @mapped_errors
    async def Move(self, request: pb.MoveRequest, context: Any) -> pb.MoveResponse:
        user = self._as(request.sandbox_id, request.user)
        src, dst = _path(request.source), _path(request.destination)
        guest = await self.m.ready_guest(request.sandbox_id)
        await guest.move(src, dst, user=user)
        return pb.MoveResponse()

    # ------------------------------------------------------------------------------ watch

    async def WatchDir(self, request: pb.WatchDirRequest, context: Any) -> AsyncIterator[pb.WatchEvent]:
        # A refusal (missing path, too many dirs, the user may not read it) ends the call with
        # its mapped status before the first message; then `started` and the events.
        try:
            it = await watch_rpc.start(self.m, request, self._as(request.sandbox_id, request.user))
        except Exception as e:
            await abort(context, e, "WatchDir")
            return
        async with contextlib.aclosing(relay(context, watch_rpc.stream(it), "WatchDir")) as msgs:
            async for msg in msgs:
                yield msg

    @mapped_errors
    async def CreateWatcher(self, request: pb.WatchDirRequest, context: Any) -> pb.CreateWatcherResponse:
        user = self._as(request.sandbox_id, request.user)
        return pb.CreateWatcherResponse(watcher_id=await watch_rpc.watchers_of(self.m).create(request, user))

    @mapped_errors
    async def PollWatcher(self, request: pb.PollWatcherRequest, context: Any) -> pb.PollWatcherResponse:
        events, overflowed = watch_rpc.watchers_of(self.m).poll(request.sandbox_id, request.watcher_id)
        return pb.PollWatcherResponse(events=events, overflowed=overflowed)

    @mapped_errors
    async def RemoveWatcher(self, request: pb.RemoveWatcherRequest, context: Any) -> pb.RemoveWatcherResponse:
        await watch_rpc.watchers_of(self.m).remove(request.sandbox_id, request.watcher_id)
        return pb.RemoveWatcherResponse()

    # ------------------------------------------------------------------------- metrics

    @mapped_errors
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

    # ------------------------------------------------------------- ports (preview URLs)

    async def DialPort(
        self, request_iterator: AsyncIterator[pb.DialRequest], context: Any
    ) -> AsyncIterator[pb.DialEvent]:
        d = dial.dialer_for(self.m)
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("msg") != "open":
                raise InvalidRequest("the first DialPort message must be `open`")
            sb_id, port = first.open.sandbox_id, first.open.port
            if not 1 <= port <= 65535:
                raise InvalidRequest("port must be 1..65535")
            with d.slot_for(sb_id):
                reader, writer = await d.connect(sb_id, port)
                async for ev in d.relay(sb_id, reader, writer, request_iterator, context):
                    yield ev
        except Exception as e:
            await abort(context, e, "DialPort")

    @mapped_errors
    async def OpenDialTicket(self, request: pb.DialOpen, context: Any) -> pb.DialTicket:
        dp = dial_data.data_port_for(self.m)
        if dp is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this agent has no dial data port")
        assert dp is not None  # (abort raises)
        return await dp.issue(request.sandbox_id, request.port)
