"""Commits with an outcome record (`durability.track_commits: all`, plan Track.AUTOCOMMIT and
Track.COMMIT): if the connection dies during COMMIT the client still gets the truth, OK or
9102 "NOT committed", found through the record instead of "outcome unknown"."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from proxy.backends.backend import BackendConn, BufferWriter, Relayed
from proxy.core.errors import (
    CR_SERVER_LOST,
    BackendError,
    BackendLost,
    CloseReason,
    LeaseReason,
    ProxyError,
)
from proxy.engines.outcome import ER_SECKILL_NOT_COMMITTED
from proxy.exec import reply
from proxy.net import protocol as P
from proxy.plan.classify import Shape
from proxy.plan.plan import Plan

if TYPE_CHECKING:
    from proxy.exec.context import Statement

log = logging.getLogger("seckill.session")


async def tracked_autocommit(
    s: Statement, shape: Shape, p: Plan, run: Callable[[BackendConn, Any], Awaitable[Relayed]]
) -> Relayed:
    """An autocommit write with an outcome record: START TRANSACTION, the statement (its
    reply held), the record and COMMIT; the client's OK goes out once COMMIT returned."""
    c = await s.primary_conn()
    tracker = s.app.outcomes
    oid = tracker.next_id()
    hold = BufferWriter()
    try:
        await tracker.ensure_table(c)
        await c.execute("START TRANSACTION")
        r = await run(c, hold)
    except BackendLost as e:
        # Died before COMMIT: the server rolls the transaction back, nothing was applied.
        await s.drop_conn(LeaseReason.BACKEND_LOST)
        s.status = P.SERVER_STATUS_AUTOCOMMIT
        raise ProxyError(ER_SECKILL_NOT_COMMITTED, f"Lost connection to MySQL server during "
                         f"query ({e.reason}); the statement was NOT applied") from None
    if r.err is not None or r.ok is None:
        await finish_tracked(s, c, "ROLLBACK")
        s.out.write(bytes(hold.buf))  # the statement's own error (or result) as MySQL sent it
        await s.drain_client()
        return r
    try:
        _, ok = await c.query(f"INSERT INTO {tracker.table} (id) VALUES ({oid}); COMMIT")
    except BackendError as e:
        await finish_tracked(s, c, "ROLLBACK")
        await s.send(e.raw)
        return r
    except BackendLost as e:
        await s.drop_conn(LeaseReason.BACKEND_LOST)
        s.status = P.SERVER_STATUS_AUTOCOMMIT
        log.warning("connection lost during COMMIT (%s); resolving outcome %d", e.reason, oid)
        committed = await tracker.resolve(oid, s.username or "", s.password)
        if committed is False:
            raise ProxyError(ER_SECKILL_NOT_COMMITTED,
                             "Statement NOT applied: the connection to MySQL was lost during "
                             "COMMIT and seckill-proxy verified that nothing was committed") from None
        if committed is None:
            raise ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during COMMIT; "
                             "outcome unknown (the primary could not be asked)") from None
        ok = None
    s.status = P.SERVER_STATUS_AUTOCOMMIT
    c.status = P.SERVER_STATUS_AUTOCOMMIT
    if ok is not None and ok.gtid:
        s.last_gtid = ok.gtid
        if p.hold_ack:
            await s.app.durability.wait_ack(ok.gtid)
    s.settle()
    o = r.ok
    await s.send(P.make_ok(o.affected_rows, o.last_insert_id, s.status, o.warnings, o.info))
    return r


async def finish_tracked(s: Statement, c: BackendConn, sql: str) -> None:
    try:
        await c.execute(sql)
    except (BackendError, BackendLost):
        c.retire(CloseReason.STATE_UNKNOWN)
    s.status = P.SERVER_STATUS_AUTOCOMMIT
    s.settle()


async def tracked_commit(s: Statement, payload: bytes, p: Plan) -> Relayed:
    """COMMIT with an outcome record, so a lost connection still gets a true answer."""
    c = s.conn
    assert c is not None
    tracker = s.app.outcomes
    oid = tracker.next_id()
    try:
        await tracker.ensure_table(c)
        await c.execute(f"INSERT INTO {tracker.table} (id) VALUES ({oid})")
    except BackendError:
        oid = 0  # e.g. a read-only transaction: commit untracked
    except BackendLost as e:
        await reply.lost(s, e, retry=False, shape=None)
    hold = BufferWriter() if p.hold_ack else None
    try:
        await c.command(payload)
        r = await c.relay(hold or s.out, s.client_ok)
    except BackendLost as e:
        if not oid:
            await reply.lost(s, e, retry=False, shape=None)
        await s.drop_conn(LeaseReason.BACKEND_LOST)
        s.status &= ~P.SERVER_STATUS_IN_TRANS
        s.pin = None
        s.release_slots()
        log.warning("connection lost during COMMIT (%s); resolving outcome %d", e.reason, oid)
        committed = await tracker.resolve(oid, s.username or "", s.password)
        if committed:
            await s.send(s.ok_packet())
            return Relayed(status=s.status)
        if committed is False:
            raise ProxyError(ER_SECKILL_NOT_COMMITTED,
                             "Transaction NOT committed: the connection to MySQL was lost during "
                             "COMMIT and seckill-proxy verified that nothing was committed") from None
        raise ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during COMMIT; outcome "
                         "unknown (the primary could not be asked)", fatal=True) from None
    return await reply.finish(s, c, r, hold)

