"""Which layers streamed by the agent (build steps, snapshots) are removed once their readers left.

``LayerCache.stream_and_install`` streams a layer tar to the CP while it installs it here; a
stream whose reader left (a cancelled build, a snapshot given up) is *abandoned*: the CP records
its layer nowhere, so the layer its install put here is removed once that install ends (session
25, test_attack_session25_layer_leak).

Layers are named by their content, and two tenants' streams can carry the same layer (the same
files, owners and times: an empty step, a snapshot of an unchanged sandbox, or bytes a tenant
chose to match). The removal was decided stream by stream: tenant A's stream installed the
layer, tenant B's stream of the same digest found it there and ended well (the CP recorded it
on this host for B's template), then A left and its removal took the layer from under B's
template (test_attack_session25_layer_share: every such create of B's then had the layer pushed
again, up to ``WARREN_BUILD_MAX_LAYER_MB`` each).

So the decision is per digest, once the last of its streams has ended (an abandoned one's
install ended too): the layer goes only if one of those streams' installs put it here and none
of them ended well. Streams of one digest that all left still remove it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

__all__ = ["StreamedLayers"]

log = logging.getLogger("warren.agent.layers")


@dataclass
class _Digest:
    streams: int = 0  # streams of it not yet settled (an abandoned one: its install not ended)
    created: bool = False  # one of their installs put the layer here
    delivered: bool = False  # one of them ended well: the CP records the layer on this host


class StreamedLayers:
    """The streams under way per digest (one per ``LayerCache``)."""

    def __init__(self, delete: Callable[[Iterable[str]], Awaitable[tuple[list[str], list[str]]]]) -> None:
        self._delete = delete
        self._digests: dict[str, _Digest] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # settlements waiting for their installs

    def started(self, digest: str) -> None:
        self._digests.setdefault(digest, _Digest()).streams += 1

    def ended(self, digest: str, install: asyncio.Future[bool], *, delivered: bool) -> None:
        """A stream of ``digest`` ended (``delivered``: to its last chunk, its install done).
        An abandoned one settles once its install ends (waited for, never cancelled)."""
        if delivered:
            self._settle(digest, install, delivered=True)
            return
        task = asyncio.ensure_future(self._settle_after(digest, install))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle_after(self, digest: str, install: asyncio.Future[bool]) -> None:
        await asyncio.wait({install})
        removed: list[str] = []
        if self._settle(digest, install, delivered=False):
            removed, _ = await self._delete([digest])
        log.info("event=layer_abandoned digest=%s removed=%s", digest, bool(removed))

    def _settle(self, digest: str, install: asyncio.Future[bool], *, delivered: bool) -> bool:
        """Whether to remove the layer now: this was its last stream, and none ended well."""
        d = self._digests[digest]
        d.streams -= 1
        d.delivered |= delivered
        d.created |= _created(install)
        if d.streams:
            return False
        del self._digests[digest]
        return d.created and not d.delivered

    def seen(self, digests: Iterable[str]) -> None:
        """``digests`` were found here by someone else (a push of the same layer, ``HasLayers``,
        a create on it): whoever asked may record them, so a stream under way no longer
        removes them."""
        for digest in digests:
            if (d := self._digests.get(digest)) is not None:
                d.delivered = True

    def pending(self) -> int:
        """Digests with streams not yet settled (for tests)."""
        return len(self._digests)


def _created(install: asyncio.Future[bool]) -> bool:
    """The install ended and put its layer here (False: it was here already, or it failed)."""
    return install.done() and not install.cancelled() and install.exception() is None and install.result()
