"""Instructions of single pieces of the create and exec paths, in process, under callgrind (issue 17).

    .venv/bin/python bench/cp_create_pieces.py [--n 300] [--pieces view,view_json,found,brief]
    PYTHONPATH=/tmp/wt-old/src .venv/bin/python bench/cp_create_pieces.py   # another tree

bench/cp_create.py counts whole requests on a live platform, where a piece of 1-2 % is below
its resolution (±4 % between runs). Here each piece runs --n and 2 x --n times in a Python
process under ``valgrind --tool=callgrind``; the difference of the two totals over --n is the
piece's instructions per call, free of start-up and of the machine's load. A piece a tree does
not have is skipped.

Pieces: ``view`` (the create's answer: the model built, validated and dumped, as the old route
did), ``view_json`` (the answer written from the row), ``found`` (what an exec's lookup built
from every column: ``Found`` with its view), ``brief`` (the exec's lookup now: ``Brief``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_T = datetime(2026, 12, 4, 18, 30, 5, tzinfo=UTC)

# A running sandbox's row as the create's last statement returns it (q.VIEW_COLUMNS) ...
VIEW_ROW: dict[str, Any] = {
    "id": uuid.UUID(int=0x1234_5678_9ABC), "status": "running", "template": "minimal", "vcpus": 1,
    "memory_mb": 512, "disk_size_mb": 512, "timeout_sec": 300, "internet": True, "runtime": "runc",
    "paused_state": None, "guest_ip": "", "host_ip": "10.11.0.2", "created_at": _T, "started_at": _T,
    "last_active_at": _T, "last_updated": _T, "public_ports": None, "auto_resume": None,
}  # fmt: skip
# ... and as q.LOOKUP returns it (every column, the host's id and address).
LOOKUP_ROW: dict[str, Any] = {
    **VIEW_ROW, "team_id": uuid.UUID(int=7), "host_id": uuid.UUID(int=9), "replica_id": None,
    "traffic_token_hash": "0" * 64, "egress": None, "metadata": "{}", "end_at": None, "on_end": "kill",
    "all_ports_public": False, "template_id": uuid.UUID(int=3), "template_team_id": uuid.UUID(int=0),
    "egress_bytes": 0, "egress_counter": 0, "envd_token_epoch": 0, "h_id": uuid.UUID(int=9),
    "h_address": "127.0.0.2:50561",
}  # fmt: skip
BRIEF_ROW = {k: LOOKUP_ROW[k] for k in ("id", "status", "last_active_at", "host_id", "h_id", "h_address")}


def piece(name: str) -> Any:
    """The piece as a no-argument callable, or None when this tree lacks it."""
    from warren.cp.services import sandboxes as s

    def view() -> bytes:
        v = s.sandbox_model(VIEW_ROW)
        v.traffic_token = "wt_token"
        return v.model_dump_json(exclude_none=True).encode()

    def found() -> Any:
        f = s.Found(LOOKUP_ROW, s.sandbox_model(LOOKUP_ROW))
        return f.sandbox.id, f.sb_uuid, f.sandbox.last_active_at

    pieces = {"view": view, "found": found}
    if hasattr(s, "view_json"):
        pieces["view_json"] = lambda: s.view_json(VIEW_ROW, "wt_token")
    if hasattr(s, "Brief"):

        def brief() -> Any:
            b = s.Brief(BRIEF_ROW)
            return b.sid, b.sb_uuid, b.last_active_at

        pieces["brief"] = brief
    return pieces.get(name)


def child(name: str, n: int) -> None:
    fn = piece(name)
    if fn is None:
        return
    for _ in range(20):  # caches filled (ids' lru_cache, pydantic's first call)
        fn()
    for _ in range(n):
        fn()


def instructions(name: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             __file__, "--child", name, "--n", str(n)],
            check=True, capture_output=True, env=os.environ,
        )  # fmt: skip
        text = out.read_text(errors="replace")
    m = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.M)
    assert m is not None, "no totals in callgrind's output"
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--pieces", default="view,view_json,found,brief", help="comma-separated")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.n)
        return
    import warren

    print(f"warren from {Path(warren.__file__).parent}")
    for name in args.pieces.split(","):
        if piece(name) is None:
            print(f"  {name:<10} (not in this tree)")
            continue
        one, two = instructions(name, args.n), instructions(name, 2 * args.n)
        print(f"  {name:<10} {(two - one) / args.n / 1e3:9.1f} k Ir per call")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
