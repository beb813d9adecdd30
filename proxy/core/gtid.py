"""GTID positions of MariaDB and GTID sets of MySQL, with containment and union. Pure code.

MariaDB: `domain-server-seq[,domain-server-seq...]`; per domain, a higher sequence number
includes every lower one (sequence numbers are monotonic within a domain, whatever the server).
MySQL: `uuid:1-5:7,uuid2:1-3`; a set of intervals per source UUID (gaps are possible).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

_UUID: Final = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class GtidError(ValueError):
    pass


@dataclass(frozen=True)
class MariaPos:
    """domain -> (server_id, seq) of the highest seq seen in that domain."""

    domains: tuple[tuple[int, int, int], ...]  # sorted (domain, server, seq)

    def as_dict(self) -> dict[int, tuple[int, int]]:
        return {d: (s, q) for d, s, q in self.domains}

    def contains(self, other: MariaPos) -> bool:
        mine = self.as_dict()
        return all(d in mine and mine[d][1] >= q for d, _, q in other.domains)

    def union(self, other: MariaPos) -> MariaPos:
        out = self.as_dict()
        for d, s, q in other.domains:
            if d not in out or out[d][1] < q:
                out[d] = (s, q)
        return MariaPos(tuple(sorted((d, s, q) for d, (s, q) in out.items())))

    def __str__(self) -> str:
        return ",".join(f"{d}-{s}-{q}" for d, s, q in self.domains)


@dataclass(frozen=True)
class MySQLSet:
    """uuid (lowercase) -> sorted, disjoint, non-adjacent closed intervals."""

    sets: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]

    def as_dict(self) -> dict[str, tuple[tuple[int, int], ...]]:
        return dict(self.sets)

    def contains(self, other: MySQLSet) -> bool:
        mine = self.as_dict()
        for uuid, ivs in other.sets:
            have = mine.get(uuid, ())
            for lo, hi in ivs:
                if not any(a <= lo and hi <= b for a, b in have):
                    return False
        return True

    def union(self, other: MySQLSet) -> MySQLSet:
        out = {u: list(v) for u, v in self.sets}
        for u, ivs in other.sets:
            out.setdefault(u, []).extend(ivs)
        return MySQLSet(tuple(sorted((u, _merge(v)) for u, v in out.items())))

    def __str__(self) -> str:
        return ",".join(
            u + "".join(f":{a}" if a == b else f":{a}-{b}" for a, b in ivs) for u, ivs in self.sets
        )


Gtid = MariaPos | MySQLSet


def _merge(ivs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ivs):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return tuple(out)


def _parse(text: str) -> Gtid:
    """Parse either flavour; an empty string is the empty MariaDB position."""
    t = "".join(text.split())
    if not t:
        return MariaPos(())
    if ":" in t:
        return _parse_mysql(t)
    out: dict[int, tuple[int, int]] = {}
    for part in t.split(","):
        bits = part.split("-")
        if len(bits) != 3 or not all(b.isdigit() for b in bits):
            raise GtidError(f"not a MariaDB GTID: {part!r}")
        d, s, q = (int(b) for b in bits)
        if d >= 2**32 or s >= 2**32 or q >= 2**64:
            raise GtidError(f"GTID component out of range: {part!r}")
        if d not in out or out[d][1] < q:
            out[d] = (s, q)
    return MariaPos(tuple(sorted((d, s, q) for d, (s, q) in out.items())))



_parse_cached = lru_cache(maxsize=4096)(_parse)


def parse(text: str) -> Gtid:
    """Parse either flavour; an empty string is the empty MariaDB position. Parsed once per
    text: the fast lane checks a session's last GTID against a replica's on every read after
    a write (3 µs a parse here); positions are frozen values, so sharing them is safe. Texts
    from clients (READ_AFTER_GTID) can be long: only short ones are kept (bounded memory)."""
    return _parse_cached(text) if len(text) <= 512 else _parse(text)

def _parse_mysql(t: str) -> MySQLSet:
    out: dict[str, list[tuple[int, int]]] = {}
    for part in t.split(","):
        uuid, *ranges = part.split(":")
        if not _UUID.match(uuid) or not ranges:
            raise GtidError(f"not a MySQL GTID set: {part!r}")
        for r in ranges:
            a, _, b = r.partition("-")
            if not a.isdigit() or (b and not b.isdigit()):
                raise GtidError(f"bad interval {r!r}")
            lo, hi = int(a), int(b or a)
            if lo < 1 or hi < lo:
                raise GtidError(f"bad interval {r!r}")
            out.setdefault(uuid.lower(), []).append((lo, hi))
    return MySQLSet(tuple(sorted((u, _merge(v)) for u, v in out.items())))


def contains(have: str | Gtid, want: str | Gtid) -> bool:
    """Has a server at position `have` applied everything in `want`?"""
    h = parse(have) if isinstance(have, str) else have
    w = parse(want) if isinstance(want, str) else want
    if isinstance(w, MariaPos) and not w.domains:
        return True
    if type(h) is not type(w):
        if isinstance(h, MariaPos) and not h.domains:
            return False
        raise GtidError("cannot compare a MariaDB position with a MySQL GTID set")
    return h.contains(w)  # type: ignore[arg-type]


def union(a: str | Gtid, b: str | Gtid) -> Gtid:
    x = parse(a) if isinstance(a, str) else a
    y = parse(b) if isinstance(b, str) else b
    if isinstance(x, MariaPos) and not x.domains:
        return y
    if isinstance(y, MariaPos) and not y.domains:
        return x
    if type(x) is not type(y):
        raise GtidError("cannot combine a MariaDB position with a MySQL GTID set")
    return x.union(y)  # type: ignore[arg-type]


def applied(pos: Gtid | None, want: Gtid) -> bool:
    """Has a server at `pos` (None: unknown) applied `want`? Unknown or mixed flavours: no."""
    if pos is None:
        return False
    try:
        return contains(pos, want)
    except GtidError:
        return False


def merged(a: Gtid | None, b: Gtid) -> Gtid:
    """`a` ∪ `b`, tolerating an unknown `a` (and mixed flavours, keeping the newer `b`)."""
    if a is None:
        return b
    try:
        return union(a, b)
    except GtidError:
        return b


def beyond(have: Gtid, ref: Gtid) -> bool:
    """Does a server at `have` hold a transaction that a server at `ref` lacks, in a domain
    (MariaDB) or a source UUID (MySQL) that `ref` has? A replica's position read before the
    primary's never is, in a healthy topology: positions only grow and replicas apply only
    what the primary wrote. When it is, the replica's position cannot be compared with the
    primary's any more (RESET MASTER on the primary restarted its numbering; or the replica
    took writes of its own), and a read sent there on a GTID test could be stale. Domains
    or sources `ref` does not have are not compared (a replica's own local domain). Mixed
    flavours: no (nothing to compare)."""
    if isinstance(have, MariaPos) and isinstance(ref, MariaPos):
        mine = ref.as_dict()
        return any(d in mine and q > mine[d][1] for d, _, q in have.domains)
    if isinstance(have, MySQLSet) and isinstance(ref, MySQLSet):
        theirs = ref.as_dict()
        return any(u in theirs and not ref.contains(MySQLSet(((u, ivs),)))
                   for u, ivs in have.sets)
    return False
