"""Each team's share of a warm pool (session 23; docs/agent.md "Warm pools").

A platform host's pool is shared by every team that creates its template there, and a claim took
the oldest ready member, whoever asked. Refills run only once creates pause (admission.py
``wait_quiet``), so one team creating in a loop took every member the pool held and every one
made in a gap, and every other team's creates started cold (slower, never refused).

The rule, per pool: a team may claim at most :func:`share` members (half the target, rounded up)
since the pool was last full, the time it takes to refill, *while another team has asked this
pool* (a create that matched it, warm or cold) within :data:`ASKED_S`. Past its share its create
starts cold and the member stays for the others. Alone, a team may take the whole pool: a lone
tenant's burst is as warm as before. A full pool forgets the counts (anyone may claim from it),
and a team not heard from for :data:`ASKED_S` is forgotten. Creates that name no owner (a control
plane before session 22) are outside the rule.

Why not fair_turns.py: its turns are held and given back, and a waiter waits; a pool member is
consumed, and a create past its share must not wait but go cold at once. What is shared here is
a count over a refill's time, not concurrent holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from warren import clock as warren_clock

# How long a team's ask of a pool counts as "another team is asking": creates of one team reach
# a host minutes apart, and holding a busy team to its share while they do costs it only cold
# starts past half the pool.
ASKED_S = 300.0
# Teams remembered per pool (the oldest asks are forgotten first): bounds the memory, whatever
# asks.
MAX_TEAMS = 4096


def share(target: int) -> int:
    """The members one team may claim since the pool was last full while others ask."""
    return max(1, (target + 1) // 2)


@dataclass
class _Team:
    asked: float  # monotonic: its last ask
    claimed: int = 0  # members claimed since the pool was last full


@dataclass(frozen=True)
class Refusal:
    """Why a team's claim goes cold: what it claimed, its share, how many others ask."""

    claimed: int
    share: int
    others: int

    def detail(self) -> str:
        return f"claimed={self.claimed} share={self.share} teams_asking={self.others}"


class PoolShare:
    """The asks and claims of one pool's teams (warm_pool.Pool.share)."""

    def __init__(self, clock: Callable[[], float] = warren_clock.monotonic) -> None:
        self._clock = clock
        self._teams: dict[str, _Team] = {}  # in the order of their last ask, oldest first

    def ask(self, team: str, target: int) -> Refusal | None:
        """A create of ``team`` matched the pool (recorded); None if it may claim a member,
        else why not. ``team`` "" (no owner said) may always claim and is not recorded."""
        if not team:
            return None
        now = self._clock()
        self._forget(now - ASKED_S)
        entry = self._teams.pop(team, None) or _Team(now)
        entry.asked = now
        self._teams[team] = entry  # to the end: the newest ask
        limit = share(target)
        others = len(self._teams) - 1
        if entry.claimed < limit or others == 0:
            return None
        return Refusal(entry.claimed, limit, others)

    def claimed(self, team: str) -> None:
        """``team`` (that asked) took a member."""
        if (entry := self._teams.get(team)) is not None:
            entry.claimed += 1

    def full(self) -> None:
        """The pool is full again: nobody has claimed from it since."""
        for entry in self._teams.values():
            entry.claimed = 0

    def claims(self, team: str) -> int:
        entry = self._teams.get(team)
        return entry.claimed if entry is not None else 0

    def _forget(self, before: float) -> None:
        while self._teams:
            oldest, entry = next(iter(self._teams.items()))
            if entry.asked >= before and len(self._teams) < MAX_TEAMS:
                return
            del self._teams[oldest]
