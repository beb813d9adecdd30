"""The fast lane: a plain statement on the session's own primary connection, run entirely in
the event loop's socket callbacks.

The session task (session.py, general.py) is the general path: every statement can go there.
But most statements of an online shop are point reads and small writes, and for those the task's
machinery (wake-ups, awaits through session, pool and relay layers) cost more CPU than the
proxy's actual work. So while the task is idle between commands, a command that arrives is
first offered here: if it is a statement the general path would simply send to the connection
the session already holds and relay back, the lane does exactly that from the client socket's
callback, relays the reply from the backend socket's callback, and does the same bookkeeping
(session state, metrics, digest, slow log). Anything else goes to the task untouched; a
backend failure gets the general path's own answer (`reply.lost`).
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Final

from proxy.backends import confirms
from proxy.backends.backend import BackendConn
from proxy.backends.lease import LeaseState
from proxy.backends.reply import ReplyScanner
from proxy.core.errors import BackendLost, CloseReason, LeaseReason, ProxyError, client_side
from proxy.engines.hotpick import AS_IS, MERGE, PLAIN
from proxy.exec import prepared, reply
from proxy.exec.account import statement_done
from proxy.exec.answers import local_answer
from proxy.exec.laneconfirm import LaneConfirms
from proxy.exec.lanemerge import LaneMember
from proxy.exec.lazybegin import begin_ok_as_made, defer_begin
from proxy.net import protocol as P
from proxy.plan.classify import Shape, classify, statement_values
from proxy.plan.plan import LOCAL_ANSWERS, Plan, Route, plan

if TYPE_CHECKING:
    from proxy.engines.hotkeys import KeyState
    from proxy.exec.context import Services, Statement
    from proxy.net.wire import ClientIO

log = logging.getLogger("seckill.fastlane")

_FLUSH_AT: Final = 256 * 1024
_unpack_id: Final = struct.Struct("<I").unpack_from
_pack_id = struct.Struct("<I").pack


class FastLane:
    """One per client session; at most one command in flight (the protocol is request/reply)."""

    def __init__(self, session: Statement, client: ClientIO) -> None:
        self.s = session
        self.app: Services = session.app  # the process's, for the session's life: read once
        self.client = client
        self.conn: BackendConn | None = None
        self.shape: Shape | None = None
        self.plan: Plan | None = None
        self.command = b""  # the client's command, for a replica read retried on the primary
        self.scanner: ReplyScanner | None = None
        self.pending: list[bytes] = []
        self.size = 0
        self.sent = False
        self.t0 = 0.0
        self._fail_task: asyncio.Future[None] | None = None  # keeps the failure task alive
        self.ticket: KeyState | None = None  # a hot key counting this statement (hotrow.py)
        self.glanced: Shape | None = None  # a hot decrement sent undecided (Picker.glance)
        self.hot = LaneMember(self)  # a merged hot decrement (lanemerge.py)
        self.status_before = 0  # the session's status flags when the command started
        # the text and shape of a COM_QUERY classified here: a statement the lane declines is
        # not classified again by the session task (`shape_of`)
        self.classified: tuple[str, Shape] | None = None
        self.seq_back = 0  # replies dropped ahead of the client's (confirms): renumbered
        self.cf = LaneConfirms(self)  # escrow confirm rows sent with a COMMIT (laneconfirm.py)
        self._reply_cb = self._on_reply  # bound once, not per statement
        self._lost_cb = self._on_lost

    # ---- start: called by the client socket with a chunk that arrived while the task idles ----

    def _decide(self, data: bytes) -> tuple[BackendConn, Shape, bytes, Plan] | bool | None:
        """What to send where, if this command is the lane's (True: answered here, as the
        general path would, a SELECT the proxy answers itself): its plan (plan.py, the same the
        general path would make) only forwards, and the lease holds a connection that can
        serve it now. It changes nothing the general path would not change for the same
        command (a statement's parameter types, the backend statement cache's recency), so a
        command it declines goes there unharmed."""
        n = len(data)
        if n < 5:
            return None
        plen = data[0] | (data[1] << 8) | (data[2] << 16)
        if plen + 4 != n or data[3] != 0 or plen >= P.MAX_PACKET - 64:
            return None  # not exactly one whole command
        s = self.s
        cmd = data[4]
        qp: Plan | None = None
        if cmd == P.COM_QUERY:
            sql = data[5:].decode("utf-8", "surrogateescape")
            shape = classify(sql)
            self.classified = (sql, shape)
            if not shape.lane:
                return None
            qp = plan(shape, s, self.app.policy)
            if qp.route in LOCAL_ANSWERS:  # SELECT ROW_COUNT() after a merged UPDATE, ...
                self._answer_here(shape, qp)  # (needs no connection: before the lease's checks)
                return True
        L = s.lease
        c = L.conn
        if (c is None or s.state_stale or c.broken or c.io.eof or c.io.transport.is_closing()
                or (L.state is not LeaseState.SOFT and L.state is not LeaseState.TRANSACTION)):
            return None
        if c.confirms and qp is not None and not confirms.may_pass(data[4:], shape.lane):
            return None  # escrow confirm rows wait there: a COMMIT takes them, a write passes
        values: list[object] = []  # a hot decrement's, for the engine's decision (`_hot`)
        glance = False  # a hot decrement sent as it is, undecided (hotpick.Picker.glance)
        if cmd == P.COM_STMT_EXECUTE:
            if n < 14:
                return None
            st = s.stmts.get(_unpack_id(data, 5)[0])
            if st is None or not st.shape.lane or data[9] & 0x01:  # flags & 1: a cursor
                return None
            if c.confirms and not confirms.may_pass(data[4:], st.shape.lane):
                return None
            key = c.stmt_key(st.sql)
            pok = c.stmts.get(key)
            if pok is None:
                return None
            shape = st.shape
            p = plan(shape, s, self.app.policy)
            if not self._can_run(p):
                return None
            rebound = P.rebind_execute(data, 4, st.num_params, pok.stmt_id, st.types)
            if rebound is None:
                return None
            payload, st.types = rebound
            packet = P.packet(payload, 0)
            if p.route is Route.HOTROW:
                glance = self.app.hotrow.glance(s, shape)
                if not glance:
                    got = self._values(data[4:])
                    if got is None:
                        return None
                    values = got
            c.stmts.move_to_end(key)
        elif qp is not None:
            p = qp
            if not self._can_run(p):
                return None
            if p.route is Route.HOTROW:
                glance = self.app.hotrow.glance(s, shape)
                if not glance:
                    values = statement_values(sql)
            packet = data
        else:
            return None
        if shape.uses_last_insert_id and c.last_insert_id != s.last_insert_id:
            return None  # the general path first gives this connection the session's value
        if shape.keeps_diag and s.foreign_diag(c):
            return None  # the general path first clears another statement's conditions there
        if p.route is Route.HOTROW and not glance and not self._hot(shape, values):
            return None  # the last check: a ticket taken is given back by `done`
        if glance:
            self.glanced = shape  # (after the last check: given back by `done`)
        return c, shape, packet, p

    def _values(self, payload: bytes) -> list[object] | None:
        """A hot decrement's values from its command (COM_QUERY, COM_STMT_EXECUTE), for the
        engine; None: its parameters cannot be read (the session task takes it)."""
        if payload[0] == P.COM_QUERY:
            return statement_values(payload[1:].decode("utf-8", "surrogateescape"))
        st = self.s.stmts.get(_unpack_id(payload, 1)[0])
        if st is None:
            return None
        try:
            return statement_values(st.sql, P.decode_binary_params(
                P.split_execute(payload, st.num_params), st.types, st.num_params))
        except (ValueError, IndexError):
            return None

    def _answer_here(self, shape: Shape, p: Plan) -> None:
        """A SELECT the proxy answers itself (answers.local_answer, the general path's own
        answer), written from here: no connection, no session task wake-up."""
        out = []
        seq = 1
        for payload in local_answer(self.s, p, shape):
            out.append(P.packet(payload, seq))
            seq += 1
        self.client.write(b"".join(out))

    def shape_of(self, sql: str) -> Shape:
        """The shape of a COM_QUERY the session task runs: the one found here if the lane saw
        and declined this very statement, else classified now."""
        got, self.classified = self.classified, None
        if got is not None and got[0] == sql:
            return got[1]
        return classify(sql)

    def _hot(self, shape: Shape, values: list[object]) -> bool:
        """A hot decrement, the way the engine decides (hotpick.Picker.decide): as it is (no
        rule for it), auto's plain path (a ticket on its key) or merged (lanemerge.py). A way
        that waits before it starts (a rule to check, a queue) is the session task's."""
        w = self.app.hotrow.lane_way(self.s, shape, values)
        if w.kind == AS_IS:
            return True
        if w.kind == PLAIN:
            self.ticket = w.ticket
            return True
        if w.kind == MERGE:
            self.hot.way = w
            return True
        return False

    def _release_ticket(self, ok: bool, rows: int = -1) -> None:
        """A hot decrement run as it is ends: its key's count (`ticket`), or a glanced one's
        (its values read again only if it found no row: hotpick.Picker.glance_end)."""
        t, self.ticket = self.ticket, None
        if t is not None:
            self.app.hotrow.plain_end(t, ok, rows)
            return
        g, self.glanced = self.glanced, None
        if g is not None:
            values = self._values(self.command) if ok and rows == 0 and self.command else None
            self.app.hotrow.glance_end(self.s, g, ok, rows, values)

    def _can_run(self, p: Plan) -> bool:
        """The plan only forwards, and the lease's connection is the one it forwards to."""
        if not p.lane:
            return False
        s = self.s
        L = s.lease
        if p.route is Route.DIAG:  # about the previous statement: only on its connection
            return s.stmt_conn is L.conn
        if p.route is Route.REPLICA:
            assert L.pool is not None and p.read is not None
            return (L.state is LeaseState.SOFT and L.pool.role == "replica"
                    and self.app.reads.ready_now(L.pool, p.read, s.last_gtid))
        if L.state is LeaseState.SOFT and L.pool is not self.app.primary_pool():
            return False  # a replica's connection: the general path changes to the primary
        return True

    def try_start(self, data: bytes) -> bool:
        try:
            got = self._decide(data)
        except Exception:  # noqa: BLE001 - never fail in a socket callback; the task decides
            log.exception("fast lane: cannot classify a command; the session task takes it")
            return False
        if got is None or got is False:
            return False
        if got is True:
            return True
        c, shape, packet, p = got
        s = self.s
        if shape.lane == "begin" and defer_begin(s, self.client, c, shape, packet):
            return True
        if p.gate_write:
            try:
                self.app.durability.check_write()  # the gate runs once, here
            except ProxyError as e:
                self._release_ticket(False)
                self.hot.way = None
                err = e.packet()
                self.client.write(P.packet(err, 1))
                statement_done(s, shape, "primary", "error", 0.0, 0, 1)
                return True
        if self.hot.way is not None:  # merged: no statement on the session's connection
            self.shape, self.plan, self.command = shape, p, data[4:]
            self.t0 = perf_counter()
            s.busy = True
            self.client.held = True
            self.hot.start()
            return True
        # Out of the soft hold: the pool cannot take the connection back mid-statement.
        if s.lease.state is LeaseState.SOFT:
            s.lease.transition(LeaseState.STATEMENT, LeaseReason.ACQUIRED)
        self.conn, self.shape, self.plan, self.command = c, shape, p, data[4:]
        self.scanner = ReplyScanner(c, s.client_ok)
        self.pending, self.size, self.sent = [], 0, False
        if c.confirms and confirms.plain_commit(data[4:]):  # `DELETE ...; COMMIT`
            packet = self.cf.start(c, data[4:], packet)  # (laneconfirm.py)
        self.status_before = s.status
        self.t0 = perf_counter()
        s.busy = True
        self.client.held = True
        c.last_used = monotonic()
        io = c.io
        io.sink = self._reply_cb
        io.sink_lost = self._lost_cb
        io.write(packet)  # (with a deferred BEGIN ahead of it, if one waits: wire.py)
        return True

    # ---- reply: called by the backend socket ---------------------------------------------

    def _on_reply(self, data: bytes) -> None:
        if self.cf.ping_head is not None:
            data = self.cf.ping_check(data)
            if not data:
                return
        sc = self.scanner
        assert sc is not None
        piece = sc.feed(data)
        if self.seq_back and piece:
            piece = confirms.renumber(piece, self.seq_back)
        if sc.done and not self.pending:  # the usual case: the whole reply in one chunk
            if piece:
                self.client.write(piece)
                self.sent = True
            self._complete()
            return
        if piece:
            self.pending.append(piece)
            self.size += len(piece)
        if sc.done:
            self._flush()
            self._complete()
        elif self.size >= _FLUSH_AT:
            self._flush()
            if self.client.write_paused:  # the client reads slowly: stop reading MySQL too
                c = self.conn
                assert c is not None
                c.io.transport.pause_reading()
                self.client.on_resume = c.io.transport.resume_reading

    def _flush(self) -> None:
        if self.pending:
            p = self.pending
            self.client.write(p[0] if len(p) == 1 else b"".join(p))
            self.pending = []
            self.size = 0
            self.sent = True

    def _complete(self) -> None:
        c, sc, shape = self.conn, self.scanner, self.shape
        assert c is not None and sc is not None and shape is not None
        s = self.s
        c.io.sink = c.io.sink_lost = None
        c.io.skipped_ok = c.io.skipped_err = None
        self.seq_back = 0
        if self.cf.ping_tail:  # the ping's OK follows (perhaps begun in this chunk): dropped
            self.cf.ping_tail = False
            sc.tail = c.io.skip_reply(sc.tail)
        if sc.tail:  # bytes after a complete reply: protocol desync, never reuse the connection
            c.retire(CloseReason.PROTOCOL_DESYNC)
        r = sc.r
        p = self.plan
        assert p is not None
        s.keeps_diag = shape.keeps_diag  # (session.stmt_conn: a carried area may stay)
        if p.route is Route.REPLICA:
            s.stmt_conn = c
        else:
            if shape.lane == "begin" and not s.lazy_begin:
                s.lazy_begin = begin_ok_as_made(self.status_before, r.ok)
            s.absorb_reply(c, r, p.row_count)
        s.keeps_diag = False
        carried = self.cf.rows
        late = self.cf.take_late()
        if carried:
            confirms.sold_at_commit(c, self.command, carried, late, r)
        if late and c.in_trans:  # the COMMIT did not end it: the rows that said "0 rows" wait
            c.confirms[:0] = late  # (for the next COMMIT, or the next command's `before`)
            late = []
        outcome, rows = "error" if r.err is not None else "ok", r.rows or r.affected_rows
        if confirms.committed_without(late, r, c):
            self.cf.write_late(c, late, outcome, rows)
            return
        s.settle()
        self.done(outcome, rows)

    def _on_lost(self) -> None:
        """The backend connection died under the command: the same answer as the general path
        (`reply.lost`), given from a short task while the client stays held."""
        c = self.conn
        assert c is not None
        c.retire(CloseReason.LOST)
        if self.sent:
            # Part of a large result set already went out: the client can only learn that it
            # was cut short by losing its connection too.
            conn_id = self.s.connection.connection_id if self.s.connection else None
            log.warning("backend connection lost after a partial result; closing the client",
                        extra={"conn_id": conn_id})
            self.client.transport.abort()
            self.done("error", 0)
            return
        self._fail_task = asyncio.ensure_future(self._fail(c))

    async def _fail(self, c: BackendConn) -> None:
        await self.run_task(lambda: self._failed(c), "failure handling")

    async def _failed(self, c: BackendConn) -> None:
        s = self.s
        p = self.plan
        if p is not None and p.route is Route.REPLICA:
            # Nothing reached the client: as the general path does, the read is retried
            # (the replica's connection is gone; the monitor takes a dead replica out).
            await s.lease.release(LeaseReason.BACKEND_LOST)
            cmd, self.shape = self.command, None  # the general path counts it
            await (s.com_query(cmd) if cmd[0] == P.COM_QUERY else prepared.execute(s, cmd))
            return
        await reply.lost(s, BackendLost(f"lost connection to {c.addr} during query (EOF)"),
                         retry=False, shape=self.shape)

    async def run_task(self, work: Callable[[], Awaitable[tuple[str, str] | None]], what: str
                       ) -> None:
        """Session code run from a short task of the lane's while the client is held: the
        client stream's sequence as the command's read would have left it, errors told as the
        session task tells them, the command accounted once at the end (`done`; `work` may
        return its route and outcome)."""
        route, outcome = "primary", "error"  # (an error is counted as the session path does)
        self.session_turn(True)
        try:
            got = await work()
            if got is not None:
                route, outcome = got
        except ProxyError as e:
            self.tell(e)
        except Exception:  # noqa: BLE001 - never leave the client held
            log.exception("fast lane: %s failed", what)
            self.client.transport.abort()
        finally:
            self.session_turn(False)
            self.done(outcome, 0, route)

    def session_turn(self, on: bool) -> None:
        """Session code run from a task of the lane's writes through the client stream, whose
        sequence the command's read would have moved past it (a reply sent with 0 reads as a
        lost connection to a client): 1 while that code runs, 0 again after (the session
        task's pending read expects the next command at 0)."""
        conn = self.s.connection
        if conn is not None:
            conn.stream.seq.value = 1 if on else 0

    def tell(self, e: ProxyError) -> None:
        """An error from a short task of the lane's, told as the session task tells it."""
        s = self.s
        if client_side(e.code):  # errors.client_side: told as MySQL's death is told
            s.end_reason = f"backend lost ({e.code}): {e.message}"
            self.client.transport.close()
            return
        err = e.packet()
        self.client.write(P.packet(err, 1))
        if e.fatal:
            s.end_reason = f"fatal error {e.code}: {e.message}"
            self.client.transport.close()

    def done(self, outcome: str, rows: int, route: str = "primary") -> None:
        """The command is answered: accounted once (account.py), the client released."""
        s, shape = self.s, self.shape
        if shape is None:  # abandoned meanwhile: the session is closing
            self._release_ticket(False)
            self.client.release()
            return
        dt = perf_counter() - self.t0
        p = self.plan
        if self.ticket is not None or self.glanced is not None:
            route = "hotrow-plain"
            self._release_ticket(outcome == "ok", rows)
        if p is not None and p.route is Route.REPLICA and p.read is not None:
            route = "replica"
            pool = s.lease.pool
            self.app.reads.count(p.read.consistency, "replica", pool.label if pool else None)
        self._reset()
        statement_done(s, shape, route, outcome, dt, rows, 1)
        s.busy = False
        self.client.release()

    def _reset(self) -> None:
        self.conn = self.scanner = self.shape = self.plan = None
        self.pending = []
        self.cf.reset()

    def abandon(self) -> None:
        """The session ends with a command in flight: its connection can never be reused."""
        c = self.conn
        self._release_ticket(False)
        self.hot.abandon()
        if c is not None:
            c.retire(CloseReason.REPLY_ABANDONED)
            c.io.sink = c.io.sink_lost = None
            self._reset()
