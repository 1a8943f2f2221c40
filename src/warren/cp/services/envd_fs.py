"""Filesystem operations for E2B's envd plane (docs/e2b.md §3.2), as the sandbox's agent serves
them: stat, whole listings, mkdir that tells whether it created, move, remove, and directory
watches (streamed, or held by the agent for polling).

Paths are passed on as the client sent them: the guest resolves a relative path under the
user's home, inside the sandbox (never here); ``~`` and ``~/…`` become such relative paths. The
user is the call's, else the template's (the agent's default). Watch events carry absolute
paths; E2B names them relative to the watched directory, so a watch first stats its directory
for the absolute path the guest resolved.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncGenerator

from warren.cp.services.budget import unary_budget
from warren.cp.services.exec import check_user
from warren.cp.services.files import LIST_MAX
from warren.cp.services.sandbox_access import Target
from warren.cp.services.watch import MAX_PATH, WATCHER_PREFIX, watch_events
from warren.errors import AgentError, InvalidRequest, NotFound, PayloadTooLarge
from warren.rpc import hostagent_pb2 as pb

# A whole listing is gathered page by page (the guest pages at 10000 entries or ~1 MiB): E2B's
# ListDir answers in one message, so the total is bounded here.
MAX_LIST_ENTRIES = 50_000
MAX_LIST_BYTES = 32 << 20  # and their size on the wire from the agent (metadata makes entries big)
# What a whole listing holds in the CP while it is gathered (its entries as messages, ~1.5 times
# their wire size: 8 listings of 34 MiB held ~50 MiB each), charged to the unary budget.
LIST_HELD_BYTES = 2 * MAX_LIST_BYTES
MAX_DEPTH = 32  # the guest's and the files API's deepest listing
# Pages one listing may take: the bounds above fill in at most ~40 (a page is 10000 entries or
# ~1 MiB). An agent is believed only while it makes progress: a BYOC host's (its tenant's) that
# answered "more" with empty pages kept this loop, and an RPC a turn, going for good.
MAX_LIST_PAGES = 64
_RPC_TIMEOUT = 60.0


def sandbox_path(path: str) -> str:
    """A client's path as the guest takes it: ``~`` / ``~/x`` / ``""`` become paths relative to
    the user's home (the guest resolves them), anything else goes as it is. NUL and oversize
    paths are refused."""
    if "\0" in path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH:
        raise InvalidRequest(f"invalid path (no NUL byte, at most {MAX_PATH} bytes)")
    if path in ("", "~", "~/"):
        return "."
    if path.startswith("~/"):
        return path[2:]
    return path


async def stat(tgt: Target, path: str, user: str) -> pb.EntryInfo:
    req = pb.StatRequest(sandbox_id=tgt.sid, path=sandbox_path(path), user=check_user(user))
    return (await tgt.client().stub.Stat(req, timeout=_RPC_TIMEOUT)).entry


async def list_all(tgt: Target, path: str, depth: int, user: str, key: str = "") -> list[pb.EntryInfo]:
    """Every entry down to ``depth`` (0 is 1), at most MAX_LIST_ENTRIES and MAX_LIST_BYTES
    (413 beyond). A listing of more than one page holds LIST_HELD_BYTES of the CP's unary
    budget while it is gathered (session 14: 8 listings of 36 000 entries at once held +397 MiB
    of the CP, none of it counted), in ``key``'s share (budget.share_key): the rest wait their
    turn, then 503 ``server_busy``."""
    if depth < 0 or depth > MAX_DEPTH:
        raise InvalidRequest(f"depth must be 1..{MAX_DEPTH}")
    entries: list[pb.EntryInfo] = []
    cursor, client, spath, size = "", tgt.client(), sandbox_path(path), 0
    budget, held = unary_budget(), 0
    try:
        for _ in range(MAX_LIST_PAGES):
            req = pb.ListDirRequest(
                sandbox_id=tgt.sid, path=spath, depth=max(1, depth), limit=LIST_MAX, cursor=cursor,
                user=check_user(user),
            )  # fmt: skip
            page = await client.stub.ListDir(req, timeout=_RPC_TIMEOUT)
            entries.extend(page.entries)
            size += page.ByteSize()
            if len(entries) > MAX_LIST_ENTRIES or size > MAX_LIST_BYTES:
                raise PayloadTooLarge(f"the listing has more than {MAX_LIST_ENTRIES} entries; list less deep")
            if not page.has_more:
                return entries
            if not page.entries or page.next_cursor in ("", cursor):
                raise AgentError("the agent's listing did not progress", rpc_code="INTERNAL")
            if not held:  # in one step, holding none of it while waiting (budget.py)
                await budget.acquire(LIST_HELD_BYTES, key=key)
                held = LIST_HELD_BYTES
            cursor = page.next_cursor
        raise PayloadTooLarge(f"the listing takes more than {MAX_LIST_PAGES} pages; list less deep")
    finally:
        budget.release(held, key)


async def make_dir(tgt: Target, path: str, user: str) -> tuple[bool, pb.EntryInfo]:
    """(created, the directory's entry); ``created`` is False when it was a directory already.
    Something else at the path is the guest's refusal (``exists``: INVALID_ARGUMENT)."""
    try:
        entry = await stat(tgt, path, user)
        if entry.type == "dir":
            return False, entry
    except AgentError as e:
        if not e.is_not_found:
            raise
    req = pb.MakeDirRequest(sandbox_id=tgt.sid, path=sandbox_path(path), user=check_user(user))
    await tgt.client().stub.MakeDir(req, timeout=_RPC_TIMEOUT)
    return True, await stat(tgt, path, user)


async def move(tgt: Target, source: str, destination: str, user: str) -> pb.EntryInfo:
    req = pb.MoveRequest(
        sandbox_id=tgt.sid, source=sandbox_path(source), destination=sandbox_path(destination),
        user=check_user(user),
    )  # fmt: skip
    await tgt.client().stub.Move(req, timeout=120)
    return await stat(tgt, destination, user)


async def remove(tgt: Target, path: str, user: str) -> None:
    req = pb.RemoveRequest(sandbox_id=tgt.sid, path=sandbox_path(path), user=check_user(user))
    await tgt.client().stub.Remove(req, timeout=120)


# ---------------------------------------------------------------------------------- watches


def _watch_request(tgt: Target, root: str, recursive: bool, user: str) -> pb.WatchDirRequest:
    return pb.WatchDirRequest(sandbox_id=tgt.sid, path=root, recursive=recursive, user=check_user(user))


async def _root(tgt: Target, path: str, user: str) -> str:
    """The watched directory's absolute path, as the guest resolves it (the agent's watch says
    not_found / not_a_directory itself)."""
    entry = await stat(tgt, path, user)
    return entry.path


async def watch(
    tgt: Target, path: str, recursive: bool, user: str
) -> tuple[str, AsyncGenerator[pb.WatchEvent]]:
    """A streamed watch: (the root, its events). Refusals raise here, before the first event;
    closing the generator ends the watch in the sandbox."""
    root = await _root(tgt, path, user)
    return root, await watch_events(tgt, _watch_request(tgt, root, recursive, user))


class WatcherId:
    """E2B's watcher id: the agent's id, whether events carry entries, and the watched root
    (events are named relative to it, and a poll is a request of its own, on any replica). The
    root is the sandbox's own path, no secret: a changed one only renames that caller's events,
    and the agent finds the watcher in this sandbox only."""

    def __init__(self, agent_id: str, include_entry: bool, root: str) -> None:
        self.agent_id, self.include_entry, self.root = agent_id, include_entry, root

    def encode(self) -> str:
        root = base64.urlsafe_b64encode(self.root.encode("utf-8", "surrogatepass")).rstrip(b"=")
        return f"{self.agent_id}.{int(self.include_entry)}{root.decode('ascii')}"

    @classmethod
    def decode(cls, value: str) -> WatcherId:
        agent_id, _, rest = value.partition(".")
        unknown = NotFound(f"watcher {value[:64]} not found")
        if not agent_id.startswith(WATCHER_PREFIX) or len(agent_id) > 64 or not rest or len(value) > 8192:
            raise unknown
        try:
            raw = rest[1:]
            root = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise unknown from None
        return cls(agent_id, rest[0] == "1", root)


async def create_watcher(
    tgt: Target, path: str, recursive: bool, include_entry: bool, user: str
) -> WatcherId:
    root = await _root(tgt, path, user)
    res = await tgt.client().stub.CreateWatcher(
        _watch_request(tgt, root, recursive, user), timeout=_RPC_TIMEOUT
    )
    return WatcherId(res.watcher_id, include_entry, root)


async def poll_watcher(tgt: Target, wid: WatcherId) -> list[pb.WatchEvent]:
    req = pb.PollWatcherRequest(sandbox_id=tgt.sid, watcher_id=wid.agent_id)
    return list((await tgt.client().stub.PollWatcher(req, timeout=_RPC_TIMEOUT)).events)


async def remove_watcher(tgt: Target, wid: WatcherId) -> None:
    req = pb.RemoveWatcherRequest(sandbox_id=tgt.sid, watcher_id=wid.agent_id)
    await tgt.client().stub.RemoveWatcher(req, timeout=_RPC_TIMEOUT)
