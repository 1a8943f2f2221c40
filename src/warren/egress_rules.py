"""Per-sandbox egress rules (issue 14): ``{"allow_out": [...], "deny_out": [...]}``, parsed
and matched. Shared by the control plane (which refuses bad input with a 400) and the agent
(which enforces them and checks them again); it imports neither side.

An entry is an IPv4 address, an IPv4 CIDR, a domain name (``example.com``, exactly that name)
or a wildcard (``*.example.com``: every name below it, not ``example.com`` itself).

Semantics (E2B's): allow entries are exceptions to deny entries. Traffic to an address matched
by an allow CIDR, or learned from the answer for an allowed name, passes the user's rules;
otherwise traffic matched by a deny CIDR is refused; anything else passes. For names, an
allow match wins over a deny match; a denied name gets NXDOMAIN; with ``0.0.0.0/0`` in
``deny_out`` (an allow-list) a name that matches no allow entry gets NXDOMAIN too. Rules never
open what the platform closes (private ranges, the host, the control plane, other sandboxes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from warren.egress_ranges import ipv4_network
from warren.errors import InvalidRequest

MAX_RULES = 256  # allow_out and deny_out together, per sandbox
MAX_NAME = 253  # a DNS name's text form
MAX_ENTRY = 272  # longer raw text is refused before any parsing
ALL = "0.0.0.0/0"

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")

Verdict = Literal["allow", "deny", "pass"]


@dataclass(frozen=True)
class EgressRules:
    """Normalized rules: CIDRs in ``a.b.c.d/n`` form, names lowercased without a final dot."""

    allow_cidrs: tuple[str, ...] = ()
    deny_cidrs: tuple[str, ...] = ()
    allow_names: tuple[str, ...] = ()
    deny_names: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.allow_cidrs or self.deny_cidrs or self.allow_names or self.deny_names)

    @property
    def has_names(self) -> bool:
        """Name rules are in force: the sandbox resolves through the agent's resolver only."""
        return bool(self.allow_names or self.deny_names)

    @property
    def allow_list(self) -> bool:
        return ALL in self.deny_cidrs

    def verdict(self, qname: str) -> Verdict:
        """What the resolver does with a query for ``qname``: resolve it and learn its
        addresses (allow), answer NXDOMAIN (deny), or resolve it without learning (pass)."""
        name = qname.lower().rstrip(".")
        if any(_matches(r, name) for r in self.allow_names):
            return "allow"
        if self.allow_list or any(_matches(r, name) for r in self.deny_names):
            return "deny"
        return "pass"

    def to_json(self) -> dict[str, list[str]]:
        return {
            "allow_out": [*self.allow_cidrs, *self.allow_names],
            "deny_out": [*self.deny_cidrs, *self.deny_names],
        }


def _matches(rule: str, name: str) -> bool:
    if rule.startswith("*."):
        return name.endswith(rule[1:])
    return name == rule


def _name(text: str) -> str | None:
    """The normalized domain name or wildcard, or None if ``text`` is not one."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    base = name[2:] if name.startswith("*.") else name
    if not base or len(name) > MAX_NAME:
        return None
    labels = base.split(".")
    if not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None  # an all-digit last label would read as a mistyped address
    return name


def _entry(field: str, i: int, raw: object) -> tuple[str, bool]:
    """(normalized entry, is a name); InvalidRequest naming the entry otherwise."""
    where = f"network.{field}[{i}]"
    if not isinstance(raw, str):
        raise InvalidRequest(f"{where}: must be a string")
    text = raw.strip()
    if not text:
        raise InvalidRequest(f"{where}: must not be empty")
    if len(text) > MAX_ENTRY:
        raise InvalidRequest(f"{where}: {len(text)} characters; a name is at most {MAX_NAME} characters")
    if re.fullmatch(r"[0-9./]+", text) or ":" in text:
        try:
            return ipv4_network(text), False
        except ValueError as e:
            raise InvalidRequest(f"{where}: {e}") from None
    name = _name(text)
    if name is None:
        raise InvalidRequest(
            f"{where}: {text[:64]!r} is not an IPv4 address, a CIDR or a domain name "
            f"(example.com or *.example.com; labels a-z 0-9 - _, at most {MAX_NAME} characters)"
        )
    return name, True


def parse(allow_out: Sequence[object] | None, deny_out: Sequence[object] | None) -> EgressRules:
    """The rules of a create or an update, normalized and deduplicated; InvalidRequest (a 400)
    saying which entry is wrong and why."""
    allow_out, deny_out = list(allow_out or ()), list(deny_out or ())
    if len(allow_out) + len(deny_out) > MAX_RULES:
        raise InvalidRequest(
            f"network: {len(allow_out) + len(deny_out)} rules; at most {MAX_RULES} "
            "(allow_out and deny_out together)"
        )
    out: dict[str, tuple[list[str], list[str]]] = {}
    for field, items in (("allow_out", allow_out), ("deny_out", deny_out)):
        cidrs: list[str] = []
        names: list[str] = []
        for i, raw in enumerate(items):
            value, is_name = _entry(field, i, raw)
            target = names if is_name else cidrs
            if value not in target:
                target.append(value)
        out[field] = (cidrs, names)
    return EgressRules(
        allow_cidrs=tuple(out["allow_out"][0]), deny_cidrs=tuple(out["deny_out"][0]),
        allow_names=tuple(out["allow_out"][1]), deny_names=tuple(out["deny_out"][1]),
    )  # fmt: skip


def from_json(value: dict[str, Iterable[str]] | None) -> EgressRules:
    """Rules stored by :meth:`EgressRules.to_json` (already checked once)."""
    value = value or {}
    return parse(list(value.get("allow_out", ())), list(value.get("deny_out", ())))
