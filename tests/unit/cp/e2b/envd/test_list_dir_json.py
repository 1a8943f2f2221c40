"""ListDir's answer is encoded a batch at a time as it is sent (cp/e2b/envd/filesystem.py): the
same JSON as one ``json.dumps`` would make, and no batch holds the event loop for the whole
listing (session 25: 32 MiB at once held it ~0.2 s)."""

from __future__ import annotations

import json

import pytest

from warren.cp.e2b.envd.entry import entry_json
from warren.cp.e2b.envd.filesystem import LIST_BATCH, _entries_json
from warren.rpc import hostagent_pb2 as pb


def _entries(n: int) -> list[pb.EntryInfo]:
    return [
        pb.EntryInfo(name=f"f{i}é", type="file", path=f"/tmp/f{i}é", size=i, mode=0o644, owner="root")
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [0, 1, LIST_BATCH, LIST_BATCH + 1, 3 * LIST_BATCH + 7])
async def test_the_batches_make_the_one_json_document(n: int) -> None:
    entries = _entries(n)
    parts = [part async for part in _entries_json(entries)]
    assert json.loads(b"".join(parts)) == {"entries": [entry_json(e) for e in entries]}
    # One part a batch, between the opening and the close: the loop runs others in between.
    assert len(parts) == 2 + -(-n // LIST_BATCH)
