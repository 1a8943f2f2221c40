"""Whether a local server has read everything its clients sent it, from the kernel's own
counts (``/proc/net/tcp``): what an attack test waits for before it measures what the server
holds, instead of a fixed number of seconds."""

from __future__ import annotations

from pathlib import Path

ESTABLISHED = "01"


def read_all_it_was_sent(url: str) -> bool:
    """Whether the server at ``url`` (``http://host:port``) has read every byte sent to it on
    its open connections: no ESTABLISHED client socket to its port has bytes unacknowledged
    (``tx_queue``) and none of its own has bytes unread (``rx_queue``). A body it stops reading
    stays in its receive queue, so this holds only once it holds whatever it is going to."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != ESTABLISHED:
                continue
            local, remote = (int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
            tx, rx = (int(q, 16) for q in fields[4].split(":"))
            if (remote == port and tx) or (local == port and rx):
                return False
    return True
