"""envd access tokens by epoch (cp/services/envd_tokens.py): epoch 0 is exactly the token
sandboxes had before epochs (a sandbox created before migration 0018 keeps its token), every
other epoch gives another token, and only the current epoch's token (and signatures made with
it) verify."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from e2b.sandbox.signature import get_signature

from warren.cp.services import envd_signatures
from warren.cp.services.envd_tokens import envd_access_token, token_matches
from warren.errors import Unauthorized

SECRET = "s" * 32
SB = "sb-" + "a" * 25


def _before_epochs(secret: str, sandbox_id: str) -> str:
    """Session 14's derivation, written out: HMAC(HMAC(secret, label), sandbox id)."""
    key = hmac.new(secret.encode(), b"warren e2b envd access token v1", hashlib.sha256).digest()
    mac = hmac.new(key, sandbox_id.encode(), hashlib.sha256).digest()
    return "ea_" + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def test_epoch_0_is_the_token_from_before_epochs() -> None:
    assert envd_access_token(SECRET, SB) == envd_access_token(SECRET, SB, 0) == _before_epochs(SECRET, SB)


def test_each_epoch_has_its_own_token_of_the_same_shape() -> None:
    tokens = [envd_access_token(SECRET, SB, e) for e in range(50)]
    assert len(set(tokens)) == 50
    assert {len(t) for t in tokens} == {len(tokens[0])} and all(t.startswith("ea_") for t in tokens)
    assert envd_access_token(SECRET, "sb-" + "b" * 25, 1) not in tokens


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_only_the_current_epoch_matches(epoch: int) -> None:
    for presented in range(9):
        token = envd_access_token(SECRET, SB, presented)
        assert token_matches(SECRET, SB, token, epoch) is (presented == epoch)


def test_signatures_made_with_an_older_token_are_refused() -> None:
    old, new = envd_access_token(SECRET, SB, 0), envd_access_token(SECRET, SB, 1)
    sig_old = get_signature("x", "read", None, old, None)["signature"]
    sig_new = get_signature("x", "read", None, new, None)["signature"]
    envd_signatures.verify(SECRET, SB, "x", "read", "", sig_old, None)  # epoch 0: as before
    envd_signatures.verify(SECRET, SB, "x", "read", "", sig_new, None, 1)
    with pytest.raises(Unauthorized):
        envd_signatures.verify(SECRET, SB, "x", "read", "", sig_old, None, 1)
