"""WARREN_BYOC_ALLOWED_CIDRS (warren/byoc_ranges.py): which addresses a BYOC host may have."""

from __future__ import annotations

import ipaddress

import pytest

from warren.byoc_ranges import AddressPolicy, public_unicast
from warren.config import Settings

NOT_PUBLIC = [
    "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "203.0.113.7", "240.0.0.1",
    "::1", "::", "fe80::1", "fd00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "64:ff9b::a00:1", "2002:a00:1::1",
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("ip", NOT_PUBLIC)
def test_the_default_refuses_every_address_that_is_not_public_unicast(ip: str) -> None:
    assert not public_unicast(ipaddress.ip_address(ip))
    assert not AddressPolicy.parse("public").allows(ipaddress.ip_address(ip))


@pytest.mark.parametrize("ip", PUBLIC)
def test_the_default_allows_public_unicast(ip: str) -> None:
    assert AddressPolicy.parse("public").allows(ipaddress.ip_address(ip))


def test_cidrs_add_to_public_or_replace_it() -> None:
    both = AddressPolicy.parse(" public , 10.20.0.0/16")
    assert both.allows(ipaddress.ip_address("10.20.1.2")) and both.allows(ipaddress.ip_address("8.8.8.8"))
    assert not both.allows(ipaddress.ip_address("10.21.0.1"))
    only = AddressPolicy.parse("10.20.0.0/16,fd00::/8")
    assert not only.allows(ipaddress.ip_address("8.8.8.8"))
    assert only.allows(ipaddress.ip_address("fd00::5"))
    assert only.allows(ipaddress.ip_address("::ffff:10.20.0.9"))


@pytest.mark.parametrize("value", ["", " , ", "publik", "10.0.0.0/33", "public,example.com"])
def test_a_setting_that_is_neither_public_nor_cidrs_stops_the_cp(value: str) -> None:
    with pytest.raises(ValueError, match="byoc_allowed_cidrs"):
        Settings(byoc_allowed_cidrs=value, database_url="postgresql://x/y")


def test_the_default_setting_is_public() -> None:
    assert Settings.model_fields["byoc_allowed_cidrs"].default == "public"
