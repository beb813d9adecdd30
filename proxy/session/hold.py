"""The session's hold on backend connections (backends/lease.py is the state machine):
which connection a statement for the primary runs on, what the lease becomes after it
(`lease.after_statement`), leaving a connection with the session's diagnostics area carried
along, and noticing when the server closes a connection the session holds.

A mixin of `ProxySession` (session.py): these methods read and change the session's fields
declared below, and nothing else of it.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from mypy_extensions import mypyc_attr

from proxy.backends.backend import BackendConn
from proxy.backends.lease import Lease, LeaseState, after_statement
from proxy.core.errors import (
    CR_SERVER_LOST,
    BackendError,
    BackendLost,
    CloseReason,
    LeaseReason,
    PinReason,
    ProxyError,
    ResetReason,
)
from proxy.core.state import Answered, Carried, Names, Wanted
from proxy.engines.escrow import Reservation
from proxy.exec.context import ClientLink, Services
from proxy.net import protocol as P

log = logging.getLogger("seckill.session")


# compiled methods, an ordinary class (compiled.py); its annotations are evaluated when compiled,
# so what they name is imported to run, not only under TYPE_CHECKING
@mypyc_attr(native_class=False)
class Hold:
    """The lease side of a session."""

    app: Services
    lease: Lease
    connection: ClientLink | None
    username: str | None
    backend_caps: int
    last_conn: BackendConn | None
    state_stale: bool
    keeps_diag: bool
    _stmt_conn: BackendConn | Answered | Carried | None
    _stmt_hands: int
    area_warned: bool
    pin: PinReason | None
    escrow: list[Reservation]
    txn_hot: set[Any]
    busy: bool
    end_reason: str | None
    sysvars: dict[str, str]
    names: Names
    status: int

    @property
    def database(self) -> str | None:
        raise NotImplementedError

    @property
    def in_txn(self) -> bool:
        raise NotImplementedError

    @property
    def stmt_conn(self) -> BackendConn | Answered | Carried | None:
        raise NotImplementedError

    def txn_over(self) -> None:
        raise NotImplementedError

    def release_slots(self) -> None:
        raise NotImplementedError

    def escrow_conn(self) -> BackendConn | None:
        """The primary connection that holds this session's open transaction, if any."""
        L = self.lease
        c = L.conn
        if (L.state is LeaseState.TRANSACTION and c is not None and not c.broken
                and c.pool is self.app.primary_pool()):
            return c
        return None

    async def leave(self, reason: LeaseReason) -> None:
        """Give back the lease's connection: this statement runs on another. When the session's
        diagnostics area is there with conditions in it and this statement opens no table, the
        area stays the session's (MySQL keeps it): it is taken along first (state.Carried)."""
        L = self.lease
        c = L.conn
        if (self.keeps_diag and c is not None and c is self._stmt_conn and self.area_warned
                and not c.broken):
            if L.state is LeaseState.SOFT:  # the pool must not take it back meanwhile
                L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
            try:
                defs, rows = await c.query_raw("SHOW WARNINGS")
                self._stmt_conn = Carried(tuple(defs), tuple(rows), tuple(
                    bytes(P.lenenc_str(r, 0)[0]).decode("ascii", "replace") for r in rows))
            except BackendError:
                pass  # (not expected) the area is lost, as before
            except BackendLost:
                c.retire(CloseReason.LOST)
        await L.release(reason)

    @property
    def conn(self) -> BackendConn | None:
        return self.lease.conn

    def wanted(self) -> Wanted:
        """The state a backend connection must carry to serve this session."""
        return Wanted(self.database, self.names, self.sysvars)

    @property
    def password(self) -> str:
        return self.app.password_of(self.username or "") or ""

    async def primary_conn(self) -> BackendConn:
        """The connection a statement for the primary runs on: the one the lease holds (a
        transaction or pin holds it wherever it is), else a primary connection."""
        L = self.lease
        c = L.conn
        if c is not None and L.pool is not None and L.pool.role == "fenced":
            c.retire(CloseReason.FORMER_PRIMARY)  # never write there again
            await L.release(LeaseReason.PRIMARY_MOVED)
            c = None
            if self.in_txn:
                # The transaction was on the former primary: the rest of it must not run on
                # the new one as if it were the same (a COMMIT there would commit nothing and
                # say OK). As when MySQL dies under a transaction.
                self.status &= ~P.SERVER_STATUS_IN_TRANS
                self.pin = None
                self.settle()
                self.release_slots()
                raise ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during query "
                                 "(the primary moved); the transaction was rolled back or its "
                                 "outcome is unknown", fatal=True)
        if c is not None and L.state is LeaseState.SOFT:
            if L.pool is not self.app.primary_pool():
                await self.leave(LeaseReason.ROUTE_CHANGE)  # a replica's, kept after a read
                c = None
            elif c.broken or c.io.at_eof():
                c.retire(CloseReason.LOST)  # died while idle (restart, idle timeout): replace it
                await L.release(LeaseReason.STALE_WHILE_IDLE)
                c = None
            else:
                L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
        if c is not None:
            if self.state_stale:
                self.state_stale = False
                assert L.pool is not None
                if not await L.pool.apply_state(c, self.wanted()):
                    await L.release(LeaseReason.NEEDS_NO_DATABASE)
                    return await self.primary_conn()
            return c
        pool = await self.app.writable_primary()
        c = await pool.acquire(self.username or "", self.password, self.backend_caps,
                               self.last_conn, self.wanted())
        L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED, c, pool)
        self.last_conn = c
        self.state_stale = False
        await self.clear_foreign_diag(c)
        if c.broken:
            await L.release(LeaseReason.BACKEND_LOST)
            return await self.primary_conn()
        return c

    def foreign_diag(self, c: BackendConn) -> bool:
        """`c`'s diagnostics area holds conditions that are not this session's."""
        return c.diag and not (c is self.stmt_conn and c.hands == self._stmt_hands)

    async def clear_foreign_diag(self, c: BackendConn) -> None:
        """A connection that comes to this session with another session's warnings or error
        still in its diagnostics area gets it cleared first: MySQL keeps that area across
        statements without tables (SET, DO, SELECT 1), so this session's SHOW WARNINGS would
        show the other's. The session's own connection counts as another's too once someone
        else held it since (the pool reclaimed it for another session, or for the proxy's own
        statements): its area is no longer the session's."""
        if self.foreign_diag(c):
            try:
                await c.clear_diagnostics()
            except BackendError:
                pass  # (not expected: every user may read that table) left as it is
            except BackendLost:
                c.retire(CloseReason.LOST)  # the caller replaces it, or the statement's retry does

    def holds_conn(self) -> bool:
        return bool(self.pin) or self.in_txn

    def settle(self) -> None:
        """After a statement: what the lease becomes (lease.after_statement decides, for both
        paths)."""
        L = self.lease
        c = L.conn
        if (self.escrow or self.txn_hot) and (not self.in_txn or c is None or c.broken):
            self.txn_over()
        if c is None:
            return
        if L.state is LeaseState.REPLICA_TXN and not self.in_txn and self.pin:
            # State taken inside a read-only transaction on a replica cannot follow the
            # session to the primary; the replica connection is reset, the pin dropped.
            log.warning("session state set inside a replica read-only transaction was "
                        "dropped at its end (%s)", self.pin.value)
            self.pin = None
            c.taint(ResetReason.REPLICA_TXN_STATE)
        step = after_statement(L.state, self.in_txn, bool(self.pin), c.broken,
                               c.dirty or c.in_trans)
        if step is None:
            return
        to = step[0]
        if to is LeaseState.PINNED:
            c.taint(ResetReason.SESSION_STATE)
        L.transition(to, step[1])  # (not *step: a direct call in the compiled module)
        if to is LeaseState.PINNED or to is LeaseState.TRANSACTION:
            self._watch_held(c)

    def _watch_held(self, c: BackendConn) -> None:
        """A held connection (transaction, pinned state) that the server closes while the
        session is idle (idle_transaction_timeout, wait_timeout, KILL, a restart) ends the
        client's connection at once, as MySQL's own close would: the client's next command
        then fails in its library (2006 "gone away"), as directly. During a command the
        command's path reports it (the fast lane sets its own hook)."""
        c.io.sink_lost = _on_lost(self, c)  # (settle: no command runs on it now)

    def _held_lost(self, c: BackendConn) -> None:
        if self.busy or self.lease.conn is not c or self.connection is None:
            return
        c.retire(CloseReason.LOST)
        self.end_reason = "the server closed the connection holding the session's " + (
            "transaction" if self.in_txn else f"state ({self.pin})")
        t = self.connection.stream.writer.transport
        sock = t.get_extra_info("socket")
        if sock is not None:  # a reset, as MariaDB's close of a timed-out connection arrives:
            # the client's next write fails and it reports 2006 "gone away", as directly
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        t.abort()

    async def drop_conn(self, reason: LeaseReason) -> None:
        c = self.lease.conn
        if c is None:
            return
        self.last_conn = None
        if self.pin:
            c.taint(ResetReason.SESSION_STATE)
        await self.lease.release(reason)


def _on_lost(h: Hold, c: BackendConn) -> Callable[[], None]:
    """`Hold._held_lost` for `c`, as a callback (made outside the class: mypyc does not compile
    a lambda inside a method of an ordinary class)."""
    return lambda: h._held_lost(c)
