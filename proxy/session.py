"""One client session: which backend connection serves it, and the state it must carry.

Backend connections are lent per statement (or per transaction) and given back as soon as the
session holds nothing on them, so 10,000 clients can share a few hundred MySQL connections. The
session keeps what must follow it from connection to connection (database, session variables,
LAST_INSERT_ID) and replays it on the connection it gets. When a statement leaves state the
proxy cannot replay (user variables, temporary tables, named locks...), the session is pinned
to its connection until it disconnects or resets; the pin always carries a reason string.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mysql_mimic.session import BaseSession
from mysql_mimic.variables import GlobalVariables, SessionVariables

from . import metrics as M
from . import protocol as P
from .backend import BackendConn, BufferWriter, Relayed
from .classify import Shape, classify, parse_hints
from .config import CONSISTENCY
from .errors import (
    CR_SERVER_LOST,
    ER_UNKNOWN_STMT_HANDLER,
    BackendError,
    BackendLost,
    LeaseReason,
    ProxyError,
)
from .fastlane import FastLane
from .gtid import GtidError
from .gtid import parse as gtid_parse
from .lease import Lease, LeaseState
from .outcome import ER_SECKILL_NOT_COMMITTED
from .plan import KILL, Plan, Route, Track, names_of, plan
from .state import LOGIN_NAMES, Names, Wanted, absorb, split_reported
from .wire import ClientIO

if TYPE_CHECKING:
    from .frontend import ProxyConnection
    from .pool import Pool
    from .server import App

log = logging.getLogger("seckill.session")
_SET_PROXY_VAR = re.compile(
    r"SET\s+(?:SESSION\s+|@@SESSION\.|@@)?(read_after_gtid|read_consistency)\s*=\s*'([^']*)'", re.I)

# MySQL clears the warnings list only at a statement that uses a table: one every user may read.
_CLEAR_DIAGNOSTICS = "DO (SELECT 1 FROM information_schema.COLLATIONS LIMIT 0)"
MAX_CLIENT_STMTS = 16382  # per client, as MariaDB's default max_prepared_stmt_count


@dataclass
class ClientStmt:
    """A statement the client prepared; re-prepared on whichever backend connection runs it."""

    sql: str
    shape: Shape
    num_params: int
    num_columns: int
    types: bytes = b""


class ProxySession(BaseSession):
    def __init__(self, app: App) -> None:
        self.app = app
        self.variables = SessionVariables(GlobalVariables())
        self.variables.set("version", app.server_version, force=True)
        self.username: str | None = None
        self.database: str | None = None
        self.connection: ProxyConnection | None = None
        self.lease = Lease()
        self.stmt_conn: BackendConn | None = None  # ran the session's last statement
        self.last_conn: BackendConn | None = None
        self.pin: str | None = None
        self.sysvars: dict[str, str] = {}  # replayable session variables the client changed
        self.names: Names = LOGIN_NAMES  # character set and collation (state.py)
        self.handshake_names: Names = LOGIN_NAMES
        self.multi = True  # CLIENT_MULTI_STATEMENTS, from the handshake and COM_SET_OPTION
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.last_insert_id = 0
        self.last_gtid: str | None = None
        self.stmts: dict[int, ClientStmt] = {}
        self._next_stmt = 1
        self.found_rows = False
        self.busy = False
        self.held_slots: list[asyncio.Semaphore] = []  # hot-row queue slots held to txn end
        self.state_stale = False  # session state changed locally, not yet on self.conn
        self.read_consistency: str | None = None  # session override of routing.read_consistency
        self.read_after_gtid: str | None = None  # token: reads must see this GTID
        self.lane: FastLane | None = None
        self.end_reason: str | None = None  # why the fast lane ended the connection

    # ---- mysql-mimic hooks --------------------------------------------------------------

    async def init(self, connection: Any) -> None:
        if self.connection is connection:
            return  # already run by the login check (frontend `_login_gate`)
        self.connection = connection
        self.found_rows = bool(int(connection.capabilities) & P.CLIENT_FOUND_ROWS)
        self.multi = bool(int(connection.capabilities) & P.CLIENT_MULTI_STATEMENTS)
        self.handshake_names = self.names = connection.client_names
        self.sysvars = {}
        reader = connection.stream.reader
        if isinstance(reader, ClientIO):
            self.lane = FastLane(self, reader)
            reader.fast = self.lane.try_start

    async def check_login(self) -> bytes | None:
        """What MySQL refuses at login rather than at the first query: a default database that
        does not exist (1049) or a user MySQL does not accept. The connection used for the
        check stays with the session for its first statement. Returns MySQL's ERR packet."""
        if not self.database or not self.app.primary_pool().can_lend_now():
            return None  # never make a login wait for a busy pool: the first statement will
        try:
            await self._get_conn()
        except BackendError as e:
            return e.raw
        except (BackendLost, ProxyError):
            return None  # MySQL unreachable now: the first statement reports it
        self.settle()
        return None

    async def close(self) -> None:
        if self.lane is not None:
            self.lane.abandon()
        await self._drop_conn(LeaseReason.CLIENT_GONE)
        self.status &= ~P.SERVER_STATUS_IN_TRANS
        self.release_slots()

    def release_slots(self) -> None:
        """Give back hot-row queue slots once no transaction holds them."""
        if self.held_slots and not self.status & P.SERVER_STATUS_IN_TRANS:
            for sem in self.held_slots:
                sem.release()
            self.held_slots.clear()

    async def reset(self) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: back to a fresh session."""
        await self._drop_conn(LeaseReason.SESSION_RESET)
        self.sysvars = {}
        self.names = self.handshake_names
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.release_slots()
        self.stmts.clear()
        self.last_insert_id = 0
        self.pin = None

    async def use(self, database: str) -> None:  # not used: COM_INIT_DB is forwarded
        self.database = database

    # ---- the view a plan reads (plan.SessionView) -----------------------------------------

    @property
    def in_txn(self) -> bool:
        return bool(self.status & P.SERVER_STATUS_IN_TRANS)

    @property
    def replica_txn(self) -> bool:
        return self.lease.state is LeaseState.REPLICA_TXN

    # ---- the lease: this session's hold on a backend connection (lease.py) ---------------

    @property
    def conn(self) -> BackendConn | None:
        return self.lease.conn

    @property
    def conn_pool(self) -> Pool | None:
        return self.lease.pool

    def idle_timeout(self) -> float:
        """Seconds of client silence after which MySQL closes the connection."""
        v = self.sysvars.get("wait_timeout")
        if v is not None:
            try:
                return max(float(v), 1.0)
            except ValueError:
                pass
        cat = BackendConn.catalog
        interactive = self.connection is not None and bool(
            int(self.connection.capabilities) & P.CLIENT_INTERACTIVE)
        return float(cat.interactive_timeout if interactive else cat.wait_timeout)

    def wanted(self) -> Wanted:
        """The state a backend connection must carry to serve this session."""
        return Wanted(self.database, self.names, self.sysvars)

    @property
    def password(self) -> str:
        return self.app.cfg.password_of(self.username or "") or ""

    async def _get_conn(self) -> BackendConn:
        """The connection a statement for the primary runs on: the one the lease holds (a
        transaction or pin holds it wherever it is), else a primary connection."""
        L = self.lease
        c = L.conn
        if c is not None and L.pool is not None and L.pool.role == "fenced":
            c.broken = True  # a connection to the former primary: never write there again
            await L.release(LeaseReason.PRIMARY_MOVED)
            c = None
        if c is not None and L.state is LeaseState.SOFT:
            if L.pool is not self.app.primary_pool():
                await L.release(LeaseReason.ROUTE_CHANGE)  # a replica's, kept after a read
                c = None
            elif c.broken or c.io.at_eof():
                c.broken = True  # died while idle (backend restart, idle timeout): replace it
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
                    return await self._get_conn()
            return c
        pool = await self.app.writable_primary()
        c = await pool.acquire(self.username or "", self.password, self.found_rows,
                               self.last_conn, self.wanted())
        L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED, c, pool)
        self.last_conn = c
        self.state_stale = False
        return c

    def _holds(self) -> bool:
        return bool(self.pin) or self.in_txn

    def settle(self) -> None:
        """After a statement: what the lease becomes (one decision for both paths)."""
        L = self.lease
        c = L.conn
        if c is None:
            return
        if L.state is LeaseState.REPLICA_TXN:
            if self.in_txn:
                return
            if self.pin:
                # State taken inside a read-only transaction on a replica cannot follow the
                # session to the primary; the replica connection is reset, the pin dropped.
                log.warning("session state set inside a replica read-only transaction was "
                            "dropped at its end (%s)", self.pin)
                self.pin = None
                c.dirty = True
            L.transition(LeaseState.NONE, LeaseReason.STATEMENT_DONE)
        elif c.broken:
            L.transition(LeaseState.NONE, LeaseReason.BACKEND_LOST)
        elif self.pin:
            c.dirty = True
            L.transition(LeaseState.PINNED, LeaseReason.PINNED)
        elif self.in_txn:
            L.transition(LeaseState.TRANSACTION, LeaseReason.TRANSACTION)
        elif c.dirty or c.in_trans:
            L.transition(LeaseState.NONE, LeaseReason.STATEMENT_DONE)
        else:
            L.transition(LeaseState.SOFT, LeaseReason.STATEMENT_DONE)

    async def _drop_conn(self, reason: LeaseReason) -> None:
        c = self.lease.conn
        if c is None:
            return
        self.last_conn = None
        if self.pin:
            c.dirty = True
        await self.lease.release(reason)

    # ---- writing to the client ----------------------------------------------------------

    @property
    def out(self) -> ClientIO:
        assert self.connection is not None
        return self.connection.stream.writer  # type: ignore[no-any-return]

    async def send(self, payload: bytes) -> None:
        """One reply packet with the next sequence id; drains only when the socket is backed up."""
        assert self.connection is not None
        stream = self.connection.stream
        seq = next(stream.seq)
        if len(payload) >= P.MAX_PACKET:
            stream.seq.value = seq  # rewind: mimic's writer splits large packets itself
            await stream.write(payload)
            return
        w = stream.writer
        w.write(struct.pack("<I", len(payload) | (seq << 24)) + payload)
        if w.transport.get_write_buffer_size() >= 65536:
            await w.drain()

    def ok_packet(self, affected: int = 0, insert_id: int = 0, warnings: int = 0, info: bytes = b"") -> bytes:
        return P.make_ok(affected, insert_id, self.status, warnings, info)

    def _ok_hook(self, ok: P.OkPacket) -> bytes:
        if ok.last_insert_id:
            self.last_insert_id = ok.last_insert_id
        return P.make_ok(ok.affected_rows, ok.last_insert_id, ok.status, ok.warnings, ok.info)

    # ---- statements ---------------------------------------------------------------------

    async def com_query(self, payload: bytes) -> None:
        sql = payload[1:].decode("utf-8", "surrogateescape")
        shape = classify(sql)
        p = plan(shape, self, self.app.policy)
        if p.route is Route.LOCAL_SET:
            await self._local_set(shape, sql, payload)
            return
        if p.route is Route.LOCAL_GTID:
            await self._answer([("@@last_gtid", self.last_gtid or "")])
            return
        if p.route is Route.LOCAL_CONN_ID:
            assert self.connection is not None
            await self._answer([("CONNECTION_ID()", str(self.connection.connection_id))],
                               P.column_def_uint)
            return
        if p.route is Route.KILL and await self._kill(sql):
            return
        await self._run_plan(p, shape, lambda c, out: self._run_on(c, payload, out, shape),
                             lambda q: self._forward(payload, shape, q),
                             lambda fwd: self.app.hotrow.intercept(self, sql, shape, fwd), sql)

    async def _run_plan(
        self, p: Plan, shape: Shape,
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
        try:
            if p.gate_write:
                self.app.durability.check_write()  # the gate runs once, here
                p = replace(p, gate_write=False)
            if p.route is Route.HOTROW:
                handled = await hot(lambda: forward(p))
                if handled is not None:
                    route, outcome = handled
                    return
            elif p.route is Route.DIAG:
                rd = await self._diagnostics(run)
                outcome = "error" if rd.err is not None else "ok"
                return
            elif p.route is Route.REPLICA_TXN:
                await self._begin_read_only(p)
            elif p.route is Route.REPLICA:
                rr = await self._read(p, sql, lambda c: run(c, self.out))
                if rr is not None:
                    route = "replica"
                    rows = rr.rows
                    if rr.err is not None:
                        outcome = "error"
                    return
            r = await forward(p)
            if r is None or r.err is not None:
                outcome = "error"
            elif r is not None:
                rows = r.rows or r.affected_rows
        except ProxyError:
            outcome = "error"
            raise
        finally:
            dt = time.perf_counter() - t0
            M.count_statement(shape.verb, route, outcome, dt)
            self.app.digest.record(shape, dt, route, rows)
            if dt * 1000 >= self.app.slow_ms > 0:
                self._slow(shape, dt, route, outcome)

    # ---- replica reads ---------------------------------------------------------------------

    @property
    def autocommit_off(self) -> bool:
        return self.sysvars.get("autocommit", "ON").upper() in ("OFF", "0")

    @property
    def consistency(self) -> str:
        return self.read_consistency or self.app.read_consistency

    async def _replica_conn(self, p: Plan, sql: str) -> tuple[BackendConn, Pool, str] | None:
        """A replica connection for this read: the one the lease keeps from the last read if
        that replica may serve it at once, else the router's choice (None: the primary)."""
        assert p.read is not None
        rp = p.read
        if "/*+" in sql:  # READ_AFTER_GTID('...'): the digest hides the literal
            tok = parse_hints(sql).get("READ_AFTER_GTID")
            if tok:
                rp = replace(rp, token=tok)
        L = self.lease
        router = self.app.reads
        if (L.state is LeaseState.SOFT and L.pool is not None and L.conn is not None
                and L.pool.role == "replica" and not L.conn.broken
                and router.ready_now(L.pool, rp, self.last_gtid)):
            L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
            return L.conn, L.pool, "replica"
        got = await router.acquire(self, rp)
        if got is None:
            router.count(rp.consistency, "primary_fallback")
            return None
        if L.state is not LeaseState.NONE:
            await L.release(LeaseReason.ROUTE_CHANGE)
        L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED, got[0], got[1])
        return got

    async def _read(
        self, p: Plan, sql: str, run: Callable[[BackendConn], Awaitable[Relayed]]
    ) -> Relayed | None:
        """Serve a SELECT from a replica that has the watermark; None: the caller uses the primary."""
        assert p.read is not None
        got = await self._replica_conn(p, sql)
        if got is None:
            return None
        c, pool, outcome = got
        router = self.app.reads
        try:
            r = await run(c)
            await self._drain()
        except BackendLost as e:
            await self.lease.release(LeaseReason.BACKEND_LOST)
            if e.delivered:
                raise ProxyError(CR_SERVER_LOST, f"Lost connection to replica during query ({e.reason})") from None
            router.count(p.read.consistency, "primary_fallback")
            return None  # nothing reached the client: the primary answers instead
        except BackendError as e:
            self.settle()
            await self.send(e.raw)
            return Relayed(err=P.ErrPacket(e.code, e.sqlstate, e.message))
        except BaseException:
            await self.lease.release(LeaseReason.CLIENT_GONE)  # relay() marked it broken
            raise
        self.stmt_conn = c
        self.settle()
        router.count(p.read.consistency, outcome, pool.label)
        return r

    async def _diagnostics(self, run: Callable[[BackendConn, Any], Awaitable[Relayed]]) -> Relayed:
        """SHOW WARNINGS, @@warning_count, SHOW SESSION STATUS...: on the connection that ran
        the session's previous statement, wherever it is (a replica's, after a read). A
        connection new to the session first gets its diagnostics area cleared, so it shows
        nothing of its previous user's statements (or of the proxy's own state replay), as a
        fresh MySQL connection."""
        L = self.lease
        c = L.conn
        if c is not None and c is self.stmt_conn and not c.broken and not self.state_stale:
            if L.state is LeaseState.SOFT:
                L.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
        else:
            c = await self._get_conn()
            await c.execute(_CLEAR_DIAGNOSTICS)
        try:
            r = await run(c, self.out)
        except BackendLost as e:
            await self._lost(e, retry=False, shape=None)
            raise AssertionError("unreachable") from None
        return await self._finish(c, r, None)

    async def _begin_read_only(self, p: Plan) -> None:
        """START TRANSACTION READ ONLY runs on one replica for the whole transaction."""
        assert p.read is not None
        got = await self.app.reads.acquire(self, p.read)
        if got is None:
            self.app.reads.count(p.read.consistency, "primary_fallback")
            return
        await self.lease.release(LeaseReason.READ_ONLY_TXN)
        self.lease.transition(LeaseState.REPLICA_TXN, LeaseReason.READ_ONLY_TXN, got[0], got[1])
        self.app.reads.count(p.read.consistency, got[2], got[1].label)

    async def _kill(self, sql: str) -> bool:
        """KILL of a proxy client id (the one its handshake and CONNECTION_ID() gave): QUERY
        interrupts what its backend connection runs (MySQL checks the killer's privilege);
        CONNECTION also closes the client. An id the proxy does not know goes to MySQL as it
        is (a DBA killing a backend thread). False: not handled here."""
        m = KILL.match(sql.strip().rstrip(";").strip())
        if m is None:
            return False
        target = self.app.find_client(int(m.group(2)))
        if target is None:
            return False
        ts = target.session
        query_only = (m.group(1) or "").upper() == "QUERY"
        if ts.username != self.username:
            raise ProxyError((1095, "HY000"), f"You are not owner of thread {m.group(2)}")
        c, pool = (ts.lease.conn, ts.lease.pool) if ts.busy else (None, None)
        if target is self.connection:
            c = None  # our own statement is this one
        if c is not None and pool is not None and not c.broken:
            # On the server that runs it, as this client's user: MySQL checks the privilege.
            kc = await pool.acquire(self.username or "", self.password)
            try:
                await kc.execute(f"KILL {'QUERY ' if query_only else ''}{c.thread_id}")
            except BackendError as e:
                if e.code != 1094:  # the statement ended meanwhile: nothing to interrupt
                    await self.send(e.raw)
                    return True
            finally:
                await pool.release(kc)
        if not query_only:
            if target is self.connection:
                raise ProxyError((1927, "70100"), "Connection was killed", fatal=True)
            target.close_reason = "killed"
            target.stream.reader.transport.abort()
        await self.send(self.ok_packet())
        return True

    async def _answer(self, cols_rows: list[tuple[str, str | None]],
                      coldef: Callable[[str], bytes] = P.column_def) -> None:
        """A one-row result set the proxy answers itself."""
        assert self.connection is not None
        stream = self.connection.stream
        stream.write_many([P.enc_lenenc_int(len(cols_rows)),
                           *[coldef(n) for n, _ in cols_rows],
                           P.make_eof(self.status), P.text_row([v for _, v in cols_rows]),
                           P.make_eof(self.status)])
        await stream.drain()

    def _slow(self, shape: Shape, dt: float, route: str, outcome: str) -> None:
        conn_id = self.connection.connection_id if self.connection else None
        log.warning("slow statement: %.1f ms route=%s outcome=%s user=%s digest=%s",
                    dt * 1000, route, outcome, self.username, shape.digest[:500],
                    extra={"conn_id": conn_id})

    async def _local_set(self, shape: Shape, sql: str, payload: bytes) -> None:
        """Settings the proxy keeps itself (Route.LOCAL_SET): the read watermark and
        consistency of the session, and `SET NAMES cs [COLLATE coll]` (what most drivers send
        on every connect), which is recorded, not sent: it travels with the session to
        whichever backend connection serves it next (state.py)."""
        names = names_of(shape)
        if names is None:
            m = _SET_PROXY_VAR.fullmatch(sql.strip().rstrip(";").strip())
            if m is None:
                raise ProxyError((1231, "42000"), "Variable can't be set to this value "
                                 "(read_after_gtid and read_consistency take a quoted string)")
            name, value = m.group(1).lower(), m.group(2)
            if name == "read_after_gtid":
                if value:
                    try:
                        gtid_parse(value)
                    except GtidError as e:
                        raise ProxyError((1231, "42000"),
                                         f"Variable 'read_after_gtid' can't be set to the value of '{value}' ({e})") from None
                self.read_after_gtid = value or None
            else:
                if value.lower() not in CONSISTENCY:
                    raise ProxyError((1231, "42000"),
                                     f"Variable 'read_consistency' can't be set to the value of '{value}'")
                self.read_consistency = value.lower()
            await self.send(self.ok_packet())
            return
        cs, coll = names
        cs = "utf8mb3" if cs == "utf8" else cs
        coll = coll or BackendConn.catalog.default_collation(cs)
        if coll is None or BackendConn.catalog.charset_of(coll) != cs:
            await self._forward(payload, shape)  # MySQL answers it (its errors included)
            return
        self.names = Names.uniform(cs, coll)
        self.state_stale = True
        await self.send(self.ok_packet())

    async def _forward(
        self, payload: bytes, shape: Shape | None, p: Plan | None = None, field_list: bool = False
    ) -> Relayed:
        """Run a statement on the primary path as its plan says: tracked commit, tracked
        autocommit write, or sent on the session's connection with the reply relayed (held
        for a replica acknowledgement when the plan says so). The fast lane runs exactly the
        plans that only forward (`Plan.lane`)."""
        if p is not None and p.track is Track.COMMIT:
            return await self._tracked_commit(payload, p)
        if p is not None and p.track is Track.AUTOCOMMIT:
            assert shape is not None
            return await self._tracked_autocommit(
                shape, p, lambda c, out: self._run_on(c, payload, out, shape))
        hold = BufferWriter() if p is not None and p.hold_ack else None
        for attempt in (0, 1):
            c = await self._get_conn()
            if shape is not None:
                if p is not None and p.pin and not self.pin:
                    self.pin = p.pin
                if shape.pin:
                    c.dirty = True
                if shape.uses_last_insert_id and c.last_insert_id != self.last_insert_id:
                    await c.execute(f"SELECT LAST_INSERT_ID({self.last_insert_id})")
            try:
                if field_list:
                    await c.command(payload)
                    r = await c.relay(hold or self.out, self._ok_hook, field_list=True)
                else:
                    r = await self._run_on(c, payload, hold or self.out, shape)
            except BackendLost as e:
                await self._lost(e, retry=attempt == 0 and not e.sent, shape=shape)
                continue
            return await self._finish(c, r, hold)
        raise AssertionError("unreachable")

    async def _finish(self, c: BackendConn, r: Relayed, hold: BufferWriter | None) -> Relayed:
        """After a statement's reply: take over session state, give the connection back, then
        let the (possibly held) reply go out."""
        self._after(c, r)
        self.settle()
        if hold is not None:
            await self._release_held(hold, r)
        await self._drain()
        return r

    async def _run_on(self, c: BackendConn, payload: bytes, out: Any,
                      shape: Shape | None = None) -> Relayed:
        if shape is not None and shape.verb == "LOAD" and not self._local_files_ok(shape):
            raise ProxyError((4166, "HY000"), "The used command is not allowed because the "
                             "MariaDB server or client has disabled the local infile capability")
        r = await self._send_and_relay(c, payload, out, shape)
        if r.local_infile:
            r = await self._local_infile(c, out)
        return r

    def _local_files_ok(self, shape: Shape) -> bool:
        """LOAD DATA LOCAL needs a client that offered CLIENT_LOCAL_FILES (as with MySQL)."""
        if " LOCAL " not in shape.digest.upper():
            return True
        return self.connection is not None and bool(
            int(self.connection.capabilities) & P.CLIENT_LOCAL_FILES)

    async def _local_infile(self, c: BackendConn, out: Any) -> Relayed:
        """MySQL asked for the client's file (its request went to the client with the reply):
        pass the client's packets through to MySQL up to the empty one, then relay MySQL's
        answer. Sequence ids carry on unchanged on both sides."""
        if isinstance(out, BufferWriter):  # ack: replica holds only the final OK
            self.out.write(bytes(out.buf))
            out.buf.clear()
        await self._drain()
        assert self.connection is not None
        reader = self.connection.stream.reader
        while True:
            try:
                hdr = await reader.readexactly(4)
                n = hdr[0] | (hdr[1] << 8) | (hdr[2] << 16)
                body = await reader.readexactly(n) if n else b""
            except (asyncio.IncompleteReadError, ConnectionError):
                c.broken = True  # MySQL still waits for the rest of the file
                raise
            c.io.write(hdr + body)
            if n == 0:
                break
        await c.io.drain()
        return await c.relay(out, self._ok_hook)

    async def _send_and_relay(self, c: BackendConn, payload: bytes, out: Any,
                              shape: Shape | None) -> Relayed:
        if shape is not None and shape.multi and not self.multi:
            await c.set_multi(False)
            try:
                await c.command(payload)
                return await c.relay(out, self._ok_hook)
            finally:
                if not c.broken:
                    await c.set_multi(True)
        await c.command(payload)
        return await c.relay(out, self._ok_hook)

    async def _run_execute_on(self, c: BackendConn, st: ClientStmt, parts: P.ExecuteParts,
                              out: Any) -> Relayed:
        pok = await c.prepare(st.sql)
        await c.command(P.join_execute(parts, pok.stmt_id, st.types))
        return await c.relay(out, self._ok_hook)

    async def _tracked_autocommit(
        self, shape: Shape, p: Plan, run: Callable[[BackendConn, Any], Awaitable[Relayed]]
    ) -> Relayed:
        """An autocommit write with an outcome record: START TRANSACTION, the statement (its
        reply held), the record and COMMIT; the client's OK goes out once COMMIT returned."""
        c = await self._get_conn()
        tracker = self.app.outcomes
        oid = tracker.next_id()
        hold = BufferWriter()
        try:
            await tracker.ensure_table(c)
            await c.execute("START TRANSACTION")
            r = await run(c, hold)
        except BackendLost as e:
            # Died before COMMIT: the server rolls the transaction back, nothing was applied.
            await self._drop_conn(LeaseReason.BACKEND_LOST)
            self.status = P.SERVER_STATUS_AUTOCOMMIT
            raise ProxyError(CR_SERVER_LOST, f"Lost connection to MySQL server during query "
                             f"({e.reason}); the statement was NOT applied") from None
        if r.err is not None or r.ok is None:
            await self._finish_tracked(c, "ROLLBACK")
            self.out.write(bytes(hold.buf))  # the statement's own error (or result) as MySQL sent it
            await self._drain()
            return r
        try:
            _, ok = await c.query(f"INSERT INTO {tracker.table} (id) VALUES ({oid}); COMMIT")
        except BackendError as e:
            await self._finish_tracked(c, "ROLLBACK")
            await self.send(e.raw)
            return r
        except BackendLost as e:
            await self._drop_conn(LeaseReason.BACKEND_LOST)
            self.status = P.SERVER_STATUS_AUTOCOMMIT
            log.warning("connection lost during COMMIT (%s); resolving outcome %d", e.reason, oid)
            committed = await tracker.resolve(oid, self.username or "", self.password)
            if committed is False:
                raise ProxyError(ER_SECKILL_NOT_COMMITTED,
                                 "Statement NOT applied: the connection to MySQL was lost during "
                                 "COMMIT and seckill-proxy verified that nothing was committed") from None
            if committed is None:
                raise ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during COMMIT; "
                                 "outcome unknown (the primary could not be asked)") from None
            ok = None
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        c.status = P.SERVER_STATUS_AUTOCOMMIT
        if ok is not None and ok.gtid:
            self.last_gtid = ok.gtid
            if p.hold_ack:
                await self.app.durability.wait_ack(ok.gtid)
        self.settle()
        o = r.ok
        await self.send(P.make_ok(o.affected_rows, o.last_insert_id, self.status, o.warnings, o.info))
        return r

    async def _finish_tracked(self, c: BackendConn, sql: str) -> None:
        try:
            await c.execute(sql)
        except (BackendError, BackendLost):
            c.broken = True
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.settle()

    async def _tracked_commit(self, payload: bytes, p: Plan) -> Relayed:
        """COMMIT with an outcome record, so a lost connection still gets a true answer."""
        c = self.conn
        assert c is not None
        tracker = self.app.outcomes
        oid = tracker.next_id()
        try:
            await tracker.ensure_table(c)
            await c.execute(f"INSERT INTO {tracker.table} (id) VALUES ({oid})")
        except BackendError:
            oid = 0  # e.g. a read-only transaction: commit untracked
        except BackendLost as e:
            await self._lost(e, retry=False, shape=None)
        hold = BufferWriter() if p.hold_ack else None
        try:
            await c.command(payload)
            r = await c.relay(hold or self.out, self._ok_hook)
        except BackendLost as e:
            if not oid:
                await self._lost(e, retry=False, shape=None)
            await self._drop_conn(LeaseReason.BACKEND_LOST)
            self.status &= ~P.SERVER_STATUS_IN_TRANS
            self.pin = None
            self.release_slots()
            log.warning("connection lost during COMMIT (%s); resolving outcome %d", e.reason, oid)
            committed = await tracker.resolve(oid, self.username or "", self.password)
            if committed:
                await self.send(self.ok_packet())
                return Relayed(status=self.status)
            if committed is False:
                raise ProxyError(ER_SECKILL_NOT_COMMITTED,
                                 "Transaction NOT committed: the connection to MySQL was lost during "
                                 "COMMIT and seckill-proxy verified that nothing was committed") from None
            raise ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during COMMIT; outcome "
                             "unknown (the primary could not be asked)", fatal=True) from None
        return await self._finish(c, r, hold)

    async def _release_held(self, hold: BufferWriter, r: Relayed) -> None:
        """ack: replica — the OK goes out once replicas confirmed the write's GTID."""
        if r.gtid and r.err is None:
            await self.app.durability.wait_ack(r.gtid)
        self.out.write(bytes(hold.buf))

    async def _drain(self) -> None:
        out = self.out
        if out.transport.get_write_buffer_size() >= 65536 or out.transport.is_closing():
            await out.drain()

    async def _lost(self, e: BackendLost, retry: bool, shape: Shape | None) -> None:
        """The backend connection died under a statement: retry, or tell the client the truth."""
        held = self._holds()
        await self._drop_conn(LeaseReason.BACKEND_LOST)
        self.status &= ~P.SERVER_STATUS_IN_TRANS
        self.release_slots()
        if retry and not held:
            return  # nothing reached MySQL: the loop runs the statement on a fresh connection
        if held:
            self.pin = None
            raise ProxyError(
                CR_SERVER_LOST,
                f"Lost connection to MySQL server during query ({e.reason}); "
                "the transaction was rolled back or its outcome is unknown",
                fatal=True,
            )
        what = "outcome unknown" if shape is None or shape.is_write else "not executed"
        raise ProxyError(CR_SERVER_LOST, f"Lost connection to MySQL server during query ({what})")

    def _after(self, c: BackendConn, r: Relayed) -> None:
        self.stmt_conn = c
        self.status = r.status
        if r.sysvars:
            self.names = absorb(self.names, r.sysvars, BackendConn.catalog)
            keep, unreplayable = split_reported(r.sysvars)
            self.sysvars.update(keep)
            if "wait_timeout" in keep and self.connection is not None:
                self.connection.arm_idle_timer()
            if unreplayable and not self.pin:
                self.pin = f"session variable {unreplayable}"
        if r.schema is not None:
            self.database = r.schema or None
        if r.state_changed and not r.sysvars and r.schema is None and not self.pin:
            self.pin = "session state changed"
            c.dirty = True
        if r.gtid:
            self.last_gtid = r.gtid
        self.release_slots()

    # ---- other commands -------------------------------------------------------------------

    async def com_init_db(self, payload: bytes) -> None:
        r = await self._forward(payload, None)
        if r.err is None:
            self.database = payload[1:].decode("utf-8", "surrogateescape")

    async def com_field_list(self, payload: bytes) -> None:
        await self._forward(payload, None, field_list=True)

    async def com_ping(self) -> None:
        await self.send(self.ok_packet())

    async def com_reset_connection(self) -> None:
        await self.reset()
        await self.send(self.ok_packet())

    async def com_set_option(self, payload: bytes) -> None:
        """COM_SET_OPTION: multi-statements on (0) or off (1) for this session. Backend
        connections keep them on (the proxy's own commit records need them); a statement with
        `;` from a session that has them off runs with them off (`_run_on`), so MySQL answers
        it as it would this client."""
        if len(payload) != 3 or payload[1] > 1 or payload[2]:
            raise ProxyError((1047, "08S01"), "Unknown command")
        self.multi = payload[1] == 0
        await self.send(P.make_eof(self.status))

    async def com_statistics(self, payload: bytes) -> None:
        c = await self._get_conn()
        await c.command(payload)
        text = await c.read_packet()
        self.settle()
        await self.send(text)

    # ---- prepared statements ------------------------------------------------------------

    async def com_stmt_prepare(self, payload: bytes) -> None:
        sql = payload[1:].decode("utf-8", "surrogateescape")
        c = await self._get_conn()
        try:
            await c.command(payload)
            first = await c.read_packet()
            if first[0] == 0xFF:
                await self.send(first)
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
            await self._lost(e, retry=False, shape=None)
            return
        key = c.stmt_key(sql)
        old = c.stmts.pop(key, None)
        if old is not None:
            c.send(bytes((P.COM_STMT_CLOSE,)) + struct.pack("<I", old.stmt_id))
        c.stmts[key] = pok
        if len(self.stmts) >= MAX_CLIENT_STMTS:
            await self.send(P.make_err(1461, "42000", "Can't create more than "
                                       f"max_prepared_stmt_count statements (current value: "
                                       f"{MAX_CLIENT_STMTS})"))
            self.settle()
            return
        sid = self._next_stmt
        self._next_stmt += 1
        self.stmts[sid] = ClientStmt(sql, classify(sql), pok.num_params, pok.num_columns)
        assert self.connection is not None
        stream = self.connection.stream
        stream.write_many([P.with_stmt_id(first, sid), *rest])
        await stream.drain()
        self.settle()

    def _stmt(self, payload: bytes, what: str) -> ClientStmt:
        if len(payload) < 5:
            raise ProxyError((1835, "08S01"), "Malformed communication packet")
        sid = struct.unpack_from("<I", payload, 1)[0]
        st = self.stmts.get(sid)
        if st is None:
            raise ProxyError(
                ER_UNKNOWN_STMT_HANDLER,
                f"Unknown prepared statement handler ({sid}) given to {what}",
            )
        return st

    async def com_stmt_execute(self, payload: bytes) -> None:
        st = self._stmt(payload, "mysqld_stmt_execute")
        try:
            parts = P.split_execute(payload, st.num_params)
        except ValueError as e:
            raise ProxyError((1835, "08S01"), f"Malformed communication packet ({e})") from None
        if parts.bound:
            st.types = parts.types
        p = plan(st.shape, self, self.app.policy, cursor=bool(parts.flags & 0x01))
        await self._run_plan(p, st.shape, lambda c, out: self._run_execute_on(c, st, parts, out),
                             lambda q: self._execute(st, parts, q),
                             lambda fwd: self.app.hotrow.intercept_execute(self, st, parts, fwd),
                             st.sql)

    async def _execute(self, st: ClientStmt, parts: P.ExecuteParts, p: Plan) -> Relayed | None:
        """Run a client's prepared statement on the primary path as its plan says."""
        if p.pin and not self.pin:
            self.pin = p.pin
        if p.track is Track.AUTOCOMMIT:
            return await self._tracked_autocommit(
                st.shape, p, lambda c, out: self._run_execute_on(c, st, parts, out))
        hold = BufferWriter() if p.hold_ack else None
        for attempt in (0, 1):
            c = await self._get_conn()
            try:
                r = await self._run_execute_on(c, st, parts, hold or self.out)
            except BackendError as e:
                self.settle()
                await self.send(e.raw)
                return None
            except BackendLost as e:
                await self._lost(e, retry=attempt == 0 and not e.sent, shape=st.shape)
                continue
            if self.pin == "long data pending":
                self.pin = None
            return await self._finish(c, r, hold)
        raise AssertionError("unreachable")

    async def com_stmt_send_long_data(self, payload: bytes) -> None:
        st = self._stmt(payload, "mysqld_stmt_send_long_data")
        self.pin = self.pin or "long data pending"
        c = await self._get_conn()
        pok = await c.prepare(st.sql)
        await c.command(P.with_stmt_id(payload, pok.stmt_id))  # no response by protocol

    async def com_stmt_fetch(self, payload: bytes) -> None:
        st = self._stmt(payload, "mysqld_stmt_fetch")
        c = await self._get_conn()
        pok = await c.prepare(st.sql)
        await c.command(P.with_stmt_id(payload, pok.stmt_id))
        r = await c.relay(self.out, self._ok_hook, field_list=True)
        await self.out.drain()
        self._after(c, r)

    async def com_stmt_reset(self, payload: bytes) -> None:
        st = self._stmt(payload, "mysqld_stmt_reset")
        # Only long data and an open cursor live on the backend statement; without them the
        # reset is a no-op there, so the proxy answers it (drivers send one per execution).
        backend_state = self.pin in ("long data pending", "server-side cursor")
        if (backend_state and self.conn is not None
                and self.conn.stmt_key(st.sql) in self.conn.stmts):
            c = await self._get_conn()
            await c.command(P.with_stmt_id(payload, c.stmts[c.stmt_key(st.sql)].stmt_id))
            r = await c.relay(self.out, self._ok_hook)
            await self.out.drain()
            self._after(c, r)
        else:
            await self.send(self.ok_packet())
        if backend_state:
            self.pin = None
            self.settle()

    async def com_stmt_close(self, payload: bytes) -> None:
        """Forget the client's statement; the backend statement goes too when the session's
        connection has it and no other statement of this client uses the same text."""
        if len(payload) < 5:
            return
        st = self.stmts.pop(struct.unpack_from("<I", payload, 1)[0], None)
        c = self.lease.conn
        if (st is not None and c is not None and not c.broken
                and all(o.sql != st.sql for o in self.stmts.values())):
            c.close_stmt(st.sql)
