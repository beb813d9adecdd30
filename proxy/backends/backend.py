"""One connection to a MySQL/MariaDB server: aiomysql logs in (handshake, authentication),
then the proxy speaks raw packets on the same socket: result-set packets forwarded untouched
(not decoded into Python objects and encoded again) make a Python proxy fast enough and keep
every column type byte-exact in both protocols."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_mod
import struct
from collections import OrderedDict
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

import aiomysql

from proxy.backends import confirms
from proxy.backends.login import LoginConn
from proxy.backends.reply import BufferWriter, ConnState, Relayed, ReplyScanner
from proxy.backends.results import read_results
from proxy.core.config import Address
from proxy.core.errors import BackendError, BackendLost, CloseReason, CutShort, ResetReason
from proxy.core.state import LOGIN_NAMES, Catalog, Names, absorb, split_reported
from proxy.net import protocol as P
from proxy.net.wire import PacketIO, adopt

log = logging.getLogger("seckill.backend")

# What the proxy asks of every backend connection: session-state tracking tells it, from the OK
# packets it already reads, which variables/schema changed and the GTID of each commit.
_TRACK_MARIADB: Final = (
    "SET SESSION session_track_system_variables='*', session_track_schema=ON, "
    "session_track_state_change=ON"
)
_TRACK_MYSQL: Final = (
    "SET SESSION session_track_system_variables='*', session_track_schema=ON, "
    "session_track_state_change=ON, session_track_gtids=OWN_GTID"
)
BACKEND_FLAGS: Final = (P.CLIENT_SESSION_TRACK | P.CLIENT_PS_MULTI_RESULTS | P.CLIENT_MULTI_RESULTS
                 | P.CLIENT_LOCAL_FILES)
STMT_CACHE: Final = 64  # per connection: x 200 pooled, well under max_prepared_stmt_count (16382)
ER_MAX_PREPARED_STMT_COUNT: Final = 1461
# its ERR packet's first bytes: how a relayed COM_STMT_PREPARE's refusal is recognised
STMT_LIMIT_ERR: Final = b"\xff" + ER_MAX_PREPARED_STMT_COUNT.to_bytes(2, "little")
_READ_CHUNK: Final = 256 * 1024
_FLUSH_AT: Final = 256 * 1024


class BackendConn(ConnState):
    """A raw-packet connection. State is tracked from OK packets so the pool can reset it."""

    def __init__(self, conn: aiomysql.Connection, addr: Address, user: str, caps: int = 0,
                 catalog: Catalog | None = None) -> None:
        super().__init__()  # status, diag, warned: what every reply changes (reply.py)
        self.conn = conn
        # the servers' collation ids and defaults (dial.py: read from the primary at start)
        self.catalog = catalog if catalog is not None else Catalog.builtin()
        self.addr = addr
        self.user = user
        # what was negotiated as the client asked (CLIENT_FOUND_ROWS, MariaDB's extended type
        # metadata): part of the pool key, since it changes what the server sends
        self.caps = caps
        self.key = (user, caps)
        self.ext_meta = bool(caps & P.MARIADB_CLIENT_EXTENDED_METADATA)
        # aiomysql logged in; from here on the proxy's own protocol object owns the socket.
        self.io = adopt(conn._writer, conn._reader)
        self.thread_id: int = conn.server_thread_id[0]
        self.mariadb = "mariadb" in conn.get_server_info().lower()
        self.schema: str | None = None
        self.names: Names = LOGIN_NAMES
        self.sysvars: dict[str, str] = {}  # replayable variables changed since login/reset
        self.dirty = False  # only a reset clears its state (user vars...): taint(reason)
        self.reset_why: ResetReason | None = None
        self.broken = False  # never lent again: retire(reason)
        self.close_why: CloseReason | None = None
        # who last held it (a Lease; None: service use) and how often it changed hands: the
        # diagnostics area is a session's only while no one else held it since (hold.py)
        self.holder: object | None = None
        self.hands = 0
        # Prepared statements by (database at PREPARE, text): MariaDB resolves a statement's
        # tables in the database current when it was prepared.
        self.stmts: OrderedDict[tuple[str | None, str], P.PrepareOk] = OrderedDict()
        self.last_insert_id = 0
        self.last_used = monotonic()
        self.pool: Any = None  # the Pool that lent it (set by the pool)
        self.confirms: list[str] = []  # escrow confirm rows its transaction waits for
        # the rows a COMMIT carried and committed (confirms.sold_at_commit), until the session
        # hands their reservations over as sold (session.txn_over)
        self.sold: list[str] = []
        self.seq_in = 0  # the sequence id of the last packet read (`query_each`'s guard)

    @classmethod
    async def connect(
        cls, addr: Address, user: str, password: str, timeout: float, caps: int = 0,
        ssl: ssl_mod.SSLContext | None = None, catalog: Catalog | None = None,
    ) -> BackendConn:
        """Log in (aiomysql) and take the socket over. Callers go through a `Dial` (dial.py),
        which supplies TLS (`backends.tls`; never over a unix socket) and the catalog."""
        flags = BACKEND_FLAGS | (caps & 0xFFFFFFFF)
        try:
            conn = LoginConn(
                host=addr.host,
                port=addr.port,
                unix_socket=addr.unix,
                user=user,
                password=password,
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=timeout,
                client_flag=flags,
                ssl=ssl if addr.unix is None else None,
            )
            conn.ext_caps = caps & ~0xFFFFFFFF
            await conn._connect()
        except Exception as e:  # aiomysql raises OperationalError, OSError or TimeoutError
            raise _connect_error(e, addr) from e
        bc = cls(conn, addr, user, caps, catalog)
        await bc.init_session()
        return bc

    async def init_session(self) -> None:
        await self.track_all()
        self.sysvars.clear()
        self.names = LOGIN_NAMES

    async def track_all(self) -> None:
        """The proxy's session tracking on this connection (again, after a client changed it)."""
        await self.execute(_TRACK_MARIADB if self.mariadb else _TRACK_MYSQL)

    # ---- raw packet I/O ---------------------------------------------------------------

    def send(self, payload: bytes, seq: int = 0, then: bytes = b"") -> int:
        """Frame and write one command (and `then`, framed already, in the same write: the
        COM_PING behind a multi-statement); return the next sequence id."""
        w = self.io
        if w.prefix:  # a deferred BEGIN goes out ahead (lazybegin.py), its OK dropped unread
            # (wire.py `skip`), perhaps behind a command with no reply (COM_STMT_CLOSE): the
            # status says "in a transaction" from now, or a confirm row waiting here would be
            # taken for one whose transaction is over (confirms.before) and dropped
            self.status |= P.SERVER_STATUS_IN_TRANS
        while True:
            chunk = payload[:P.MAX_PACKET]
            payload = payload[P.MAX_PACKET:]
            last = len(chunk) < P.MAX_PACKET
            w.write(P.packet(chunk, seq) + (then if last else b""))
            seq = (seq + 1) & 0xFF
            if last:
                return seq

    async def read_packet(self) -> bytes:
        pkt = self.io.take_packet()  # (it came whole: no coroutine per part)
        if pkt is not None:
            self.seq_in = self.io.taken_seq
            return pkt
        try:
            data = b""
            while True:
                hdr = await self.io.readexactly(4)
                n = hdr[0] | (hdr[1] << 8) | (hdr[2] << 16)
                self.seq_in = hdr[3]
                data += await self.io.readexactly(n) if n else b""
                if n < P.MAX_PACKET:
                    return data
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            self.retire(CloseReason.LOST)
            raise BackendLost(f"lost connection to {self.addr}: {type(e).__name__}") from e

    async def command(self, payload: bytes, then: bytes = b"") -> None:
        """Send one command (`then`: see `send`)."""
        if self.confirms:  # the escrow's confirm rows wait here: first them (confirms.py)
            await confirms.before(self, payload)
        self.last_used = monotonic()
        self.send(payload, 0, then)
        if self.io.transport.get_write_buffer_size() < 65536 and not self.io.transport.is_closing():
            return  # nothing queued: drain() would return at once, skip the coroutine
        try:
            await self.io.drain()
        except (ConnectionError, OSError) as e:
            self.retire(CloseReason.LOST)
            raise BackendLost(f"lost connection to {self.addr}: {e}", sent=False) from e

    # ---- internal queries -------------------------------------------------------------

    async def clear_diagnostics(self) -> None:
        """Empty the diagnostics area, as a fresh connection's: MySQL clears the warnings list
        only at a statement that uses a table (one every user may read)."""
        await self.execute("DO (SELECT 1 FROM information_schema.COLLATIONS LIMIT 0)")
        self.diag = self.warned = False

    async def _reply(self) -> bytes:
        """The next packet of a reply; an ERR raises BackendError (MySQL sends nothing after
        it)."""
        pkt = await self.read_packet()
        if pkt[0] == 0xFF:
            self.diag = True  # (its area now holds the error: cleared before another session)
            e = P.parse_err(pkt)
            raise BackendError(e.code, e.sqlstate, e.message, pkt)
        return pkt

    async def init_db(self, database: str) -> None:
        """COM_INIT_DB: select a database by its name's bytes (the session's character set);
        raise BackendError on ERR."""
        await self.command(bytes((P.COM_INIT_DB,)) + database.encode("utf-8", "surrogateescape"))
        pkt = await self._reply()
        ok = P.parse_ok(pkt, True)
        self._track(ok.status, ok)

    async def execute(self, sql: str) -> P.OkPacket:
        """Run a statement that returns no rows; raise BackendError on ERR."""
        rows, ok = await self.query(sql)
        assert ok is not None or rows is not None
        return ok or P.OkPacket()

    async def query_named(self, sql: str) -> list[dict[str, str | None]]:
        """Rows of the last result set as {column name: value}."""
        names: list[str] = []
        rows, _ = await self.query(sql, names)
        return [dict(zip(names, r, strict=False)) for r in rows or []]

    async def query(
        self, sql: str, names: list[str] | None = None, types: list[int] | None = None,
        single: bool = False,
    ) -> tuple[list[list[str | None]] | None, P.OkPacket | None]:
        """Run one text-protocol statement and decode its rows as strings (internal use only);
        `names` and `types` receive the last result's column names and type codes. Returns the
        last result set's rows and the last OK packet."""
        rows: list[list[str | None]] | None = None
        ok: P.OkPacket | None = None
        for r, o in await self.query_each(sql, names, types, single):
            if r is not None:
                rows = r
            if o is not None:
                ok = o
        return rows, ok

    async def query_each(
        self, sql: str, names: list[str] | None = None, types: list[int] | None = None,
        single: bool = False,
    ) -> list[tuple[list[list[str | None]] | None, P.OkPacket | None]]:
        """Each statement's own result, in order: (rows, None) for a result set, (None, OK) for
        a statement without one. The proxy's service transactions check every statement's
        affected rows before they commit (hotrow.py, escrow.py); an ERR raises BackendError
        (MySQL runs nothing after it).

        A KILL QUERY that lands between two statements of a multi-statement makes MariaDB
        (10.11) stop there without a word: the last reply said more results follow, none do,
        and a reader would wait forever, its transaction's locks held. So a multi-statement is
        followed by a COM_PING: a reply that does not continue the sequence ids is the ping's,
        and the statements cut short fail as the KILL would have them fail (1317). `single`:
        one statement with `;` inside (a compound statement), which gets no ping (the ping
        would change the ROW_COUNT() it may be there to set)."""
        guard = not single and ";" in sql  # (perhaps a multi-statement; no round trip more)
        await self.command(bytes((P.COM_QUERY,)) + sql.encode(), confirms.PING if guard else b"")
        try:
            out = await read_results(self, names, types, guard)
        except CutShort:
            self.retire(CloseReason.PROTOCOL_DESYNC)  # (closing it ends its transaction at once)
            raise
        except BackendError as e:
            if guard:
                await self.read_packet()  # the ping's OK (MySQL runs nothing after an ERR)
            raise e  # (never a bare raise after an await in compiled code: test_speedups)
        if guard:
            await self.read_packet()
        return out

    async def query_raw(self, sql: str) -> tuple[list[bytes], list[bytes]]:
        """One text-protocol statement's result set as the server sent it (internal use): its
        column definitions and rows, untouched."""
        await self.command(bytes((P.COM_QUERY,)) + sql.encode())
        pkt = await self._reply()
        ncols, _ = P.lenenc_int(pkt, 0)
        defs = [await self.read_packet() for _ in range(ncols)]
        await self.read_packet()  # EOF
        rows: list[bytes] = []
        while True:
            pkt = await self.read_packet()
            if P.is_eof(pkt):
                self._track(P.eof_status(pkt), None)
                return defs, rows
            rows.append(pkt)

    async def set_multi(self, on: bool) -> None:
        """COM_SET_OPTION: multi-statements on or off (connections log in with them on; the
        session turns them off around a `a; b` from a client that has them off)."""
        await self.command(bytes((P.COM_SET_OPTION, 0 if on else 1, 0)))
        await self._reply()

    async def wait_gtid(self, gtid: str, timeout_s: float) -> bool:
        """Bounded wait until this server applied `gtid` (MariaDB or MySQL flavour)."""
        fn = "MASTER_GTID_WAIT" if self.mariadb else "WAIT_FOR_EXECUTED_GTID_SET"
        row = await self.fetch_one(f"SELECT {fn}('{gtid}', {timeout_s:.3f})")
        return row is not None and row[0] == "0"

    async def fetch_one(self, sql: str) -> list[str | None] | None:
        rows, _ = await self.query(sql)
        return rows[0] if rows else None

    # ---- forwarding -------------------------------------------------------------------

    async def relay(
        self,
        out: PacketIO | BufferWriter | None,
        ok_hook: Callable[[P.OkPacket], bytes] | None = None,
        field_list: bool = False,
        cursor: bool = False,
    ) -> Relayed:
        """Forward one command's whole response to `out` (None: swallow it).

        Result-set packets are copied untouched; OK packets go through `ok_hook`, which returns
        the bytes the client should get (session tracking stripped, counters kept). Bytes reach
        the client once the response is complete or 256 KiB are pending, so a failure before
        that leaves the client untouched and the statement can be retried elsewhere.
        """
        sc = ReplyScanner(self, ok_hook, field_list, cursor)
        try:
            return await self._relay(sc, out)
        finally:
            if not sc.done:
                # Left mid-reply (client gone, cancelled): the rest of the reply is still on
                # the wire, so this connection can never serve another command.
                self.retire(CloseReason.REPLY_ABANDONED)

    async def _relay(self, sc: ReplyScanner, out: PacketIO | BufferWriter | None) -> Relayed:
        r = sc.r
        pending: list[bytes] = []
        size = 0
        io = self.io
        while not sc.done:
            try:
                chunk = await io.read(_READ_CHUNK)
            except (ConnectionError, OSError) as e:
                chunk = b""
                reason = str(e)
            else:
                reason = "EOF"
            if not chunk:
                self.retire(CloseReason.LOST)
                if out is not None and pending:
                    out.write(b"".join(pending))
                    r.sent_to_client = True
                raise BackendLost(f"lost connection to {self.addr} during query ({reason})",
                                  delivered=r.sent_to_client)
            piece = sc.feed(chunk)
            if piece:
                pending.append(piece)
                size += len(piece)
            if out is not None and size >= _FLUSH_AT:
                out.write(b"".join(pending))
                pending.clear()
                size = 0
                r.sent_to_client = True
                await out.drain()
        if sc.tail:
            self.retire(CloseReason.PROTOCOL_DESYNC)  # trailing bytes after a complete response
            raise BackendLost(f"protocol desync on {self.addr}")
        if out is not None:
            out.write(pending[0] if len(pending) == 1 else b"".join(pending))
            r.sent_to_client = True
        return r

    def _track(self, status: int, ok: P.OkPacket | None) -> None:
        self.status = status
        if ok is None:
            return
        if ok.sysvars:
            self.names = absorb(self.names, ok.sysvars, self.catalog)
            keep, pin = split_reported(ok.sysvars)
            self.sysvars.update(keep)
            if pin:
                self.taint(ResetReason.UNREPLAYABLE_VARIABLE)  # e.g. SET timestamp
        if ok.schema is not None:
            self.schema = ok.schema or None
        if ok.last_insert_id:
            self.last_insert_id = ok.last_insert_id

    @property
    def in_trans(self) -> bool:
        return bool(self.status & P.SERVER_STATUS_IN_TRANS)

    # ---- prepared statements ----------------------------------------------------------

    def stmt_key(self, sql: str) -> tuple[str | None, str]:
        return (self.schema, sql)

    async def free_statements(self, retry: int) -> None:
        """The server's max_prepared_stmt_count is reached: close the statements kept for
        reuse here and on the pool's idle connections, then give the server a moment to
        process those closes (they travel on other connections, unanswered)."""
        self.drop_cached()
        if self.pool is not None:
            self.pool.drop_cached_statements()
        await asyncio.sleep(0.02 * (4 - retry))

    def _close_on_server(self, pok: P.PrepareOk) -> None:
        """COM_STMT_CLOSE for a statement prepared here (it has no reply to read)."""
        self.send(bytes((P.COM_STMT_CLOSE,)) + struct.pack("<I", pok.stmt_id))

    def drop_cached(self) -> None:
        """Close every statement this connection keeps prepared (no replies to read)."""
        while self.stmts:
            _, old = self.stmts.popitem(last=False)
            self._close_on_server(old)

    def close_stmt(self, sql: str) -> None:
        """The client closed its statement: close it here too (COM_STMT_CLOSE has no reply)."""
        pok = self.stmts.pop(self.stmt_key(sql), None)
        if pok is not None:
            self._close_on_server(pok)

    async def prepare(self, sql: str, retry: int = 3) -> P.PrepareOk:
        """Prepare `sql` here unless already cached on this connection.

        Statements the proxy keeps prepared for reuse count against the server's
        max_prepared_stmt_count like a client's: when the server refuses one more (1461), the
        cached ones (this connection's, then those of the pool's idle connections) are closed
        and it is tried again, so a client that closes its statements never meets a limit
        MySQL would not have made it meet."""
        key = self.stmt_key(sql)
        got = self.stmts.get(key)
        if got is not None:
            self.stmts.move_to_end(key)
            return got
        await self.command(bytes((P.COM_STMT_PREPARE,)) + sql.encode())
        pkt = await self.read_packet()
        if pkt[0] == 0xFF:
            e = P.parse_err(pkt)
            if e.code == ER_MAX_PREPARED_STMT_COUNT and retry:
                await self.free_statements(retry)
                return await self.prepare(sql, retry - 1)
            raise BackendError(e.code, e.sqlstate, e.message, pkt)
        pok = P.parse_prepare_ok(pkt)
        for _ in range(pok.num_params + (1 if pok.num_params else 0)):
            await self.read_packet()
        for _ in range(pok.num_columns + (1 if pok.num_columns else 0)):
            await self.read_packet()
        self.keep_stmt(key, pok)
        return pok

    def keep_stmt(self, key: tuple[str | None, str], pok: P.PrepareOk) -> None:
        """Cache a statement prepared here (the least recently used beyond STMT_CACHE, or one
        of the same key, is closed on the server)."""
        old = self.stmts.pop(key, None)
        if old is not None:
            self._close_on_server(old)
        self.stmts[key] = pok
        if len(self.stmts) > STMT_CACHE:
            _, old = self.stmts.popitem(last=False)
            self._close_on_server(old)

    # ---- reset and close --------------------------------------------------------------

    async def reset(self) -> None:
        """COM_RESET_CONNECTION: roll back, drop temp tables, user vars, locks, statements."""
        await self.command(bytes((P.COM_RESET_CONNECTION,)))
        await self._reply()
        self.stmts.clear()
        self.dirty = False
        self.reset_why = None
        self.diag = self.warned = False
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        self.last_insert_id = 0
        await self.init_session()

    def taint(self, why: ResetReason) -> None:
        """Reset this connection before it is lent again: it carries state another session
        must not get; counted under the first reason given (`backend_resets_total`)."""
        self.dirty = True
        if self.reset_why is None:
            self.reset_why = why

    def retire(self, why: CloseReason) -> None:
        """Never lend this connection again: its pool closes it when it comes back, counted
        under the first reason given (`backend_closed_total{reason}`)."""
        self.broken = True
        if self.close_why is None:
            self.close_why = why

    def close(self) -> None:
        self.broken = True
        try:
            self.io.write(b"\x01\x00\x00\x00\x01")  # COM_QUIT
            self.io.close()
        except Exception:  # noqa: BLE001 - closing a dead socket may fail any way it likes
            pass


def _connect_error(e: Exception, addr: Address) -> Exception:
    args = getattr(e, "args", ())
    if args and isinstance(args[0], int) and len(args) > 1:
        code = int(args[0])
        if code < 2000:  # a server-side error, e.g. 1045 access denied: keep it
            return BackendError(code, "28000" if code == 1045 else "HY000", str(args[1]))
    return BackendLost(f"can't connect to backend {addr}: {e}", sent=False)
