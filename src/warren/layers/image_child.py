"""An image read in a child process of its own: ``python -m warren.layers.image_child IMAGE WORKDIR
MAX_BYTES [CP_PID]`` writes the layers into WORKDIR and one JSON document to stdout (session 25).

The control plane's imports ran :func:`~warren.layers.oci_image.read_image` in threads of its own
process (cp/services/tenant_threads.py). A tenant's image decides how long that is: a layer of
600 000 empty files is seconds of Python per read. Those threads held the GIL against the
event loop, so every other team's request on that process waited its turns at the GIL: a push
of 0.10 s took 1.1 s during eight such imports (session 23). Here the read runs in a child:

- the CP's event loop keeps its process's GIL, and the child runs at a lower priority
  (:data:`NICE`), so the CP's requests go first on a busy machine;
- the hostile image is parsed outside the CP's memory, and the child's address space is bounded
  (:data:`MAX_ADDRESS_SPACE`): a reader that balloons ends alone, with an error for its import;
- a cancelled import kills the child (its caller's ``stop`` becomes a SIGKILL), and so does the
  CP's death (warren/parent_death.py: CP_PID, the CP's pid, which it always passes; a CP killed
  outright left the read writing layers to its spool for nobody before, session 26);
- the child gets a bare environment: none of the CP's secrets.

What the child says is checked as if it were hostile too (:func:`image_from_json`): every layer
must be a regular file named by its digest directly in WORKDIR, so a child subverted by its
image could at most name bytes that are already the tenant's. The store hashes each layer again
as it takes it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
from pathlib import Path
from typing import Any

from warren.layers.hashing import LayerError, LayerMeta
from warren.layers.oci_image import MAX_LAYERS, Image, read_image
from warren.layers.stats import LayerStats
from warren.parent_death import die_with_parent

NICE = 10
MAX_ADDRESS_SPACE = 2 << 30  # Python, zlib and the reader's buffers: ~100 MiB at the most
MAX_OUTPUT = 16 << 20  # the JSON: run defaults (each ≤ the image config's 4 MiB) and the layers
_DIGEST = re.compile(r"[0-9a-f]{64}")


def image_to_json(image: Image) -> dict[str, Any]:
    return {
        "layers": [{"name": path.name, "digest": m.digest, "size": m.size} for path, m in image.layers],
        "env": image.env,
        "workdir": image.workdir,
        "user": image.user,
        "cmd": image.cmd,
        "entrypoint": image.entrypoint,
        "stats": [vars(s) for s in image.stats],
        "has_python3": image.has_python3,
    }


def image_from_json(doc: Any, workdir: Path) -> Image:
    """The child's :class:`Image`, each field checked; ``ValueError`` for anything off."""
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise ValueError("not an image")
    if len(doc["layers"]) > MAX_LAYERS:
        raise ValueError("too many layers")
    layers = [_layer(entry, workdir) for entry in doc["layers"]]
    stats = [_stats(entry) for entry in _list(doc.get("stats"))]
    env = doc.get("env")
    if not isinstance(env, dict) or not all(isinstance(v, str) for kv in env.items() for v in kv):
        raise ValueError("env")
    return Image(
        layers=layers,
        env=env,
        workdir=_str(doc.get("workdir")),
        user=_str(doc.get("user")),
        cmd=_strings(doc.get("cmd")),
        entrypoint=_strings(doc.get("entrypoint")),
        stats=stats,
        has_python3=doc.get("has_python3") is True,
    )


def _layer(entry: Any, workdir: Path) -> tuple[Path, LayerMeta]:
    if not isinstance(entry, dict):
        raise ValueError("layer")
    digest, size = entry.get("digest"), entry.get("size")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ValueError("layer digest")
    size = _count(size)
    if entry.get("name") != f"{digest}.tar":
        raise ValueError("layer name")
    path = workdir / f"{digest}.tar"
    st = os.lstat(path)  # a regular file in the workdir itself, not a link to elsewhere
    if not (st.st_mode & 0o170000 == 0o100000 and st.st_size == size):
        raise ValueError("layer file")
    return path, LayerMeta(digest, size)


def _stats(entry: Any) -> LayerStats:
    if not isinstance(entry, dict):
        raise ValueError("stats")
    files, size, skipped = (_count(entry.get(k, 0)) for k in ("files", "bytes", "skipped"))
    return LayerStats(
        files=files,
        bytes=size,
        has_python3=entry.get("has_python3") is True,
        removes_python3=entry.get("removes_python3") is True,
        skipped=skipped,
    )


def _count(value: Any) -> int:
    if type(value) is not int or value < 0:
        raise ValueError("count")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("list")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("text")
    return value


def _strings(value: Any) -> list[str]:
    return [_str(v) for v in _list(value)]


def main(argv: list[str] | None = None) -> int:
    """Read the image; stdout: ``{"image": …}``, ``{"error": …}`` (the image's fault, a 400) or
    ``{"internal": …}`` (the reader's)."""
    image_path, workdir, max_bytes, *parent = argv if argv is not None else sys.argv[1:]
    die_with_parent(int(parent[0]) if parent else None)
    resource.setrlimit(resource.RLIMIT_AS, (MAX_ADDRESS_SPACE, MAX_ADDRESS_SPACE))
    os.nice(NICE)
    out: dict[str, Any]
    try:
        out = {"image": image_to_json(read_image(Path(image_path), Path(workdir), max_bytes=int(max_bytes)))}
    except LayerError as e:
        out = {"error": str(e)}
    except MemoryError:
        out = {"error": "the image takes more memory to read than an import may use"}
    except Exception as e:  # the reader's own failure, for the CP's log
        out = {"internal": f"{type(e).__name__}: {str(e)[:500]}"}
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
