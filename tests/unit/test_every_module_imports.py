"""Every module of the package imports: on the versions installed here, and (``make floors``) on
the lowest versions pyproject.toml allows, where a module no test imports would otherwise hide an
API its floor lacks (docs/operations.md, "Dependency floors")."""

from __future__ import annotations

import importlib
import pkgutil

import warren

# Alembic's migration scripts run only inside alembic (its ``context`` is set by the run); a
# ``__main__`` runs its program; the guest and the interpreter run inside sandboxes, each started
# as a program (their own tests import them).
NOT_ALONE = (
    "warren.cp.db.migrations.env",
    "warren.cp.db.migrations.versions.",
    "warren.guest",
    "warren.interpreter",
)


def test_every_module_imports() -> None:
    failed = {}
    for mod in pkgutil.walk_packages(warren.__path__, "warren."):
        if mod.name.startswith(NOT_ALONE) or mod.name.endswith(".__main__"):
            continue
        try:
            importlib.import_module(mod.name)
        except Exception as e:  # each failure is reported, not the first only
            failed[mod.name] = f"{type(e).__name__}: {e}"
    assert not failed, failed
