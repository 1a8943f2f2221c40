"""The ``code-interpreter-v1`` template for tests (docs/e2b.md §4): built through Warren's own
SDK from the context ``cp/services/interpreter_template.py`` makes, with the wheels downloaded
once per machine into :data:`WHEELS` (keyed by the pins), so a test run needs no network."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from tests.harness.platform import Platform

WHEELS_ROOT = Path(os.environ.get("WARREN_TEST_WHEELS_DIR", "/var/cache/warren-test/interpreter-wheels"))


def cached_wheels() -> Path:
    """The wheels of the template's pins, downloaded on first use (then kept)."""
    from warren.cp.services import interpreter_template as it

    d = WHEELS_ROOT / hashlib.sha256(it.requirements_text().encode()).hexdigest()[:16]
    if (d / ".complete").exists():
        return d
    WHEELS_ROOT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=WHEELS_ROOT))
    try:
        it.download_wheels(tmp)
        (tmp / ".complete").touch()
        if not (d / ".complete").exists():  # another worker may have finished first
            shutil.rmtree(d, ignore_errors=True)
            try:
                tmp.rename(d)
            except OSError:
                if not (d / ".complete").exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def build_interpreter_template(platform: Platform) -> str:
    """Build ``code-interpreter-v1`` as the test team's template (and wait for it)."""
    from warren.cp.services import interpreter_template as it
    from warren.sdk import Template

    wheels = cached_wheels()
    with tempfile.TemporaryDirectory(prefix="warren-ci-ctx-") as tmp:
        ctx = it.write_context_dir(Path(tmp), wheels=wheels)
        (ctx / "wheels" / ".complete").unlink(missing_ok=True)
        spec = (ctx / "Warrenfile").read_text()
        (ctx / "Warrenfile").unlink()  # not a COPY source
        Template.from_warrenfile(spec, context_dir=ctx).build(it.NAME, timeout=900, **platform.sdk())
    return it.NAME
