"""A file's bytes between the CP and an agent, with flow credit: ``ReadFileCredit`` and
``WriteFileCredit`` (rpc/hostagent.proto; the agent's side is ``agent/exec_credit.py``).

gRPC's flow-control windows grow with its bandwidth probes (MiBs a stream), and they bounded
nothing useful: an admitted download its client did not read held ~5 MiB of the CP and ~3 MiB of
the agent, an upload into a guest that took nothing up to ~17 MiB of the agent. With credit each
direction holds a window:

- download: the agent sends at most 256 KiB past what this side acknowledged, and this side
  acknowledges a chunk once it has handed it on to the client (the ASGI server's ``send``
  returned: the response's write backpressure), in :data:`OUTPUT_ACK_BYTES` batches. The agent
  ends the file with an empty message and the call only once this side has half-closed: a call
  that ends while an acknowledgement is on its way fails here (INTERNAL) with every byte read;
- upload: the agent acknowledges the bytes it has written to the guest, and this side reads no
  more of the client's body than :data:`UPLOAD_WINDOW` past that.

An agent with them sends the call's initial metadata (``warren-file-credit``) before it reads a
message, and this side waits for it before writing one (a round trip); an agent from before
answers ``UNIMPLEMENTED`` instead, and the plain streams (``ReadFileStream``,
``WriteFileStream``) carry the transfer, as they did. An upload also waits for the agent's
``ready`` before it reads the client's body, so a refusal comes before any byte is on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import grpc.aio

from warren.aio import cancel_and_wait
from warren.cp.hosts.client_pool import HostClient
from warren.cp.services.exec_stream import OUTPUT_ACK_BYTES
from warren.cp.services.pty import InputCredit
from warren.errors import AgentError
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger("warren.files")

CHUNK = 64 * 1024
# Upload bytes sent to the agent and not acknowledged as written to the guest, past which the
# client's body is not read. The agent acknowledges in 128 KiB batches
# (exec_credit.STDIN_ACK_BYTES): this must be at least that plus one CHUNK.
UPLOAD_WINDOW = 256 << 10
# The initial metadata an agent with the credit streams sends first (agent/exec_credit.py's
# FILE_CREDIT_METADATA).
_CREDIT_KEY = "warren-file-credit"
# What a grpc.aio stream's read() returns at the end (missing from the type stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]


async def _credit(call: Any) -> bool:
    """Whether the agent keeps to credit on this stream-stream ``call``: its initial metadata,
    sent before it reads a message, says so. Nothing is written before: a message on its way
    while an agent from before answers UNIMPLEMENTED can turn that into INTERNAL ("Internal
    error from Core"). False for such an agent; any other end of the call is raised."""
    md = await call.initial_metadata()
    if md is not None and _CREDIT_KEY in dict(md):
        return True
    try:
        while await call.read() is not _EOF:  # the call has ended: its status
            pass
        raise AgentError("the agent answered a file stream without credit", rpc_code="INTERNAL")
    except AgentError as e:
        if e.rpc_code != "UNIMPLEMENTED":
            raise
        return False
    finally:
        # Ends grpc.aio's request proxy, which a cancel alone leaves pending (logged at exit).
        with contextlib.suppress(Exception):
            await call.done_writing()


class StreamAborted(Exception):
    """A download broke after its first byte; raised inside the response body on purpose."""


# -------------------------------------------------------------------------------------- write


async def write(
    client: HostClient, sid: str, path: str, chunks: AsyncIterator[bytes], user: str,
    metadata: Mapping[str, str] | None = None,
) -> None:  # fmt: skip
    """``chunks`` to ``path`` in the sandbox, whole or not at all: ``meta``, ≤ 64 KiB chunks, then
    ``commit``. If ``chunks`` fails (a truncated or broken upload), the RPC is cancelled so the
    agent discards the partial file. ``metadata``: the new file's ``user.e2b.*`` extended
    attributes (E2B's file metadata, docs/e2b.md §3.2)."""
    meta = pb.WriteFileStreamRequest(
        meta=pb.WriteFileMeta(
            sandbox_id=sid, path=path, explicit_commit=True, user=user, metadata=metadata or {}
        )
    )
    call = client.stub.WriteFileCredit(None, timeout=None)  # None: requests go by call.write()
    try:
        if not await _credit(call):
            call.cancel()
            await _plain_upload(client, meta, chunks)
            return
        await _send_credited(call, meta)
        # Nothing of ``chunks`` is read before the agent's answer: a refusal (no such sandbox or
        # user) comes before any of the body is on its way.
        first: Any = await call.read()
        if first is _EOF or first.WhichOneof("msg") != "ready":
            raise AgentError("the agent did not start the upload", rpc_code="INTERNAL")
        await _credited_upload(call, chunks)
    except BaseException:
        call.cancel()
        raise


async def _credited_upload(call: Any, chunks: AsyncIterator[bytes]) -> None:
    """The upload's chunks, a window ahead of the agent's acknowledgements, to its ``done``."""
    credit = InputCredit(UPLOAD_WINDOW)
    writer = asyncio.create_task(_send_chunks(call, chunks, credit))
    reader = asyncio.create_task(_upload_events(call, credit))
    try:
        await asyncio.wait((writer, reader), return_when=asyncio.FIRST_EXCEPTION)
        if writer.done() and (e := writer.exception()) is not None:
            raise e  # the client's body broke (or was too large): the call is cancelled
        await reader  # the agent's `done`, or its error (the writer then waits for nothing)
    finally:
        await cancel_and_wait(writer, reader)


async def _send_chunks(call: Any, chunks: AsyncIterator[bytes], credit: InputCredit) -> None:
    try:
        async for data in chunks:
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                piece = bytes(view[i : i + CHUNK])
                await credit.take(len(piece))  # the client's next bytes wait meanwhile
                await call.write(pb.WriteFileStreamRequest(chunk=piece))
        # Only now is the upload whole: the agent discards a file that ends without this.
        await call.write(pb.WriteFileStreamRequest(commit=True))
        await call.done_writing()
    except asyncio.InvalidStateError:
        pass  # the agent ended the call (it refused the path, say): its status is the answer


async def _upload_events(call: Any, credit: InputCredit) -> None:
    while (ev := await call.read()) is not _EOF:
        which = ev.WhichOneof("msg")
        if which == "acked":
            credit.give(ev.acked)
        elif which == "done":
            return
    raise AgentError("the agent ended the upload without an answer", rpc_code="INTERNAL")


async def _send_credited(call: Any, request: Any) -> None:
    """A request on a stream-stream call; a call the agent has already ended answers its own
    status (an AgentError) rather than InvalidStateError."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        while await call.read() is not _EOF:
            pass
        raise


async def _plain_upload(
    client: HostClient, meta: pb.WriteFileStreamRequest, chunks: AsyncIterator[bytes]
) -> None:
    """WriteFileStream, for an agent without credit: gRPC's flow control pushes back."""
    call = client.stub.WriteFileStream(None, timeout=None)
    try:
        await _send_plain(call, meta)
        async for data in chunks:
            view = memoryview(data)
            for i in range(0, len(view), CHUNK):
                await _send_plain(call, pb.WriteFileStreamRequest(chunk=bytes(view[i : i + CHUNK])))
        await _send_plain(call, pb.WriteFileStreamRequest(commit=True))
        await call.done_writing()
        await call
    except BaseException:
        call.cancel()
        raise


async def _send_plain(call: Any, request: pb.WriteFileStreamRequest) -> None:
    """One upload message. When the agent has already ended the call (it refused the path, say,
    while the file was still on its way) grpc.aio raises InvalidStateError: the call's own status
    (an AgentError) is the answer, not that."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:
        await call
        raise


# --------------------------------------------------------------------------------------- read


async def open_read(client: HostClient, sid: str, path: str, user: str) -> AsyncGenerator[bytes]:
    """Open the file's read stream and fetch its first chunk here, so that an error before the
    data flows (no such file, ...) raises before the response starts; then relay the rest."""
    req = pb.ReadFileRequest(sandbox_id=sid, path=path, user=user)
    call = client.stub.ReadFileCredit(None, timeout=None)
    try:
        if not await _credit(call):
            call.cancel()
            return await _open_plain_read(client, req)
        await _send_credited(call, pb.ReadFileCreditRequest(open=req))
        first = await call.read()
    except BaseException:
        call.cancel()
        raise
    return _relay(call, first, sid, path, credit=True)


async def _open_plain_read(client: HostClient, req: pb.ReadFileRequest) -> AsyncGenerator[bytes]:
    """ReadFileStream, for an agent without credit."""
    call = client.stub.ReadFileStream(req, timeout=None)
    try:
        first = await call.read()
    except BaseException:
        call.cancel()
        raise
    return _relay(call, first, req.sandbox_id, req.path, credit=False)


async def _relay(call: Any, first: Any, sid: str, path: str, *, credit: bool) -> AsyncGenerator[bytes]:
    try:
        msg, taken = first, 0
        while msg is not _EOF:
            if chunk := msg.chunk:
                yield chunk
                taken += len(chunk)  # handed on: the response's send returned
                if credit and taken >= OUTPUT_ACK_BYTES:
                    await _ack(call, taken)
                    taken = 0
            elif credit:  # the agent's end: it ends the call once this side has half-closed
                with contextlib.suppress(asyncio.InvalidStateError):
                    await call.done_writing()
            try:
                msg = await call.read()
            except AgentError as e:
                log.warning("file stream read failed midway sandbox=%s path=%s: %s", sid, path, e)
                # Raising here makes the server abort the response (no final chunk): the client
                # sees a broken transfer, never a silently short file.
                raise StreamAborted(e.message) from e
    finally:
        call.cancel()


async def _ack(call: Any, n: int) -> None:
    # The agent may have sent the whole file and ended the call: its last chunks are read on.
    with contextlib.suppress(asyncio.InvalidStateError):
        await call.write(pb.ReadFileCreditRequest(acked=n))


__all__ = ["StreamAborted", "open_read", "write"]
