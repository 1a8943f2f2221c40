"""A build context read in a child process of its own (session 26), as image reads are
(layers/image_child.py). ``python -m warren.cp.services.context_child index CP_PID CONTEXT``
reads the context's index (the build's first work: a context that is no tar, has too many
entries or a sparse member fails the build there); ``… stage CP_PID CONTEXT REQUEST OUT INDEX
MAX_BYTES`` writes a COPY step's staging layer to OUT (a file the CP made in its build spool),
the step's line and sources read from the JSON file REQUEST. CONTEXT is ``""`` for a build
without one. Each writes one JSON document to stdout.

Both ran in the CP's tenant threads (cp/services/tenant_threads.py), as long as the tenant's
context makes them: 100 000 entries are ~3 s of Python to index and ~3 s more to stage, and
those threads held the GIL against the event loop, so every other team's request on that
process waited its turns at the GIL (another team's ``GET /v1/sandboxes``: 4 ms alone, p90
27-53 ms and up to 0.5 s during 4 to 8 such builds; 13-16 ms and 0.1 s now). The index keeps
every directory a name implies, so a deep name costs its depth squared: a 5 MiB context of
120 names of 1000 components took 2.4 GiB of the CP's own memory. Here:

- the CP's event loop keeps its process's GIL, and the child runs at a lower priority
  (:data:`NICE`), in the team's fair turn (``tenant_threads.run_child``);
- the hostile context is parsed outside the CP's memory, and the child's address space is
  bounded (:data:`MAX_ADDRESS_SPACE`): a context whose index balloons fails its build alone
  (:data:`MEMORY`);
- a cancelled build (its cancel, its time limit, the CP stopping) kills the child, and so does
  the CP's death (warren/parent_death.py: a CP killed outright leaves no staging writing to its
  spool for nobody, up to the layer limit; its threads' work died with it before);
- the child gets a bare environment: none of the CP's secrets.

The child indexes the context again for each COPY step (a step's staging is its own process):
the tenant's CPU, niced, in its own turn and the build's time limit. What the child says is
checked as if it were hostile (:func:`staged_from_json`): the staging layer must still be the
regular file the CP made (not a link to elsewhere), of the size the child claims, within the
layer limit; each staged source's name a base name, and its place in the staging layer the
CP's own, not the child's. The store hashes the layer again as it takes it (``expect=``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from warren.cp.services import build_spool, tenant_threads
from warren.cp.services.template_context import MAX_ENTRIES, STAGING, BuildContext, Staged, staging_layer
from warren.cp.services.template_spec import CopyStep
from warren.errors import InvalidRequest, PayloadTooLarge, WarrenError
from warren.layers.hashing import LayerMeta
from warren.parent_death import die_with_parent
from warren.text import text_problem

log = logging.getLogger("warren.builds")

T = TypeVar("T")

NICE = 10
MAX_ADDRESS_SPACE = 2 << 30  # 100 000 entries of deep names: ~140 MiB
MAX_OUTPUT = 64 << 20  # the staged sources' names (one per source a COPY's patterns matched)
MAX_MESSAGE = 16 << 10  # a refusal's message: a line, a source (≤ 4 KiB) and a member's name
_DIGEST = re.compile(r"[0-9a-f]{64}")
_REFUSALS: dict[str, type[WarrenError]] = {"invalid": InvalidRequest, "too_large": PayloadTooLarge}
MEMORY = "the build context takes more memory to read than a build may use"


# --- the child ---------------------------------------------------------------------------


def _context(arg: str) -> Path | None:
    return Path(arg) if arg else None


def _index(context: str) -> dict[str, Any]:
    ctx = BuildContext(_context(context))
    ctx.close()
    return {"entries": len(ctx.members)}


def _stage(context: str, request_path: str, out: str, index: str, max_bytes: str) -> dict[str, Any]:
    request = json.loads(Path(request_path).read_text())
    step = CopyStep(int(request["line"]), tuple(str(s) for s in request["sources"]), "/", True)
    ctx = BuildContext(_context(context))
    try:
        meta, staged = staging_layer(ctx, step, int(index), Path(out), int(max_bytes))
    finally:
        ctx.close()
    return {"digest": meta.digest, "size": meta.size, "sources": [[s.name, s.is_dir] for s in staged]}


def main(argv: list[str] | None = None) -> int:
    """Index or stage; stdout: ``{"ok": …}``, ``{"error": {"kind", "message"}}`` (the
    context's or the spec's fault, as the build's error) or ``{"internal": …}`` (the reader's)."""
    mode, parent, *args = argv if argv is not None else sys.argv[1:]
    die_with_parent(int(parent))
    resource.setrlimit(resource.RLIMIT_AS, (MAX_ADDRESS_SPACE, MAX_ADDRESS_SPACE))
    os.nice(NICE)
    out: dict[str, Any]
    try:
        out = {"ok": _index(*args) if mode == "index" else _stage(*args)}
    except (InvalidRequest, PayloadTooLarge) as e:
        kind = "too_large" if isinstance(e, PayloadTooLarge) else "invalid"
        out = {"error": {"kind": kind, "message": e.message}}
    except MemoryError:
        out = {"error": {"kind": "invalid", "message": MEMORY}}
    except Exception as e:  # the reader's own failure, for the CP's log
        out = {"internal": f"{type(e).__name__}: {str(e)[:500]}"}
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


# --- the control plane's side ------------------------------------------------------------


async def check_index(team_id: object, context: Path | None) -> None:
    """The context's index, read by a child in the team's turn: the build's refusal (a 400's
    message, as before) for a context that is no tar, too large an index or a sparse member."""
    if context is None:
        return  # nothing to read
    await _answer(team_id, ["index", str(context)], "the build context", _entries)


async def stage(
    team_id: object, context: Path | None, step: CopyStep, index: int, out: Path, max_bytes: int
) -> tuple[LayerMeta, list[Staged]]:
    """The step's staging layer, written by a child to ``out`` (the caller's spool file, which
    it removes) in the team's turn; its meta and sources."""
    request = json.dumps({"line": step.line, "sources": list(step.sources)})
    request_path = await asyncio.to_thread(_request_file, out.parent, request)
    try:
        args = ["stage", str(context or ""), str(request_path), str(out), str(index), str(max_bytes)]
        return await _answer(
            team_id, args, "the COPY step's files", lambda ok: staged_from_json(ok, out, index, max_bytes)
        )
    finally:
        await asyncio.to_thread(request_path.unlink, missing_ok=True)


def _request_file(spool: Path, request: str) -> Path:
    """The step's sources for the child (up to 1 MiB of them: more than one argument takes)."""
    fd, name = tempfile.mkstemp(dir=spool, prefix=build_spool.COPY_PREFIX, suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(request)
    return Path(name)


async def _answer(team_id: object, args: Sequence[str], what: str, parse: Callable[[Any], T]) -> T:
    """The child's ``ok`` answer, checked by ``parse``; its refusal raised as the error the
    work raised in the CP before; anything else logged and an internal error."""
    argv = [sys.executable, "-m", "warren.cp.services.context_child", args[0], str(os.getpid()), *args[1:]]
    return await tenant_threads.child_answer(
        team_id, argv, max_output=MAX_OUTPUT, answer="ok", parse=parse, refusal=refusal,
        log=log, event="context_read_failed", failure=f"{what} could not be read",
    )  # fmt: skip


def refusal(error: Any) -> WarrenError:
    """The child's refusal as its error; ``ValueError`` for one malformed."""
    if not isinstance(error, dict) or error.get("kind") not in _REFUSALS:
        raise ValueError("refusal")
    message = error.get("message")
    if not isinstance(message, str) or not message or text_problem(message):
        raise ValueError("refusal message")
    return _REFUSALS[error["kind"]](message[:MAX_MESSAGE])


def _entries(ok: Any) -> None:
    if (
        not isinstance(ok, dict)
        or type(ok.get("entries")) is not int
        or not 0 <= ok["entries"] <= MAX_ENTRIES
    ):
        raise ValueError("index")


def staged_from_json(ok: Any, out: Path, index: int, max_bytes: int) -> tuple[LayerMeta, list[Staged]]:
    """The child's staging layer and sources, each checked; ``ValueError`` for anything off."""
    if not isinstance(ok, dict) or not isinstance(ok.get("sources"), list) or not ok["sources"]:
        raise ValueError("not a staging")
    digest, size = ok.get("digest"), ok.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError("staging digest")
    if type(size) is not int or not 0 < size <= max_bytes:
        raise ValueError("staging size")
    st = os.lstat(out)  # still a regular file, not a link to elsewhere
    if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == size):
        raise ValueError("staging file")
    top = f"/{STAGING}/copy/{index}"
    return LayerMeta(digest, size), [_source(entry, f"{top}/{n}") for n, entry in enumerate(ok["sources"])]


def _source(entry: Any, path: str) -> Staged:
    """One staged source: its base name in the context (``.`` for the whole context)."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], bool)):
        raise ValueError("staged source")
    name = entry[0]
    if not isinstance(name, str) or name in ("", "..") or "/" in name or "\x00" in name:
        raise ValueError("staged source name")
    return Staged(path, name, entry[1])


if __name__ == "__main__":
    sys.exit(main())
