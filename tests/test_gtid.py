"""GTID arithmetic for MariaDB positions and MySQL sets: tables and properties (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.gtid import GtidError, MariaPos, MySQLSet, beyond, contains, parse, union

U1 = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
U2 = "4f22fa47-71ca-11e1-9e33-c80aa9429562"


@pytest.mark.parametrize("have,want,ok", [
    ("0-1-100", "0-1-100", True),
    ("0-1-100", "0-1-99", True),
    ("0-1-99", "0-1-100", False),
    ("0-2-100", "0-1-50", True),  # seq is monotonic per domain whatever the server
    ("0-1-100,1-1-5", "1-1-5", True),
    ("0-1-100", "0-1-5,1-1-1", False),  # domain 1 never seen
    ("", "", True),
    ("0-1-5", "", True),
    ("", "0-1-1", False),
    (f"{U1}:1-100", f"{U1}:5-7", True),
    (f"{U1}:1-5:7-9", f"{U1}:6", False),  # a gap
    (f"{U1}:1-5:7-9", f"{U1}:7-9", True),
    (f"{U1}:1-9,{U2}:1-2", f"{U2}:3", False),
    (f"{U1}:1-9,{U2}:1-2", f"{U1.upper()}:1-9,{U2}:1", True),
    ("", f"{U1}:1", False),
])
def test_contains(have: str, want: str, ok: bool) -> None:
    assert contains(have, want) is ok


def test_union_and_format() -> None:
    assert str(union("0-1-5,1-2-3", "0-3-7")) == "0-3-7,1-2-3"
    assert str(union(f"{U1}:1-3", f"{U1}:4-6:9")) == f"{U1}:1-6:9"
    assert str(parse(f"{U1}:5:1-3:4")) == f"{U1}:1-5"


@pytest.mark.parametrize("bad", ["0-1", "a-b-c", "0-1-2-3", f"{U1}", f"{U1}:0", f"{U1}:5-3", "x:1"])
def test_bad_input(bad: str) -> None:
    with pytest.raises(GtidError):
        parse(bad)


def test_flavours_do_not_mix() -> None:
    with pytest.raises(GtidError):
        contains("0-1-5", f"{U1}:1")


maria = st.dictionaries(st.integers(0, 3), st.tuples(st.integers(1, 3), st.integers(0, 50)),
                        max_size=4).map(lambda d: MariaPos(tuple(sorted((k, s, q) for k, (s, q) in d.items()))))
intervals = st.lists(st.tuples(st.integers(1, 40), st.integers(0, 5)).map(lambda t: (t[0], t[0] + t[1])),
                     max_size=4)
mysql = st.dictionaries(st.sampled_from([U1, U2]), intervals, max_size=2).map(
    lambda d: parse(",".join(u + "".join(f":{a}-{b}" for a, b in v) for u, v in d.items() if v)))


def _members(s: MySQLSet) -> set[tuple[str, int]]:
    return {(u, n) for u, ivs in s.sets for a, b in ivs for n in range(a, b + 1)}


@settings(max_examples=300, deadline=None)
@given(maria, maria)
def test_maria_union_contains_both(a: MariaPos, b: MariaPos) -> None:
    u = union(a, b)
    assert contains(u, a) and contains(u, b)
    assert contains(a, b) == all(a.as_dict().get(d, (0, -1))[1] >= q for d, _, q in b.domains)
    assert parse(str(u)) == u


@settings(max_examples=300, deadline=None)
@given(mysql, mysql)
def test_mysql_set_semantics(a: MySQLSet, b: MySQLSet) -> None:
    a_m, b_m = _members(a) if isinstance(a, MySQLSet) else set(), _members(b) if isinstance(b, MySQLSet) else set()
    u = union(a, b)
    assert (_members(u) if isinstance(u, MySQLSet) else set()) == a_m | b_m
    assert contains(a, b) == (b_m <= a_m)
    if isinstance(u, MySQLSet):
        assert parse(str(u)) == u


@pytest.mark.parametrize("have,ref,out", [
    ("0-1-18", "0-1-3", True),  # RESET MASTER on the primary: its numbering started again
    ("0-1-3", "0-1-18", False),  # a replica behind: the normal case
    ("0-1-18", "0-1-18", False),
    ("0-2-19", "0-1-18", True),  # a write on the replica itself, in the primary's domain
    ("0-1-18,7-2-4", "0-1-18", False),  # the replica's own domain is not compared
    ("0-1-18", "", False),  # an empty primary (just reset, nothing written): nothing shared
    ("", "0-1-3", False),
    (f"{U1}:1-18", f"{U1}:1-3", True),
    (f"{U1}:1-3", f"{U1}:1-18", False),
    (f"{U1}:1-5:9", f"{U1}:1-8", True),  # a transaction the primary does not have
    (f"{U1}:1-5,{U2}:1-9", f"{U1}:1-5", False),
    ("0-1-18", f"{U1}:1-3", False),  # flavours: nothing to compare
])
def test_beyond(have: str, ref: str, out: bool) -> None:
    assert beyond(parse(have), parse(ref)) is out


@settings(max_examples=300, deadline=None)
@given(maria, maria)
def test_maria_beyond_is_what_the_primary_lacks_in_its_domains(a: MariaPos, b: MariaPos) -> None:
    shared = {d for d, _, _ in a.domains} & {d for d, _, _ in b.domains}
    lacks = not contains(b, MariaPos(tuple(x for x in a.domains if x[0] in shared)))
    assert beyond(a, b) == lacks
    assert not beyond(b, union(a, b))  # a position read later (grown) never has less


@settings(max_examples=300, deadline=None)
@given(mysql, mysql)
def test_mysql_beyond_is_what_the_primary_lacks_of_its_sources(a: MySQLSet, b: MySQLSet) -> None:
    if not (isinstance(a, MySQLSet) and isinstance(b, MySQLSet)):
        return
    mine = {u for u, _ in b.sets}
    extra = {(u, n) for u, n in _members(a) if u in mine} - _members(b)
    assert beyond(a, b) == bool(extra)
    u = union(a, b)
    assert isinstance(u, MySQLSet) and not beyond(b, u)
