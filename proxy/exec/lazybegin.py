"""Lazy BEGIN: a plain BEGIN outside a transaction answered by the fast lane with the OK MariaDB
gives it, and sent on the session's connection ahead of the transaction's first statement
(net/wire.py `prefix`): one round trip less per transaction, nothing a client can tell.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Final

from proxy.backends.lease import LeaseState
from proxy.core import metrics as M
from proxy.core.errors import LeaseReason
from proxy.exec.account import statement_done
from proxy.net import protocol as P

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.exec.context import Statement
    from proxy.net.wire import ClientIO
    from proxy.plan.classify import Shape

# A plain BEGIN's effect at BEGIN time is nothing InnoDB or a client can see: no snapshot, no
# lock (those come with the first statement). WITH CONSISTENT SNAPSHOT, READ ONLY, READ WRITE
# (refused on a read-only server) are not deferred.
PLAIN_BEGIN: Final = frozenset({"BEGIN", "BEGIN WORK", "START TRANSACTION"})
# the status flags a plain BEGIN's OK keeps from the session's state; IN_TRANS is added.
# IN_TRANS_READONLY: MariaDB leaves it set after a read-only transaction ended by
# SET autocommit = 1, and its next BEGIN's OK still carries it (found by the generated test)
_BEGIN_KEEPS: Final = (P.SERVER_STATUS_AUTOCOMMIT | P.SERVER_STATUS_NO_BACKSLASH_ESCAPES
                | P.SERVER_STATUS_IN_TRANS_READONLY)


def defer_begin(s: Statement, client: ClientIO, c: BackendConn, shape: Shape,
                packet: bytes) -> bool:
    """A plain BEGIN outside a transaction: answered by the fast lane with the OK MariaDB
    gives it, and sent on the session's connection ahead of the transaction's first statement
    (one round trip less per transaction). Only once the session's first real BEGIN showed
    that OK to be the one made here (`FastLane._complete`); the connection is held from now
    on, as after any BEGIN. Anything else about BEGIN (a transaction open: it would commit
    it; a pin: LOCK TABLES, XA, a pending SET TRANSACTION) goes to MariaDB as it is."""
    L = s.lease
    if (not s.lazy_begin or s.in_txn or s.pin is not None or L.state is not LeaseState.SOFT
            or L.pool is not s.app.primary_pool() or c.io.prefix or c.io.skip
            or shape.digest.upper() not in PLAIN_BEGIN):
        return False
    t0 = perf_counter()
    L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)  # the pool cannot take it now
    c.io.prefix = packet
    s.status = begin_status(s.status)
    ok = s.client_ok(P.OkPacket(status=s.status))
    # MariaDB's BEGIN keeps the diagnostics area (SHOW WARNINGS, @@warning_count: the
    # statement before's) and makes ROW_COUNT() 0
    s.row_count_local = 0
    s.settle()  # held: a transaction
    client.write(P.packet(ok, 1))
    M.DEFERRED_BEGINS.inc()
    statement_done(s, shape, "primary", "ok", perf_counter() - t0, 0, 1)
    return True


def begin_ok_as_made(before: int, ok: P.OkPacket | None) -> bool:
    """Whether MariaDB's OK for a real BEGIN is exactly the one `defer_begin` makes: no rows,
    no id, no warnings, no info, no session state, and the status flags computed from the
    session's (the check that allows deferring, per session)."""
    return (ok is not None and not ok.affected_rows and not ok.last_insert_id
            and not ok.warnings and not ok.info and not ok.state_changed
            and ok.status == begin_status(before))


def begin_status(before: int) -> int:
    """The status flags of a plain BEGIN's OK, from the session's before it."""
    return (before & _BEGIN_KEEPS) | P.SERVER_STATUS_IN_TRANS
