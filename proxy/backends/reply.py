"""One command's reply, read as it arrives: what the proxy forwards and what it learns.

The scanner is the innermost loop of every forwarded statement (compiled, proxy/compiled.py).
It lives apart from the connection (backend.py) and touches of it only what a reply changes,
`ConnState`: the status flags, whether the diagnostics area holds something, and the session
state an OK packet reports (`_track`, which the connection implements).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from proxy.net import protocol as P


@dataclass(init=False)
class Relayed:
    """What the proxy learned while forwarding one command's response. (`__init__` written
    out: compiled, as protocol.OkPacket's.)"""

    ok: P.OkPacket | None
    err: P.ErrPacket | None
    status: int
    rows: int
    affected_rows: int
    sysvars: dict[str, str]
    schema: str | None
    state_changed: bool
    gtid: str | None
    sent_to_client: bool
    local_infile: bool  # the reply is a request for the client's file (0xFB)
    # it ended with a result set's EOF, not an OK packet: no session tracking came with its
    # end (a write with RETURNING, a SELECT calling a stored function; general.gtid_after)
    ended_eof: bool

    def __init__(self, ok: P.OkPacket | None = None, err: P.ErrPacket | None = None,
                 status: int = 0) -> None:
        self.ok = ok
        self.err = err
        self.status = status
        self.rows = 0
        self.affected_rows = 0
        self.sysvars = {}
        self.schema = None
        self.state_changed = False
        self.gtid = None
        self.sent_to_client = False
        self.local_infile = False
        self.ended_eof = False


class BufferWriter:
    """Stands in for the client writer when a reply must be held (ack: replica)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data

    async def drain(self) -> None:
        return None


class ConnState:
    """What a reply changes on the connection it arrived on."""

    def __init__(self) -> None:
        self.status = P.SERVER_STATUS_AUTOCOMMIT
        # its diagnostics area may hold warnings or an error (set by a statement that left
        # some; MySQL keeps them through statements without tables, so only the proxy's own
        # clearing or a reset takes this back): another session gets it cleared first
        # (session._fresh)
        self.diag = False
        # its last statement left warnings or an error its session may still ask about (SHOW
        # WARNINGS...): the pool reclaims such a soft-held connection last
        self.warned = False

    def _track(self, status: int, ok: P.OkPacket | None) -> None:
        """An OK packet's (or EOF's) status and session state (the connection keeps more)."""
        self.status = status


_MAX_PACKET: Final = P.MAX_PACKET  # a global, not a module attribute, in the scanner's loop


class ReplyScanner:
    """Incremental parser of one command's response, fed whatever the socket delivered.

    Shared by the awaiting relay and the fast lane's callbacks. `feed` returns the bytes to
    forward: complete packets, untouched except OK packets, which `ok_hook` rewrites (the client
    never negotiated session tracking). A result set in one chunk comes back as that chunk.
    """

    __slots__ = ("conn", "ok_hook", "state", "cols_left", "cont", "r", "tail", "cursor")

    def __init__(self, conn: ConnState, ok_hook: Callable[[P.OkPacket], bytes] | None,
                 field_list: bool = False, cursor: bool = False) -> None:
        self.conn = conn
        # a COM_STMT_EXECUTE that asked for a cursor: an EOF with SERVER_STATUS_CURSOR_EXISTS
        # after the column definitions ends the reply. Elsewhere the flag only says a stored
        # program has a cursor open (MariaDB sets it on the EOFs of result sets a procedure
        # returns while one is open), and the rows follow as usual.
        self.cursor = cursor
        self.ok_hook = ok_hook
        self.state = 3 if field_list else 0  # 0 first, 1 columns, 2 column-EOF, 3 rows, 9 done
        self.cols_left = 0
        self.cont = False
        self.r = Relayed()
        self.tail = b""

    @property
    def done(self) -> bool:
        return self.state == 9

    def feed(self, data: bytes) -> bytes:
        buf = self.tail + data if self.tail else data
        n = len(buf)
        pos = start = 0
        state, cols_left, cont, r = self.state, self.cols_left, self.cont, self.r
        pieces: list[bytes] = []
        while state != 9 and n - pos >= 4:
            plen = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            end = pos + 4 + plen
            if end > n:
                break
            if cont:  # continuation of a packet >= 16 MiB: opaque bytes
                cont = plen == _MAX_PACKET
                pos = end
                continue
            b0 = buf[pos + 4] if plen else 0
            cont = plen == _MAX_PACKET
            if state == 3:
                if b0 == 0xFE and plen < 9:
                    st = buf[pos + 7] | (buf[pos + 8] << 8) if plen >= 5 else 0
                    self.conn.status = r.status = st
                    w = plen >= 5 and (buf[pos + 5] or buf[pos + 6]) != 0
                    self.conn.warned = w
                    self.conn.diag |= w
                    state = 0 if st & P.SERVER_MORE_RESULTS_EXISTS else 9
                    r.ended_eof = state == 9
                elif b0 == 0xFF:
                    r.err = P.parse_err(bytes(buf[pos + 4 : end]))
                    self.conn.diag = self.conn.warned = True
                    state = 9
                else:
                    r.rows += 1
            elif state == 1:
                cols_left -= 1
                if cols_left == 0:
                    state = 2
            elif state == 2:  # the EOF after the column definitions
                st = buf[pos + 7] | (buf[pos + 8] << 8) if plen >= 5 else 0
                if self.cursor and st & P.SERVER_STATUS_CURSOR_EXISTS:
                    # COM_STMT_EXECUTE that opened a cursor: no rows follow, COM_STMT_FETCH
                    # asks for them
                    self.conn.status = r.status = st
                    state = 9
                else:
                    state = 3
            elif b0 == 0x00 or (b0 == 0xFE and 7 <= plen < 9):
                ok = P.parse_ok(bytes(buf[pos + 4 : end]), True)
                self.conn._track(ok.status, ok)
                r.ok = ok
                r.status = ok.status
                self.conn.warned = ok.warnings != 0
                self.conn.diag |= self.conn.warned
                r.affected_rows += ok.affected_rows
                if ok.sysvars:
                    r.sysvars.update(ok.sysvars)
                if ok.schema is not None:
                    r.schema = ok.schema
                r.state_changed |= ok.state_changed
                if ok.gtid:
                    r.gtid = ok.gtid
                payload = self.ok_hook(ok) if self.ok_hook else P.make_ok(
                    ok.affected_rows, ok.last_insert_id, ok.status, ok.warnings, ok.info
                )
                pieces.append(buf[start:pos])
                pieces.append(P.packet(payload, buf[pos + 3]))
                start = end
                state = 0 if ok.status & P.SERVER_MORE_RESULTS_EXISTS else 9
            elif b0 == 0xFF:
                r.err = P.parse_err(bytes(buf[pos + 4 : end]))
                self.conn.diag = self.conn.warned = True
                state = 9
            elif b0 == 0xFB:  # LOAD DATA LOCAL INFILE: MySQL asks the client for a file
                r.local_infile = True
                state = 9
            else:
                cols_left, _ = P.lenenc_int(buf, pos + 4)
                state = 1 if cols_left else 2
            pos = end
        self.state, self.cols_left, self.cont = state, cols_left, cont
        self.tail = buf[pos:] if pos < n else b""
        if pieces:
            pieces.append(buf[start:pos])
            return b"".join(pieces)
        if start == 0 and pos == n:
            return buf
        return buf[start:pos]


def text_row(pkt: bytes, ncols: int) -> list[str | None]:
    out: list[str | None] = []
    pos = 0
    for _ in range(ncols):
        if pkt[pos] == 0xFB:
            out.append(None)
            pos += 1
        else:
            s, pos = P.lenenc_str(pkt, pos)
            out.append(s.decode("utf-8", "replace"))
    return out
