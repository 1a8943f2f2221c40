"""Email addresses as accounts hold them (docs/auth.md "Email addresses"): one rule for signup,
OAuth sign-up, invitations and search, so two accounts can never look the same.

Normalized: NFC, trimmed, lowercased (the domain IDNA-checked). Refused: control, format (Cf:
zero-width, bidi) and whitespace characters anywhere, unassigned or private-use code points,
and any local part or domain label whose letters come from more than one script (a Latin
address with one Cyrillic o, U+043E). The script of a letter is the first word of its Unicode
name (LATIN, CYRILLIC, GREEK, ...); the Han, Hiragana, Katakana and Hangul scripts count as
one (Japanese mixes them), which may also mix with Latin. Digits and punctuation belong to no
script. Stored emails are never rewritten: the rule applies to what is typed.
"""

from __future__ import annotations

import unicodedata

import idna

from warren.errors import InvalidRequest

MAX_EMAIL = 254
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
_CJK = frozenset({"CJK", "HIRAGANA", "KATAKANA", "HANGUL", "HALFWIDTH", "IDEOGRAPHIC"})


def _refuse(why: str) -> InvalidRequest:
    return InvalidRequest(f"invalid email: {why}")


def _script(ch: str) -> str | None:
    if not unicodedata.category(ch).startswith("L"):
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return "CJK" if word in _CJK else word


def _one_script(part: str, what: str) -> None:
    scripts = {s for s in map(_script, part) if s is not None}
    # Latin beside Han/Kana/Hangul is how CJK users write (Unicode TR39's "highly restrictive"
    # level allows it) and no letter of one passes for the other.
    if len(scripts) > 1 and not scripts <= {"LATIN", "CJK"}:
        names = ", ".join(sorted(s.title() for s in scripts))
        raise _refuse(f"the {what} mixes letters of different scripts ({names}); "
                      "a look-alike letter makes one address pass for another")  # fmt: skip


def _domain(domain: str) -> str:
    if not domain or domain.startswith(".") or domain.endswith(".") or ".." in domain:
        raise _refuse("the domain is malformed")
    for label in domain.split("."):
        _one_script(label, "domain")
    if not domain.isascii():
        try:
            idna.encode(domain)
        except idna.IDNAError as e:
            raise _refuse(f"the domain is not a valid internationalized name ({e})") from e
    return domain


def normalize_email(raw: str) -> str:
    """The address as stored and looked up, or :class:`InvalidRequest` ``invalid_email``."""
    email = unicodedata.normalize("NFC", raw.strip())
    for ch in email:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise _refuse(f"it contains an invisible, control or space character (U+{ord(ch):04X})")
    if email.count("@") != 1 or len(email) < 3:
        raise _refuse("it must be local-part@domain with exactly one '@'")
    if len(email) > MAX_EMAIL:
        raise _refuse(f"at most {MAX_EMAIL} characters")
    local, domain = email.lower().split("@")
    if not local:
        raise _refuse("the part before '@' is empty")
    _one_script(local, "part before '@'")
    return f"{local}@{_domain(domain)}"
