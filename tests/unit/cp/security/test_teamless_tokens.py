"""The teamless user JWT (docs/spec.md §2.1, §7.7): ``team_id`` and ``role`` null, told apart
from a token that lacks the claim (invalid)."""

from __future__ import annotations

import uuid

import jwt
import pytest

from warren.cp.security import tokens
from warren.errors import Unauthorized

SECRET = "s" * 40


def test_a_teamless_token_round_trips_with_no_team() -> None:
    user = uuid.uuid4()
    token = tokens.issue_user_jwt(SECRET, user_id=user, team_id=None, role=None, email="a@b.c", name="A")
    raw = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert raw["team_id"] is None and raw["role"] is None
    claims = tokens.verify_user_jwt(SECRET, token)
    assert claims.user_id == user and claims.team_id is None and claims.role == ""


def test_a_team_without_a_role_or_a_role_without_a_team_is_not_issued() -> None:
    with pytest.raises(ValueError):
        tokens.issue_user_jwt(
            SECRET, user_id=uuid.uuid4(), team_id=uuid.uuid4(), role=None, email="", name=""
        )
    with pytest.raises(ValueError):
        tokens.issue_user_jwt(SECRET, user_id=uuid.uuid4(), team_id=None, role="owner", email="", name="")


@pytest.mark.parametrize("team_claim", ["missing", "", "team-", 0, False, [], {}])
def test_only_an_explicit_null_team_is_teamless(team_claim: object) -> None:
    token = tokens.issue_user_jwt(
        SECRET, user_id=uuid.uuid4(), team_id=None, role=None, email="a@b.c", name="A"
    )
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    if team_claim == "missing":
        del claims["team_id"]
    else:
        claims["team_id"] = team_claim
    with pytest.raises(Unauthorized):
        tokens.verify_user_jwt(SECRET, jwt.encode(claims, SECRET, algorithm="HS256"))
