"""The guest runs under the template's bare ``python3 -I -S``: it may import only the standard
library and its own package, never ``warren`` or third-party code."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import warren.guest

OWN = {"guest_agent"}


def guest_sources() -> list[Path]:
    return [warren.guest.GUEST_SCRIPT, *warren.guest.guest_modules()]


def imported_top_names(path: Path) -> set[str]:
    """Top-level module names of every absolute import, wherever it sits in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_guest_imports_only_the_standard_library() -> None:
    sources = guest_sources()
    assert len(sources) > 2
    outside = {
        f"{p.relative_to(warren.guest.GUEST_DIR)}: {name}"
        for p in sources
        for name in imported_top_names(p)
        if name not in sys.stdlib_module_names and name not in OWN
    }
    assert not outside


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nif True:\n    from warren.errors import NotFound\n    import httpx.client\n")
    found = imported_top_names(bad) - sys.stdlib_module_names
    assert found == {"warren", "httpx"}
