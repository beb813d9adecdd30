"""The escrow's confirm row written late (backends/confirms.py), against real MariaDB: after a
merged UPDATE inside a transaction, whatever the client does next (COMMIT, other statements,
statements that commit implicitly, a change of database, a reset, ROLLBACK, a kill -9 of the
proxy, a confirm row that cannot be written) the unit is sold exactly when the order
committed: stock + committed order rows = the stock before, nothing left reserved."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from types import SimpleNamespace

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.confirms import affected_one, plain_commit, renumber
from proxy.net import protocol as P
from proxy.net.wire import PacketIO
from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy
from .test_escrow import LOG, UPD, reservations_made, settle, setup, state

# The member's confirm row (the DELETE of its reservation) refused, as a failed write would be
REFUSE = ("CREATE TRIGGER seckill_proxy.refuse_sale BEFORE DELETE ON seckill_proxy.hotrow_reservation "
          "FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused'")
UNREFUSE = "DROP TRIGGER IF EXISTS seckill_proxy.refuse_sale"


def ends(proxy: ProxyProc) -> dict[str, float]:
    """Reserved units by how they ended (seckill_proxy_hotrow_reservations_total)."""
    return {k: proxy.metric(f'seckill_proxy_hotrow_reservations_total{{outcome="{k}"}}')
            for k in ("sold_at_commit", "sold", "returned")}

def test_renumber_and_plain_commit() -> None:
    ok = b"\x07\x00\x00\x03\x00\x00\x00\x02\x00\x00\x00"
    two = ok + ok[:3] + b"\x04" + ok[4:]
    assert renumber(two, 2) == ok[:3] + b"\x01" + ok[4:] + ok[:3] + b"\x02" + ok[4:]
    assert renumber(ok, 0) == ok
    assert renumber(ok[:3] + b"\x00" + ok[4:], 1)[3] == 0xFF
    for yes in (b"\x03COMMIT", b"\x03 commit work ; ", b"\x03Commit;"):
        assert plain_commit(yes)
    for no in (b"\x03COMMIT AND CHAIN", b"\x03COMMIT RELEASE", b"\x03ROLLBACK", b"\x16COMMIT",
               b"\x03COMMIT; SELECT 1", b"\x03/* x */ COMMIT"):
        assert not plain_commit(no)


def _frame(payload: bytes, seq: int) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes((seq,)) + payload


def test_each_dropped_ok_is_seen_and_a_confirm_without_its_row_is_told() -> None:
    """The fast lane sends `DELETE reservation; COMMIT` and drops the rows' OKs (wire `skip`):
    it sees each one (`skipped_ok`) and so can tell a row that answered "0 rows" without an
    error (MariaDB then went on to COMMIT), which it writes after the COMMIT as the general
    path does (confirms.write_late)."""
    assert affected_one(P.make_ok(1, 0, 2, 0))
    for no in (P.make_ok(0, 0, 2, 0), P.make_ok(257, 0, 2, 0), P.make_err(1062, "23000", "dup"),
               b"\x00"):
        assert not affected_one(no)

    async def run() -> tuple[list[bytes], list[bytes]]:
        io = PacketIO()
        io.connection_made(SimpleNamespace(is_closing=lambda: False))  # type: ignore[arg-type]
        seen: list[bytes] = []
        got: list[bytes] = []
        io.skipped_ok, io.sink, io.skip = seen.append, got.append, 2
        one, zero, commit = P.make_ok(1, 0, 3, 0), P.make_ok(0, 0, 3, 0), P.make_ok(0, 0, 2, 0)
        stream = _frame(one, 1) + _frame(zero, 2) + _frame(commit, 3)
        for i in range(0, len(stream), 5):  # in pieces, as a socket may hand them over
            io.data_received(stream[i:i + 5])
        return seen, got

    seen, got = asyncio.run(run())
    assert [affected_one(ok) for ok in seen] == [True, False]
    assert b"".join(got) == _frame(P.make_ok(0, 0, 2, 0), 3)


@settings(max_examples=300, deadline=None)
@given(oks=st.lists(st.integers(0, 300), min_size=1, max_size=4),
       tail=st.binary(max_size=20), cuts=st.lists(st.integers(1, 40), max_size=12))
def test_skipped_replies_are_dropped_however_the_bytes_arrive(
        oks: list[int], tail: bytes, cuts: list[int]) -> None:
    """`skip` OKs in front of a reply, handed over in arbitrary pieces: each OK is seen once
    and whole, in order, and exactly the bytes after them reach the reader."""
    async def run() -> tuple[list[bytes], bytes]:
        io = PacketIO()
        io.connection_made(SimpleNamespace(is_closing=lambda: False))  # type: ignore[arg-type]
        seen: list[bytes] = []
        got: list[bytes] = []
        io.skipped_ok, io.sink, io.skip = seen.append, got.append, len(oks)
        stream = b"".join(_frame(P.make_ok(a, 0, 2, 0), i + 1) for i, a in enumerate(oks)) + tail
        pos = 0
        for c in [*cuts, len(stream)]:
            if pos < len(stream):
                io.data_received(stream[pos:pos + c])
                pos += c
        return seen, b"".join(got)

    seen, got = asyncio.run(run())
    assert seen == [P.make_ok(a, 0, 2, 0) for a in oks]
    assert got == tail


def test_a_ping_reply_come_with_the_commits_is_dropped_at_once() -> None:
    """The lane hands the bytes after the COMMIT's reply to `skip_reply`: the ping's OK, whole
    (as nearly always under load), is dropped then and there, so nothing is left to skip and
    the connection takes the session's next deferred BEGIN (lazybegin.py); in pieces, the
    rest is dropped on arrival; whatever follows it is handed back (out of step)."""
    async def run() -> None:
        ping_ok = _frame(P.make_ok(0, 0, 2, 0), 1)
        for head, later in ((ping_ok, b""), (ping_ok[:3], ping_ok[3:]), (b"", ping_ok)):
            io = PacketIO()
            io.connection_made(SimpleNamespace(is_closing=lambda: False))  # type: ignore[arg-type]
            got: list[bytes] = []
            io.sink = got.append
            assert io.skip_reply(head) == b""
            assert io.skip == (0 if head == ping_ok else 1)
            if later:
                io.data_received(later)
            assert io.skip == 0 and got == []
            io.data_received(b"next")
            assert got == [b"next"]
        io = PacketIO()
        io.connection_made(SimpleNamespace(is_closing=lambda: False))  # type: ignore[arg-type]
        assert io.skip_reply(ping_ok + b"extra") == b"extra" and io.skip == 0

    asyncio.run(run())


def test_the_ping_behind_the_confirm_rows_and_commit() -> None:
    """`DELETE reservation...; COMMIT` goes out with a COM_PING behind it (a KILL QUERY between the
    two makes MariaDB stop without a reply): in a row's place the ping's OK is told apart by
    its missing "more results" flag, in the COMMIT's by its sequence id (the lane and
    `commit_with` check that)."""
    from proxy.backends.confirms import PING, cut_short, with_rows

    assert not cut_short(P.make_ok(1, 0, 2 | P.SERVER_MORE_RESULTS_EXISTS, 0))  # a row's
    assert cut_short(P.make_ok(0, 0, 2 | P.SERVER_STATUS_IN_TRANS, 0))  # the ping's
    assert not cut_short(P.make_err(1317, "70100", "Query execution was interrupted"))
    c = SimpleNamespace(confirms=["INSERT INTO c VALUES (1)"])
    packet, rows = with_rows(c, b"\x03COMMIT")  # type: ignore[arg-type]
    assert rows == ["INSERT INTO c VALUES (1)"] and c.confirms == []
    assert packet.endswith(b"INSERT INTO c VALUES (1); COMMIT" + PING)
    assert PING == b"\x01\x00\x00\x00" + bytes((P.COM_PING,))


# (what the client does after the merged UPDATE, whether its order then commits)
AFTER = [
    ([], "COMMIT", True),
    (["SELECT ROW_COUNT()", "SHOW WARNINGS"], "COMMIT", True),
    (["INSERT INTO inventory_log (sku_id, delta) VALUES (81, 0)"], "COMMIT", True),
    (["SELECT quantity FROM inventory WHERE sku_id = 81"], "COMMIT WORK", True),
    ([], "COMMIT AND NO CHAIN", True),
    (["CREATE TABLE IF NOT EXISTS ddl_commits (a INT)"], "ROLLBACK", True),  # implicit commit
    (["SET autocommit = 1"], "ROLLBACK", False),  # (already 1: commits nothing, as MySQL)
    (["BEGIN"], "ROLLBACK", True),  # so does BEGIN
    (["DO 1"], "ROLLBACK", False),
    ([], "ROLLBACK", False),
    (["SAVEPOINT s1"], "ROLLBACK TO SAVEPOINT s1", None),  # (then ROLLBACK below)
]


@pytest.mark.parametrize("between,end,commits", AFTER, ids=[f"{'+'.join(b) or '-'} {e}" for b, e, _ in AFTER])
def test_after_the_merged_update_the_unit_is_sold_exactly_when_the_order_commits(
        proxy: ProxyProc, sandbox: Sandbox, between: list[str], end: str, commits: bool | None
) -> None:
    setup(sandbox, {81: 10})
    m0 = reservations_made(sandbox)
    ends0 = ends(proxy)
    c = proxy.connect()
    try:
        with c.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(LOG.format(sku=81, n=1))
            assert cur.execute(UPD.format(sku=81, n=1)) == 1
            for sql in between:
                cur.execute(sql)
            cur.execute(end)
            if commits is None:
                cur.execute("ROLLBACK")
                commits = False
    finally:
        c.close()
    assert reservations_made(sandbox) - m0 == 1  # merged: reserved, confirmed late
    settle(sandbox)
    stock, logged = state(sandbox)
    assert logged.get(81, 0) == (1 if commits else 0)
    # sold at its COMMIT (which carried the delete), or resolved: sold or returned
    # (a write passes ahead of the waiting row; anything else has it written first)
    at_commit = (bool(commits) and plain_commit(b"\x03" + end.encode())
                 and all(sql.startswith("INSERT") for sql in between))
    got = {k: n - ends0[k] for k, n in ends(proxy).items()}
    assert got == {"sold_at_commit": int(at_commit), "returned": int(not commits),
                   "sold": int(bool(commits) and not at_commit)}, got
    assert stock[81] == 10 - logged.get(81, 0)
    sandbox.primary.sql("DROP TABLE IF EXISTS shop.ddl_commits")


def test_change_of_database_and_reset_and_quit(proxy: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {82: 10})
    for step in ("select_db", "reset", "close"):
        c = proxy.connect()
        with c.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute(LOG.format(sku=82, n=1))
            assert cur.execute(UPD.format(sku=82, n=1)) == 1
        if step == "select_db":
            c.select_db("shop")  # COM_INIT_DB: the transaction goes on
            with c.cursor() as cur:
                cur.execute("COMMIT")
        elif step == "reset":
            c._execute_command(0x1F, b"")  # COM_RESET_CONNECTION: rolled back
            c._read_ok_packet()
        c.close()
    settle(sandbox)
    stock, logged = state(sandbox)
    assert logged.get(82, 0) == 1 and stock[82] == 9


def test_a_confirm_row_that_cannot_be_written_rolls_the_order_back(
        proxy: ProxyProc, sandbox: Sandbox) -> None:
    """The confirm row cannot be written (a trigger refuses the reservation's delete) between
    the UPDATE's answer and the COMMIT that carries it: the order must not commit (its unit
    would be returned although sold). The client's COMMIT (the fast lane's) gets 1213 (rolled
    back), a write in between (the UPDATE-first order's INSERT) having passed ahead of the row,
    and its connection goes on outside any transaction."""
    setup(sandbox, {83: 10})
    for update_first in (False, True):
        c = proxy.connect()
        try:
            with c.cursor() as cur:
                cur.execute("BEGIN")
                if not update_first:
                    cur.execute(LOG.format(sku=83, n=1))
                assert cur.execute(UPD.format(sku=83, n=1)) == 1
                sandbox.primary.sql(REFUSE)
                if update_first:
                    assert cur.execute(LOG.format(sku=83, n=1)) == 1
                lane = proxy.metric("seckill_proxy_fastlane_statements_total")
                with pytest.raises(pymysql.err.OperationalError) as e:
                    cur.execute("COMMIT")
                assert e.value.args[0] == 1213
                assert proxy.metric("seckill_proxy_fastlane_statements_total") == lane + 1
                cur.execute("SELECT @@in_transaction")
                assert cur.fetchall() == ((0,),)
                cur.execute("COMMIT")  # nothing left to commit
        finally:
            c.close()
            sandbox.primary.sql(UNREFUSE)
    settle(sandbox)
    stock, logged = state(sandbox)
    assert logged.get(83, 0) == 0 and stock[83] == 10


def test_a_write_after_the_merged_update_passes_the_confirm_row(
        proxy: ProxyProc, sandbox: Sandbox) -> None:
    """The UPDATE-first order: the INSERT after the merged UPDATE goes out on the fast lane
    ahead of the waiting confirm row (confirms.may_pass), which the COMMIT carries, so the
    sale is final at the COMMIT (no resolution). The order commits with its unit sold; an
    INSERT that fails there fails as it would alone (1366,
    transaction still open, the UPDATE kept: the order commits without its log row, as on
    MySQL); a ROLLBACK after it returns the unit."""
    setup(sandbox, {85: 10})
    bad = "INSERT INTO inventory_log (sku_id, delta) VALUES (85, 'x')"
    for then, end, sold, logs in (([LOG], "COMMIT", 1, 1), ([bad], "COMMIT", 1, 0),
                                  ([LOG], "ROLLBACK", 0, 0), ([LOG, LOG], "COMMIT", 1, 2)):
        stock0, logged0 = state(sandbox)
        ends0 = ends(proxy)
        c = proxy.connect()
        try:
            with c.cursor() as cur:
                cur.execute("SET sql_mode = 'STRICT_TRANS_TABLES'")
                cur.execute("BEGIN")
                assert cur.execute(UPD.format(sku=85, n=1)) == 1
                for sql in then:
                    lane = proxy.metric("seckill_proxy_fastlane_statements_total")
                    if sql == bad:
                        with pytest.raises(pymysql.err.DataError) as e:
                            cur.execute(sql.format(sku=85, n=1))
                        assert e.value.args[0] == 1366
                    else:
                        assert cur.execute(sql.format(sku=85, n=1)) == 1
                        assert cur.lastrowid > 0  # the log row's own id, not the confirm's
                    assert proxy.metric("seckill_proxy_fastlane_statements_total") == lane + 1
                if bad in then:  # (this has the waiting row written first: resolved, below)
                    cur.execute("SELECT @@in_transaction")
                    assert cur.fetchall() == ((1,),)
                cur.execute(end)
        finally:
            c.close()
        settle(sandbox)
        stock, logged = state(sandbox)
        assert stock[85] == stock0[85] - sold
        assert logged.get(85, 0) - logged0.get(85, 0) == logs
        at_commit = sold if bad not in then else 0
        got = {k: n - ends0[k] for k, n in ends(proxy).items()}
        assert got == {"sold_at_commit": at_commit, "sold": sold - at_commit,
                       "returned": 1 - sold}, got


@pytest.mark.parametrize("cursors", [2, 1], ids=["prepared_once", "prepared_each_time"])
def test_a_prepared_write_after_the_merged_update(
        proxy: ProxyProc, sandbox: Sandbox, cursors: int) -> None:
    """The UPDATE-first order with server-side prepared statements.

    Prepared once, executed each time (sysbench, Connector/J with useServerPrepStmts): the
    INSERT's COM_STMT_EXECUTE goes out on the fast lane ahead of the waiting confirm row,
    which the COMMIT carries (confirms.may_pass). One cursor for both statements
    (Connector/Python closes and prepares again): the COM_STMT_CLOSE carries the deferred
    BEGIN out, unanswered, and the PREPARE writes the row first (confirms.before), which found
    the transaction open only since the connection's status says so at once (before that fix,
    the row was dropped and the order committed with its unit returned: an oversell).
    Either way: the order commits with its unit sold and its own insert id; a ROLLBACK returns
    the unit; when the row cannot be written the COMMIT gets 1213 and the transaction is gone,
    the unit back in stock and the log row never committed."""
    import mysql.connector

    setup(sandbox, {86: 10})
    m = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="app", password="app",
                                database="shop", autocommit=True, use_pure=True)
    try:
        cur = m.cursor(prepared=True)
        icur = m.cursor(prepared=True) if cursors == 2 else cur
        upd = "UPDATE inventory SET quantity = quantity - ? WHERE sku_id = ? AND quantity >= ?"
        ins = "INSERT INTO inventory_log (sku_id, delta) VALUES (?, ?)"
        for i, (end, sold, logs, drop) in enumerate((("COMMIT", 1, 1, False), ("COMMIT", 1, 1, False),
                                      ("ROLLBACK", 0, 0, False), ("COMMIT", 0, 0, True),
                                      ("COMMIT", 1, 1, False))):
            stock0, logged0 = state(sandbox)
            m.start_transaction()
            r0 = reservations_made(sandbox)
            cur.execute(upd, (1, 86, 1))
            assert cur.rowcount == 1
            assert reservations_made(sandbox) - r0 == 1  # merged: a confirm row waits
            if drop:
                sandbox.primary.sql(REFUSE)
            lane = proxy.metric("seckill_proxy_fastlane_statements_total")
            try:
                # (prepared each time, the PREPARE goes first and writes the row: refused,
                # it gets the 1213; else the COMMIT that carries it)
                icur.execute(ins, (86, -1))
                assert icur.rowcount == 1 and icur.lastrowid > 0
                # (the first EXECUTE, and the first after the connection was closed, prepares
                # on the backend connection too: the session path's)
                if cursors == 2 and 0 < i < 4:
                    assert proxy.metric("seckill_proxy_fastlane_statements_total") == lane + 1, i
                if not drop:
                    plain = m.cursor()
                    plain.execute("SELECT @@in_transaction")
                    assert plain.fetchall() == [(1,)]
                    plain.close()
                m.commit() if end == "COMMIT" else m.rollback()
                assert not drop
            except mysql.connector.Error as e:
                assert drop and e.errno == 1213, e
                m.rollback()  # (nothing left: the order was rolled back)
            finally:
                if drop:
                    sandbox.primary.sql(UNREFUSE)
            settle(sandbox)
            stock, logged = state(sandbox)
            assert stock[86] == stock0[86] - sold
            assert logged.get(86, 0) - logged0.get(86, 0) == logs
    finally:
        m.close()


def test_kill_9_between_the_merged_answer_and_the_commit(
        sandbox: Sandbox, tmp_path: Path) -> None:
    setup(sandbox, {84: 10})
    cfg = make_config(sandbox, hotrow={
        "mode": "merge", "recover_after_s": 1,
        "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}]})
    p = start_proxy(tmp_path, cfg)
    c = p.connect()
    with c.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(LOG.format(sku=84, n=1))
        assert cur.execute(UPD.format(sku=84, n=1)) == 1
    p.stop(signal.SIGKILL)  # the unit is reserved, its confirm row never written
    c.close()
    p2 = start_proxy(tmp_path, cfg)  # recovers what the dead one left
    try:
        c = p2.connect()
        with c.cursor() as cur:
            cur.execute("SELECT 1 FROM inventory LIMIT 1")
        c.close()
        settle(sandbox, 60)
        stock, logged = state(sandbox)
        assert logged.get(84, 0) == 0 and stock[84] == 10
    finally:
        p2.stop()


@pytest.mark.parametrize("update_first", [True, False], ids=["update_first", "insert_first"])
def test_autocommit_off_sessions(proxy: ProxyProc, sandbox: Sandbox, update_first: bool) -> None:
    """With autocommit=0 the transaction starts with its first statement: a merged UPDATE
    that comes first leaves its confirm row waiting on a connection not yet in a transaction
    (the row starts it). Every order committed, every unit sold once."""
    setup(sandbox, {85: 10})
    m0 = reservations_made(sandbox)
    c = proxy.connect(autocommit=False)
    try:
        with c.cursor() as cur:
            for _ in range(3):
                if not update_first:
                    cur.execute(LOG.format(sku=85, n=1))
                assert cur.execute(UPD.format(sku=85, n=1)) == 1
                if update_first:
                    cur.execute(LOG.format(sku=85, n=1))
                cur.execute("COMMIT")
            assert cur.execute(UPD.format(sku=85, n=1)) == 1  # alone, then COMMIT
            cur.execute("COMMIT")
    finally:
        c.close()
    settle(sandbox)
    stock, logged = state(sandbox)
    assert logged.get(85, 0) == 3 and stock[85] == 6
    if not update_first:
        assert reservations_made(sandbox) - m0 >= 3  # merged: reserved, confirmed late
