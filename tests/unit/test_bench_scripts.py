"""``make bench`` runs every script in ``bench/`` with no arguments, under ``set -e``: a script
that requires one stops the whole run there (two A/B scripts did until session 30, so ``make
bench`` ended at its third script). Read, not run: the scripts start platforms."""

from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _required_positionals(tree: ast.Module) -> list[str]:
    """``add_argument("name", ...)`` calls whose positional needs a value on the command line."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"):
            continue
        first = node.args[0] if node.args else None
        if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            continue
        if first.value.startswith("-"):
            continue
        nargs = next((k.value for k in node.keywords if k.arg == "nargs"), None)
        if not (isinstance(nargs, ast.Constant) and nargs.value in ("?", "*")):
            found.append(first.value)
    return found


def test_every_bench_script_runs_with_no_arguments() -> None:
    scripts = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
    assert len(scripts) > 20
    required = {p.name: r for p in scripts if (r := _required_positionals(ast.parse(p.read_text())))}
    assert required == {}, f"make bench would stop at these (give them defaults): {required}"
