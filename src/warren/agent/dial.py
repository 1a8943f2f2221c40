"""DialPort: a TCP connection to a port of a sandbox, relayed as raw bytes over one gRPC stream
(docs/networking.md §3). Only the sandbox's own ports are reachable, never the host's.

runc/crun: the kernel's network stack in the sandbox's netns is the sandbox's, so the agent
dials 127.0.0.1:<port> there. A socket belongs to the netns it was created in, whichever thread
uses it later. So a single dedicated thread enters the sandbox's netns
(``setns(CLONE_NEWNET)``, which moves that thread only), creates the socket, and steps back;
the event loop then connects and relays it like any other socket. The thread does nothing
else, so even a failed step back could not make another socket of the agent's land in a
sandbox. Servers bound to the sandbox's loopback are reachable this way; nothing of the host's
is (the socket only sees the sandbox's netns).

gVisor: the sandbox's TCP/IP stack is runsc's (netstack, in the Sentry). It takes ``eth0``'s
address and routes away from the kernel's side of the netns, so a kernel socket there has no
route at all and 127.0.0.1 is the netns's kernel loopback, which no sandbox process listens on.
The one way in is the veth, as the agent's own guest connection goes: a host socket bound to
the slot's host-side veth (``SO_BINDTODEVICE``), to the slot's sandbox address: the agent's
value (``.2`` of the slot's /30, never a host address), never the caller's. Bound to the device,
the packets leave by that veth or not at all (never by another route, should the slot's be
gone), and a connection whose local end is not the veth's host end (``.1``) is closed before a
byte is relayed.
Servers on 0.0.0.0 or the sandbox's address answer; gVisor's own loopback (a server bound to
127.0.0.1 only) stays out of reach, and the guest's own TCP port is refused (the platform's,
not the tenant's). Inbound, from the host: ``internet=false`` and the egress rules (FORWARD)
do not apply, and the replies are accepted as any reply to the host (WARREN-IN's ESTABLISHED).

Bounds: at most ``max_per_sandbox`` open dials per sandbox (RESOURCE_EXHAUSTED past it), the
sandbox's bytes read ``READ`` at a time (at most ``2 x READ`` read ahead, then the socket is
paused) and sent one message at a time (gRPC's flow control holds the next), and the caller's
writes drained before the next message is taken, so either side pushes back instead of filling
memory. Session 16: reads were ``CHUNK`` (1 MiB), and an unread preview held ~4 MiB of the agent
(48 of them: +198 MiB); now ~0.3 MiB. The other way, gRPC's receive window (grown by its
bandwidth probes to MiBs) held what a sandbox did not read: a caller that keeps to credit
(``CREDIT_KEY``) now sends a few messages past what was written to the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from warren.agent.manager import SandboxManager
from warren.agent.network import Slot
from warren.agent.per_manager import PerManager
from warren.agent.record import HostSandbox
from warren.agent.runtime.gvisor import GUEST_PORT
from warren.agent.runtime.gvisor import NAME as GVISOR
from warren.errors import InvalidState, NotFound, WarrenError
from warren.rpc import hostagent_pb2 as pb

CHUNK = 1 << 20  # bytes per data message at most, both ways (64 KiB … 1 MiB is the contract)
READ = 32 << 10  # what the agent sends per message (and its reader's limit)
# A caller that keeps to credit says so in its metadata, and this agent answers in its initial
# metadata: each of the caller's messages written to the sandbox is acknowledged by one more
# ``connected`` (an event every caller from before ignores after the first).
CREDIT_KEY = "warren-dial-credit"
CREDIT_METADATA = ((CREDIT_KEY, "1"),)
_ACK = pb.DialEvent(connected=True)
MAX_DIALS_PER_SANDBOX = 256
CONNECT_TIMEOUT_S = 10.0
_CLONE_NEWNET = 0x40000000


class PortNotOpen(WarrenError):
    """Nothing listens on the port inside the sandbox (UNAVAILABLE ``port_not_open``)."""

    code = "port_not_open"


class TooManyDials(WarrenError):
    code = "too_many_dials"


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns {what}: {os.strerror(err)}")


class Dialer:
    """Opens sockets inside sandboxes' netns and relays them; one per agent."""

    def __init__(self, manager: SandboxManager, *, max_per_sandbox: int = MAX_DIALS_PER_SANDBOX) -> None:
        self.m = manager
        self.max_per_sandbox = max_per_sandbox
        self._open: dict[str, int] = {}
        # /proc/self is the thread group leader: the agent's own (host) netns.
        self._host_ns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netns-dial")

    def _socket_in(self, netns_path: str) -> socket.socket:
        """Runs in the dedicated thread: a non-blocking TCP socket of ``netns_path``."""
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound("the sandbox's network is gone") from None
        try:
            _setns(fd, netns_path)
            try:
                return socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            finally:
                _setns(self._host_ns, "back to the host")
        finally:
            os.close(fd)

    def _running(self, sandbox_id: str) -> HostSandbox:
        sb = self.m.sandbox(sandbox_id)  # NotFound
        if sb.status != "running":
            raise InvalidState(f"sandbox {sandbox_id} is {sb.status}", code="sandbox_paused")
        return sb

    def _still(self, sandbox_id: str, slot: int) -> None:
        """The slot must still be this running sandbox's: a destroy (and a new sandbox in the
        same slot) may have happened while the socket was being made or connected."""
        if self._running(sandbox_id).slot != slot:
            raise NotFound(f"sandbox {sandbox_id} not found")

    async def connect(self, sandbox_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to ``port`` of the running sandbox (see the module's docstring)."""
        sock = await self.connect_socket(sandbox_id, port)
        return await asyncio.open_connection(sock=sock, limit=READ)

    async def connect_socket(self, sandbox_id: str, port: int) -> socket.socket:
        """The connected socket itself (non-blocking), for callers with their own transport."""
        sb = self._running(sandbox_id)
        slot = Slot(sb.slot)
        loop = asyncio.get_running_loop()
        if sb.runtime == GVISOR:
            if port == GUEST_PORT:
                raise PortNotOpen(f"port {port} is the platform's guest port")
            sock, address = _socket_to_veth(slot), slot.sandbox_ip
        else:
            sock = await loop.run_in_executor(self._thread, self._socket_in, slot.netns_path)
            address = "127.0.0.1"
        try:
            self._still(sandbox_id, sb.slot)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await loop.sock_connect(sock, (address, port))
            # A veth's address is the slot's, whoever holds it: connected to a sandbox that
            # took the slot meanwhile, the socket is closed before a byte is relayed.
            self._still(sandbox_id, sb.slot)
            if sb.runtime == GVISOR and sock.getsockname()[0] != slot.gateway:
                # Only a connection that left by the veth's host end is the sandbox's (were the
                # address ever one of the host's, the host itself would have answered).
                raise PortNotOpen(f"port {port}: not reached through the sandbox's veth")
        except OSError as e:
            sock.close()
            if e.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
                raise PortNotOpen(f"nothing listens on port {port} in the sandbox") from None
            raise PortNotOpen(f"port {port}: {os.strerror(e.errno or 0) or e}") from None
        except TimeoutError:
            sock.close()
            raise PortNotOpen(f"port {port}: connect timed out") from None
        except BaseException:
            sock.close()
            raise
        return sock

    def acquire(self, sandbox_id: str) -> Callable[[], None]:
        """Count one open dial of the sandbox (TooManyDials past the limit); the returned
        function gives it back (once, however often it is called)."""
        n = self._open.get(sandbox_id, 0)
        if n >= self.max_per_sandbox:
            raise TooManyDials(f"at most {self.max_per_sandbox} open connections per sandbox")
        self._open[sandbox_id] = n + 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            left = self._open[sandbox_id] - 1
            if left:
                self._open[sandbox_id] = left
            else:
                del self._open[sandbox_id]

        return release

    def open_dials(self, sandbox_id: str) -> int:
        return self._open.get(sandbox_id, 0)

    @contextlib.contextmanager
    def slot_for(self, sandbox_id: str) -> Iterator[None]:
        release = self.acquire(sandbox_id)
        try:
            yield
        finally:
            release()

    async def relay(
        self,
        sandbox_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        requests: AsyncIterator[pb.DialRequest],
        context: Any = None,
    ) -> AsyncIterator[pb.DialEvent]:
        """``connected``, then the sandbox's bytes as ``data`` events and ``closed`` at its EOF;
        the client's ``data`` is written (drained first) and ``close_write`` half-closes. The
        call lasts until both directions are done (or either side goes away). A caller that
        asks for credit (``CREDIT_KEY`` in its metadata, ``context``'s) is told so in the initial
        metadata and gets one more ``connected`` for each of its messages written: it keeps at
        most a few unacknowledged (``cp/proxy/stream.py``)."""
        credit = context is not None and _asks_credit(context)
        if credit:
            await context.send_initial_metadata(CREDIT_METADATA)
        events: asyncio.Queue[pb.DialEvent | BaseException | None] = asyncio.Queue()
        one = asyncio.Semaphore(1)  # one message of the sandbox's waits at most: gRPC holds the next
        sides = [
            asyncio.create_task(self._sandbox_side(sandbox_id, reader, events, one)),
            asyncio.create_task(_client_side(requests, writer, events, credit)),
        ]
        try:
            yield pb.DialEvent(connected=True)
            left = 2
            while left:
                ev = await events.get()
                if ev is None:
                    left -= 1
                    continue
                if isinstance(ev, BaseException):
                    raise ev
                yield ev
                if ev.WhichOneof("event") == "data":
                    one.release()
        finally:
            for task in sides:
                task.cancel()
            for task in sides:
                with contextlib.suppress(BaseException):
                    await task
            writer.close()

    async def _sandbox_side(
        self,
        sandbox_id: str,
        reader: asyncio.StreamReader,
        events: asyncio.Queue[pb.DialEvent | BaseException | None],
        one: asyncio.Semaphore,
    ) -> None:
        try:
            while True:
                await one.acquire()
                data = await reader.read(READ)
                if not data:
                    break
                self.m.touch(sandbox_id)
                events.put_nowait(pb.DialEvent(data=data))
            events.put_nowait(pb.DialEvent(closed=True))
            events.put_nowait(None)
        except Exception as e:
            events.put_nowait(e)


def _asks_credit(context: Any) -> bool:
    return any(k == CREDIT_KEY for k, _ in context.invocation_metadata() or ())


def _socket_to_veth(slot: Slot) -> socket.socket:
    """A host socket that can only leave through the slot's host-side veth (gVisor's way in)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, slot.veth.encode())
    except OSError:
        sock.close()
        raise NotFound("the sandbox's network is gone") from None
    return sock


async def _client_side(
    requests: AsyncIterator[pb.DialRequest],
    writer: asyncio.StreamWriter,
    events: asyncio.Queue[pb.DialEvent | BaseException | None],
    credit: bool,
) -> None:
    """The client's side: bytes into the socket (each message acknowledged once drained, with
    ``credit``), then a half-close (``close_write`` or the end of the request stream). A
    sandbox that stopped reading ends it with an error."""
    try:
        with contextlib.suppress(ConnectionError, OSError):
            async for msg in requests:
                which = msg.WhichOneof("msg")
                if which == "data":
                    writer.write(msg.data)
                    await writer.drain()
                    if credit:
                        events.put_nowait(_ACK)  # at most the caller's credit of them wait here
                elif which == "close_write":
                    break
            if writer.can_write_eof() and not writer.is_closing():
                writer.write_eof()
    except Exception as e:  # the request stream failed: the call ends with it
        events.put_nowait(e)
        return
    events.put_nowait(None)


# The agent's one dialer (made on first use).
dialer_for: PerManager[Dialer] = PerManager(Dialer)
