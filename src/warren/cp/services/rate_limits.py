"""Abuse limits (issue 11 D14): sign-in rate limits shared by every replica, and the per-team
request rate limit of each replica.

**Sign-in limits** count attempts in PostgreSQL (``rate_limits``), so every CP replica sees the
same counters. Each counter is a fixed window that opens at its first attempt: the attempt past
the limit within ``window`` seconds of that one is refused with 429 ``rate_limited`` and a
``Retry-After`` of the time left in the window; when the window ends the next attempt opens a
new one. So a throttle never outlasts its window: once the attacker stops, the real user gets
in within a minute (an hour for signups), whatever happened before.

Every attempt counts, the successful ones included, and it is counted *before* the password is
verified: a refused guess costs no argon2 time, concurrent guesses cannot slip past the check
(the upsert serialises them on the row), and nothing resets a counter early — a brute-forcer
holding any valid account cannot clear an address's counter by logging into their own account.
One statement per check (an upsert of every key of the check, now and then also deleting dead
rows of other keys): that is the whole cost a login pays for it.

**The per-team request limit** runs on every authenticated API request, so it is a token bucket in
this process's memory (no database write per request): the effective limit is per replica.

**The refusal budget** is the same kind of bucket per client address, over the answers that
refuse a request (401, 429): past it they are held before they go out (``cp/refusal_hold.py``),
so an anonymous flood or a team past its limit costs the CP a bounded rate per address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import uuid
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from warren import clock
from warren.config import Settings
from warren.cp.db.engine import driver
from warren.cp.db.queries import rate_limits as q
from warren.errors import TooManyRequests

LOGIN_WINDOW_S = 60.0
SIGNUP_WINDOW_S = 3600.0
# Rows whose window ended this long ago are dead for every kind of counter.
_DEAD_AFTER_S = max(LOGIN_WINDOW_S, SIGNUP_WINDOW_S)
# Dead rows are deleted by the check that runs first after this many seconds (per process).
CLEANUP_EVERY_S = 300.0


_next_cleanup = 0.0


@dataclass(frozen=True)
class AuthLimits:
    """Sign-in limits in force (from Settings); 0 turns one off."""

    login_per_account: int = 60
    login_per_address: int = 300
    signup_per_address: int = 60

    @classmethod
    def from_settings(cls, s: Settings) -> AuthLimits:
        return cls(s.login_limit_per_account, s.login_limit_per_address, s.signup_limit_per_address)


@dataclass(frozen=True)
class Attempt:
    """Who is trying to sign in: the client address the API resolved, and the limits."""

    address: str
    limits: AuthLimits


def _account_key(email: str) -> str:
    # Hashed: the table need not hold every email anyone ever typed.
    return "login:acct:" + hashlib.sha256(email.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def address_key(address: str) -> str:
    """The unit a per-address limit counts: an IPv4 address, or an IPv6 /64 (one subscriber
    usually holds a whole /64, so counting single IPv6 addresses would count nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


async def _count(engine: AsyncEngine, keys: Sequence[tuple[str, int]], window_s: float, what: str) -> None:
    """Count one attempt against every (key, limit); 429 if any key is past its limit."""
    global _next_cleanup
    active = {k: n for k, n in keys if n > 0}
    if not active:
        return
    now = clock.now()
    names = sorted(active)  # every statement locks its rows in one order: no deadlocks
    clean = clock.monotonic() >= _next_cleanup
    if clean:
        _next_cleanup = clock.monotonic() + CLEANUP_EVERY_S
    dead = now - timedelta(seconds=_DEAD_AFTER_S)
    async with driver(engine) as conn:
        rows = await conn.fetch(q.UPSERT, names, now, window_s, clean, dead)
    wait = 0.0
    for key, started, count in rows:
        if count > active[key]:
            # Capped at one window: a clock that moved back must not stretch a throttle.
            left = min(window_s, (started - now).total_seconds() + window_s)
            wait = max(wait, left, 1.0)
    if wait:
        raise TooManyRequests(f"too many {what}; retry in {math.ceil(wait)} s", retry_after=wait)


async def count_login(engine: AsyncEngine, attempt: Attempt, email: str) -> None:
    """A password login for ``email`` (normalised) from ``attempt.address``."""
    keys = [(_account_key(email), attempt.limits.login_per_account)]
    if attempt.address:
        keys.append(("login:addr:" + address_key(attempt.address), attempt.limits.login_per_address))
    await _count(engine, keys, LOGIN_WINDOW_S, "login attempts")


async def count_sign_in(engine: AsyncEngine, attempt: Attempt) -> None:
    """A sign-in that names no account yet (an OAuth callback): the address's login budget."""
    if attempt.address:
        key = "login:addr:" + address_key(attempt.address)
        await _count(engine, [(key, attempt.limits.login_per_address)], LOGIN_WINDOW_S, "sign-in attempts")


async def count_signup(engine: AsyncEngine, attempt: Attempt) -> None:
    if attempt.address:
        key = "signup:addr:" + address_key(attempt.address)
        await _count(engine, [(key, attempt.limits.signup_per_address)], SIGNUP_WINDOW_S, "signups")


async def count_keyed(engine: AsyncEngine, key: str, limit: int, window_s: float, what: str) -> None:
    """One attempt of anything else counted by a key of its own (verification emails per
    user); ``window_s`` at most an hour, the rows' cleanup age."""
    await _count(engine, [(key, limit)], min(window_s, _DEAD_AFTER_S), what)


# ------------------------------------------------------------------------ client address


@lru_cache(maxsize=8)
def _networks(trusted: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in trusted.split(","):
        if item.strip():
            nets.append(ipaddress.ip_network(item.strip(), strict=False))
    return tuple(nets)


def _is_trusted(address: str, nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in nets)


def is_trusted_proxy(peer: str, trusted: str) -> bool:
    """Whether ``peer`` is one of ``trusted`` (WARREN_TRUSTED_PROXIES): it speaks for many clients."""
    nets = _networks(trusted)
    return bool(nets) and _is_trusted(peer, nets)


def client_address(peer: str, forwarded_for: Sequence[str], trusted: str) -> str:
    """The client's address: the socket peer, unless the peer is a trusted proxy; then the
    right-most X-Forwarded-For hop that is not itself a trusted proxy (hops left of it were
    written by the client and prove nothing)."""
    nets = _networks(trusted)
    if not nets or not _is_trusted(peer, nets):
        return peer
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, nets):
            return hop
    return hops[0] if hops else peer


# ------------------------------------------------------------------------ token buckets

K = TypeVar("K", bound=Hashable)


def _refilled(tokens: float, last: float, now: float, rate: float, burst: float) -> float:
    """A bucket's tokens at ``now``. max(): a clock set back (tests move it) must not drain it."""
    return min(burst, tokens + max(0.0, now - last) * rate)


class TokenBucket:
    """One token bucket: ``rate`` tokens/s, ``burst`` at once; a take may cost more than one
    (``services/stream_pace.py``: a refused frame costs more than a signal)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = rate_per_s, float(burst)
        self.tokens, self.last = self.burst, clock.monotonic()

    def take(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens; False when there were fewer (and nothing is taken)."""
        now = clock.monotonic()
        self.tokens, self.last = _refilled(self.tokens, self.last, now, self.rate, self.burst), now
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True


class TokenBuckets(Generic[K]):
    """A token bucket per key, in this process's memory: ``rate`` tokens/s, ``burst`` at once.

    At most ``max_tracked`` keys are kept: a key whose bucket has refilled is the same as no
    bucket, so those are forgotten first; :meth:`room_for` tells whether a new key still fits.
    Looking for them costs a pass over the table, so a pass that leaves it full is not repeated
    for :data:`SWEEP_GAP_S`: a flood of new keys (addresses spread over IPv6 /64s) would
    otherwise pay a pass each, ~0.7 ms at 10,000 keys, more than the refusal itself.
    """

    SWEEP_GAP_S = 1.0

    def __init__(self, rate_per_s: float, burst: int, *, max_tracked: int = 10_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_tracked = max_tracked
        self._buckets: dict[K, tuple[float, float]] = {}
        self._next_sweep = 0.0  # a full table is not swept again before this

    def take(self, key: K) -> float:
        """Take one token for ``key``: 0.0 when it had one, else the seconds until its next
        (and nothing is taken). A rate of 0 never refuses."""
        if self.rate <= 0:
            return 0.0
        now = clock.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = _refilled(tokens, last, now, self.rate, self.burst)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if key not in self._buckets and len(self._buckets) >= self.max_tracked:
            self._forget_idle(now)
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0

    def room_for(self, key: K) -> bool:
        """Whether ``key`` is tracked or can be (after forgetting refilled buckets)."""
        if self.rate <= 0 or key in self._buckets or len(self._buckets) < self.max_tracked:
            return True
        self._forget_idle(clock.monotonic())
        return len(self._buckets) < self.max_tracked

    def __len__(self) -> int:
        return len(self._buckets)

    def _forget_idle(self, now: float) -> None:
        if now < self._next_sweep:
            return
        full_after = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        if len(self._buckets) >= self.max_tracked:
            self._next_sweep = now + self.SWEEP_GAP_S


# ------------------------------------------------------------------- per-team request limit


class TeamRateLimiter:
    """A token bucket per team (or per teamless user): ``rate`` requests/s, ``burst`` at once."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.buckets: TokenBuckets[uuid.UUID] = TokenBuckets(rate_per_s, burst)

    def check(self, key: uuid.UUID) -> None:
        """Take one token for ``key``, or raise 429 with the wait until the next one."""
        wait = self.buckets.take(key)
        if wait:
            raise TooManyRequests(
                f"team request rate limit exceeded ({self.rate:g} requests/s); retry in {math.ceil(wait)} s",
                retry_after=wait,
            )


# ------------------------------------------------------------- refusals per client address


class RefusalBudget:
    """How many refusals (401, 429) one client address gets answered at once: ``burst``,
    refilled at ``rate`` a second (docs/security.md §24). Past it each refusal is held
    ``hold_s`` before it goes out, so an address that keeps being refused gets at most its
    connection cap's worth of answers per ``hold_s``, whatever it sends.

    Addresses past ``max_tracked`` (a client spread over many IPv6 /64s) share one budget: the
    table stays bounded, and a spread flood is held as one. Only refusals count; a request
    that is served never waits here.
    """

    SHARED = "*"

    def __init__(self, rate_per_s: float, burst: int, hold_s: float, *, max_tracked: int = 10_000) -> None:
        self.hold_s = hold_s
        self.buckets: TokenBuckets[str] = TokenBuckets(rate_per_s, burst, max_tracked=max_tracked)

    @classmethod
    def from_settings(cls, s: Settings) -> RefusalBudget:
        return cls(s.refusal_rate_per_address_s, s.refusal_burst_per_address, s.refusal_hold_s)

    def hold_for(self, address: str) -> float:
        """Count one refusal of ``address``: how long to hold its answer (0.0: send it now)."""
        if self.hold_s <= 0 or not address:
            return 0.0
        key = address_key(address)
        if not self.buckets.room_for(key):
            key = self.SHARED
        return self.hold_s if self.buckets.take(key) else 0.0
