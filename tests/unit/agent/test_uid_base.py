"""templates.uid_base: every network slot's range is its own and clear of the host's other
reserved uids (the canonical range, slot owners, the layer packer)."""

from __future__ import annotations

import itertools

from warren.agent.layer_image import PACKER_UID_BASE, PACKER_UIDS
from warren.agent.network import MAX_SLOTS
from warren.agent.slot_userns import IDMAP_OWNER_UID, OWNER_BASE
from warren.agent.templates import MAPPED_BASE, MAPPED_SIZE, uid_base


def test_every_slot_range_is_its_own_and_clear_of_the_reserved_uids() -> None:
    ranges = sorted((uid_base(n), uid_base(n) + MAPPED_SIZE) for n in range(MAX_SLOTS))
    reserved = [
        (MAPPED_BASE, MAPPED_BASE + MAPPED_SIZE),  # the canonical range the layers are stored in
        (IDMAP_OWNER_UID, OWNER_BASE + MAX_SLOTS),  # the id-map owner, the probe, slot owners
        (PACKER_UID_BASE, PACKER_UID_BASE + PACKER_UIDS),
    ]
    for lo, hi in ranges:
        assert lo > MAPPED_BASE and hi <= 2**32 - 1
        assert all(hi <= r_lo or lo >= r_hi for r_lo, r_hi in reserved), (lo, hi)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
