"""A stub DNS server on loopback UDP for tests: answers A queries for names under its zone
with 127.0.0.1, can be told to swallow queries for some names for a while (DNS that hangs).

    stub = DnsStub(zone="fuzz.test")
    await stub.start()                       # stub.address == "127.0.0.1:PORT"
    stub.hang("b-*.fuzz.test", seconds=5)    # queries for matching names get no answer
    ...
    stub.close()

Answers (RFC 1035): the header with the query's id, QR, AA, RD copied and RA; the question
echoed; for an A query of a name in the zone one A record (TTL ``ttl``) pointing at
``address``; for any other type of a name in the zone no answer (NOERROR, "NODATA"); for a
name outside the zone NXDOMAIN. A query that cannot be parsed gets FORMERR when it has a
header, else nothing.
"""

from __future__ import annotations

import asyncio
import fnmatch
import socket
import struct
import time
from collections import Counter

__all__ = ["DnsStub", "build_query", "parse_response"]

TYPE_A = 1
TYPE_AAAA = 28
CLASS_IN = 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _read_name(packet: bytes, offset: int) -> tuple[str, int]:
    """The (uncompressed) name at ``offset`` and the offset after it; ValueError if bad."""
    labels = []
    while True:
        if offset >= len(packet):
            raise ValueError("name runs past the packet")
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length & 0xC0:
            raise ValueError("compressed name in a question")
        labels.append(packet[offset : offset + length].decode("ascii", "replace"))
        offset += length
    return ".".join(labels).lower(), offset


def build_query(name: str, qtype: int = TYPE_A, qid: int = 0x1234) -> bytes:
    """A standard recursive query for ``name`` (tests' own socket-level client)."""
    return (
        struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        + _encode_name(name)
        + struct.pack("!HH", qtype, CLASS_IN)
    )


def parse_response(packet: bytes) -> dict[str, object]:
    """id, flags, rcode, the question and the A answers of a response (as this stub writes
    them: answers with a compression pointer or a plain name)."""
    qid, flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", packet[:12])
    name, off = _read_name(packet, 12)
    qtype, qclass = struct.unpack("!HH", packet[off : off + 4])
    off += 4
    answers = []
    for _ in range(an):
        if packet[off] & 0xC0 == 0xC0:
            off += 2
        else:
            _, off = _read_name(packet, off)
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", packet[off : off + 10])
        off += 10
        rdata = packet[off : off + rdlen]
        off += rdlen
        answers.append((rtype, rclass, ttl, socket.inet_ntoa(rdata) if rtype == TYPE_A else rdata))
    return {
        "id": qid,
        "qr": bool(flags & 0x8000),
        "aa": bool(flags & 0x0400),
        "rcode": flags & 0xF,
        "qdcount": qd,
        "question": (name, qtype, qclass),
        "answers": answers,
        "length": off,
    }


class DnsStub(asyncio.DatagramProtocol):
    def __init__(self, zone: str = "fuzz.test", address: str = "127.0.0.1", ttl: int = 1) -> None:
        self.zone = zone.lower().rstrip(".")
        self.answer_ip = socket.inet_aton(address)
        self.ttl = ttl
        self.port = 0
        self.queries: Counter[str] = Counter()  # name -> queries received
        self.swallowed: Counter[str] = Counter()  # name -> queries left unanswered
        self._hangs: dict[str, float] = {}  # fnmatch pattern -> monotonic end
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def address(self) -> str:
        """The value for DISPATCHER_DNS_SERVERS."""
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def hang(self, pattern: str, seconds: float) -> None:
        """Swallow queries for names matching ``pattern`` (fnmatch, lower case) for
        ``seconds`` from now."""
        self._hangs[pattern.lower()] = time.monotonic() + seconds

    def hanging(self, name: str) -> bool:
        now = time.monotonic()
        return any(now < end and fnmatch.fnmatchcase(name, p) for p, end in self._hangs.items())

    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith("." + self.zone)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.answer(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)

    def answer(self, query: bytes) -> bytes | None:
        """The response to one query packet, or None to send nothing."""
        if len(query) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", query[:6])
        if flags & 0x8000:
            return None  # a response, not a query
        rd = flags & 0x0100
        opcode = flags & 0x7800
        try:
            if qdcount != 1 or opcode != 0:
                raise ValueError("one standard query expected")
            name, off = _read_name(query, 12)
            if off + 4 > len(query):
                raise ValueError("question cut short")
            qtype, qclass = struct.unpack("!HH", query[off : off + 4])
        except ValueError:
            return struct.pack("!HHHHHH", qid, 0x8000 | opcode | rd | 0x0080 | FORMERR, 0, 0, 0, 0)
        self.queries[name] += 1
        if self.hanging(name):
            self.swallowed[name] += 1
            return None
        question = query[12 : off + 4]
        answers = b""
        rcode = NOERROR
        if not self.in_zone(name):
            rcode = NXDOMAIN
        elif qtype == TYPE_A and qclass == CLASS_IN:
            answers = struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, self.ttl, 4) + self.answer_ip
        header = struct.pack(
            "!HHHHHH",
            qid,
            0x8000 | 0x0400 | rd | 0x0080 | rcode,  # QR, AA, RD as asked, RA
            1,
            1 if answers else 0,
            0,
            0,
        )
        return header + question + answers
