"""A statement's reply and what follows it, shared by every executor: relaying it (LOAD DATA
LOCAL, multi-statements with CLIENT_MULTI_STATEMENTS off), taking over the session state it
reports, the GTID of a write whose reply did not carry it, the replica acknowledgement it may
wait for, user variables carried off a replica, and the truth when the backend connection dies
under a statement (`lost`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.backends import confirms
from proxy.backends.backend import BackendConn, BufferWriter, Relayed
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
from proxy.core.gtid import union as gtid_union
from proxy.exec import infile, uservars
from proxy.net import protocol as P
from proxy.plan.classify import Shape
from proxy.plan.plan import Plan

if TYPE_CHECKING:
    from proxy.exec.context import Statement


async def gtid_after(s: Statement, c: BackendConn, r: Relayed) -> None:
    """A write whose reply ended without an OK that carried its GTID (RETURNING's result set;
    a procedure or multi-statement that ends with one): once it committed (the connection is
    not in a transaction), its GTID is MariaDB's @@last_gtid on the same connection, read
    before the (held) reply goes out, so read-your-writes and `ack: replica` cover it as any
    write. Merged into the session's position: a statement that wrote nothing leaves the
    connection's previous GTID there, which must not move the session's watermark back."""
    if r.gtid or not r.ended_eof or c.in_trans or not c.mariadb or c.broken:
        return  # (a reply that ended with an OK carried its GTID, if it wrote: MariaDB's
        # session tracking reports last_gtid there; reading it again would be observable)
    try:
        row = await c.fetch_one("SELECT @@last_gtid")
    except BackendError:
        return
    except BackendLost:
        c.retire(CloseReason.LOST)  # the reply is read: the pool closes this connection
        return
    got = row[0] if row else None
    if got:
        r.gtid = str(gtid_union(s.last_gtid, got)) if s.last_gtid else got


async def finish(s: Statement, c: BackendConn, r: Relayed, hold: BufferWriter | None,
                 p: Plan | None = None) -> Relayed:
    """After a statement's reply: take over session state (the GTID of a write whose reply
    did not carry it: Plan.gtid_after; the rows ROW_COUNT() will say: Plan.row_count), give
    the connection back, then let the (possibly held) reply go out."""
    if p is not None and p.gtid_after and r.err is None:
        await gtid_after(s, c, r)
    if r.err is not None and r.ok is None and s.replica_txn:
        await replica_txn_state(c)
    s.absorb_reply(c, r, p is not None and p.row_count)
    await settle_carrying(s, c)
    if hold is not None:
        await release_held(s, hold, r)
    await s.drain_client()
    return r


async def end_replica_txn(s: Statement) -> None:
    """A statement that starts a read-write transaction (BEGIN, START TRANSACTION that is
    not READ ONLY, XA START) inside a read-only transaction on a replica: MySQL commits the
    read-only one first and starts the new one where the writes go. The proxy commits it on
    the replica (it wrote nothing), ends it as any end of it is ended (user variables
    carried), and the statement then runs on the primary. Before, the statement ran on the
    replica and the session's writes after it went there (found by the lazy-BEGIN
    differential test: START TRANSACTION READ ONLY; START TRANSACTION READ WRITE; UPDATE ...
    updated the replica alone)."""
    c = s.lease.conn
    if c is None or not s.replica_txn:
        return
    try:
        ok = await c.execute("COMMIT")
        s.status = ok.status
    except (BackendError, BackendLost):
        c.retire(CloseReason.STATE_UNKNOWN)  # nothing was written there: let it go
        s.status &= ~P.SERVER_STATUS_IN_TRANS
    await settle_carrying(s, c)


async def settle_carrying(s: Statement, c: BackendConn) -> None:
    """`settle` after a statement; when it ends a read-only transaction on a replica, the user
    variables set there are read first and set on the session's next connection after."""
    carry = None
    if s.replica_vars and s.replica_txn and not s.in_txn:
        carry = await read_user_vars(s, c)
    s.settle()
    if carry is not None:
        await restore_user_vars(s, carry)


async def replica_txn_state(c: BackendConn) -> None:
    """An error inside a read-only transaction on a replica may have ended it (a failed DDL
    commits implicitly) and an ERR carries no status: ask the connection. Otherwise the
    session would stay on the replica outside any transaction and a write there would
    succeed on the replica alone (found by the generated own-answers test: START TRANSACTION
    READ ONLY; CREATE TABLE t (fails); INSERT INTO t ... ran on the replica)."""
    if not c.status & P.SERVER_STATUS_IN_TRANS or c.broken:
        return
    try:
        row = await c.fetch_one("SELECT @@in_transaction")
    except BackendError:
        c.retire(CloseReason.STATE_UNKNOWN)  # not trusted with the session again
        return
    except BackendLost:
        c.retire(CloseReason.LOST)
        return
    if row is None or str(row[0]) != "1":
        c.status &= ~P.SERVER_STATUS_IN_TRANS


async def read_user_vars(s: Statement, c: BackendConn) -> uservars.Carry | None:
    """The replica RO transaction is over: read its user variables there (uservars.py)."""
    vs, s.replica_vars = sorted(s.replica_vars), set()
    carry = await uservars.read(c, vs)
    if carry is not None and s.pin is PinReason.USER_VARIABLE:
        s.pin = None  # carried, not dropped: no warning at the lease's end
    return carry


async def restore_user_vars(s: Statement, carry: uservars.Carry) -> None:
    """Set them on a primary connection the session then keeps, as after `SET @x` there."""
    c = await s.primary_conn()
    s.pin = PinReason.USER_VARIABLE
    c.taint(ResetReason.SESSION_STATE)
    try:
        await uservars.restore(c, carry)
    except BackendLost as e:
        await lost(s, e, retry=False, shape=None)
    s.settle()


async def run_on(s: Statement, c: BackendConn, payload: bytes, out: Any,
                  shape: Shape | None = None) -> Relayed:
    conn = s.connection
    if shape is not None and shape.verb == "LOAD" and not infile.allowed(
            shape, s.app.cfg.limits.local_infile,
            int(conn.capabilities) if conn is not None else None):
        raise infile.refused()
    r = await send_and_relay(s, c, payload, out, shape)
    if r.local_infile:
        assert conn is not None
        r = await infile.relay_file(c, out, s.out, conn.stream.reader, s.drain_client,
                                    s.client_ok)
    return r


async def send_and_relay(s: Statement, c: BackendConn, payload: bytes, out: Any,
                          shape: Shape | None) -> Relayed:
    if shape is not None and shape.multi and not s.multi:
        await c.set_multi(False)
        try:
            await c.command(payload)
            return await c.relay(out, s.client_ok)
        finally:
            if not c.broken:
                await c.set_multi(True)
    if c.confirms and confirms.plain_commit(payload):  # they travel with the COMMIT
        return await confirms.commit_with(c, payload, out, s.client_ok)
    await c.command(payload)
    return await c.relay(out, s.client_ok)


async def release_held(s: Statement, hold: BufferWriter, r: Relayed) -> None:
    """ack: replica — the OK goes out once replicas confirmed the write's GTID."""
    if r.gtid and r.err is None:
        await s.app.durability.wait_ack(r.gtid)
    s.out.write(bytes(hold.buf))


async def lost(s: Statement, e: BackendLost, retry: bool, shape: Shape | None) -> None:
    """The backend connection died under a statement: retry, or tell the client the truth."""
    held = s.holds_conn()
    await s.drop_conn(LeaseReason.BACKEND_LOST)
    s.status &= ~P.SERVER_STATUS_IN_TRANS
    s.release_slots()
    if retry and not held:
        return  # nothing reached MySQL: the loop runs the statement on a fresh connection
    if held:
        s.pin = None
        raise ProxyError(
            CR_SERVER_LOST,
            f"Lost connection to MySQL server during query ({e.reason}); "
            "the transaction was rolled back or its outcome is unknown",
            fatal=True,
        )
    what = "outcome unknown" if shape is None or shape.is_write else "not executed"
    raise ProxyError(CR_SERVER_LOST, f"Lost connection to MySQL server during query ({what})")

