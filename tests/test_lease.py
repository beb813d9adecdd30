"""The lease's state machine, every transition: the allowed ones happen (and hand the
connection to and from its pool as they say), the others are refused with LeaseError. The
table is written out here on purpose: a change to lease.py's table must change this one."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.backends.lease import Lease, LeaseError, LeaseState
from proxy.core.errors import LeaseReason

from .test_plan import _idle_conn

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
    lease, conn, pool = Lease(), _idle_conn(), _Pool()
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
    lease, conn, pool = Lease(), _idle_conn(), _Pool()
    lease.transition(ST, LeaseReason.ACQUIRED, conn, pool)  # type: ignore[arg-type]
    lease.transition(SO, LeaseReason.STATEMENT_DONE)
    lease.reclaimed(conn)
    assert lease.state is N and lease.reason is LeaseReason.POOL_RECLAIMED
    assert pool.back == []
