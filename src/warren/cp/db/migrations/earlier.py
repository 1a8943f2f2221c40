"""An earlier revision's module, for a migration that restates or edits an earlier one's SQL.

Revision files are named ``NNNN_name.py``: not importable names, so they are loaded by path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

_VERSIONS = Path(__file__).with_name("versions")


def revision_module(name: str) -> ModuleType:
    """The module of revision file ``versions/<name>.py`` (e.g. ``"0011_reserve_in_one"``)."""
    path = _VERSIONS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_warren_migration_{name}", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
