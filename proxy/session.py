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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mysql_mimic.session import BaseSession
from mysql_mimic.variables import GlobalVariables, SessionVariables

from . import metrics as M
from . import protocol as P
from . import readsplit
from .backend import BackendConn, BufferWriter, Relayed
from .classify import LAST_GTID, READ_ONLY_TXN, Shape, classify, parse_hints
from .config import CONSISTENCY
from .errors import (
    CR_SERVER_LOST,
    ER_UNKNOWN_STMT_HANDLER,
    BackendError,
    BackendLost,
    ProxyError,
)
from .fastlane import FastLane
from .gtid import GtidError
from .gtid import parse as gtid_parse
from .outcome import ER_SECKILL_NOT_COMMITTED
from .state import LOGIN_NAMES, Names, Wanted, absorb, split_reported
from .wire import ClientIO

if TYPE_CHECKING:
    from .frontend import ProxyConnection
    from .pool import Pool
    from .server import App

log = logging.getLogger("seckill.session")
_SET_PROXY_VAR = re.compile(
    r"SET\s+(?:SESSION\s+|@@SESSION\.|@@)?(read_after_gtid|read_consistency)\s*=\s*'([^']*)'", re.I)
_SET_NAMES = re.compile(r"SET\s+NAMES\s+('?\w+'?|`\w+`)(?:\s+COLLATE\s+('?\w+'?|`\w+`))?", re.I)
_CHARSETS = frozenset(
    {"utf8mb4", "utf8", "utf8mb3", "latin1", "ascii", "binary", "gbk", "gb2312", "big5", "ujis",
     "sjis", "cp1250", "cp1251", "cp1252", "latin2", "utf16", "utf32", "ucs2", "euckr", "koi8r"})


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
        self.conn: BackendConn | None = None
        self.conn_pool: Pool | None = None
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
        self.soft = False  # self.conn is soft-held: the pool may take it back while idle
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
        await self._maybe_release()
        return None

    async def close(self) -> None:
        if self.lane is not None:
            self.lane.abandon()
        await self._drop_conn("client disconnected", force_reset=True)
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
        await self._drop_conn("session reset", force_reset=True)
        self.sysvars = {}
        self.names = self.handshake_names
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.release_slots()
        self.stmts.clear()
        self.last_insert_id = 0
        self.pin = None

    async def use(self, database: str) -> None:  # not used: COM_INIT_DB is forwarded
        self.database = database

    # ---- backend connection management --------------------------------------------------

    def wanted(self) -> Wanted:
        """The state a backend connection must carry to serve this session."""
        return Wanted(self.database, self.names, self.sysvars, multi=self.multi)

    @property
    def password(self) -> str:
        return self.app.cfg.password_of(self.username or "") or ""

    async def _get_conn(self) -> BackendConn:
        if self.conn is not None and self.conn_pool is not None and self.conn_pool.role == "fenced":
            self.conn.broken = True  # a connection to the former primary: never write there again
            await self._drop_conn("primary moved")
        if self.conn is not None:
            if self.soft:
                self.soft = False
                assert self.conn_pool is not None
                self.conn_pool.unhold_soft(self.conn)
                if self.conn.broken or self.conn.io.at_eof():
                    # died while idle (backend restart, idle timeout): replace it silently
                    self.conn.broken = True
                    await self._drop_conn("stale while idle")
                    return await self._get_conn()
            if self.state_stale:
                self.state_stale = False
                assert self.conn_pool is not None
                if not await self.conn_pool.apply_state(self.conn, self.wanted()):
                    await self._drop_conn("needs no database")
                    return await self._get_conn()
            return self.conn
        pool = await self.app.writable_primary()
        c = await pool.acquire(self.username or "", self.password, self.found_rows, self.last_conn,
                               self.wanted())
        self.conn, self.conn_pool, self.last_conn = c, pool, c
        self.state_stale = False
        return c

    def _holds(self) -> bool:
        return bool(self.pin) or bool(self.status & P.SERVER_STATUS_IN_TRANS)

    async def _maybe_release(self) -> None:
        if self.conn is not None and not self._holds() and not self.soft:
            c, pool = self.conn, self.conn_pool
            assert pool is not None
            if c.dirty or c.broken or c.in_trans or pool is not self.app.primary_pool():
                self.conn = self.conn_pool = None
                await pool.release(c)
            else:
                self.soft = True
                pool.hold_soft(c, self)

    def lose_conn(self, c: BackendConn) -> None:
        """The pool took back the connection this idle session soft-held."""
        if self.conn is c:
            self.conn = self.conn_pool = None
            self.soft = False

    async def _drop_conn(self, reason: str, force_reset: bool = False) -> None:
        if self.conn is None:
            return
        c, pool = self.conn, self.conn_pool
        self.conn = self.conn_pool = None
        self.last_conn = None
        assert pool is not None
        if self.soft:
            self.soft = False
            pool.unhold_soft(c)
        if force_reset and (self.pin or c.in_trans or c.stmts):
            c.dirty = c.dirty or bool(self.pin) or c.in_trans
        assert pool is not None
        await pool.release(c, reason)

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
        if shape.verb == "SET" and await self._local_set(shape, sql):
            return
        if shape.verb == "SELECT" and LAST_GTID.fullmatch(shape.digest):
            await self._answer([("@@last_gtid", self.last_gtid or "")])
            return
        if shape.verb == "START" and READ_ONLY_TXN.match(shape.digest):
            await self._begin_read_only()
        t0 = time.perf_counter()
        route = "primary"
        outcome = "ok"
        rows = 0
        try:
            handled = await self.app.intercept(
                self, sql, shape, lambda: self._forward(payload, shape))
            if handled is not None:
                route, outcome = handled
                return
            if shape.verb == "SELECT":
                rr = await self._read(shape, sql, lambda c: self._run_on(c, payload, self.out))
                if rr is not None:
                    route = "replica"
                    rows = rr.rows
                    if rr.err is not None:
                        outcome = "error"
                    return
            r = await self._forward(payload, shape)
            rows = r.rows or r.affected_rows
            if r.err is not None:
                outcome = "error"
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

    async def _read(
        self, shape: Shape, sql: str, run: Callable[[BackendConn], Awaitable[Relayed]]
    ) -> Relayed | None:
        """Serve a SELECT from a replica that has the watermark; None: the caller uses the primary."""
        in_txn = bool(self.status & P.SERVER_STATUS_IN_TRANS) or self.autocommit_off
        token = self.read_after_gtid
        if "READ_AFTER_GTID" in shape.hints:
            token = parse_hints(sql).get("READ_AFTER_GTID") or token
        plan = readsplit.plan(shape, self.consistency, token, in_txn, self.pin,
                              bool(self.app.cfg.backends.replicas))
        if not plan.replica:
            return None
        router = self.app.reads
        got = await router.acquire(self, plan)
        if got is None:
            router.count(plan.consistency, "primary_fallback")
            return None
        c, pool, outcome = got
        try:
            r = await run(c)
            await self._drain()
        except BackendLost as e:
            await pool.release(c, e.reason)
            if e.delivered:
                raise ProxyError(CR_SERVER_LOST, f"Lost connection to replica during query ({e.reason})") from None
            router.count(plan.consistency, "primary_fallback")
            return None  # nothing reached the client: the primary answers instead
        except BackendError as e:
            await pool.release(c)
            await self.send(e.raw)
            return Relayed(err=P.ErrPacket(e.code, e.sqlstate, e.message))
        except BaseException:
            await pool.release(c, "client gone")  # mid-reply: relay() marked it broken
            raise
        await pool.release(c)
        router.count(plan.consistency, outcome, pool.label)
        return r

    async def _begin_read_only(self) -> None:
        """START TRANSACTION READ ONLY runs on one replica for the whole transaction."""
        if self._holds() or not self.app.cfg.backends.replicas:
            return
        plan = readsplit.plan(classify("SELECT 1"), self.consistency, self.read_after_gtid,
                              False, self.pin, True)
        if not plan.replica:
            return
        got = await self.app.reads.acquire(self, plan)
        if got is None:
            self.app.reads.count(plan.consistency, "primary_fallback")
            return
        await self._drop_conn("read-only transaction on a replica")
        self.conn, self.conn_pool, _ = got
        self.app.reads.count(plan.consistency, got[2], got[1].label)

    async def _answer(self, cols_rows: list[tuple[str, str | None]]) -> None:
        """A one-row result set the proxy answers itself."""
        assert self.connection is not None
        stream = self.connection.stream
        stream.write_many([P.enc_lenenc_int(len(cols_rows)),
                           *[P.column_def(n) for n, _ in cols_rows],
                           P.make_eof(self.status), P.text_row([v for _, v in cols_rows]),
                           P.make_eof(self.status)])
        await stream.drain()

    def _slow(self, shape: Shape, dt: float, route: str, outcome: str) -> None:
        conn_id = self.connection.connection_id if self.connection else None
        log.warning("slow statement: %.1f ms route=%s outcome=%s user=%s digest=%s",
                    dt * 1000, route, outcome, self.username, shape.digest[:500],
                    extra={"conn_id": conn_id})

    async def _local_set(self, shape: Shape, sql: str) -> bool:
        """Settings the proxy keeps itself: the read watermark and consistency of the session,
        and `SET NAMES cs` (what most drivers send on every connect), which is recorded, not
        sent: it travels with the session to whichever backend connection serves it next."""
        m = _SET_PROXY_VAR.fullmatch(sql.strip().rstrip(";").strip())
        if m is not None:
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
            return True
        m = _SET_NAMES.fullmatch(shape.digest)
        if m is None or self._holds():
            return False
        cs = m.group(1).strip("'\"`").lower()
        coll = (m.group(2) or "").strip("'\"`").lower() or BackendConn.catalog.default_collation(cs)
        if cs not in _CHARSETS or coll is None or not coll.startswith(cs if cs != "utf8" else "utf8mb3"):
            return False  # MySQL answers it (errors included)
        self.names = Names.uniform("utf8mb3" if cs == "utf8" else cs, coll)
        self.state_stale = True
        await self.send(self.ok_packet())
        return True

    async def _forward(
        self, payload: bytes, shape: Shape | None, field_list: bool = False
    ) -> Relayed:
        """Send one command to the session's backend connection and relay the answer.

        The fast lane (fastlane.py `FastLane._plain`) runs a statement itself only where this
        method would do nothing but forward it: keep the two in step."""
        dur = self.app.durability
        hold = None
        if (shape is not None and shape.verb == "COMMIT" and self.conn is not None
                and self.status & P.SERVER_STATUS_IN_TRANS and self.app.outcomes.wants()
                and self.conn_pool is self.app.primary_pool()):
            return await self._tracked_commit(payload, shape)
        if shape is not None and self._track_autocommit(shape):
            return await self._tracked_autocommit(shape, lambda c, out: self._run_on(c, payload, out))
        if shape is not None and (shape.is_write or shape.verb in ("COMMIT", "END")):
            if shape.is_write:
                dur.check_write()
            if dur.wants_ack:
                hold = BufferWriter()
        for attempt in (0, 1):
            c = await self._get_conn()
            if shape is not None:
                if shape.pin and not self.pin:
                    self.pin = shape.pin
                if shape.pin:
                    c.dirty = True
                if shape.uses_last_insert_id and c.last_insert_id != self.last_insert_id:
                    await c.execute(f"SELECT LAST_INSERT_ID({self.last_insert_id})")
            try:
                await c.command(payload)
                r = await c.relay(hold or self.out, self._ok_hook, field_list=field_list)
            except BackendLost as e:
                await self._lost(e, retry=attempt == 0 and not e.sent, shape=shape)
                continue
            return await self._finish(c, r, hold)
        raise AssertionError("unreachable")

    async def _finish(self, c: BackendConn, r: Relayed, hold: BufferWriter | None) -> Relayed:
        """After a statement's reply: take over session state, give the connection back, then
        let the (possibly held) reply go out."""
        self._after(c, r)
        await self._maybe_release()
        if hold is not None:
            await self._release_held(hold, r)
        await self._drain()
        return r

    def _track_autocommit(self, shape: Shape) -> bool:
        """track_commits: all also covers autocommit writes (single statements, no results)."""
        return (shape.is_write and shape.verb not in ("CALL", "CREATE", "DROP", "ALTER", "TRUNCATE",
                                                       "RENAME", "GRANT", "REVOKE", "LOAD")
                and not shape.multi and "RETURNING" not in shape.digest.upper()
                and self.app.outcomes.wants() and not self._holds()
                and self.sysvars.get("autocommit", "ON").upper() not in ("OFF", "0"))

    async def _run_on(self, c: BackendConn, payload: bytes, out: Any) -> Relayed:
        await c.command(payload)
        return await c.relay(out, self._ok_hook)

    async def _run_execute_on(self, c: BackendConn, st: ClientStmt, parts: P.ExecuteParts,
                              out: Any) -> Relayed:
        pok = await c.prepare(st.sql)
        await c.command(P.join_execute(parts, pok.stmt_id, st.types))
        return await c.relay(out, self._ok_hook)

    async def _tracked_autocommit(
        self, shape: Shape, run: Callable[[BackendConn, Any], Awaitable[Relayed]]
    ) -> Relayed:
        """An autocommit write with an outcome record: START TRANSACTION, the statement (its
        reply held), the record and COMMIT; the client's OK goes out once COMMIT returned."""
        self.app.durability.check_write()
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
            await self._drop_conn(e.reason)
            self.status = P.SERVER_STATUS_AUTOCOMMIT
            raise ProxyError(CR_SERVER_LOST, f"Lost connection to MySQL server during query "
                             f"({e.reason}); the statement was NOT applied") from None
        if r.err is not None or r.ok is None:
            await self._finish_tracked(c, "ROLLBACK")
            self.out.write(bytes(hold.buf))  # the statement's own error (or result) as MySQL sent it
            await self._drain()
            return r
        try:
            ok = await c.run_all([f"INSERT INTO {tracker.table} (id) VALUES ({oid})", "COMMIT"])
        except BackendError as e:
            await self._finish_tracked(c, "ROLLBACK")
            await self.send(e.raw)
            return r
        except BackendLost as e:
            await self._drop_conn(e.reason)
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
            if self.app.durability.wants_ack:
                await self.app.durability.wait_ack(ok.gtid)
        await self._maybe_release()
        o = r.ok
        await self.send(P.make_ok(o.affected_rows, o.last_insert_id, self.status, o.warnings, o.info))
        return r

    async def _finish_tracked(self, c: BackendConn, sql: str) -> None:
        try:
            await c.execute(sql)
        except (BackendError, BackendLost):
            c.broken = True
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        await self._maybe_release()

    async def _tracked_commit(self, payload: bytes, shape: Shape) -> Relayed:
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
            await self._lost(e, retry=False, shape=shape)
        hold = BufferWriter() if self.app.durability.wants_ack else None
        try:
            await c.command(payload)
            r = await c.relay(hold or self.out, self._ok_hook)
        except BackendLost as e:
            if not oid:
                await self._lost(e, retry=False, shape=shape)
            await self._drop_conn(e.reason)
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
        await self._drop_conn(e.reason)
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
        self.status = r.status
        if r.sysvars:
            self.names = absorb(self.names, r.sysvars, BackendConn.catalog)
            keep, unreplayable = split_reported(r.sysvars)
            self.sysvars.update(keep)
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
        """COM_SET_OPTION: multi-statements on (0) or off (1) for this session; it travels
        with the session to whichever backend connection serves it (state.py)."""
        if len(payload) != 3 or payload[1] > 1 or payload[2]:
            raise ProxyError((1047, "08S01"), "Unknown command")
        self.multi = payload[1] == 0
        self.state_stale = self.conn is not None
        await self.send(P.make_eof(self.status))

    async def com_statistics(self, payload: bytes) -> None:
        c = await self._get_conn()
        await c.command(payload)
        text = await c.read_packet()
        await self._maybe_release()
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
        old = c.stmts.pop(sql, None)
        if old is not None:
            c.send(bytes((P.COM_STMT_CLOSE,)) + struct.pack("<I", old.stmt_id))
        c.stmts[sql] = pok
        sid = self._next_stmt
        self._next_stmt += 1
        self.stmts[sid] = ClientStmt(sql, classify(sql), pok.num_params, pok.num_columns)
        assert self.connection is not None
        stream = self.connection.stream
        stream.write_many([P.with_stmt_id(first, sid), *rest])
        await stream.drain()
        await self._maybe_release()

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
        t0 = time.perf_counter()
        route, outcome = "primary", "ok"
        try:
            handled = await self.app.intercept_execute(
                self, st, parts, lambda: self._execute(st, parts))
            if handled is not None:
                route, outcome = handled
                return
            if st.shape.verb == "SELECT" and not parts.flags & 0x01:
                rr = await self._read(st.shape, st.sql,
                                      lambda c: self._run_execute_on(c, st, parts, self.out))
                if rr is not None:
                    route = "replica"
                    return
            r = await self._execute(st, parts)
            if r is None or r.err is not None:
                outcome = "error"
        finally:
            dt = time.perf_counter() - t0
            M.count_statement(st.shape.verb, route, outcome, dt)
            self.app.digest.record(st.shape, dt, route)
            if dt * 1000 >= self.app.slow_ms > 0:
                self._slow(st.shape, dt, route, outcome)

    async def _execute(self, st: ClientStmt, parts: P.ExecuteParts) -> Relayed | None:
        """Run a client's prepared statement on the session's backend connection."""
        if parts.flags & 0x01 and not self.pin:
            self.pin = "server-side cursor"
        if self._track_autocommit(st.shape):
            return await self._tracked_autocommit(
                st.shape, lambda c, out: self._run_execute_on(c, st, parts, out))
        hold = None
        if st.shape.is_write:
            self.app.durability.check_write()
            if self.app.durability.wants_ack:
                hold = BufferWriter()
        for attempt in (0, 1):
            c = await self._get_conn()
            try:
                r = await self._run_execute_on(c, st, parts, hold or self.out)
            except BackendError as e:
                await self._maybe_release()
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
        if backend_state and self.conn is not None and st.sql in self.conn.stmts:
            c = await self._get_conn()
            await c.command(P.with_stmt_id(payload, c.stmts[st.sql].stmt_id))
            r = await c.relay(self.out, self._ok_hook)
            await self.out.drain()
            self._after(c, r)
        else:
            await self.send(self.ok_packet())
        if backend_state:
            self.pin = None
            await self._maybe_release()

    async def com_stmt_close(self, payload: bytes) -> None:
        if len(payload) >= 5:
            self.stmts.pop(struct.unpack_from("<I", payload, 1)[0], None)
