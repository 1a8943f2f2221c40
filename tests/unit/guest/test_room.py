"""Which refused starts the guest makes room for (guest_agent/room.py): memory, not a real E2BIG."""

from __future__ import annotations

import errno

import pytest

from warren.guest.guest_agent import room
from warren.guest.guest_agent.room import ARGS_ROOM, MAX_ARG_STRLEN, for_memory


def test_enomem_is_memory() -> None:
    assert for_memory(errno.ENOMEM, ["true"], {})


def test_an_e2big_of_small_arguments_is_memory() -> None:
    assert for_memory(errno.E2BIG, ["true", *(["y" * 100_000] * 9)], {"PATH": "/bin"})


def test_an_e2big_of_a_string_past_the_kernels_bound_is_real() -> None:
    assert not for_memory(errno.E2BIG, ["true", "y" * MAX_ARG_STRLEN], {})
    assert not for_memory(errno.E2BIG, ["true"], {"BIG": "y" * MAX_ARG_STRLEN})


def test_an_e2big_of_arguments_past_their_room_is_real() -> None:
    n = ARGS_ROOM // 100_000 + 1
    assert not for_memory(errno.E2BIG, ["true", *(["y" * 100_000] * n)], {})


def test_other_failures_are_not_memory() -> None:
    for err in (errno.EACCES, errno.ENOENT, errno.EAGAIN, errno.ETXTBSY):
        assert not for_memory(err, ["true"], {})


def test_an_e2big_past_a_lowered_stack_limits_bound_is_real(monkeypatch: pytest.MonkeyPatch) -> None:
    # A stack limit of 256 KiB: execve takes at most 64 KiB of arguments.
    monkeypatch.setattr(room.resource, "getrlimit", lambda _: (256 << 10, room.resource.RLIM_INFINITY))
    assert not for_memory(errno.E2BIG, ["true", "y" * 60_000], {})
    assert for_memory(errno.E2BIG, ["true", "y" * 20_000], {})


def test_a_lone_surrogate_in_the_arguments_is_weighed_not_raised() -> None:
    # A request's JSON may carry "\ud800": the weighing must not fail where the kernel's did.
    assert for_memory(errno.E2BIG, ["true", "\ud800"], {"X": "\udfff"})
