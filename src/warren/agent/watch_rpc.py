"""Directory watch for the RPCs: a streamed watch (``WatchDir``) and polling watchers
(``CreateWatcher``/``PollWatcher``/``RemoveWatcher``) that live here, in the agent.

Both ride the guest's ``watch`` op (``guest/PROTOCOL.md``). A polling watcher is a task that
reads the guest's stream into a bounded buffer; a poll takes what it holds. Watchers are capped
per sandbox, forgotten when their sandbox goes (or after ``IDLE_SECONDS`` without a poll), and
their ids mean nothing outside their sandbox.

What a watcher holds between polls is the agent's own memory, outside every sandbox's cgroup:
bounded in events (``MAX_POLL_EVENTS``) and in bytes (``MAX_POLL_BYTES``), each event held
serialized. Counted in events only, as protobuf objects, a tenant's 16 unpolled watchers of a
tree of long names (symlinks with 4000-byte targets) held ~14 KiB an event, +230 MiB of the
agent for one sandbox (+12 MiB now) (session 22, test_attack_session22_watchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from warren import clock
from warren.agent.guest_client import EntryInfo, WatchBatch, WatchEvent
from warren.agent.guest_wire import GuestError
from warren.agent.manager import SandboxManager
from warren.agent.per_manager import PerManager
from warren.errors import InvalidRequest, NotFound, PayloadTooLarge
from warren.ids import Kind, format_id
from warren.rpc import hostagent_pb2 as pb

log = logging.getLogger(__name__)

MAX_WATCHERS = 16  # polling watchers per sandbox
MAX_POLL_EVENTS = 1000  # events a polling watcher holds between polls; past it: overflowed
MAX_POLL_BYTES = 512 << 10  # and their serialized bytes (+ EVENT_COST each); past it: overflowed
EVENT_COST = 48  # a held event's bytes object and its slot in the deque, besides its bytes
IDLE_SECONDS = 600.0  # a polling watcher nobody polls for this long is removed
MAX_PATH = 4096


def _entry(e: EntryInfo) -> pb.EntryInfo:
    return pb.EntryInfo(
        name=e.name, type=e.type, path=e.path, size=e.size, mode=e.mode, permissions=e.permissions,
        owner=e.owner, group=e.group, modified_time_unix=int(e.modified_time),
        symlink_target=e.symlink_target or "",
    )  # fmt: skip


def to_pb(ev: WatchEvent) -> pb.WatchEvent:
    out = pb.WatchEvent(type=ev.type, path=ev.path, timestamp_ns=ev.timestamp_ns, old_path=ev.old_path)
    if ev.entry is not None:
        out.entry.CopyFrom(_entry(ev.entry))
    return out


def checked(req: pb.WatchDirRequest) -> pb.WatchDirRequest:
    if not req.path or "\0" in req.path or len(req.path) > MAX_PATH:
        raise InvalidRequest(f"path is required (at most {MAX_PATH} bytes)")
    return req


async def start(m: SandboxManager, req: pb.WatchDirRequest, user: str) -> AsyncGenerator[WatchBatch, None]:
    """The guest's watch, once it is in place (its refusal raises here)."""
    it = (await m.ready_guest(req.sandbox_id)).watch(checked(req).path, recursive=req.recursive, user=user)
    try:
        await anext(it)
    except BaseException:
        await it.aclose()
        raise
    # The path is the tenant's: its length, not its bytes, goes to the host's log.
    log.info(
        "event=watch_started sandbox_id=%s recursive=%s path_len=%d",
        req.sandbox_id, req.recursive, len(req.path.encode()),
    )  # fmt: skip
    return it


async def stream(it: AsyncGenerator[WatchBatch, None]) -> AsyncGenerator[pb.WatchEvent, None]:
    """``WatchDir``'s messages: ``started`` first, then the events (an ``overflow`` message
    where the guest dropped some)."""
    sent = 0
    try:
        yield pb.WatchEvent(type="started")
        async for batch in it:
            if batch.overflowed:
                yield pb.WatchEvent(type="overflow", overflowed=True)
            for ev in batch.events:
                yield to_pb(ev)
                sent += 1
    finally:
        await it.aclose()
        log.info("event=watch_ended events=%d", sent)


@dataclass
class Poller:
    id: str
    events: deque[bytes] = field(default_factory=deque)  # serialized: a pb object costs ~1.4 KiB more
    held: int = 0  # what ``events`` cost (their bytes + EVENT_COST each)
    overflowed: bool = False
    done: bool = False
    last_poll: float = field(default_factory=clock.monotonic)
    task: asyncio.Task[None] | None = None

    async def pump(self, it: AsyncGenerator[WatchBatch, None], on_end: Callable[[], None]) -> None:
        try:
            async for batch in it:
                self.overflowed |= batch.overflowed
                for ev in batch.events:
                    data = to_pb(ev).SerializeToString()
                    cost = len(data) + EVENT_COST
                    if len(self.events) >= MAX_POLL_EVENTS or self.held + cost > MAX_POLL_BYTES:
                        self.overflowed = True  # the oldest are kept: events arrive in order
                        break
                    self.events.append(data)
                    self.held += cost
        except GuestError:
            pass  # the sandbox went (or its guest hung up): what was read stays to be polled
        finally:
            self.done = True
            await it.aclose()
            on_end()


class Watchers:
    """Polling watchers, per sandbox."""

    def __init__(self, m: SandboxManager) -> None:
        self.m = m
        self._by_sb: dict[str, dict[str, Poller]] = {}

    async def create(self, req: pb.WatchDirRequest, user: str) -> str:
        self._sweep()
        mine = self._by_sb.get(req.sandbox_id, {})
        if len(mine) >= MAX_WATCHERS:
            raise PayloadTooLarge(f"at most {MAX_WATCHERS} watchers per sandbox: remove one first")
        it = await start(self.m, req, user)
        p = Poller(format_id(Kind.WATCHER, uuid.uuid4()))
        p.task = asyncio.create_task(p.pump(it, self._sweep), name=f"watcher-{p.id}")
        self._by_sb.setdefault(req.sandbox_id, {})[p.id] = p
        return p.id

    def _get(self, sandbox_id: str, watcher_id: str) -> Poller:
        p = self._by_sb.get(sandbox_id, {}).get(watcher_id)
        if p is None:
            raise NotFound(f"watcher {watcher_id} not found")
        return p

    def poll(self, sandbox_id: str, watcher_id: str) -> tuple[list[pb.WatchEvent], bool]:
        self._sweep()
        p = self._get(sandbox_id, watcher_id)
        p.last_poll = clock.monotonic()
        events, overflowed = [pb.WatchEvent.FromString(e) for e in p.events], p.overflowed
        p.events.clear()
        p.held = 0
        p.overflowed = False
        return events, overflowed

    async def remove(self, sandbox_id: str, watcher_id: str) -> None:
        p = self._get(sandbox_id, watcher_id)
        await self._drop(sandbox_id, p)

    async def _drop(self, sandbox_id: str, p: Poller) -> None:
        mine = self._by_sb.get(sandbox_id, {})
        mine.pop(p.id, None)
        if not mine:
            self._by_sb.pop(sandbox_id, None)
        if p.task is not None and not p.task.done():
            p.task.cancel()
            with contextlib.suppress(BaseException):
                await p.task

    def _sweep(self) -> None:
        """Forget watchers whose sandbox is gone and those nobody polls any more (on every
        call, and whenever a watcher's stream ends: a sandbox that goes ends them all)."""
        now = clock.monotonic()
        for sid, mine in list(self._by_sb.items()):
            try:
                self.m.sandbox(sid)
                gone = False
            except NotFound:
                gone = True
            for p in list(mine.values()):
                if gone or now - p.last_poll > IDLE_SECONDS:
                    mine.pop(p.id, None)
                    if p.task is not None:
                        p.task.cancel()
            if not mine:
                self._by_sb.pop(sid, None)

    def count(self, sandbox_id: str) -> int:
        return len(self._by_sb.get(sandbox_id, {}))


# The manager's polling watchers (one registry per manager, made on first use).
watchers_of: PerManager[Watchers] = PerManager(Watchers)
