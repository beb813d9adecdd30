"""Reading the text-protocol reply of one statement or several (BackendConn.query_each): each
statement's rows or OK, in order, with the column names and types a caller asks for.

Apart from backend.py for its size; compiled with it (proxy/compiled.py): service transactions
(a merged group's batch, the escrow's resolutions) read their replies here.
"""

from __future__ import annotations

from typing import Protocol

from proxy.backends.reply import text_row
from proxy.core.errors import BackendError, CutShort
from proxy.net import protocol as P

Results = list[tuple[list[list[str | None]] | None, P.OkPacket | None]]


class ResultConn(Protocol):
    """What the reader uses of the connection (backend.BackendConn)."""

    seq_in: int
    ext_meta: bool
    diag: bool
    status: int

    async def read_packet(self) -> bytes: ...

    async def _reply(self) -> bytes: ...  # (the next packet; an ERR raises BackendError)

    def _track(self, status: int, ok: P.OkPacket | None) -> None: ...


async def read_results(c: ResultConn, names: list[str] | None, types: list[int] | None,
                       guard: bool) -> Results:
    """`guard`: a COM_PING follows the statements; its reply, which does not continue the
    sequence ids, in place of the next statement's means MariaDB stopped there (CutShort)."""
    out: Results = []
    while True:
        expected = (c.seq_in + 1) & 0xFF
        try:
            pkt = await c._reply()  # (an ERR raises: never the ping's reply, an OK)
        except BackendError as e:
            e.at = len(out)  # which statement failed (a service transaction's check, hotmerge)
            raise
        if guard and out and c.seq_in != expected:
            raise CutShort()
        if pkt[0] == 0x00:
            ok = P.parse_ok(pkt, True)
            c._track(ok.status, ok)
            if ok.warnings:  # a service statement's note (CREATE TABLE IF NOT EXISTS...)
                c.diag = True  # must not reach the next session's SHOW WARNINGS
            out.append((None, ok))
            if ok.status & P.SERVER_MORE_RESULTS_EXISTS:
                continue
            return out
        ncols, _ = P.lenenc_int(pkt, 0)
        if names is not None:
            names.clear()
        if types is not None:
            types.clear()
        for _ in range(ncols):
            col = await c.read_packet()
            if names is not None or types is not None:
                _column(col, c.ext_meta, names, types)
        await c.read_packet()  # EOF
        rows: list[list[str | None]] = []
        while True:
            pkt = await c._reply()
            if P.is_eof(pkt):
                c._track(P.eof_status(pkt), None)
                c.diag |= len(pkt) >= 3 and (pkt[1] or pkt[2]) != 0
                break
            rows.append(text_row(pkt, ncols))
        out.append((rows, None))
        if not c.status & P.SERVER_MORE_RESULTS_EXISTS:
            return out


def _column(col: bytes, ext_meta: bool, names: list[str] | None, types: list[int] | None) -> None:
    pos = 0
    for _field in range(4):  # catalog, schema, table, org_table
        _, pos = P.lenenc_str(col, pos)
    name, pos = P.lenenc_str(col, pos)
    if names is not None:
        names.append(name.decode("utf-8", "replace"))
    if types is not None:  # org_name, 0x0c, charset(2), length(4), type(1)
        _, pos = P.lenenc_str(col, pos)
        if ext_meta:  # MariaDB's extended metadata, before the 0x0c
            _, pos = P.lenenc_str(col, pos)
        types.append(col[pos + 7] if pos + 7 < len(col) else 0xFD)
