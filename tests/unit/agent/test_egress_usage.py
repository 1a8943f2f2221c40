"""The agent's side of per-team egress (agent/egress_usage.py, agent/egress.py): destroyed
sandboxes' last readings kept across restarts for an hour and bounded in number, and the
counters read from ``iptables -S -v``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from warren.agent import egress_usage
from warren.agent.egress import _accounts
from warren.agent.egress_usage import KEEP_S, MAX_ENDED, EndedEgress


def test_ended_readings_survive_a_restart_and_expire(tmp_path: Path, fake_clock: Any) -> None:
    path = tmp_path / egress_usage.ENDED_FILE
    ended = EndedEgress(path)
    ended.add("sb-a", 10)
    fake_clock.advance(KEEP_S / 2)
    ended.add("sb-b", 20)
    ended.add("sb-a", 11)  # a second teardown of the same sandbox: the later reading
    assert EndedEgress(path).entries() == {"sb-a": 11, "sb-b": 20}  # read back from the file
    fake_clock.advance(KEEP_S / 2 + 1)
    assert ended.entries() == {"sb-a": 11, "sb-b": 20}  # re-added: kept from its second reading
    fake_clock.advance(KEEP_S)
    assert ended.entries() == {} and EndedEgress(path).entries() == {}


def test_ended_readings_are_bounded_and_a_bad_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / egress_usage.ENDED_FILE
    ended = EndedEgress(path)
    for i in range(MAX_ENDED + 10):
        ended.add(f"sb-{i}", i)
    kept = EndedEgress(path).entries()
    assert len(kept) == MAX_ENDED and "sb-0" not in kept and kept[f"sb-{MAX_ENDED + 9}"] == MAX_ENDED + 9
    # The log was rewritten as it grew: it holds about what is kept, not every teardown.
    assert len(path.read_text().splitlines()) <= 2 * MAX_ENDED + 64
    path.write_text('["sb-x", "garbage"]\n{"not": "a line"}\n["sb-y", 5')
    assert EndedEgress(path).entries() == {}
    assert EndedEgress(None).entries() == {}  # no file: memory only


def test_counters_are_read_from_the_rules() -> None:
    dump = "\n".join([
        "-N WARREN-ACCT",
        "-A WARREN-ACCT -i wv3 -c 12 3400 -j RETURN",
        "-A WARREN-ACCT -i wv10 -c 1 60 -j RETURN",
        "-A WARREN-ACCT -i wv10 -c 0 0 -j RETURN",  # a second rule for one slot: summed
        "-A OTHER -i wv4 -c 9 999 -j RETURN",
    ])  # fmt: skip
    assert _accounts(dump) == {"wv3": 3400, "wv10": 60}
