"""Session 10's hostile tenant: a sparse file multiplies what a snapshot writes on the host.

A sandbox's disk is a tmpfs of ``disk_size_mb``, and the platform reserves that much of a
host's disk for its snapshot (``limits.check_host_disk``). But tmpfs, like any Linux
filesystem, holds sparse files: ``truncate -s 1G`` on a 76 MB disk costs the tenant nothing.
The snapshot's exporter (``layers/writer.py``) reads every byte of ``st_size`` and writes it
into the layer tar, on the host's disk (a temporary file of the agent's, written whole before
the control plane reads a byte of it, so the team's size quota does not stop it), then into
the layer store. One tenant's sandboxes at once write up to ``WARREN_AGENT_MAX_LAYER_MB``
(8 GiB) each on the host, whatever their disk: twenty sandboxes fill 160 GiB.

Expected: what one snapshot writes is bounded by the disk the sandbox really has (its
allocated blocks), not by the sizes its files claim: the snapshot is refused (4xx), or its
layer is not much larger than the disk.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.platform import Platform
from tests.harness.tenant import Tenant

pytestmark = [pytest.mark.root, pytest.mark.shared_platform]

MEMORY_MB = 128  # a disk of (128 - 32) * 4/5 ≈ 76 MB
SPARSE_MB = 1024


def test_a_sparse_file_does_not_multiply_a_snapshot_on_the_host(platform: Platform, alice: Tenant) -> None:
    sb = alice.create(memory_mb=MEMORY_MB)
    try:
        got = alice.w("GET", f"/v1/sandboxes/{sb}").json()
        disk_mb = int(got["disk_size_mb"])
        assert disk_mb < SPARSE_MB // 8, got
        # Costs no block of the sandbox's disk: `du` says 0.
        out = alice.sh(sb, f"truncate -s {SPARSE_MB}M /root/hole && du -k /root/hole")
        assert out.split()[0] == "0", out
        r = alice.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "sparse-hole"}, timeout=600)
        if r.status_code == 201:
            rows = asyncio.run(platform.sql("SELECT size_bytes FROM templates WHERE name = 'sparse-hole'"))
            stored_mb = int(rows[0][0]) >> 20
            # Headers and the chain's other layers are small: twice the disk is generous.
            assert stored_mb <= 2 * disk_mb, (
                f"a {disk_mb} MB disk made a {stored_mb} MB snapshot: the host wrote the hole's zeros"
            )
        else:
            assert 400 <= r.status_code < 500, r.text
    finally:
        alice.w("DELETE", "/v1/snapshots/sparse-hole")
        alice.w("DELETE", f"/v1/sandboxes/{sb}")


def test_an_unexportable_name_is_a_4xx(alice: Tenant) -> None:
    """A file named like a whiteout cannot be stored in a layer: the tenant is told (4xx), the
    platform does not answer 500."""
    sb = alice.create(memory_mb=MEMORY_MB)
    try:
        alice.sh(sb, "touch /root/.wh.x")
        r = alice.w("POST", "/v1/snapshots", {"sandbox_id": sb, "name": "whiteout-name"}, timeout=600)
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    finally:
        alice.w("DELETE", "/v1/snapshots/whiteout-name")
        alice.w("DELETE", f"/v1/sandboxes/{sb}")
