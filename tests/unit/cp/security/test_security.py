"""Security primitives: argon2id off the loop, user/host JWTs, API keys, opaque tokens."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid

import jwt
import pytest

from warren import clock, ids
from warren.cp.security import api_keys, passwords, tokens
from warren.errors import Unauthorized

SECRET = "s" * 40


async def test_password_hash_roundtrip_argon2id() -> None:
    h = await passwords.hash_password("correct horse")
    assert h.startswith("$argon2id$")
    assert await passwords.verify_password(h, "correct horse")
    assert not await passwords.verify_password(h, "wrong horse")
    assert not await passwords.verify_password(None, "correct horse")
    assert not await passwords.verify_password("not-a-hash", "x")
    assert await passwords.hash_password("correct horse") != h  # salted


async def test_hashing_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashes run in worker threads: while several are in flight the loop keeps running other
    tasks. Counted in loop iterations, not milliseconds, so a busy machine cannot flake it."""
    loop_thread = threading.get_ident()
    hash_threads: set[int] = set()
    real_hash = passwords.hash_password_sync

    def spy(pw: str) -> str:
        hash_threads.add(threading.get_ident())
        return real_hash(pw)

    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    monkeypatch.setattr(passwords, "hash_password_sync", spy)
    task = asyncio.create_task(ticker())
    hashes = await asyncio.gather(*(passwords.hash_password(f"pw{i}") for i in range(4)))
    done = True
    await task
    assert all(h.startswith("$argon2id$") for h in hashes)
    assert hash_threads and loop_thread not in hash_threads
    # four ~20 ms hashes on the loop would leave the ticker no turn at all until they finished
    assert ticks > 20, ticks


def test_user_jwt_claims_and_verification() -> None:
    user, team = uuid.uuid4(), uuid.uuid4()
    tok = tokens.issue_user_jwt(SECRET, user_id=user, team_id=team, role="admin", email="a@b", name="A")
    raw = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert set(raw) == {"sub", "team_id", "role", "email", "name", "iat", "exp"}
    assert raw["sub"] == ids.user_id(user) and raw["team_id"] == ids.team_id(team)
    assert raw["exp"] - raw["iat"] == 6 * 3600
    c = tokens.verify_user_jwt(SECRET, tok)
    assert (c.user_id, c.team_id, c.role, c.email, c.name, c.is_admin) == (
        user,
        team,
        "admin",
        "a@b",
        "A",
        False,
    )
    admin_tok = tokens.issue_user_jwt(
        SECRET, user_id=user, team_id=team, role="owner", email="a@b", name="A", is_admin=True
    )
    assert jwt.decode(admin_tok, SECRET, algorithms=["HS256"])["is_admin"] is True
    assert tokens.verify_user_jwt(SECRET, admin_tok).is_admin


def test_user_jwt_rejections() -> None:
    user, team = uuid.uuid4(), uuid.uuid4()
    good = tokens.issue_user_jwt(SECRET, user_id=user, team_id=team, role="owner", email="e", name="n")
    with pytest.raises(Unauthorized, match="invalid or expired token"):
        tokens.verify_user_jwt("t" * 40, good)
    claims = jwt.decode(good, SECRET, algorithms=["HS256"])
    for bad, msg in [
        ({**claims, "typ": "host"}, "invalid or expired token"),
        ({**claims, "team_id": "team-1"}, "invalid team ID in token"),
        ({**claims, "sub": ids.team_id(user)}, "invalid user ID in token"),
        ({k: v for k, v in claims.items() if k != "exp"}, "invalid or expired token"),
    ]:
        with pytest.raises(Unauthorized, match=msg):
            tokens.verify_user_jwt(SECRET, jwt.encode(bad, SECRET, algorithm="HS256"))
    none_alg = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(Unauthorized):
        tokens.verify_user_jwt(SECRET, none_alg)
    hs512 = jwt.encode(claims, SECRET * 2, algorithm="HS512")
    with pytest.raises(Unauthorized):
        tokens.verify_user_jwt(SECRET * 2, hs512)  # right key, wrong algorithm
    with pytest.raises(Unauthorized):
        tokens.verify_user_jwt(SECRET, "a.b.c")


def test_jwt_expiry_follows_the_fake_clock() -> None:
    tok = tokens.issue_user_jwt(
        SECRET, user_id=uuid.uuid4(), team_id=uuid.uuid4(), role="m", email="", name=""
    )
    host = tokens.issue_host_jwt(SECRET, uuid.uuid4())
    try:
        clock.advance(6 * 3600 - 5)
        tokens.verify_user_jwt(SECRET, tok)
        clock.advance(10)
        with pytest.raises(Unauthorized):
            tokens.verify_user_jwt(SECRET, tok)
        tokens.verify_host_jwt(SECRET, host)
        clock.advance(7 * 86400)
        with pytest.raises(Unauthorized, match="invalid or expired host token"):
            tokens.verify_host_jwt(SECRET, host)
    finally:
        clock.reset()


def test_host_jwt() -> None:
    hid = uuid.uuid4()
    tok = tokens.issue_host_jwt(SECRET, hid)
    raw = jwt.decode(tok, SECRET, algorithms=["HS256"])
    assert raw["typ"] == "host" and raw["host_id"] == ids.host_id(hid) == raw["sub"]
    assert raw["exp"] - raw["iat"] == 7 * 86400
    assert tokens.verify_host_jwt(SECRET, tok) == hid
    user_tok = tokens.issue_user_jwt(
        SECRET, user_id=uuid.uuid4(), team_id=uuid.uuid4(), role="o", email="", name=""
    )
    with pytest.raises(Unauthorized, match="invalid or expired host token"):
        tokens.verify_host_jwt(SECRET, user_tok)
    with pytest.raises(Unauthorized):
        tokens.verify_user_jwt(SECRET, tok)
    bad = jwt.encode({**raw, "host_id": "host-x"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized):
        tokens.verify_host_jwt(SECRET, bad)


def test_api_keys_and_opaque_tokens() -> None:
    k = api_keys.generate_api_key()
    assert re.fullmatch(r"wrn_[0-9a-f]{32}", k.plaintext) and len(k.plaintext) == 36
    assert k.key_prefix == k.plaintext[:10]
    assert k.key_hash == tokens.sha256_hex(k.plaintext) and re.fullmatch(r"[0-9a-f]{64}", k.key_hash)
    assert api_keys.looks_like_api_key(k.plaintext)
    for bad in ("", "wrn_", "wrn_" + "A" * 32, "key_" + "0" * 32, k.plaintext + "0", " " + k.plaintext):
        assert not api_keys.looks_like_api_key(bad)
    assert len({api_keys.generate_api_key().plaintext for _ in range(500)}) == 500
    t = tokens.new_token_hex(32)
    assert re.fullmatch(r"[0-9a-f]{64}", t)
    assert tokens.sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert tokens.constant_time_equals("abc", "abc") and not tokens.constant_time_equals("abc", "abd")
    assert not tokens.constant_time_equals("abc", "ab")
