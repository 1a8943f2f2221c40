"""argon2id password hashing, run off the event loop (docs/design.md §4).

Hashing costs tens of milliseconds of CPU by design. argon2-cffi releases the GIL while it
hashes, so running it in a worker thread keeps the event loop free to serve other requests.
The pool is deliberately small (half the cores, at least one): a burst of logins then queues
for a hashing thread instead of starving every other request of CPU.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP's argon2id baseline (m=19 MiB, t=2, p=1): ~20 ms per hash on a modern core.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1, hash_len=32, salt_len=16)

_pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="warren-argon2")

# Verified against when the user does not exist or has no password, so an unknown email takes
# as long as a wrong password and login timing does not reveal which emails have accounts.
_DUMMY_HASH = _hasher.hash("warren-dummy-password-for-timing")


def hash_password_sync(password: str) -> str:
    return _hasher.hash(password)


def verify_password_sync(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(_pool, hash_password_sync, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches. ``None`` (no such user / OAuth-only user) is always False
    but costs the same time as a real check."""
    return await asyncio.get_running_loop().run_in_executor(
        _pool, verify_password_sync, password_hash, password
    )
