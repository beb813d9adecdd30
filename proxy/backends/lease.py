"""A session's hold on a backend connection: one state, changed by one function.

As PgBouncer's `change_client_state`: every session is in exactly one lease state, and
`transition()` is the only code that changes it. It also keeps the pool's bookkeeping in step
(a soft-held connection is in the pool's reclaimable map exactly while the lease is SOFT; a
connection goes back to the pool exactly when the lease goes to NONE) and records a reason
(an enum, also the metric label). As asyncpg's `PoolConnectionHolder`: once released, nothing
reaches the connection through the lease.

    NONE         no connection
    SOFT         a clean connection kept between statements; the pool may take it back
    STATEMENT    one statement runs on it (general path or fast lane)
    TRANSACTION  held: a transaction is open
    PINNED       held: it has state only it can have (user variables, temp tables, locks...)
    REPLICA_TXN  held: START TRANSACTION READ ONLY runs on a replica
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from proxy.core import metrics as M
from proxy.core.errors import Label, LeaseReason

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.backends.pool import Pool

log = logging.getLogger("seckill.lease")


class LeaseState(Label):
    NONE = "none"
    SOFT = "soft"
    STATEMENT = "statement"
    TRANSACTION = "transaction"
    PINNED = "pinned"
    REPLICA_TXN = "replica_txn"


S = LeaseState  # shorthand for this table; functions name the members in full (compiled,
# `LeaseState.X` is a C static, `S.X` a global and an attribute looked up by name)
_ALLOWED: dict[LeaseState, frozenset[LeaseState]] = {
    S.NONE: frozenset({S.STATEMENT, S.REPLICA_TXN}),
    S.SOFT: frozenset({S.STATEMENT, S.NONE}),
    S.STATEMENT: frozenset({S.SOFT, S.NONE, S.TRANSACTION, S.PINNED, S.REPLICA_TXN}),
    # a statement on a held connection keeps it held (no STATEMENT step); the one that ends
    # the transaction or the pin moves it on directly
    S.TRANSACTION: frozenset({S.STATEMENT, S.SOFT, S.NONE, S.PINNED}),
    S.PINNED: frozenset({S.STATEMENT, S.SOFT, S.NONE, S.TRANSACTION}),
    S.REPLICA_TXN: frozenset({S.STATEMENT, S.NONE}),
}


def after_statement(state: LeaseState, in_txn: bool, pinned: bool, broken: bool,
                    must_reset: bool) -> tuple[LeaseState, LeaseReason] | None:
    """What a lease becomes once a statement is done, from what the statement left (pure;
    one decision for the fast lane and the general path, table-tested): `in_txn` the
    session's transaction is open, `pinned` it has state only this connection has, `broken`
    the connection is lost, `must_reset` it carries state another session must not get (or
    a transaction of its own). None: stays as it is (a replica's read-only transaction goes
    on)."""
    if state is LeaseState.REPLICA_TXN:
        return None if in_txn else (LeaseState.NONE, LeaseReason.STATEMENT_DONE)
    if broken:
        return LeaseState.NONE, LeaseReason.BACKEND_LOST
    if pinned:
        return LeaseState.PINNED, LeaseReason.PINNED
    if in_txn:
        return LeaseState.TRANSACTION, LeaseReason.TRANSACTION
    if must_reset:
        return LeaseState.NONE, LeaseReason.STATEMENT_DONE
    return LeaseState.SOFT, LeaseReason.STATEMENT_DONE


class LeaseError(Exception):
    """A transition the state machine does not have: a bug, never a client's doing."""


class Lease:
    __slots__ = ("state", "reason", "conn", "pool", "_back")

    def __init__(self) -> None:
        self.state = LeaseState.NONE
        self.reason = LeaseReason.ACQUIRED
        self.conn: BackendConn | None = None
        self.pool: Pool | None = None
        self._back: asyncio.Future[None] | None = None  # a release still resetting

    def transition(self, to: LeaseState, reason: LeaseReason,
                   conn: BackendConn | None = None, pool: Pool | None = None) -> None:
        """The one way the lease changes. From NONE, `conn` and `pool` say what was acquired.
        To NONE, the connection goes back to its pool (reset there if it needs it), unless
        the reason is that the pool reclaimed it."""
        frm = self.state
        if to is frm and to is not LeaseState.NONE:
            self.reason = reason
            return
        if to not in _ALLOWED[frm]:
            raise LeaseError(f"lease {frm.value} -> {to.value} ({reason.value})")
        if frm is LeaseState.SOFT and reason is not LeaseReason.POOL_RECLAIMED:
            assert self.pool is not None and self.conn is not None
            self.pool.unhold_soft(self.conn)
        if frm is LeaseState.NONE:
            assert conn is not None and pool is not None
            self.conn, self.pool = conn, pool
            if conn.holder is not self:
                conn.holder = self
                conn.hands += 1
        self.state, self.reason = to, reason
        if to is LeaseState.SOFT:
            assert self.pool is not None and self.conn is not None
            self.pool.hold_soft(self.conn, self)
        elif to is LeaseState.NONE:
            c, p = self.conn, self.pool
            self.conn = self.pool = None
            if c is not None and c.io.prefix:
                c.io.prefix = b""  # a deferred BEGIN never sent: nothing began there
            if reason is not LeaseReason.POOL_RECLAIMED and c is not None and p is not None:
                self._back = p.give_back(c, reason)
        M.LEASE_TRANSITIONS.inc(to, reason)

    async def release(self, reason: LeaseReason) -> None:
        """To NONE, and wait until the connection is back in its pool (reset included)."""
        if self.state is not LeaseState.NONE:
            self.transition(LeaseState.NONE, reason)
        back, self._back = self._back, None
        if back is not None:
            await asyncio.shield(back)  # a cancelled client must not cut a reset short

    def reclaimed(self, c: BackendConn) -> None:
        """Called by the pool when it takes back the connection this lease soft-holds."""
        if self.conn is c and self.state is LeaseState.SOFT:
            self.transition(LeaseState.NONE, LeaseReason.POOL_RECLAIMED)
