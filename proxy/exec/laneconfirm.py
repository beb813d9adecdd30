"""The fast lane's plain COMMIT with escrow confirm rows ahead of it (backends/confirms.py
`may_pass`): one framed `DELETE ...; COMMIT` and a COM_PING, whose replies the lane checks as
they come. Below, "the COMMIT" is the client's statement.

The confirm rows' OKs are dropped on arrival (wire.py `skip`); each must say one row written,
else the row is written after the COMMIT (`write_late`, never seen). An ERR in a row's place
means MariaDB ran nothing after it, the COMMIT neither: the order is rolled back and the
client's COMMIT gets 1213, as on the general path (`confirms.commit_with`). The ping's reply in
a row's place or in the COMMIT's (a KILL QUERY between the statements: MariaDB stopped there
without a word) is answered the same way; after the COMMIT's reply it is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Protocol

from proxy.backends import confirms
from proxy.net import protocol as P

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.exec.context import Statement
    from proxy.net.wire import ClientIO

log = logging.getLogger("seckill.fastlane")


class ConfirmLane(Protocol):
    """What the confirm rows use of their fast lane (fastlane.FastLane)."""

    s: Statement
    client: ClientIO
    conn: BackendConn | None
    seq_back: int

    def done(self, outcome: str, rows: int, route: str = "primary") -> None: ...


class LaneConfirms:
    """One per fast lane, for the COMMIT in flight."""

    def __init__(self, lane: ConfirmLane) -> None:
        self.lane = lane
        self.rows: list[str] = []  # the confirm rows sent with the COMMIT
        self.late: list[str] = []  # rows that said "0 rows" (written after the COMMIT)
        self.seen = 0
        self.begin_ahead = False  # a deferred BEGIN's OK comes before the rows'
        # the reply's first bytes after the rows' OKs, until its first packet's sequence id is
        # known (`ping_check`); then whether the ping's OK follows the COMMIT's
        self.ping_head: bytes | None = None
        self.ping_tail = False
        self.task: asyncio.Future[None] | None = None  # keeps a failure task alive
        self._ok_cb = self.skipped_ok
        self._err_cb = self.skipped_err

    def start(self, c: BackendConn, payload: bytes, packet: bytes) -> bytes:
        """The framed packets to send for the client's plain COMMIT (`payload`): the rows and
        the COMMIT as one multi-statement, a ping behind it."""
        packet, rows = confirms.with_rows(c, payload)
        self.lane.seq_back = len(rows)
        self.rows, self.late, self.begin_ahead = rows, [], bool(c.io.prefix)
        self.seen = 0
        self.ping_head = b""
        c.io.skip += len(rows)
        c.io.skipped_ok = self._ok_cb
        c.io.skipped_err = self._err_cb
        return packet

    def take_late(self) -> list[str]:
        late, self.late, self.rows = self.late, [], []
        return late

    def reset(self) -> None:
        """The lane's command is over (or abandoned): no reply of its is awaited here."""
        self.ping_head = None
        self.ping_tail = False

    def ping_check(self, data: bytes) -> bytes:
        """The reply after the rows' OKs: the COMMIT's, or, with sequence id 1, the ping's
        (MariaDB stopped before the COMMIT). Returns what is the COMMIT's."""
        head = self.ping_head + data if self.ping_head else data
        if len(head) < 4:
            self.ping_head = head
            return b""
        self.ping_head = None
        if head[3] != 1:
            self.ping_tail = True
            return head
        c = self.lane.conn
        assert c is not None
        c.io.sink = c.io.sink_lost = None
        c.io.buf += head  # (the ping's OK, read before the rollback)
        self.task = asyncio.ensure_future(self._failed(c, confirms.CUT_SHORT_ERR, True))
        return b""

    def skipped_ok(self, ok: bytes) -> None:
        """An OK dropped ahead of the COMMIT's: the deferred BEGIN's, then each row's."""
        if self.begin_ahead:
            self.begin_ahead = False
            return
        n = self.seen
        self.seen = n + 1
        if n >= len(self.rows):
            return
        c = self.lane.conn
        if confirms.cut_short(ok) and c is not None:  # the ping's OK
            c.io.skip = 0
            self._stop(c)
            self.task = asyncio.ensure_future(self._failed(c, confirms.CUT_SHORT_ERR, False))
        elif not confirms.affected_one(ok):
            self.late.append(self.rows[n])

    def skipped_err(self, err: bytes) -> bool:
        """An ERR in a row's place (wire.py); False for the deferred BEGIN's place: wire.py
        cuts the connection."""
        c = self.lane.conn
        if self.begin_ahead or c is None:
            return False
        self._stop(c)
        self.task = asyncio.ensure_future(self._failed(c, err, True))
        return True

    def _stop(self, c: BackendConn) -> None:
        c.io.sink = c.io.sink_lost = None
        c.io.skipped_ok = c.io.skipped_err = None
        self.ping_head = None

    async def _failed(self, c: BackendConn, err: bytes, ping: bool) -> None:
        """Roll the order back and answer 1213, the client held meanwhile; `ping`: the
        ping's OK is still to be read."""
        lane = self.lane
        s = lane.s
        lane.seq_back = 0
        self.take_late()  # (the order is rolled back: nothing to write after it)
        try:
            out = await confirms.failed(c, err, ping)
            s.stmt_conn = c
            s.status = c.status & ~P.SERVER_STATUS_IN_TRANS
            lane.client.write(P.packet(out, 1))
            s.settle()
        except Exception:  # noqa: BLE001 - never leave the client held
            log.exception("fast lane: rolling back after a confirm row failed")
            lane.client.transport.abort()
        finally:
            lane.done("error", 0)

    def write_late(self, c: BackendConn, late: list[str], outcome: str, rows: int) -> None:
        self.task = asyncio.ensure_future(self._write_late(c, late, outcome, rows))

    async def _write_late(self, c: BackendConn, late: list[str], outcome: str,
                          rows: int) -> None:
        """The rows first, then the transaction counts as over (its resolution reads them);
        the client stays held meanwhile, as on the general path."""
        try:
            await confirms.write_late(c, late)
        finally:
            self.lane.s.settle()
            self.lane.done(outcome, rows)
