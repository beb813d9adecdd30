"""The escrow's confirm rows, written late (engines/escrow.py): a merged UPDATE inside a
transaction is answered once its group committed, and its confirm row (the DELETE of its
reservation, one row) waits on the member's connection (`BackendConn.confirms`) for the next
command there, so a seed order costs one round trip less. A COMMIT that carried them and
committed makes those sales final at once (`sold_at_commit`).

The rule, kept at the lowest level so no path can skip it: nothing reaches that connection
while a confirm row waits, except
- a plain `COMMIT`, which carries the rows with it as one multi-statement
  (`DELETE ...; COMMIT`): MariaDB runs nothing after a statement that failed or was killed, so
  the order never commits without its row (`commit_with`);
- on the fast lane, a single INSERT, UPDATE, DELETE or REPLACE, text or prepared (the
  UPDATE-first order's INSERT), goes ahead of them and they keep waiting for the COMMIT
  (`may_pass`): such a write reads nothing of the reservations and leaves the session's
  diagnostics its own either way; if it rolls the transaction back (a deadlock), the rows are
  dropped with it. (Until stop 46 the write carried them, `DELETE ...; X`; then no COMMIT
  carried any, and every UPDATE-first order needed a resolution.)
- what ends the transaction without committing it (`ROLLBACK`, a reset, a change of user): the
  rows are dropped, the units come back when the transaction is resolved;
- anything else runs after the rows were written and checked, in their own round trip
  (`before`, from `BackendConn.command`).
A row that cannot be written (an error, a kill) means the member's UPDATE did not happen for
it: its transaction is rolled back and the client's statement fails with 1213 (MySQL's answer
when it rolls a transaction back under a statement).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Final

from proxy.core.errors import BackendError, BackendLost, CloseReason, CutShort
from proxy.net import protocol as P

if TYPE_CHECKING:
    from proxy.backends.reply import Relayed

# The connection (backend.BackendConn, which calls in here: typed loosely, no import circle)
BackendConn = Any

log = logging.getLogger("seckill.escrow")

_PLAIN_COMMIT: Final = re.compile(rb"\s*COMMIT(?:\s+WORK)?\s*;?\s*", re.I)
_PLAIN_ROLLBACK: Final = re.compile(rb"\s*ROLLBACK(?:\s+WORK)?\s*;?\s*", re.I)
_ENDS_WITHOUT_COMMIT: Final = frozenset({P.COM_RESET_CONNECTION, P.COM_CHANGE_USER, P.COM_QUIT})
DEADLOCK = (1213, "40001", "Deadlock found when trying to get lock; try restarting transaction")
DEADLOCK_ERR: Final = P.make_err(*DEADLOCK)


def plain_commit(payload: bytes) -> bool:
    return payload[0] == P.COM_QUERY and _PLAIN_COMMIT.fullmatch(payload, 1) is not None


def may_pass(payload: bytes, lane: str) -> bool:
    """The fast lane may run the client's command while confirm rows wait: a plain COMMIT
    (it carries them, `with_rows`) or one write (classify.py's lane "write": INSERT, UPDATE,
    DELETE, REPLACE; no multi-statement, no hint; a COM_STMT_EXECUTE of one), which goes ahead
    of them. Statements that read the diagnostics area or the session's last results go after
    the rows' own round trip, where they see the same (`before`)."""
    return lane == "write" or plain_commit(payload)


async def before(c: BackendConn, payload: bytes) -> None:
    """A command is about to go to `c` while confirm rows wait there: write them first (or
    drop them when the command ends the transaction without a commit, or it is over)."""
    rows, c.confirms = c.confirms, []
    # Over: no transaction, none waiting to start (a deferred BEGIN in `io.prefix`) and none
    # the row would start (autocommit off: the row opens the transaction, as the UPDATE would)
    if ((not c.in_trans and not c.io.prefix and c.status & P.SERVER_STATUS_AUTOCOMMIT)
            or payload[0] in _ENDS_WITHOUT_COMMIT
            or (payload[0] == P.COM_QUERY and _PLAIN_ROLLBACK.fullmatch(payload, 1) is not None)):
        return
    try:
        res = await c.query_each("; ".join(rows))
        done = len(res) == len(rows) and all(o is not None and o.affected_rows == 1
                                             for _, o in res)
    except BackendError as e:
        log.warning("escrow: confirm rows not written (%s); the transaction is rolled back", e)
        done = False
    if not done:
        await roll_back(c)


async def roll_back(c: BackendConn) -> None:
    """The member's transaction lacks a confirm row: it must not commit. Raises 1213."""
    try:
        await c.execute("ROLLBACK")
    except BackendError:
        c.retire(CloseReason.STATE_UNKNOWN)  # (its transaction dies with it)
    raise BackendError(*DEADLOCK, DEADLOCK_ERR)


async def failed(c: BackendConn, err: bytes, ping: bool = False) -> bytes:
    """A confirm row failed ahead of the COMMIT (`commit_with`, the fast lane's `with_rows`):
    MariaDB ran nothing after it, the COMMIT neither. The transaction is rolled back here; what
    the client's COMMIT gets: 1213."""
    log.warning("escrow: confirm row not written (%s); the transaction is rolled back",
                P.parse_err(err).message)
    c.diag = c.warned = True
    if c.broken:  # closed already: its transaction died with it
        return DEADLOCK_ERR
    try:
        if ping:  # MariaDB stopped at the ERR; the ping behind it is answered still
            await c.read_packet()
        await roll_back(c)
    except BackendError:
        pass  # (1213, always)
    except BackendLost:
        c.retire(CloseReason.LOST)  # (its transaction died with it: rolled back too)
    return DEADLOCK_ERR


# A COM_PING goes behind `DELETE reservation...; COMMIT`: a KILL QUERY landing between the two
# makes MariaDB (10.11) stop without a reply (backend.BackendConn.query_each). The ping's reply
# in a confirm row's place (no "more results" flag) or in the COMMIT's (sequence id 1) says the
# COMMIT never ran: the order is rolled back, 1213, as after a failed confirm row.
PING: Final = b"\x01\x00\x00\x00" + bytes((P.COM_PING,))
CUT_SHORT_ERR: Final = CutShort().raw  # (1317, as the KILL would have the statements fail)


def cut_short(ok: bytes) -> bool:
    """A reply packet in a confirm row's place that cannot be one: the ping's."""
    return len(ok) >= 5 and ok[0] == 0x00 and not P.parse_ok(ok, True).status & \
        P.SERVER_MORE_RESULTS_EXISTS


async def commit_with(c: BackendConn, payload: bytes, out: Any,
                      ok_hook: Any) -> Relayed:
    """The client's plain COMMIT with the waiting confirm rows ahead of it, in one round
    trip; the rows' own OKs are not the client's (the COMMIT's reply goes out renumbered as
    the only one). BackendLost propagates as for any COMMIT (outcome unknown to the client;
    the resolution reads the confirm table, which tells the truth either way)."""
    from proxy.backends.reply import ReplyScanner

    rows, body = _take_with(c, payload)
    await c.command(body, PING)
    late = []
    for sql in rows:
        pkt = await c.read_packet()
        if pkt[0] == 0xFF:  # MariaDB ran nothing after it: the transaction is still open
            raise BackendError(*DEADLOCK, await failed(c, pkt, ping=True))
        if cut_short(pkt):
            raise BackendError(*DEADLOCK, await failed(c, CUT_SHORT_ERR))
        if not affected_one(pkt):
            late.append(sql)
    pkt = await c.read_packet()  # the COMMIT's reply: one packet, OK or ERR
    if c.seq_in == 1:  # the ping's, in the COMMIT's place
        raise BackendError(*DEADLOCK, await failed(c, CUT_SHORT_ERR))
    sc = ReplyScanner(c, ok_hook)  # (as `relay` reads it)
    piece = sc.feed(P.packet(pkt, c.seq_in))
    out.write(renumber(piece, len(rows)))
    r = sc.r
    try:
        await c.read_packet()  # the ping's OK
    except BackendLost:
        pass  # (retired; the COMMIT's answer is given)
    if committed_without(late, r, c):
        await write_late(c, late)
    sold_at_commit(c, payload, rows, late, r)
    return r


def sold_at_commit(c: BackendConn, payload: bytes, rows: list[str], late: list[str],
                   r: Relayed) -> None:
    """The client's plain COMMIT carried `rows`, each deleted its reservation, and it
    committed: those sales are final, nothing is left to resolve (session.txn_over hands
    them to escrow.sold). Anything else (a row that said "0 rows", an error, a transaction
    still open) leaves them to a resolution, which reads the truth. Both paths call this."""
    if rows and not late and r.err is None and not c.in_trans and plain_commit(payload):
        c.sold = rows


def committed_without(late: list[str], r: Relayed, c: BackendConn) -> bool:
    """The COMMIT went through although some confirm rows said "0 rows" (`write_late`)."""
    return bool(late) and r.err is None and not c.in_trans


async def write_late(c: BackendConn, late: list[str]) -> None:
    """Never seen: a confirm answered "0 rows" without an error and MariaDB went on to commit.
    The order is committed: its rows are written now, on its connection, before the session's
    transaction counts as over (the resolution reads them). Both paths call this."""
    log.error("escrow: %d confirm rows written after their COMMIT", len(late))
    try:
        await c.execute("; ".join(late))
    except (BackendError, BackendLost) as e:
        log.critical("escrow: confirm rows %s NOT written after COMMIT (%s): those units "
                     "will be returned to stock although sold", late, e)


def affected_one(ok: bytes) -> bool:
    """An OK packet's payload says exactly one row (a confirm row written)."""
    return len(ok) > 1 and ok[0] == 0x00 and ok[1] == 1


def with_rows(c: BackendConn, payload: bytes) -> tuple[bytes, list[str]]:
    """The fast lane's form of `commit_with`, for the client's plain COMMIT:
    the framed multi-statement and the rows whose replies come ahead of the client's (the lane
    drops them, wire.py `skip`, and checks that each wrote its row; after a failed one it rolls
    the order back and answers 1213)."""
    rows, body = _take_with(c, payload)
    return P.packet(body, 0) + PING, rows


def _take_with(c: BackendConn, payload: bytes) -> tuple[list[str], bytes]:
    """The waiting rows, taken off the connection, and the COM_QUERY that sends them ahead
    of the client's COMMIT (`payload`): both paths send the same statement."""
    rows, c.confirms = c.confirms, []
    return rows, bytes((P.COM_QUERY,)) + "; ".join(rows).encode() + b"; " + payload[1:]


def renumber(data: bytes, back: int) -> bytes:
    """Packets relayed after `back` swallowed ones: their sequence ids as if first."""
    if not back:
        return data
    buf = bytearray(data)
    pos, n = 0, len(buf)
    while pos + 4 <= n:
        plen = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
        buf[pos + 3] = (buf[pos + 3] - back) & 0xFF
        pos += 4 + plen
    return bytes(buf)
