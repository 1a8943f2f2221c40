"""The import-linter contracts of `make lint` (pyproject.toml) fail when a layer is broken.

A copy of the source gets one forbidden import per contract, and `lint-imports` run on that
copy must report every contract broken: a contract that cannot fail checks nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# contract id -> (module that gets the import, the forbidden import)
BREAKS = {
    "dashboard-not-api": ("cp/dashboard/format.py", "import warren.cp.api.deps"),
    "services-no-http": ("cp/services/users.py", "import fastapi"),
    "hosts-no-services": ("cp/hosts/scheduler.py", "import warren.cp.services.users"),
    "agent-standalone": ("agent/proc.py", "import warren.cli.main"),
    "sdk-no-server": ("sdk/_config.py", "import warren.cp.app"),
    "guest-alone": ("guest/guest_agent/protocol.py", "import warren.errors"),
    "layers-alone": ("layers/stats.py", "import warren.agent.proc"),
    "footprint-alone": ("footprint.py", "import warren.agent.proc"),
    "e2b-over-services": ("cp/e2b/control/models.py", "import warren.cp.api.deps"),
    "interpreter-alone": ("interpreter/outputs.py", "import warren.errors"),
}


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}  # ahead of the editable install's path
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_every_contract_fails_when_broken_on_purpose(tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "warren", src / "warren", ignore=shutil.ignore_patterns("__pycache__"))
    for module, line in BREAKS.values():
        path = src / "warren" / module
        path.write_text(path.read_text() + f"\n{line}  # broken on purpose\n")
    res = _lint_imports(tmp_path, src)
    assert res.returncode != 0, res.stdout
    out = res.stdout
    assert f"Contracts: 0 kept, {len(BREAKS)} broken." in out, out
    for module, _ in BREAKS.values():
        assert module.removesuffix(".py").replace("/", ".") in out, (module, out)
