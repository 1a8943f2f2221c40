"""Which of a deleted team's templates need their host asked to delete files (``DeleteSnapshot``):
only snapshots taken before the template store; the rest is rows and store layers, for the GC."""

from __future__ import annotations

import uuid

from warren.cp.services.team_deletion import TemplateRef

DIGEST = "a" * 64


def ref(type_: str, source: str, layers: tuple[str, ...] = ()) -> TemplateRef:
    return TemplateRef(
        id=uuid.uuid4(), name="t", type=type_, host_id=uuid.uuid4(), layers=layers, source=source
    )


def test_only_pre_store_snapshots_have_files_on_a_host() -> None:
    assert ref("snapshot", "").host_local  # taken before the store: files on its host
    assert not ref("snapshot", "snapshot", (DIGEST,)).host_local  # a store snapshot: layers
    assert not ref("snapshot", "snapshot").host_local  # a store snapshot of plain minimal
    assert not ref("base", "build", (DIGEST,)).host_local
    assert not ref("base", "import", (DIGEST,)).host_local
