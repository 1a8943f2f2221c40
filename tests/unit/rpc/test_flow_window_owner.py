"""The window budget's per-group share (session 16): the teams of one owning account together
take at most ``per_group`` of grown windows, whatever each team's own share allows."""

from __future__ import annotations

from warren.rpc.flow_window import BASE, GRAIN, Allowance, Budget, Grower

MIB = 1 << 20


def test_one_groups_keys_share_its_bound() -> None:
    b = Budget(64 * MIB, 16 * MIB, 32 * MIB)
    got = [b.take(f"team-{i}", 16 * MIB, "owner-a") for i in range(4)]
    assert got == [16 * MIB, 16 * MIB, 0, 0]
    assert b.group_held("owner-a") == 32 * MIB
    assert b.take("team-x", 16 * MIB, "owner-b") == 16 * MIB  # another account's room is left
    assert b.take("team-y", 16 * MIB) == 16 * MIB  # no group (the platform team): per key only


def test_a_part_grant_is_whole_grains_and_given_back_by_group() -> None:
    b = Budget(64 * MIB, 16 * MIB, MIB + GRAIN // 2)
    assert b.take("t1", 4 * MIB, "o") == MIB
    b.give("t1", MIB, "o")
    assert b.used == 0 and b.group_held("o") == 0 and b.held("t1") == 0


def test_windows_take_and_return_their_groups_share() -> None:
    b = Budget(64 * MIB, 16 * MIB, 2 * MIB)
    a = Allowance(b, "t1", 8 * MIB, "o")
    assert a.granted(4 * MIB) == BASE + 2 * MIB  # the group's 2 MiB, not the team's 16
    g = Grower(b, "t2", 8 * MIB, group="o")
    g.sender_keeps(BASE)
    assert b.group_held("o") == 2 * MIB
    a.close()
    g.close()
    assert b.used == 0 and b.group_held("o") == 0
