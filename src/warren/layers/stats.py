"""What a layer holds, as the CP needs to know it: counts and whether python3 is there.

The guest agent needs `/usr/bin/python3` in a sandbox's chain. A layer can add it (a file, a
symlink or a hard link at `usr/bin/python3`) or remove what lower layers had (a whiteout of
`usr`, `usr/bin` or `usr/bin/python3`, an opaque `/`, `usr` or `usr/bin`, or a non-directory
put at `usr` or `usr/bin`). `python3_in_chain` folds that over a chain, bottom first.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

PYTHON3 = (b"usr", b"bin", b"python3")


@dataclass(frozen=True)
class LayerStats:
    files: int  # entries created other than directories (files, links, fifos, whiteouts)
    bytes: int  # regular files' data
    has_python3: bool  # the layer puts a file or symlink at usr/bin/python3
    removes_python3: bool = False  # it hides a lower layer's usr/bin/python3 (see above)
    skipped: int = 0  # device nodes, aufs `.wh..wh.*` metadata: never created


def python3_in_chain(layers: Iterable[LayerStats], *, base_has_python3: bool = False) -> bool:
    """Whether `usr/bin/python3` exists on top of `layers` (bottom first) over a base."""
    present = base_has_python3
    for s in layers:
        if s.removes_python3:
            present = False
        if s.has_python3:
            present = True
    return present


class Python3Probe:
    """Follows `usr/bin/python3` through one layer's members, in tar order."""

    def __init__(self) -> None:
        self.has = False
        self.removes = False

    def entry(self, parts: tuple[bytes, ...], *, is_dir: bool, is_file_or_link: bool) -> None:
        if parts == PYTHON3:
            self.has = is_file_or_link
            self.removes = True
        elif PYTHON3[: len(parts)] == parts and parts and not is_dir:
            self.has, self.removes = False, True  # usr or usr/bin replaced by a non-directory

    def whiteout(self, parts: tuple[bytes, ...]) -> None:
        if PYTHON3[: len(parts)] == parts:
            self.has, self.removes = False, True

    def opaque(self, dir_parts: tuple[bytes, ...]) -> None:
        if len(dir_parts) < len(PYTHON3) and PYTHON3[: len(dir_parts)] == dir_parts:
            self.removes = True  # lower layers hidden; this layer's own python3 still counts
