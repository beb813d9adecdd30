"""One client session: which backend connection serves it, and the state it must carry.

Backend connections are lent per statement (or per transaction) and given back as soon as the
session holds nothing on them, so 10,000 clients can share a few hundred MySQL connections. The
session keeps what must follow it from connection to connection (database, session variables,
LAST_INSERT_ID) and replays it on the connection it gets. When a statement leaves state the
proxy cannot replay (user variables, temporary tables, named locks...), the session is pinned
to its connection until it disconnects or resets; the pin always carries a reason (an enum)."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr
from mysql_mimic.session import BaseSession
from mysql_mimic.variables import GlobalVariables, SessionVariables

from proxy.backends.backend import BackendConn, Relayed
from proxy.backends.lease import Lease, LeaseState
from proxy.core.errors import (
    BackendError,
    BackendLost,
    LeaseReason,
    PinReason,
    ProxyError,
    ResetReason,
)
from proxy.core.state import LOGIN_NAMES, Answered, Carried, Names, absorb, split_reported
from proxy.engines.escrow import Reservation
from proxy.exec import executor, general, local, prepared, reply
from proxy.exec.executor import Command
from proxy.exec.fastlane import FastLane
from proxy.net import protocol as P
from proxy.net import tracking
from proxy.net.tracking import Tracking
from proxy.net.wire import ClientIO
from proxy.plan.classify import classify, session_txn_as_vars, with_conn_id
from proxy.plan.plan import PlanInputs, plan
from proxy.session.hold import Hold
from proxy.session.props import Settable

if TYPE_CHECKING:
    from proxy.exec.context import ClientLink, ClientStmt, Services
    from proxy.plan.classify import Shape
    from proxy.plan.plan import Plan

log = logging.getLogger("seckill.session")


@mypyc_attr(native_class=False)  # compiled methods, an ordinary class (compiled.py)
class ProxySession(Settable, Hold, BaseSession):
    # What `__init__` sets, as slots: compiled code reads a few dozen of these by name per
    # statement (an ordinary class, mysql-mimic's BaseSession's subclass), and a slot is
    # found on the class without a lookup in the instance's dict.
    __slots__ = (
        "_database", "_stmt_conn", "_stmt_hands", "app", "area_warned", "backend_caps",
        "busy", "connection", "end_reason", "escrow", "found_rows", "handshake_names",
        "held_slots", "keeps_diag", "lane", "last_conn", "last_gtid", "last_insert_id",
        "last_stmt", "lazy_begin", "lease", "multi", "names", "next_stmt_id", "pin",
        "read_after_gtid", "read_consistency", "replica_vars", "row_count_local",
        "row_count_ok", "state_stale", "status", "stmt_bytes", "stmts", "sysvars",
        "track", "txn_hot", "username", "variables"
    )

    def __init__(self, app: Services) -> None:
        self.app = app
        self.variables = SessionVariables(GlobalVariables())
        self.variables.set("version", app.server_version, force=True)
        self.username: str | None = None
        self._database: str | None = None
        self.connection: ClientLink | None = None
        self.lease = Lease()
        # Ran the session's last statement; Answered when the proxy answered it itself (merge);
        # Carried: the diagnostics area of a connection the session left (state.Carried).
        self._stmt_conn: BackendConn | Answered | Carried | None = None
        self._stmt_hands = 0  # the connection's `hands` when its statement ran (hold.py)
        self.area_warned = False  # that connection's area has conditions (hold.leave)
        # The running statement opens no table (Shape.keeps_diag; set by general.run_plan)
        self.keeps_diag = False
        # ROW_COUNT() the proxy made, which the connection does not say: after a SELECT it
        # answered itself (-1, as after any SELECT; the warnings stay those of the statement
        # before, as a SELECT without tables keeps them), a merged UPDATE (1), a reset (0)
        self.row_count_local: int | None = None
        # ROW_COUNT() read from the OK of a statement the connection ran (Plan.row_count)
        self.row_count_ok: int | None = None
        self.lazy_begin = False  # a plain BEGIN may be deferred (lazybegin.py)
        self.last_conn: BackendConn | None = None
        self.pin: PinReason | None = None
        self.replica_vars: set[str] = set()  # user variables named in a replica RO transaction
        self.escrow: list[Reservation] = []  # units reserved for its open transaction
        self.txn_hot: set[Any] = set()  # hot keys its open transaction locked itself
        self.sysvars: dict[str, str] = {}  # replayable session variables the client changed
        self.names: Names = LOGIN_NAMES  # character set and collation (state.py)
        self.handshake_names: Names = LOGIN_NAMES
        self.multi = True  # CLIENT_MULTI_STATEMENTS, from the handshake and COM_SET_OPTION
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.last_insert_id = 0
        self.last_gtid: str | None = None
        self.stmts: dict[int, ClientStmt] = {}
        self.stmt_bytes = 0  # text of self.stmts (prepared.MAX_CLIENT_STMT_BYTES)
        self.next_stmt_id = 1
        self.last_stmt: int | None = None  # the last statement prepared (MariaDB id -1)
        self.found_rows = False
        self.backend_caps = 0
        # what this client's OK packets report (tracking.py); None: it did not negotiate
        # CLIENT_SESSION_TRACK
        self.track: Tracking | None = None
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
        # what the backend connection must have negotiated as the client did (pool key)
        self.backend_caps = ((P.CLIENT_FOUND_ROWS if self.found_rows else 0)
                             | getattr(connection, "client_ext", 0))
        if int(connection.capabilities) & P.CLIENT_SESSION_TRACK:
            self.track = self.app.dial.catalog.tracking
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
        mon = self.app.monitor
        st = mon.states.get(self.app.primary_key()) if mon is not None else None
        if (not self.database or not self.app.primary_pool().can_lend_now()
                or (st is not None and st.state == "down")):
            # never make a login wait for a busy pool or a primary the monitor sees down (it
            # would wait for a failover): the first statement will
            return None
        try:
            await self.primary_conn()
        except BackendError as e:
            return e.raw
        except (BackendLost, ProxyError):
            return None  # MySQL unreachable now: the first statement reports it
        self.settle()
        return None

    async def close(self) -> None:
        if self.lane is not None:
            self.lane.abandon()
        await self.drop_conn(LeaseReason.CLIENT_GONE)  # rolls an open transaction back
        self.status &= ~P.SERVER_STATUS_IN_TRANS
        self.txn_over()
        self.release_slots()

    def tls_required(self, user: str) -> bool:
        """REQUIRE SSL for this login: `tls.require`, or the user's `require_tls`."""
        cfg = self.app.cfg
        if cfg.tls is not None and cfg.tls.require:
            return True
        return any(u.name == user and u.require_tls for u in cfg.users)

    def txn_over(self) -> None:
        """The session's transaction is over (committed, rolled back, or its connection gone):
        what it reserved is sold where its COMMIT carried the deletes (`BackendConn.sold`),
        else resolved by the hot-row engine (escrow.py)."""
        if self.escrow:
            escrow = self.app.hotrow.escrow
            c = self.lease.conn
            if c is not None and c.sold:  # its COMMIT carried the reservations' deletes
                done, c.sold = set(c.sold), []
                sold = [r for r in self.escrow if escrow.confirm_sql(r) in done]
                if sold:
                    escrow.sold(sold)
                    self.escrow = [r for r in self.escrow if r not in sold]
            if self.escrow:
                escrow.ended(self.escrow)
            self.escrow = []
        self.txn_hot.clear()

    def release_slots(self) -> None:
        """Give back hot-row queue slots once no transaction holds them."""
        if self.held_slots and not self.status & P.SERVER_STATUS_IN_TRANS:
            for sem in self.held_slots:
                sem.release()
            self.held_slots.clear()

    async def reset(self) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: back to a fresh session."""
        await self.drop_conn(LeaseReason.SESSION_RESET)
        self.sysvars = {}
        self.names = self.handshake_names
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.release_slots()
        self.stmts.clear()
        self.stmt_bytes = 0
        self.last_stmt = None
        self.last_insert_id = 0
        self.pin = None
        self._stmt_conn = None
        self.area_warned = False
        if self.track is not None:
            self.track = self.app.dial.catalog.tracking

    async def use(self, database: str) -> None:  # not used: COM_INIT_DB is forwarded
        self.database = database

    # ---- the view a plan reads (plan.SessionView) -----------------------------------------

    def plan_inputs(self) -> PlanInputs:
        """The properties below in one call, each read once (plan.plan, every statement)."""
        local = self.row_count_local
        made = _made(local, self._stmt_conn)
        return (bool(self.status & P.SERVER_STATUS_IN_TRANS), _autocommit_off(self.sysvars),
                self.pin, self.read_consistency or self.app.read_consistency,
                self.read_after_gtid, self.lease.state is LeaseState.REPLICA_TXN,
                _answered(local, self.row_count_ok, made), made)

    @property
    def in_txn(self) -> bool:
        return bool(self.status & P.SERVER_STATUS_IN_TRANS)

    def diag_moved(self, c: BackendConn | Answered | Carried | None) -> None:
        """The session's diagnostics area is now `c`'s (props.Settable.stmt_conn's setter)."""
        if not (self.keeps_diag and isinstance(self._stmt_conn, Carried)
                and isinstance(c, BackendConn) and not c.warned):
            # else it opened no table and raised nothing: the area stays
            if isinstance(c, BackendConn):
                # `c.warned` is this statement's; one that kept the area (SELECT ROW_COUNT(),
                # SET, COMMIT) left the conditions before it there too
                kept = (self.keeps_diag and c is self._stmt_conn and c.hands == self._stmt_hands
                        and self.area_warned)
                self.area_warned = c.warned or kept
                self._stmt_hands = c.hands  # its area is this session's while no one else held it
            else:
                self.area_warned = False
            self._stmt_conn = c
        self.row_count_local = None
        self.row_count_ok = None

    @property
    def answered_rows(self) -> int | None:
        return _answered(self.row_count_local, self.row_count_ok, self.made_rows)

    @property
    def made_rows(self) -> int | None:
        return _made(self.row_count_local, self._stmt_conn)

    @property
    def replica_txn(self) -> bool:
        return self.lease.state is LeaseState.REPLICA_TXN

    def idle_timeout(self) -> float:
        """Seconds of client silence after which MySQL closes the connection."""
        v = self.sysvars.get("wait_timeout")
        if v is not None:
            try:
                return max(float(v), 1.0)
            except ValueError:
                pass
        cat = self.app.dial.catalog
        interactive = self.connection is not None and bool(
            int(self.connection.capabilities) & P.CLIENT_INTERACTIVE)
        return float(cat.interactive_timeout if interactive else cat.wait_timeout)

    # ---- what the hot-row engine tells the session (engines/ports.py HotRowMember) --------

    def hold_slot(self, sem: asyncio.Semaphore) -> None:
        self.held_slots.append(sem)

    def locked_hot_key(self, key_id: tuple[str, str, int | str]) -> None:
        self.txn_hot.add(key_id)

    def saw_gtid(self, gtid: str) -> None:
        self.last_gtid = gtid

    def answered_here(self, rows: int) -> None:
        self.stmt_conn = Answered(rows)

    def reserved(self, r: Reservation, conn: BackendConn) -> None:
        self.escrow.append(r)
        self.stmt_conn = conn
        self.row_count_local = 1  # (after stmt_conn, which clears it)

    def ended_txn_here(self, status: int, gtid: str | None) -> None:
        self.status = status
        if gtid:
            self.last_gtid = gtid

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
        w.write(P.packet(payload, seq))
        if w.transport.get_write_buffer_size() >= 65536:
            await w.drain()

    def ok_packet(self, affected: int = 0, insert_id: int = 0, warnings: int = 0, info: bytes = b"",
                  state: bytes = b"") -> bytes:
        return P.make_ok(affected, insert_id, self.status, warnings, info, state=state)

    def client_ok(self, ok: P.OkPacket) -> bytes:
        if ok.last_insert_id:
            self.last_insert_id = ok.last_insert_id
        t = self.track
        if t is None:
            return P.make_ok(ok.affected_rows, ok.last_insert_id, ok.status, ok.warnings, ok.info)
        if ok.sysvars:  # a SET of session_track_* applies to its own OK already, as in MariaDB
            t = self.track = t.updated(ok.sysvars)
        return P.make_ok(ok.affected_rows, ok.last_insert_id, ok.status, ok.warnings, ok.info,
                         state=t.of_ok(ok))

    async def retrack(self, c: BackendConn) -> None:
        """The client changed its session_track_* settings (Plan.retrack): keep them for its
        OK packets, and give the connection back the proxy's own tracking (backend.py)."""
        row = await c.fetch_one("SELECT " + ", ".join(f"@@session.{v}" for v in tracking.VARS))
        if row is not None and self.track is not None:
            self.track = self.track.from_backend(*row)
        await c.track_all()

    # ---- statements ---------------------------------------------------------------------

    async def com_query(self, payload: bytes) -> None:
        sql = text = payload[1:].decode("utf-8", "surrogateescape")
        shape = self.lane.shape_of(sql) if self.lane is not None else classify(sql)
        if shape.verb == "SET" and "TRANSACTION" in shape.digest.upper():
            as_vars = session_txn_as_vars(sql, "mariadb" in self.app.server_version.lower())
            if as_vars is not None:  # session state, replayed: not a pin (classify.py)
                sql, shape = as_vars, classify(as_vars)
        p = plan(shape, self, self.app.policy)
        if shape.conn_id and self.connection is not None:
            sql = with_conn_id(sql, self.connection.connection_id)
        if shape.multi and "KILL" in shape.digest.upper():
            sql = await local.kills_in_multi(self, sql)
        if sql is not text:  # what MySQL gets is what the proxy made of the text
            payload = payload[:1] + sql.encode("utf-8", "surrogateescape")
        await executor.execute(self, _text_command(self, sql, shape, p, payload))

    # ---- replica reads ---------------------------------------------------------------------

    @property
    def autocommit_off(self) -> bool:
        return _autocommit_off(self.sysvars)

    @property
    def consistency(self) -> str:
        return self.read_consistency or self.app.read_consistency

    async def drain_client(self) -> None:
        out = self.out
        if out.transport.get_write_buffer_size() >= 65536 or out.transport.is_closing():
            await out.drain()

    def absorb_reply(self, c: BackendConn, r: Relayed, row_count: bool = False) -> None:
        """A backend's reply to the session's statement: its connection holds the diagnostics
        area; `row_count` (Plan.row_count): the OK's affected rows are ROW_COUNT()."""
        self.diag_moved(c)  # (the stmt_conn setter, without its interpreted call)
        if row_count and r.ok is not None and r.err is None and not r.ended_eof:
            self.row_count_ok = r.ok.affected_rows
        if r.err is not None and r.ok is None:
            # An ERR carries no status: the transaction state is the connection's (an error
            # does not end a transaction), except that a deadlock rolls the whole one back.
            self.status = c.status & ~(P.SERVER_STATUS_IN_TRANS if r.err.code == 1213 else 0)
            c.status = self.status
        else:
            self.status = r.status
        if r.sysvars:
            self.names = absorb(self.names, r.sysvars, self.app.dial.catalog)
            keep, unreplayable = split_reported(r.sysvars)
            self.sysvars.update(keep)
            if "wait_timeout" in keep and self.connection is not None:
                self.connection.arm_idle_timer()
            if unreplayable and not self.pin:
                self.pin = PinReason.SESSION_VARIABLE
                log.debug("session pinned by %s", unreplayable)
        if r.schema is not None:
            self.database = r.schema
        if r.state_changed and not r.sysvars and r.schema is None and not self.pin:
            self.pin = PinReason.SESSION_STATE
            c.taint(ResetReason.SESSION_STATE)
        if r.gtid:
            self.last_gtid = r.gtid
        self.release_slots()

    # ---- the binary protocol -------------------------------------------------------------

    async def com_stmt(self, cmd: int, payload: bytes) -> None:
        """COM_STMT_* (exec/prepared.py): the client connection reaches them only here."""
        await prepared.COMMANDS[cmd](self, payload)

    # ---- other commands -------------------------------------------------------------------

    async def com_init_db(self, payload: bytes) -> None:
        r = await general.forward(self, payload, None)
        if r.err is None:
            self.database = payload[1:].decode("utf-8", "surrogateescape")

    async def com_field_list(self, payload: bytes) -> None:
        await general.forward(self, payload, None, field_list=True)

    async def com_ping(self) -> None:
        await self.send(self.ok_packet())

    async def com_reset_connection(self) -> None:
        await self.reset()
        await self.send(self.ok_packet())

    async def com_process_kill(self, payload: bytes) -> None:
        """COM_PROCESS_KILL (what drivers' `kill(id)` sends): KILL CONNECTION by id."""
        if len(payload) < 5:
            raise ProxyError((1835, "08S01"), "Malformed communication packet")
        tid = struct.unpack_from("<I", payload, 1)[0]
        if not await local.kill(self, f"KILL {tid}"):
            await general.forward(self, payload, None)  # a backend thread id: MySQL's own KILL

    async def com_set_option(self, payload: bytes) -> None:
        """COM_SET_OPTION: multi-statements on (0) or off (1) for this session. Backend
        connections keep them on (the proxy's own commit records need them); a statement with
        `;` from a session that has them off runs with them off (`reply.send_and_relay`), so
        MySQL answers it as it would this client."""
        if len(payload) != 3 or payload[1] > 1 or payload[2]:
            raise ProxyError((1047, "08S01"), "Unknown command")
        self.multi = payload[1] == 0
        await self.send(P.make_eof(self.status))

    async def com_statistics(self, payload: bytes) -> None:
        c = await self.primary_conn()
        await c.command(payload)
        text = await c.read_packet()
        self.settle()
        await self.send(text)

    # ---- prepared statements ------------------------------------------------------------


def _text_command(s: ProxySession, sql: str, shape: Shape, p: Plan, payload: bytes) -> Command:
    """A COM_QUERY's ways to run (executor.Command). Its closures are made here, outside the
    class: mypyc does not compile a lambda inside a method of an ordinary class."""
    return Command(sql, shape, p, lambda c, out: reply.run_on(s, c, payload, out, shape),
                   lambda q: general.forward(s, payload, shape, q),
                   lambda fwd: s.app.hotrow.intercept(s, sql, shape, fwd), payload)


def _made(local: int | None, c: BackendConn | Answered | Carried | None) -> int | None:
    """ROW_COUNT() the proxy made: set here (`row_count_local`), or of a statement it answered
    itself (a merged UPDATE); else unknown."""
    if local is not None:
        return local
    return c.rows if isinstance(c, Answered) else None


def _answered(local: int | None, ok: int | None, made: int | None) -> int | None:
    """ROW_COUNT() where the proxy knows it: read from an OK (a value made later, such as a
    deferred BEGIN's 0, wins), else what the proxy made."""
    return ok if local is None and ok is not None else made


def _autocommit_off(sysvars: dict[str, str]) -> bool:
    return sysvars.get("autocommit", "ON").upper() in ("OFF", "0")
