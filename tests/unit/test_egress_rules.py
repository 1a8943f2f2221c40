"""warren.egress_rules: what an entry may be, the bounds, and what a name's query gets."""

from __future__ import annotations

import pytest

from warren.egress_rules import MAX_RULES, EgressRules, parse
from warren.errors import InvalidRequest


def test_entries_are_normalized_and_sorted_into_cidrs_and_names() -> None:
    r = parse(
        ["1.2.3.4", "Example.COM.", "*.Pypi.org", "10.0.0.0/8", "1.2.3.4/32"], ["0.0.0.0/0", "bad.test"]
    )
    assert r == EgressRules(
        allow_cidrs=("1.2.3.4/32", "10.0.0.0/8"), deny_cidrs=("0.0.0.0/0",),
        allow_names=("example.com", "*.pypi.org"), deny_names=("bad.test",),
    )  # fmt: skip
    assert r.to_json() == {
        "allow_out": ["1.2.3.4/32", "10.0.0.0/8", "example.com", "*.pypi.org"],
        "deny_out": ["0.0.0.0/0", "bad.test"],
    }
    assert parse(None, None).empty and not parse(None, None).has_names


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.0.0.1/8", "host bits set"), ("1.2.3.4/33", "not an IPv4 address or CIDR"),
        ("::1", "IPv6"), ("fd00::/8", "IPv6"), ("", "must not be empty"), ("a b.com", "domain name"),
        ("*.*.a.com", "domain name"), ("*", "domain name"), ("a..com", "domain name"),
        ("-a.com", "domain name"), ("a-.com", "domain name"), ("x" * 64 + ".com", "domain name"),
        ("1.2.3.4.5", "not an IPv4 address or CIDR"), ("é.com", "domain name"), ("a.com\0", "domain name"),
        ("a." * 130 + "com", "domain name"), ("a" * 300, "at most 253 characters"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_naming_it(entry: str, why: str) -> None:
    with pytest.raises(InvalidRequest) as ei:
        parse([], ["0.0.0.0/0", entry])
    assert ei.value.message.startswith("network.deny_out[1]: ") and why in ei.value.message


def test_at_most_max_rules_in_both_lists_together() -> None:
    parse([f"10.0.{i}.0/24" for i in range(200)], [f"11.0.{i}.0/24" for i in range(MAX_RULES - 200)])
    with pytest.raises(InvalidRequest, match="257 rules; at most 256"):
        parse([f"10.0.{i}.0/24" for i in range(200)], [f"11.0.{i}.0/24" for i in range(57)])
    with pytest.raises(InvalidRequest, match="must be a string"):
        parse([1], [])


def test_name_verdicts_allow_wins_and_an_allow_list_refuses_the_rest() -> None:
    r = parse(["api.example.com", "*.cdn.net"], ["*.example.com", "0.0.0.0/0"])
    assert r.verdict("API.example.com.") == "allow"
    assert r.verdict("x.y.cdn.net") == "allow" and r.verdict("cdn.net") == "deny"
    assert r.verdict("www.example.com") == "deny" and r.verdict("other.org") == "deny"
    deny_list = parse([], ["*.example.com", "evil.org"])
    assert deny_list.verdict("a.example.com") == "deny" and deny_list.verdict("evil.org") == "deny"
    assert deny_list.verdict("example.com") == "pass" and deny_list.verdict("good.org") == "pass"
