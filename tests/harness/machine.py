"""What the tests share on this machine: free ports, scratch dirs a sandbox can traverse, the
debootstrapped ``minimal`` template cache."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

# Built once per machine (debootstrap: one to several minutes) and shared by every agent the
# tests start, so no agent builds its own.
MINIMAL_CACHE = Path(os.environ.get("WARREN_TEST_MINIMAL_DIR", "/var/cache/warren-test/templates/minimal"))
SCRATCH = Path(tempfile.gettempdir())


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listening(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def scratch_dir(suite: str) -> Path:
    """A fresh 0755 directory under ``/tmp/warren-<suite>-tests/``. Not pytest's tmp_path: its
    base is 0700 (and other pytest runs reset it to 0700 at any moment), while a sandbox's root,
    an unprivileged host uid, must traverse down to its rootfs under the agent's data dir."""
    base = SCRATCH / f"warren-{suite}-tests"
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    root.chmod(0o755)
    return root


def minimal_cache_env() -> dict[str, str]:
    """The environment that points an agent at the shared ``minimal`` template cache. It also
    keeps a ``warren up`` under test from building ``base`` in the background (apt, minutes of
    CPU): the tests of that build ask for it themselves."""
    return {"WARREN_MINIMAL_DIR": str(MINIMAL_CACHE), "WARREN_BUILD_BASE_TEMPLATE": "0"}


def prebuild_minimal_template() -> None:
    """Build the shared ``minimal`` template once, before any test starts (the pytest controller
    calls this outside every test's timeout), so no test's first sandbox waits for debootstrap."""
    if os.geteuid() != 0 or (MINIMAL_CACHE / "template.json").exists() or shutil.which("debootstrap") is None:
        return  # not root: the sandbox tests skip (or fail under CI) on their own
    from warren.agent.templates import TemplateStore

    print(f"\nbuilding the minimal sandbox template into {MINIMAL_CACHE} (once; debootstrap) ...", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="warren-tpl-") as scratch:
        asyncio.run(TemplateStore(Path(scratch), minimal_dir=MINIMAL_CACHE).ensure_minimal())
    print(f"minimal template ready in {time.monotonic() - started:.0f} s", flush=True)


def log_lines_at(path: Path, levels: tuple[str, ...], n: int = 12) -> str:
    """The last ``n`` lines of a Warren process's text log (warren/logs.py's format: date, time,
    level) at one of ``levels``, each cut at 600 characters; "" when the log cannot be read."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [line[:600] for line in lines if line.split(" ", 3)[2:3] in [[level] for level in levels]]
    return "\n".join(kept[-n:])
