"""The gRPC status of an error raised by an agent RPC: the one map (docs/architecture.md §3).

NotFound → NOT_FOUND, InvalidRequest → INVALID_ARGUMENT, InvalidState/Conflict →
FAILED_PRECONDITION, an exec or build-step timeout → DEADLINE_EXCEEDED, a corrupt layer →
DATA_LOSS, a payload past its bound or a dial past its limit → RESOURCE_EXHAUSTED, a port nothing
listens on → UNAVAILABLE ``port_not_open``, work the host's ``Terminate`` ended (ServiceUnavailable) →
UNAVAILABLE, the guest's error kinds by ``GUEST_CODES``, anything
else → INTERNAL (logged). A guest error's kind also goes to the caller as data, the call's
trailing metadata ``warren-guest-kind`` (``warren/rpc/guest_kind.py``), on unary and streaming
calls alike (:func:`abort`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar, cast

import grpc

from warren.agent import build_step, dial
from warren.agent.guest_wire import GuestError
from warren.agent.layer_cache import LayerCorrupt
from warren.agent.layer_slots import InstallsBusy
from warren.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, ServiceUnavailable, WarrenError
from warren.rpc import guest_kind

log = logging.getLogger("warren.agent.rpc")


class ExecTimeout(WarrenError):
    code = "timeout"


GUEST_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
    # Input to a process or terminal that has exited. Warren's API answers it as any refused
    # input (400); E2B's SendInput tells it apart by the kind (not found, as envd).
    guest_kind.EXITED: grpc.StatusCode.INVALID_ARGUMENT,
    "is_a_directory": grpc.StatusCode.INVALID_ARGUMENT,
    "not_a_directory": grpc.StatusCode.INVALID_ARGUMENT,
    "exists": grpc.StatusCode.INVALID_ARGUMENT,
    "permission": grpc.StatusCode.PERMISSION_DENIED,
    "no_space": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "output_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    # The sandbox's container died (container_exits.py): as any call into a stopped sandbox.
    "not_running": grpc.StatusCode.FAILED_PRECONDITION,
    # A terminal or attach client the guest detached for not reading its output
    # (guest_wire.GuestStream._detached).
    "detached": grpc.StatusCode.ABORTED,
}
# Kinds whose message is written for the API's client (it becomes the HTTP error message).
_CLIENT_WORDED = frozenset(
    {"not_found", "invalid_argument", "permission", "no_space", "output_too_large", "too_large"}
) | {"not_running", "detached", guest_kind.EXITED}


def status_for(e: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(e, NotFound):
        return grpc.StatusCode.NOT_FOUND, e.message
    if isinstance(e, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, e.message
    if isinstance(e, Conflict):
        return grpc.StatusCode.FAILED_PRECONDITION, e.message
    if isinstance(e, ExecTimeout | build_step.StepTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED, e.message
    if isinstance(e, LayerCorrupt):
        return grpc.StatusCode.DATA_LOSS, e.message
    if isinstance(e, InstallsBusy):  # its message starts with the code the CP retries on
        return grpc.StatusCode.RESOURCE_EXHAUSTED, e.message
    if isinstance(e, PayloadTooLarge | dial.TooManyDials):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, e.message
    if isinstance(e, dial.PortNotOpen):
        return grpc.StatusCode.UNAVAILABLE, f"port_not_open: {e.message}"
    if isinstance(e, ServiceUnavailable):  # the host is being taken out of service
        return grpc.StatusCode.UNAVAILABLE, e.message
    if isinstance(e, GuestError):
        code = GUEST_CODES.get(e.kind, grpc.StatusCode.INTERNAL)
        # The guest's own words say what is missing (a file, a command, a process), or which
        # bound or permission stopped the call.
        return code, e.message if e.kind in _CLIENT_WORDED else f"guest: {e}"
    if isinstance(e, WarrenError):
        return grpc.StatusCode.INTERNAL, e.message
    return grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}"


async def abort(context: grpc.aio.ServicerContext, e: BaseException, method: str) -> None:
    code, msg = status_for(e)
    if code == grpc.StatusCode.INTERNAL:
        log.error("event=rpc_error method=%s error=%s", method, msg, exc_info=not isinstance(e, WarrenError))
    await context.abort(code, msg, trailing_metadata=kind_metadata(e))


def kind_metadata(e: BaseException) -> tuple[tuple[str, str], ...]:
    """A guest error's kind as the call's trailing metadata, for a caller that tells guest
    errors of one code apart. Only the kinds of ``GUEST_CODES``: the guest is the sandbox's
    (anything it names is hostile), and metadata must be printable ASCII."""
    if isinstance(e, GuestError) and e.kind in GUEST_CODES:
        return ((guest_kind.METADATA_KEY, e.kind),)
    return ()


_Handler = TypeVar("_Handler", bound=Callable[..., Awaitable[Any]])


def mapped_errors(handler: _Handler) -> _Handler:
    """For unary-response RPCs: any error of the call ends it with its mapped status code
    (``status_for``), in one place instead of a try/except in every method."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise  # the handler aborted on purpose with its own status
        except Exception as e:
            await abort(context, e, handler.__name__)

    return cast(_Handler, wrapper)


_Msg = TypeVar("_Msg")


async def relay(
    context: grpc.aio.ServicerContext, events: AsyncGenerator[_Msg], method: str, first: _Msg | None = None
) -> AsyncGenerator[_Msg]:
    """For server-streaming RPCs, once the call has started: ``first`` (when given) and then
    ``events``' messages; an error midway ends the call with its mapped status, and ``events``
    is closed however the call ends. Iterate it under ``contextlib.aclosing``, so that a call
    the client cancels closes ``events`` at once."""
    try:
        if first is not None:
            yield first
        async for ev in events:
            yield ev
    except Exception as e:
        await abort(context, e, method)
    finally:
        await events.aclose()
