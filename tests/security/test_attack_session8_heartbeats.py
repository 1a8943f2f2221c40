"""Session 8's heartbeat rate limit (cp/services/host_link.py: a burst of 20, then 2 a second
per host, in each CP process's memory) attacked by hostile BYOC hosts: one host's flood must
not take another host's beats, and hosts that come and go (ids churned) must not make the
limiter's memory grow without bound. The limiter is driven directly, as every heartbeat reaches
it after authentication (tests/security/test_attack_pools_reports.py drives it over HTTP).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from warren.cp.services import host_link
from warren.errors import TooManyRequests

BURST = int(host_link.BEAT_BURST)


@pytest.fixture
def hosts() -> Iterator[list[uuid.UUID]]:
    """Fresh host ids, forgotten by the limiter afterwards (it is the process's own)."""
    made: list[uuid.UUID] = []
    yield made
    for h in made:
        host_link._beats.pop(h, None)


def beats_taken(host: uuid.UUID, tries: int) -> int:
    taken = 0
    for _ in range(tries):
        try:
            host_link._take_beat(host)
            taken += 1
        except TooManyRequests:
            pass
    return taken


def test_one_hosts_flood_does_not_take_anothers_beats(hosts: list[uuid.UUID]) -> None:
    mallory, alice = uuid.uuid4(), uuid.uuid4()
    hosts += [mallory, alice]
    assert beats_taken(mallory, 500) < BURST + 5  # a few refill while it floods
    assert beats_taken(alice, BURST) == BURST  # her whole burst, right after the flood


def test_refused_beats_do_not_push_the_flooders_refill_back_forever(hosts: list[uuid.UUID]) -> None:
    """A refused beat records the time but keeps what was already earned: a host that keeps
    beating too fast still gets about the steady rate (it is not locked out by its own 429s)."""
    h = uuid.uuid4()
    hosts.append(h)
    beats_taken(h, BURST)
    deadline = time.monotonic() + 30
    got = 0
    while got < 3 and time.monotonic() < deadline:
        got += beats_taken(h, 1)
        time.sleep(0.01)
    assert got == 3


def test_churned_host_ids_are_forgotten(hosts: list[uuid.UUID]) -> None:
    """20,000 hosts beat once each (ids that never come back): once their buckets are full
    again they are dropped on the next beat past 4096 hosts held, so the map stays about that
    size plus the hosts beating now."""
    churned = [uuid.uuid4() for _ in range(20_000)]
    hosts += churned
    for h in churned:
        host_link._take_beat(h)
    deadline = time.monotonic() + 30
    while True:
        probe = uuid.uuid4()
        hosts.append(probe)
        host_link._take_beat(probe)
        if len(host_link._beats) <= 4096:
            break
        assert time.monotonic() < deadline, len(host_link._beats)
        time.sleep(0.2)
