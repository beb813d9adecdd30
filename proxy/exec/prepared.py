"""Client prepared statements: the client's ids map to statements the proxy prepares on
whichever backend connection runs them (cached there by database and text, state.py), and
executions run the same plan as text statements (plan.py)."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from proxy.backends.backend import STMT_LIMIT_ERR, BackendConn
from proxy.backends.reply import BufferWriter, Relayed
from proxy.core.errors import (
    ER_UNKNOWN_STMT_HANDLER,
    BackendError,
    BackendLost,
    PinReason,
    ProxyError,
)
from proxy.exec import executor, reply, tracked
from proxy.exec.context import ClientStmt
from proxy.exec.executor import Command
from proxy.net import protocol as P
from proxy.plan.classify import classify, with_conn_id
from proxy.plan.plan import Plan, Track, plan

if TYPE_CHECKING:
    from proxy.exec.context import Statement

MAX_CLIENT_STMTS = 16382  # per client, as MariaDB's default max_prepared_stmt_count
MAX_CLIENT_STMT_BYTES = 64 << 20  # statement text a client may keep prepared (memory bound)




async def run_execute_on(s: Statement, c: BackendConn, st: ClientStmt, parts: P.ExecuteParts,
                          out: Any) -> Relayed:
    pok = await c.prepare(st.sql)
    await c.command(P.join_execute(parts, pok.stmt_id, st.types))
    return await c.relay(out, s.client_ok, cursor=bool(parts.flags & P.CURSOR_TYPE_READ_ONLY))


async def prepare(s: Statement, payload: bytes) -> None:
    sql = payload[1:].decode("utf-8", "surrogateescape")
    if classify(sql).conn_id and s.connection is not None:  # its client's id, not a thread's
        sql = with_conn_id(sql, s.connection.connection_id)
        payload = payload[:1] + sql.encode("utf-8", "surrogateescape")
    s.last_stmt = None  # until this one is prepared (MariaDB's statement id -1)
    c = await s.primary_conn()
    try:
        await c.command(payload)
        first = await c.read_packet()
        for retry in (3, 2, 1):
            if not first.startswith(STMT_LIMIT_ERR):  # the server's max_prepared_stmt_count
                break
            # statements the proxy keeps prepared for reuse count too: close them, try again
            await c.free_statements(retry)
            await c.command(payload)
            first = await c.read_packet()
        s.stmt_conn = c  # the client's last command ran there (ROW_COUNT() is 0, its errors)
        if first[0] == 0xFF:
            c.diag = c.warned = True
            await s.send(first)
            return
        pok = P.parse_prepare_ok(first)
        rest = [
            await c.read_packet()
            for _ in range(
                pok.num_params + (1 if pok.num_params else 0)
                + pok.num_columns + (1 if pok.num_columns else 0)
            )
        ]
    except BackendLost as e:
        await reply.lost(s, e, retry=False, shape=None)
        return
    c.keep_stmt(c.stmt_key(sql), pok)
    if len(s.stmts) >= MAX_CLIENT_STMTS:
        await s.send(P.make_err(1461, "42000", "Can't create more than "
                                   f"max_prepared_stmt_count statements (current value: "
                                   f"{MAX_CLIENT_STMTS})"))
        s.settle()
        return
    if s.stmt_bytes + len(sql) > MAX_CLIENT_STMT_BYTES:
        await s.send(P.make_err(1041, "HY000", "Out of memory: this connection's prepared "
                                   f"statements would hold more than {MAX_CLIENT_STMT_BYTES >> 20} "
                                   "MiB of text (seckill-proxy); close some"))
        s.settle()
        return
    s.stmt_bytes += len(sql)
    sid = s.next_stmt_id
    s.next_stmt_id += 1
    s.stmts[sid] = ClientStmt(sql, classify(sql), pok.num_params, pok.num_columns)
    s.last_stmt = sid
    assert s.connection is not None
    stream = s.connection.stream
    stream.write_many([P.with_stmt_id(first, sid), *rest])
    await stream.drain()
    s.settle()


def client_stmt(s: Statement, payload: bytes, what: str) -> ClientStmt:
    if len(payload) < 5:
        raise ProxyError((1835, "08S01"), "Malformed communication packet")
    sid = struct.unpack_from("<I", payload, 1)[0]
    if sid == P.STMT_LAST_PREPARED and s.last_stmt is not None:
        sid = s.last_stmt
    st = s.stmts.get(sid)
    if st is None:
        raise ProxyError(
            ER_UNKNOWN_STMT_HANDLER,
            f"Unknown prepared statement handler ({sid}) given to {what}",
        )
    return st


def _execution(s: Statement, payload: bytes) -> tuple[
        ClientStmt, P.ExecuteParts, Callable[[BackendConn, Any], Awaitable[Relayed]]]:
    """A COM_STMT_EXECUTE read: its statement, its parts, one execution on a connection."""
    st = client_stmt(s, payload, "mysqld_stmt_execute")
    try:
        parts = P.split_execute(payload, st.num_params)
    except ValueError as e:
        raise ProxyError((1835, "08S01"), f"Malformed communication packet ({e})") from None

    async def run(c: BackendConn, out: Any) -> Relayed:
        return await run_execute_on(s, c, st, parts, out)

    return st, parts, run


async def execute(s: Statement, payload: bytes) -> None:
    st, parts, run = _execution(s, payload)
    if parts.bound:
        st.types = parts.types
    p = plan(st.shape, s, s.app.policy, cursor=bool(parts.flags & 0x01))
    await executor.execute(s, Command(
        st.sql, st.shape, p, run, lambda q: execute_on_primary(s, st, q, run),
        lambda fwd: s.app.hotrow.intercept_execute(s, st, parts, fwd)))


async def forward_execute(s: Statement, payload: bytes, p: Plan) -> Relayed | None:
    """A COM_STMT_EXECUTE's primary path alone (`execute`'s `forward`): for the fast lane's
    merged member told to run its own statement (lanemerge.py)."""
    st, _, run = _execution(s, payload)
    return await execute_on_primary(s, st, p, run)


async def bulk_execute(s: Statement, payload: bytes) -> None:
    """MariaDB's COM_STMT_BULK_EXECUTE (what MariaDB Connector/Python and /J send for
    executemany): the rows go as they are to the primary, on the backend statement."""
    st = client_stmt(s, payload, "mysqld_stmt_bulk_execute")
    if len(payload) < 7:
        raise ProxyError((1835, "08S01"), "Malformed communication packet")
    flags = struct.unpack_from("<H", payload, 5)[0]
    if flags & P.BULK_SEND_TYPES:
        st.bulk_types = payload[7:7 + 2 * st.num_params]
    elif st.bulk_types:
        # the backend statement may be a fresh one (another connection): it needs the types
        payload = (payload[:5] + struct.pack("<H", flags | P.BULK_SEND_TYPES) + st.bulk_types
                   + payload[7:])

    async def run(c: BackendConn, out: Any) -> Relayed:
        pok = await c.prepare(st.sql)
        await c.command(P.with_stmt_id(payload, pok.stmt_id))
        return await c.relay(out, s.client_ok)

    p = plan(st.shape, s, s.app.policy, bulk=True)
    await executor.execute(s, Command(
        st.sql, st.shape, p, run, lambda q: execute_on_primary(s, st, q, run), _no_hot))


async def _no_hot(forward: Any) -> None:
    return None  # a bulk plan never goes to the hot-row engine


async def execute_on_primary(
    s: Statement, st: ClientStmt, p: Plan,
    run: Callable[[BackendConn, Any], Awaitable[Relayed]],
) -> Relayed | None:
    """Run a client's prepared statement (`run`: one execution on a connection, single or
    bulk) on the primary path as its plan says."""
    if p.pin and not s.pin:
        s.pin = p.pin
    if p.track is Track.AUTOCOMMIT:
        return await tracked.tracked_autocommit(s, st.shape, p, run)
    hold = BufferWriter() if p.hold_ack else None
    for attempt in (0, 1):
        c = await s.primary_conn()
        try:
            r = await run(c, hold or s.out)
        except BackendError as e:
            s.settle()
            await s.send(e.raw)
            return None
        except BackendLost as e:
            await reply.lost(s, e, retry=attempt == 0 and not e.sent, shape=st.shape)
            continue
        if s.pin is PinReason.LONG_DATA:
            s.pin = None
        return await reply.finish(s, c, r, hold, p)
    raise AssertionError("unreachable")


async def send_long_data(s: Statement, payload: bytes) -> None:
    st = client_stmt(s, payload, "mysqld_stmt_send_long_data")
    s.pin = s.pin or PinReason.LONG_DATA
    c = await s.primary_conn()
    pok = await c.prepare(st.sql)
    await c.command(P.with_stmt_id(payload, pok.stmt_id))  # no response by protocol


async def fetch(s: Statement, payload: bytes) -> None:
    st = client_stmt(s, payload, "mysqld_stmt_fetch")
    c = await s.primary_conn()
    pok = await c.prepare(st.sql)
    await c.command(P.with_stmt_id(payload, pok.stmt_id))
    r = await c.relay(s.out, s.client_ok, field_list=True)
    await s.out.drain()
    s.absorb_reply(c, r)


async def reset(s: Statement, payload: bytes) -> None:
    st = client_stmt(s, payload, "mysqld_stmt_reset")
    # Only long data and an open cursor live on the backend statement; without them the
    # reset is a no-op there, so the proxy answers it (drivers send one per execution).
    backend_state = s.pin in ("long data pending", "server-side cursor")
    if (backend_state and s.conn is not None
            and s.conn.stmt_key(st.sql) in s.conn.stmts):
        c = await s.primary_conn()
        await c.command(P.with_stmt_id(payload, c.stmts[c.stmt_key(st.sql)].stmt_id))
        r = await c.relay(s.out, s.client_ok)
        await s.out.drain()
        s.absorb_reply(c, r)
    else:
        await s.send(s.ok_packet())
        s.row_count_local = 0  # MariaDB's reset ends with an OK: ROW_COUNT() is 0 after it
    if backend_state:
        s.pin = None
        s.settle()


async def close(s: Statement, payload: bytes) -> None:
    """Forget the client's statement; the backend statement goes too when the session's
    connection has it and no other statement of this client uses the same text."""
    if len(payload) < 5:
        return
    st = s.stmts.pop(struct.unpack_from("<I", payload, 1)[0], None)
    if st is not None:
        s.stmt_bytes -= len(st.sql)
    c = s.lease.conn
    if (st is not None and c is not None and not c.broken
            and all(o.sql != st.sql for o in s.stmts.values())):
        c.close_stmt(st.sql)


# What each binary-protocol command runs (the session's `com_stmt`).
COMMANDS: dict[int, Callable[[Statement, bytes], Awaitable[None]]] = {
    P.COM_STMT_PREPARE: prepare, P.COM_STMT_EXECUTE: execute,
    P.COM_STMT_BULK_EXECUTE: bulk_execute, P.COM_STMT_SEND_LONG_DATA: send_long_data,
    P.COM_STMT_FETCH: fetch, P.COM_STMT_RESET: reset, P.COM_STMT_CLOSE: close,
}
