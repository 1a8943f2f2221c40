"""``sandboxes.end_reason`` (cp/db/end_reasons.py): every statement of the control plane that
ends a sandbox names why in the same statement, and the API reference explains each reason.
The paths themselves are tested where they run (test_sandbox_api, test_hosts_api, test_monitor,
test_monitor_pending, e2b/test_sdk_sandbox)."""

from __future__ import annotations

import re
from pathlib import Path

from warren.cp.db import end_reasons

ROOT = Path(__file__).resolve().parents[3]
CP = ROOT / "src" / "warren" / "cp"

# A status set to an end, in SQL (`SET status = 'stopped'`) or SQLAlchemy (`.values(status="error"`).
_ENDS = re.compile(r"""SET status = '(stopped|error)'|\.values\(\s*status="(stopped|error)\"""")


def test_the_vocabulary_is_closed_and_each_reason_is_documented() -> None:
    assert len(set(end_reasons.ALL)) == len(end_reasons.ALL) == 7
    assert all(re.fullmatch(r"[a-z_]+", r) for r in end_reasons.ALL)
    api = (ROOT / "docs" / "api.md").read_text()
    for reason in end_reasons.ALL:
        assert f"| `{reason}` |" in api, f"docs/api.md does not explain {reason}"


def test_every_statement_that_ends_a_sandbox_sets_its_end_reason() -> None:
    found = 0
    for path in sorted(CP.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        text = path.read_text()
        for m in _ENDS.finditer(text):
            found += 1
            # The same statement: the reason is set within the next few lines.
            statement = text[m.start() : m.start() + 200]
            assert "end_reason" in statement, f"{path.relative_to(ROOT)}: ends a sandbox without a reason"
    # MARK_FAILED, MARK_DESTROYED, the team delete, the host delete (the monitor's statuses are
    # variables: test_monitor checks its reasons).
    assert found >= 4
