"""The CP's side of the host agent RPC: one ``grpc.aio`` client interceptor that turns every
failed call into the domain's :class:`warren.errors.AgentError`.

Every channel the pool opens carries it (:func:`agent_errors`), so call sites use the generated
stub as it is, typed by ``hostagent_pb2_grpc.pyi``::

    resp = await client.stub.CreateSandbox(req, timeout=600)

and an RPC failure (unary or streaming, on await, on iteration or on ``read()``) comes out as an
``AgentError`` whose ``rpc_code`` is the gRPC status name; ``warren.cp.http_errors`` maps it to
HTTP in one place (NOT_FOUND → 404, INVALID_ARGUMENT → 400, FAILED_PRECONDITION → 409, …). Its
``guest_kind`` is the guest's error kind the agent sent as trailing metadata
(``warren/rpc/guest_kind.py``), when it did.

The same interceptor sends the current request's id (``warren.request_context``) as the
``x-request-id`` metadata of every call, so the agent's log lines carry it, and counts failed
calls by method and code (``warren_agent_rpc_errors_total``).

What the CP stores of an agent's answers goes through the checks at the end of this module
first: a BYOC host's agent is its tenant's, and writes whatever it likes (docs/security.md)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator
from typing import Any, cast

import grpc.aio

from warren.cp.telemetry import AGENT_RPC_ERRORS
from warren.errors import AgentError
from warren.request_context import GRPC_METADATA_KEY, request_id
from warren.rpc import guest_kind

log = logging.getLogger("warren.hosts")
_MAX_IP_TEXT = 45  # the longest IPv6 text form (with an embedded IPv4 address)
# How gRPC begins the details of a call that found no connection to the host. What follows (the
# address dialled, refused or TLS failed, the peer's certificate) is the CP's view of its own
# network: a BYOC host's owner chooses the address, so it goes to the logs, never to the caller.
_NO_CONNECTION = "failed to connect to all addresses"
# Before a channel's call: raises (no connection is made) when the host may not be dialled.
Gate = Callable[[], Awaitable[None]]


def refused(host_id: str, method: str = "other") -> AgentError:
    """A call the CP does not make (the host's address is not one it may dial): the caller sees
    what an unreachable host gives, a create goes to another host."""
    AGENT_RPC_ERRORS.labels(method, "UNAVAILABLE").inc()
    err = AgentError("host agent unreachable: failed to connect", rpc_code="UNAVAILABLE")
    err.host_id = host_id  # type: ignore[attr-defined]  # for logs
    return err


_AGENT_ANSWERS = ("port_not_open:",)  # UNAVAILABLE details the agent itself gives


def translate(e: grpc.aio.AioRpcError, host_id: str, method: str = "other") -> AgentError:
    """An RPC error as the domain's AgentError (same status name; unreachable hosts say so)."""
    code = e.code()
    name = code.name if code is not None else "UNKNOWN"
    AGENT_RPC_ERRORS.labels(method, name).inc()
    details = e.details() or name
    if name == "UNAVAILABLE" and details.startswith(_NO_CONNECTION):
        log.info("no connection to host %s: %s", host_id, details)
        details = "failed to connect"  # the words sandbox_placement.never_reached looks for
    # The host id stays out of the message: sandbox answers never reveal which host runs them.
    # port_not_open is the agent's own answer (agent/rpc_errors.py): the host was reached.
    unreachable = name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") and not details.startswith(_AGENT_ANSWERS)
    message = f"host agent unreachable: {details}" if unreachable else details
    err = AgentError(message, rpc_code=name, guest_kind=guest_kind.read(e.trailing_metadata()))
    err.host_id = host_id  # type: ignore[attr-defined]  # for logs
    return err


class _MappedResponse:
    """A stream-unary call as grpc.aio hands it out (``write``, ``done_writing``, ``cancel``…
    all the wrapped call's own), except that awaiting its response maps the RPC error.

    The interceptor cannot await the response itself here: with the ``write()`` API the
    caller's writes wait for the interceptor to return, so awaiting first would deadlock."""

    def __init__(self, call: Any, host_id: str, method: str) -> None:
        self._call = call
        self._host_id = host_id
        self._method = method

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __await__(self) -> Generator[Any, None, Any]:
        try:
            return (yield from self._call.__await__())
        except grpc.aio.AioRpcError as e:
            raise translate(e, self._host_id, self._method) from e


class _AgentErrors:
    """What the four interceptors share: the host, how a call starts (gate, request id) and the
    mapping of a response stream."""

    def __init__(self, host_id: str, gate: Gate | None) -> None:
        self.host_id = host_id
        self.gate = gate

    async def _start(self, continuation: Any, details: Any, request: Any) -> Any:
        """The gate, then the call with the current request's id in its metadata."""
        if self.gate is not None:
            await self.gate()
        return await continuation(_with_request_id(details), request)

    async def _start_streamed(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        """:meth:`_start` for a call with a request stream, which ends with the call."""
        if not isinstance(request_iterator, AsyncIterable):  # a plain iterable never waits
            return await self._start(continuation, details, request_iterator)
        requests = _CallRequests(request_iterator)
        call = await self._start(continuation, details, requests)
        call.add_done_callback(requests.end)  # at once when it has already ended
        return call

    async def _responses(self, call: Any, method: str) -> AsyncIterator[Any]:
        # Returned in place of the call: grpc.aio keeps the call for cancel() and serves both
        # ``async for`` and ``read()`` from this iterator.
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as e:
            raise translate(e, self.host_id, method) from e


class _CallRequests:
    """A call's request iterator, ended when the call ends. grpc.aio reads it in a task of its
    own and does not stop that task when the call ends without the caller's cancel (the agent's
    status came first): one waiting in the iterator for what only an answer releases (a start's
    acceptance, input to a process that exited) was left pending, with its generator, until
    the garbage collector destroyed both. Here the call's end cancels that wait, and the source
    is closed in order (its ``finally`` runs) in the task that runs it."""

    def __init__(self, source: AsyncIterable[Any]) -> None:
        self._source = source
        self._task: asyncio.Task[Any] | None = None
        self._waiting = False  # in the source's ``anext`` (a wait the call's end cancels)
        self._ended = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._relay()

    async def _relay(self) -> AsyncIterator[Any]:
        self._task = asyncio.current_task()
        source = aiter(self._source)
        try:
            while not self._ended:
                self._waiting = True
                try:
                    item = await anext(source)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self._ended:  # the call's end: nothing more can be sent, no failure
                        return
                    raise
                finally:
                    self._waiting = False
                yield item
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()

    def end(self, _call: Any = None) -> None:
        """The call has ended (a done callback): the reading task stops at its next step, at
        once if it waits in the source."""
        self._ended = True
        if self._waiting and self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()


def _method(details: Any) -> str:
    """``/warren.hostagent.HostAgent/CreateSandbox`` → ``CreateSandbox`` (a bounded label)."""
    raw = details.method
    name = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return name.rsplit("/", 1)[-1] or "other"


def _with_request_id(details: Any) -> Any:
    """The call's details plus the current request's id as metadata (when there is one)."""
    rid = request_id.get()
    if rid is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[GRPC_METADATA_KEY] = rid
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(_AgentErrors, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = await self._start(continuation, client_call_details, request)
        try:
            return await call
        except grpc.aio.AioRpcError as e:
            raise translate(e, self.host_id, _method(client_call_details)) from e


class _UnaryStream(_AgentErrors, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        call = await self._start(continuation, client_call_details, request)
        return self._responses(call, _method(client_call_details))


class _StreamUnary(_AgentErrors, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        call = await self._start_streamed(continuation, client_call_details, request_iterator)
        return _MappedResponse(call, self.host_id, _method(client_call_details))


class _StreamStream(_AgentErrors, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        call = await self._start_streamed(continuation, client_call_details, request_iterator)
        return self._responses(call, _method(client_call_details))


def agent_errors(host_id: str, gate: Gate | None = None) -> list[grpc.aio.ClientInterceptor]:
    """The interceptor for one host's channel, mapping ``AioRpcError`` to ``AgentError`` for all
    four arities (grpc.aio files an interceptor object under one arity only, hence one object
    per arity). Cancellation is not an error: it passes through as ``CancelledError``. ``gate``
    runs before every call, ahead of any connection (a channel connects at its first call)."""
    kinds = (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    # The stubs type interceptors as a placeholder that wants a cast.
    return [cast(grpc.aio.ClientInterceptor, kind(host_id, gate)) for kind in kinds]


# ------------------------------------------------------------------ what the CP takes from answers


def answered_ip(text: str, host_id: str = "") -> str:
    """A sandbox's address as an agent answered it (create, resume, listing): the IP address in
    its canonical form, or "" for anything else. It lands on the sandbox's row and in every answer
    about it: a hostile agent's MiB of text, or a name, stays out."""
    if not text:
        return ""
    try:
        if len(text) > _MAX_IP_TEXT:
            raise ValueError(text)
        return str(ipaddress.ip_address(text))
    except ValueError:
        log.warning("agent answered a sandbox address that is no IP host=%s length=%d", host_id, len(text))
        return ""


def answered_disk_mb(reported: int, asked: int) -> int:
    """The disk size an agent says it made: it only ever caps what the create asked for (to fit
    the memory), so anything outside 1..asked (0 from an agent that does not say) is ``asked``."""
    return reported if 0 < reported <= asked else asked


__all__ = ["agent_errors", "answered_disk_mb", "answered_ip", "refused", "translate"]
