"""The general path: a statement's plan run in the session task, awaiting each step.

The fast lane (fastlane.py) runs the plans that only forward, from socket callbacks; every
other plan runs here, and any plan may (the lane declines what it cannot do at once). Both run
the same plan (plan.py) and account for each statement once (account.py): here in
`run_plan`, there in `FastLane._done`. What a route needs: a replica read
(`read`, `replica_conn`), a read-only transaction on a replica (`begin_read_only`), the
diagnostics of the previous statement (`diagnostics`), the primary path (`forward`: tracked
commits, acknowledged writes, the retry of a statement that never reached MySQL), and the
truth when a backend connection dies under a statement (`lost`). The session (session.py)
keeps the state these read and the lease's transitions (`settle`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.backends.backend import BackendConn
from proxy.backends.lease import LeaseState
from proxy.backends.reply import BufferWriter, Relayed
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
from proxy.core.state import Carried
from proxy.exec import tracked, uservars
from proxy.exec.account import statement_done
from proxy.exec.reply import end_replica_txn, finish, lost, run_on
from proxy.net import protocol as P
from proxy.plan.classify import Shape, parse_hints
from proxy.plan.plan import Plan, Route, Track

if TYPE_CHECKING:
    from proxy.backends.pool import Pool
    from proxy.exec.context import Statement

log = logging.getLogger("seckill.session")


# Statements after which the hot-row rules are checked against the schema again: they may have
# added a trigger, a CHECK constraint or a generated column (a procedure or a prepared
# statement too, through dynamic SQL).
_SCHEMA_VERBS = frozenset({"CREATE", "ALTER", "DROP", "RENAME", "CALL", "EXECUTE"})


async def run_plan(
    s: Statement, p: Plan, shape: Shape,
    run: Callable[[BackendConn, Any], Awaitable[Relayed]],
    forward: Callable[[Plan], Awaitable[Relayed | None]],
    hot: Callable[[Callable[[], Awaitable[Any]]], Awaitable[tuple[str, str] | None]],
    sql: str,
) -> None:
    """The general path: run a plan (statement text or prepared), with one set of
    statement metrics, digest row and slow-log line."""
    t0 = time.perf_counter()
    route = "primary"
    outcome = "ok"
    rows = 0
    s.keeps_diag = shape.keeps_diag
    ddl = (shape.verb in _SCHEMA_VERBS or shape.multi) and s.app.hotrow is not None
    try:
        if ddl:
            await s.app.hotrow.ddl_started()  # a trigger or constraint on a hot table, perhaps
        if p.gate_write:
            s.app.durability.check_write()  # the gate runs once, here
        if p.route is Route.HOTROW:
            handled = await hot(lambda: forward(p))
            if handled is not None:
                route, outcome = handled
                return
        elif p.route is Route.DIAG:
            rd = await diagnostics(s, run, p.row_count_sync)
            outcome = "error" if rd.err is not None else "ok"
            return
        elif p.route is Route.REPLICA_TXN:
            await begin_read_only(s, p)
        elif p.route is Route.REPLICA:
            rr = await read(s, p, sql, lambda c: run(c, s.out))
            if rr is not None:
                route = "replica"
                rows = rr.rows
                if rr.err is not None:
                    outcome = "error"
                return
        if s.replica_txn and _starts_write_txn(shape):
            await end_replica_txn(s)
        if shape.keeps_diag and s.lease.conn is not None:
            # it keeps the area it runs on (a SET, ROLLBACK): one not the session's (the proxy
            # answered the last statement, or it ran elsewhere) must show none of its conditions
            await s.clear_foreign_diag(s.lease.conn)
        r = await forward(p)
        if r is None or r.err is not None:
            outcome = "error"
        elif r is not None:
            rows = r.rows or r.affected_rows
    except ProxyError:
        outcome = "error"
        raise
    finally:
        s.keeps_diag = False
        if ddl:
            s.app.hotrow.ddl_ended()
        statement_done(s, shape, route, outcome, time.perf_counter() - t0, rows)


async def replica_conn(s: Statement, p: Plan, sql: str) -> tuple[BackendConn, Pool, str] | None:
    """A replica connection for this read: the one the lease keeps from the last read if
    that replica may serve it at once, else the router's choice (None: the primary)."""
    assert p.read is not None
    rp = p.read
    if "/*+" in sql:  # READ_AFTER_GTID('...'): the digest hides the literal
        tok = parse_hints(sql).get("READ_AFTER_GTID")
        if tok:
            rp = replace(rp, token=tok)
    L = s.lease
    router = s.app.reads
    if (L.state is LeaseState.SOFT and L.pool is not None and L.conn is not None
            and L.pool.role == "replica" and not L.conn.broken and not s.state_stale
            and router.ready_now(L.pool, rp, s.last_gtid)):
        L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
        return L.conn, L.pool, "replica"
    got = await router.acquire(s, rp)
    if got is None:
        router.count(rp.consistency, "primary_fallback")
        return None
    if L.state is not LeaseState.NONE:
        await s.leave(LeaseReason.ROUTE_CHANGE)
    L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED, got[0], got[1])
    s.state_stale = False  # the router's acquire applied the session's state
    await s.clear_foreign_diag(got[0])
    return got


async def read(
    s: Statement, p: Plan, sql: str, run: Callable[[BackendConn], Awaitable[Relayed]]
) -> Relayed | None:
    """Serve a SELECT from a replica that has the watermark; None: the caller uses the primary."""
    assert p.read is not None
    got = await replica_conn(s, p, sql)
    if got is None:
        return None
    c, pool, outcome = got
    router = s.app.reads
    try:
        r = await run(c)
        await s.drain_client()
    except BackendLost as e:
        await s.lease.release(LeaseReason.BACKEND_LOST)
        if e.delivered:
            raise ProxyError(CR_SERVER_LOST,
                             f"Lost connection to replica during query ({e.reason})") from None
        router.count(p.read.consistency, "primary_fallback")
        return None  # nothing reached the client: the primary answers instead
    except BackendError as e:
        s.settle()
        await s.send(e.raw)
        return Relayed(err=P.ErrPacket(e.code, e.sqlstate, e.message))
    except BaseException:
        await s.lease.release(LeaseReason.CLIENT_GONE)  # relay() marked it broken
        raise
    s.stmt_conn = c
    s.settle()
    router.count(p.read.consistency, outcome, pool.label)
    return r


# Statements that leave ROW_COUNT() at a value (plan.ROW_COUNT_SYNCABLE) and keep the
# diagnostics area: they open no table and raise nothing. 1 is a SELECT INTO of one row (its OK
# counts the row); MariaDB's anonymous block keeps it off the session's user variables (it
# parses under every sql_mode a merged UPDATE's session may have: hotalloc.MERGE_SQL_MODES).
_SETS_ROW_COUNT = {-1: "SELECT 1", 0: "DO 0",
                   1: "BEGIN NOT ATOMIC DECLARE x INT; SELECT 1 INTO x; END"}
_SETS_ROW_COUNT_MYSQL = {**_SETS_ROW_COUNT, 1: "SELECT 1 INTO @seckill_proxy_row_count"}


def row_count_setter(value: int, mariadb: bool) -> str:
    return (_SETS_ROW_COUNT if mariadb else _SETS_ROW_COUNT_MYSQL)[value]


async def diagnostics(s: Statement, run: Callable[[BackendConn, Any], Awaitable[Relayed]],
                      row_count_sync: int | None = None) -> Relayed:
    """SHOW WARNINGS, @@warning_count, SHOW SESSION STATUS...: on the connection that ran
    the session's previous statement, wherever it is (a replica's, after a read). A
    connection new to the session first gets its diagnostics area cleared, so it shows
    nothing of its previous user's statements (or of the proxy's own state replay), as a
    fresh MySQL connection."""
    L = s.lease
    c = L.conn
    # The session carries its area from a connection it left (state.Carried; what `local.
    # carried` does not answer, such as ROW_COUNT(), comes here): the statement that moved it
    # ran on the lease's connection, cleared of others' conditions when acquired, and left
    # none; clearing it again would run a statement there (ROW_COUNT() 0 instead of -1).
    area = s.stmt_conn
    carried = area if isinstance(area, Carried) else None
    if c is not None and (c is area or carried) and not c.broken and not s.state_stale:
        if L.state is LeaseState.SOFT:
            L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
    else:
        carried = None
        c = await s.primary_conn()
        await c.clear_diagnostics()
    try:
        if row_count_sync is not None:  # (Plan.row_count_sync)
            await c.query(row_count_setter(row_count_sync, c.mariadb), single=True)
        r = await run(c, s.out)
    except BackendLost as e:
        await lost(s, e, retry=False, shape=None)
        raise AssertionError("unreachable") from None
    r = await finish(s, c, r, None)
    if carried is not None and r.err is None and not c.warned:
        s.stmt_conn = carried  # it opened no table and raised nothing: the area stays
    return r


async def begin_read_only(s: Statement, p: Plan) -> None:
    """START TRANSACTION READ ONLY runs on one replica for the whole transaction."""
    assert p.read is not None
    got = await s.app.reads.acquire(s, p.read)
    if got is None:
        s.app.reads.count(p.read.consistency, "primary_fallback")
        return
    await s.leave(LeaseReason.READ_ONLY_TXN)  # (the diagnostics area may be carried along)
    s.lease.transition(LeaseState.REPLICA_TXN, LeaseReason.READ_ONLY_TXN, got[0], got[1])
    s.state_stale = False
    await s.clear_foreign_diag(got[0])
    s.app.reads.count(p.read.consistency, got[2], got[1].label)


async def forward(
    s: Statement, payload: bytes, shape: Shape | None, p: Plan | None = None,
    field_list: bool = False
) -> Relayed:
    """Run a statement on the primary path as its plan says: tracked commit, tracked
    autocommit write, or sent on the session's connection with the reply relayed (held
    for a replica acknowledgement when the plan says so). The fast lane runs exactly the
    plans that only forward (`Plan.lane`)."""
    if p is not None and p.track is Track.COMMIT:
        return await tracked.tracked_commit(s, payload, p)
    if p is not None and p.track is Track.AUTOCOMMIT:
        assert shape is not None
        return await tracked.tracked_autocommit(s,
            shape, p, lambda c, out: run_on(s, c, payload, out, shape))
    hold = BufferWriter() if p is not None and p.hold_ack else None
    for attempt in (0, 1):
        c = await s.primary_conn()
        if shape is not None:
            if p is not None and p.pin and not s.pin:
                s.pin = p.pin
            if shape.pin:
                c.taint(ResetReason.SESSION_STATE)
                if (shape.pin is PinReason.USER_VARIABLE and s.lease.state is LeaseState.REPLICA_TXN
                        and len(s.replica_vars) < uservars.MAX_VARS):
                    # the text itself: the digest hides quoted names (@'x')
                    text = (payload[1:].decode("utf-8", "surrogateescape")
                            if payload[:1] == bytes((P.COM_QUERY,)) else shape.digest)
                    s.replica_vars |= uservars.names(text)
            if shape.uses_last_insert_id and c.last_insert_id != s.last_insert_id:
                await c.execute(f"SELECT LAST_INSERT_ID({s.last_insert_id})")
        try:
            if field_list:
                await c.command(payload)
                r = await c.relay(hold or s.out, s.client_ok, field_list=True)
            else:
                r = await run_on(s, c, payload, hold or s.out, shape)
        except BackendLost as e:
            await lost(s, e, retry=attempt == 0 and not e.sent, shape=shape)
            continue
        if p is not None and p.retrack and r.err is None:
            try:
                await s.retrack(c)
            except (BackendLost, BackendError):
                c.retire(CloseReason.STATE_UNKNOWN)  # the reply is out: the pool closes it
        return await finish(s, c, r, hold, p)
    raise AssertionError("unreachable")


def _starts_write_txn(shape: Shape) -> bool:
    """BEGIN, START TRANSACTION (not READ ONLY), XA START/BEGIN: a new transaction that may
    write, ending the one open (its implicit commit)."""
    verb, dg = shape.verb, shape.digest.upper()
    if verb == "BEGIN" or (verb == "START" and dg.startswith("START TRANSACTION")):
        return _READ_ONLY.search(dg) is None
    return verb == "XA" and dg.split()[1:2] in (["START"], ["BEGIN"])


_READ_ONLY = re.compile(r"\bREAD\s+ONLY\b")
