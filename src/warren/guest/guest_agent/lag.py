"""Clients of a command's output that fall behind: one rule for ``attach`` subscribers
(``process``) and terminal clients (``pty``).

What the guest queues for a client that does not read is the guest's own memory, which no OOM
kill of a command frees (24 MiB of reserve, docs/agent.md). So a client the command does not wait
for is cut off (its connection closed, what it had not read dropped) when it is
:data:`SUBSCRIBER_CAP` behind, or when all such clients together hold :data:`SUBSCRIBERS_TOTAL`
(checked once it holds ``LOW_WATER``). An error frame queued after its buffer would keep that
buffer for it: 16 attach clients that read nothing held 181 MiB of a 256 MiB sandbox's guest, 100
terminal clients 52-58 MiB (session 17, W2-D).
"""

from .conn import LOW_WATER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from .conn import Conn
    from .server import Guest

    class Subscribed(Protocol):
        g: "Guest"
        subs: "list[Conn]"

        def waits_for(self, c: "Conn") -> bool: ...

        def unsubscribe(self, c: "Conn") -> None: ...


SUBSCRIBER_CAP = 8 << 20
SUBSCRIBERS_TOTAL = 8 << 20


def lagging(guest: "Guest") -> int:
    """What the guest holds for every client of a command or terminal that is not waited for."""
    total = 0
    for s in (*guest.procs.values(), *guest.ptys.values()):
        for c in s.subs:
            if not s.waits_for(c):
                total += len(c.out)
    return total


def cut_if_behind(s: "Subscribed", c: "Conn") -> None:
    if s.waits_for(c):
        return
    n = len(c.out)
    if n < LOW_WATER or (n <= SUBSCRIBER_CAP and lagging(s.g) <= SUBSCRIBERS_TOTAL):
        return
    cut(s, c)


def cut(s: "Subscribed", c: "Conn") -> None:
    """``c`` off ``s``: closed, not sent an error (a frame may be cut off in the middle)."""
    s.unsubscribe(c)
    c.out.clear()
    c.close()
