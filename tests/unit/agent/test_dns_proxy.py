"""The DNS wire handling of the agent's per-sandbox resolver (agent/dns_proxy.py): questions,
answers with compressed names, refusals, and malformed input."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from warren.agent.dns_proxy import DnsFormatError, a_records, question, refusal, upstreams_from


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def answer(q: bytes, records: list[tuple[int, bytes, int]]) -> bytes:
    head = struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8180, 1, len(records), 0, 0)
    body = b"".join(struct.pack("!HHHIH", 0xC00C, t, 1, ttl, len(d)) + d for t, d, ttl in records)
    return head + q[12:] + body


def test_question_and_a_records() -> None:
    q = query("A.Example.com")
    name, qtype, end = question(q)
    assert (name, qtype, end) == ("A.Example.com", 1, len(q))
    cname = b"\x03cdn\xc0\x0e"  # a CNAME to cdn.<example.com>, then its A records
    resp = answer(
        q, [(5, cname, 60), (1, socket.inet_aton("203.0.113.5"), 30), (1, socket.inet_aton("203.0.113.6"), 7)]
    )
    assert a_records(resp) == [("203.0.113.5", 30), ("203.0.113.6", 7)]


def test_refusal_echoes_the_question_with_the_rcode() -> None:
    q = query("evil.org", qid=0xBEEF)
    r = refusal(q, question(q)[2], 3)
    qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", r[:12])
    assert (qid, flags & 0x800F, qd, an, ns, ar) == (0xBEEF, 0x8003, 1, 0, 0, 0) and flags & 0x0100
    assert r[12:] == q[12:]


@pytest.mark.parametrize(
    "msg",
    [
        b"", b"\0" * 11, query("a.com")[:-3],
        struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\0\0\1\0\1",  # a response, not a query
        struct.pack("!HHHHHH", 1, 0x0100, 2, 0, 0, 0) + b"\0\0\1\0\1",  # two questions
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\0\1\0\1",  # compressed question
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 * 5,  # runs past the end
    ],
)  # fmt: skip
def test_malformed_queries_are_refused(msg: bytes) -> None:
    with pytest.raises(DnsFormatError):
        question(msg)


def test_malformed_answers_are_refused() -> None:
    q = query("a.com")
    good = answer(q, [(1, socket.inet_aton("1.2.3.4"), 5)])
    for bad in (good[:-2], good[:12] + b"\xc0", struct.pack("!HHHHHH", 1, 0x8180, 0, 3, 0, 0)):
        with pytest.raises(DnsFormatError):
            a_records(bad)
    loop = struct.pack("!HHHHHH", 1, 0x8180, 0, 1, 0, 0) + b"\x01a" * 200  # a name that never ends
    with pytest.raises(DnsFormatError):
        a_records(loop)


def test_upstreams(tmp_path: Path) -> None:
    assert upstreams_from("203.0.113.1, 127.0.0.53:5353,bogus,::1") == [
        ("203.0.113.1", 53),
        ("127.0.0.53", 5353),
    ]
    conf = tmp_path / "resolv.conf"
    conf.write_text("# x\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch lan\n")
    assert upstreams_from("", str(conf)) == [("127.0.0.53", 53), ("10.0.0.2", 53)]
