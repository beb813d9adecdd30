"""The lease's state machine, every transition: the allowed ones happen (and hand the
connection to and from its pool as they say), the others are refused with LeaseError. The
table is written out here on purpose: a change to lease.py's table must change this one."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.backends.lease import Lease, LeaseError, LeaseState
from proxy.core.errors import LeaseReason

from .test_plan import idle_conn

S = LeaseState
N, SO, ST, TX, PI, RT = S.NONE, S.SOFT, S.STATEMENT, S.TRANSACTION, S.PINNED, S.REPLICA_TXN
ORDER = [N, SO, ST, TX, PI, RT]
# rows: from; columns: to (none soft statement transaction pinned replica_txn). "=" is the
# same state again: a new reason, nothing else (NONE -> NONE is refused: nothing to release).
TABLE = """
             N  SO ST TX PI RT
none         -  -  y  -  -  y
soft         y  =  y  -  -  -
statement    y  y  =  y  y  y
transaction  y  y  y  =  y  -
pinned       y  y  y  y  =  -
replica_txn  y  -  y  -  -  =
"""


def _table() -> dict[tuple[LeaseState, LeaseState], str]:
    rows = [line.split() for line in TABLE.strip().splitlines()[1:]]
    return {(ORDER[i], ORDER[j]): cell for i, row in enumerate(rows)
            for j, cell in enumerate(row[1:])}


class _Pool:
    def __init__(self) -> None:
        self.role = self.label = "primary"
        self.held: list[Any] = []
        self.back: list[tuple[Any, LeaseReason]] = []

    def hold_soft(self, c: Any, owner: Any) -> None:
        self.held.append(c)

    def unhold_soft(self, c: Any) -> None:
        self.held.remove(c)

    def give_back(self, c: Any, reason: LeaseReason) -> None:
        self.back.append((c, reason))


@pytest.mark.parametrize(("frm", "to"), [(a, b) for a in ORDER for b in ORDER],
                         ids=lambda s: s.value)
def test_every_transition(frm: LeaseState, to: LeaseState) -> None:
    cell = _table()[(frm, to)]
    lease, conn, pool = Lease(), idle_conn(), _Pool()
    if frm is not N:
        lease.transition(ST, LeaseReason.ACQUIRED, conn, pool)  # type: ignore[arg-type]
        if frm is not ST:
            lease.transition(frm, LeaseReason.STATEMENT_DONE)
    assert lease.state is frm
    if cell == "-":
        with pytest.raises(LeaseError):
            lease.transition(to, LeaseReason.STATEMENT_DONE, conn, pool)  # type: ignore[arg-type]
        assert lease.state is frm
        return
    lease.transition(to, LeaseReason.PINNED, conn, pool)  # type: ignore[arg-type]
    assert lease.state is to and lease.reason is LeaseReason.PINNED
    assert (lease.conn is None) == (to is N)
    assert pool.held == ([conn] if to is SO else [])  # soft: the pool may take it back
    assert pool.back == ([(conn, LeaseReason.PINNED)] if to is N else [])


def test_the_table_is_the_modules() -> None:
    from proxy.backends import lease as L

    want = {(a, b) for (a, b), cell in _table().items() if cell == "y"}
    have = {(a, b) for a, tos in L._ALLOWED.items() for b in tos if b is not a}
    assert have == want


def test_a_soft_lease_reclaimed_by_the_pool_does_not_give_back() -> None:
    lease, conn, pool = Lease(), idle_conn(), _Pool()
    lease.transition(ST, LeaseReason.ACQUIRED, conn, pool)  # type: ignore[arg-type]
    lease.transition(SO, LeaseReason.STATEMENT_DONE)
    lease.reclaimed(conn)
    assert lease.state is N and lease.reason is LeaseReason.POOL_RECLAIMED
    assert pool.back == []


# What a lease becomes after a statement (lease.after_statement), every input: state before
# (statement, or a held one: a statement on a held connection keeps it held), then in_txn,
# pinned, broken, must_reset -> state after ("." stays as it is). A lost connection wins over
# everything, a pin over a transaction; only a replica's read-only transaction differs.
AFTER = """
state        txn pin brk rst  -> after
statement    *   *   1   *       none
statement    *   1   0   *       pinned
statement    1   0   0   *       transaction
statement    0   0   0   1       none
statement    0   0   0   0       soft
transaction  *   *   1   *       none
transaction  *   1   0   *       pinned
transaction  1   0   0   *       transaction
transaction  0   0   0   1       none
transaction  0   0   0   0       soft
pinned       *   *   1   *       none
pinned       *   1   0   *       pinned
pinned       1   0   0   *       transaction
pinned       0   0   0   1       none
pinned       0   0   0   0       soft
replica_txn  1   *   *   *       .
replica_txn  0   *   *   *       none
"""


def _after_rows() -> list[tuple[LeaseState, tuple[str, ...], str]]:
    rows = []
    for line in AFTER.strip().splitlines()[1:]:
        st, *bits, want = line.split()
        rows.append((LeaseState(st), tuple(bits), want))
    return rows


def test_after_a_statement_every_input_has_the_tabled_state() -> None:
    import itertools

    from proxy.backends.lease import after_statement

    rows = _after_rows()
    for st in (ST, TX, PI, RT):
        for bits in itertools.product((False, True), repeat=4):
            hits = [want for s, pat, want in rows if s is st and all(
                p == "*" or (p == "1") == b for p, b in zip(pat, bits, strict=True))]
            assert hits, (st, bits)  # every input is in the table
            assert len(set(hits)) == 1, (st, bits, hits)  # and the table is not ambiguous
            got = after_statement(st, *bits)
            assert (got[0].value if got is not None else ".") == hits[0], (st, bits)
            if got is not None and got[0] is PI:
                assert got[1] is LeaseReason.PINNED
            if got is not None and got[0] is N and bits[2] and st is not RT:
                assert got[1] is LeaseReason.BACKEND_LOST
