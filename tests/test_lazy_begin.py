"""A plain BEGIN answered by the proxy and sent with the transaction's first statement
(exec/lazybegin.py, net/wire.py prefix/skip): differential against MariaDB.
Generated statement sequences run directly and through the proxy from the same starting
state must give the same status flags, results, errors and warnings at every step, and leave
the same rows; then the forms that must not be deferred, the binary protocol, a hot-row
UPDATE as the first statement, and a proxy killed before COMMIT."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy

EXAMPLES = int(os.environ.get("LAZY_BEGIN_EXAMPLES", "40"))
SEED = int(os.environ.get("LAZY_BEGIN_SEED", "11"))

# READ ONLY transactions run on a replica (plan.py), a feature of its own with its own
# generated tests (test_isolation.py): here only its end by a read-write BEGIN, below
BEGINS = ["BEGIN", "BEGIN WORK", "START TRANSACTION", "begin",
          "START TRANSACTION WITH CONSISTENT SNAPSHOT", "START TRANSACTION READ WRITE"]
OTHERS = [
    "COMMIT", "ROLLBACK", "SELECT @@in_transaction", "SELECT ROW_COUNT()", "SHOW WARNINGS",
    "SELECT @@warning_count", "INSERT INTO lb_t (v) VALUES (1)",
    "UPDATE lb_t SET v = v + 1 WHERE id = 1", "SELECT COUNT(*), COALESCE(SUM(v), 0) FROM lb_t",
    "INSERT INTO lb_nosuch VALUES (1)", "SELECT 1/0", "SET autocommit = 0", "SET autocommit = 1",
    "SET sql_mode = 'NO_BACKSLASH_ESCAPES'", "SET sql_mode = DEFAULT", "DO 1",
    "SELECT LAST_INSERT_ID()", "INSERT INTO lb_t (id, v) VALUES (1, 0)",  # duplicate key
    "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "SELECT @@tx_isolation",
]


@pytest.fixture(scope="module")
def lproxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.lb_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
                        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id BIGINT PRIMARY KEY, "
                        "quantity INT NOT NULL)",
                        "CREATE TABLE IF NOT EXISTS shop.orders (id BIGINT AUTO_INCREMENT "
                        "PRIMARY KEY, sku_id BIGINT NOT NULL, user_id BIGINT NOT NULL)")
    sandbox.wait_replicas()
    p = start_proxy(tmp_path_factory.mktemp("lazy-begin"), make_config(
        sandbox, hotrow={"mode": "merge"}))
    yield p
    p.stop()


def _reset(sandbox: Sandbox) -> None:
    sandbox.primary.sql("DELETE FROM shop.lb_t", "ALTER TABLE shop.lb_t AUTO_INCREMENT = 1",
                        "INSERT INTO shop.lb_t (id, v) VALUES (1, 0)")


def _run(port: int, seq: list[str]) -> list[Any]:
    c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                        database="shop", autocommit=True, ssl_disabled=True)
    out: list[Any] = []
    with c.cursor() as cur:
        for sql in seq:
            try:
                cur.execute(sql)
                res: Any = [tuple(r) for r in cur.fetchall()] if cur.description else cur.rowcount
                if sql == "SELECT LAST_INSERT_ID()" or sql.startswith("SELECT @@tx"):
                    res = "-"  # (differs with AUTO_INCREMENT reuse; the isolation read is fine)
                out.append((sql, c.server_status, res))
            except pymysql.MySQLError as e:
                out.append((sql, c.server_status, "error", e.args[0]))
        cur.execute("ROLLBACK")
    c.close()
    return out


def _deferred(p: ProxyProc) -> float:
    return p.metric("seckill_proxy_deferred_begins_total")


def test_generated_sequences_answer_as_mariadb(sandbox: Sandbox, lproxy: ProxyProc) -> None:
    rnd = random.Random(SEED)
    before = _deferred(lproxy)
    for n in range(EXAMPLES):
        seq = ["BEGIN", "COMMIT"]  # the session's first real BEGIN: what allows deferring
        for _ in range(rnd.randint(4, 14)):
            seq.append(rnd.choice(BEGINS) if rnd.random() < 0.3 else rnd.choice(OTHERS))
        _reset(sandbox)
        direct = _run(sandbox.primary_port, seq)
        rows_direct = sandbox.primary.sql("SELECT id, v FROM shop.lb_t ORDER BY id")
        _reset(sandbox)
        proxied = _run(lproxy.port, seq)
        rows_proxy = sandbox.primary.sql("SELECT id, v FROM shop.lb_t ORDER BY id")
        for i, (d, p) in enumerate(zip(direct, proxied, strict=True)):
            assert d == p, f"example {n}, step {i}: {seq[:i + 1]}\ndirect {d}\nproxy  {p}"
        assert rows_direct == rows_proxy, (n, seq)
    assert _deferred(lproxy) > before  # the sequences did take the deferred path


def test_diagnostics_after_a_deferred_begin(sandbox: Sandbox, lproxy: ProxyProc) -> None:
    """MariaDB's BEGIN keeps the statement before's warnings and makes ROW_COUNT() 0."""
    seq = ["BEGIN", "COMMIT", "SELECT 1/0", "BEGIN", "SHOW WARNINGS", "SELECT @@warning_count",
           "COMMIT", "SELECT 1/0", "BEGIN", "SELECT ROW_COUNT()", "INSERT INTO lb_t (v) VALUES (5)",
           "SELECT ROW_COUNT()", "ROLLBACK", "BEGIN", "COMMIT", "SELECT @@in_transaction"]
    _reset(sandbox)
    assert _run(sandbox.primary_port, seq) == _run(lproxy.port, seq)


def test_the_binary_protocol_first_statement(sandbox: Sandbox, lproxy: ProxyProc) -> None:
    """A deferred BEGIN sent ahead of a COM_STMT_EXECUTE (sysbench's and most drivers' form):
    the insert is inside the transaction, a ROLLBACK removes it."""
    import mysql.connector

    _reset(sandbox)
    before = _deferred(lproxy)
    c = mysql.connector.connect(host="127.0.0.1", port=lproxy.port, user="app", password="app",
                                database="shop", autocommit=True, ssl_disabled=True)
    cur = c.cursor(prepared=True)
    for _ in range(3):
        c.cmd_query("BEGIN")
        cur.execute("INSERT INTO lb_t (v) VALUES (?)", (42,))
        c.cmd_query("SELECT @@in_transaction")
        assert c.get_rows()[0] == [(1,)]  # inside the deferred transaction
        c.cmd_query("ROLLBACK")
    c.close()
    assert sandbox.primary.sql("SELECT COUNT(*) FROM shop.lb_t WHERE v = 42")[0][0] == 0
    assert _deferred(lproxy) >= before + 2


def test_a_merged_update_first_in_a_deferred_transaction(sandbox: Sandbox,
                                                         lproxy: ProxyProc) -> None:
    """BEGIN; UPDATE inventory (hot, merged: the confirm row is the member's first statement,
    sent with the BEGIN); ROW_COUNT(); COMMIT: as MariaDB answers, stock and orders agree."""
    sandbox.primary.sql("REPLACE INTO shop.inventory VALUES (9901, 5)", "DELETE FROM shop.orders "
                        "WHERE sku_id = 9901")
    seq = ["BEGIN", "COMMIT"] + [
        s for _ in range(7) for s in (
            "BEGIN", "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 9901 AND "
            "quantity > 0", "SELECT ROW_COUNT()", "SHOW WARNINGS",
            "INSERT INTO orders (sku_id, user_id) VALUES (9901, 1)", "COMMIT")]
    got = _run(lproxy.port, seq)
    counts = [r[2] for r in got if r[0] == "SELECT ROW_COUNT()"]
    assert counts == [[(1,)]] * 5 + [[(0,)]] * 2  # 5 in stock: the 6th and 7th get nothing
    left = sandbox.primary.sql("SELECT quantity FROM shop.inventory WHERE sku_id = 9901")[0][0]
    orders = sandbox.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE sku_id = 9901")[0][0]
    assert (left, orders) == (0, 7)  # (the client inserts its order either way)


def test_kill_9_before_commit_leaves_no_transaction_behind(sandbox: Sandbox,
                                                           tmp_path: Any) -> None:
    """kill -9 of the proxy between a deferred transaction's merged UPDATE answer and its
    COMMIT: MariaDB rolls the member's transaction back with its connection (the order row and
    the confirm row go), the reservation comes back to the stock when recovered."""
    sandbox.primary.sql("REPLACE INTO shop.inventory VALUES (9902, 3)",
                        "DELETE FROM shop.orders WHERE sku_id = 9902")
    p = start_proxy(tmp_path, make_config(sandbox, hotrow={"mode": "merge"}))
    try:
        c = p.connect()
        with c.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("COMMIT")
            cur.execute("BEGIN")  # deferred
            cur.execute("INSERT INTO orders (sku_id, user_id) VALUES (9902, 7)")
            cur.execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 9902 "
                        "AND quantity > 0")
            assert cur.rowcount == 1
        p.proc.send_signal(signal.SIGKILL)
        p.proc.wait(10)
    finally:
        p.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # MariaDB notices the dead connection
        if sandbox.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE sku_id = 9902")[0][0] == 0:
            break
        time.sleep(0.2)
    assert sandbox.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE sku_id = 9902")[0][0] == 0
    p2 = start_proxy(tmp_path, make_config(
        sandbox, hotrow={"mode": "merge", "recover_after_s": 1}))
    try:  # the next proxy recovers the reserved unit (its first use of the rule starts it)
        c2 = p2.connect()
        with c2.cursor() as cur:
            cur.execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 9902 "
                        "AND quantity > 0")
        c2.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sandbox.primary.sql("SELECT quantity FROM shop.inventory WHERE sku_id = 9902"
                                   )[0][0] == 2:
                break
            time.sleep(0.5)
        assert sandbox.primary.sql("SELECT quantity FROM shop.inventory WHERE sku_id = 9902"
                                   )[0][0] == 2  # 3 - the new proxy's one; the dead one's back
    finally:
        p2.stop()


def test_a_read_write_begin_ends_a_read_only_transaction_on_a_replica(
        sandbox: Sandbox, lproxy: ProxyProc) -> None:
    """START TRANSACTION READ ONLY runs on a replica; a BEGIN that may write inside it commits
    it and starts the new transaction on the primary, as MySQL does. Before, it ran on the
    replica, and the session's writes after it went there (the primary never saw them)."""
    for begin in ("START TRANSACTION READ WRITE", "BEGIN", "START TRANSACTION WITH CONSISTENT "
                  "SNAPSHOT"):
        seq = ["SET autocommit = 0", "START TRANSACTION READ ONLY", begin,
               "UPDATE lb_t SET v = v + 1 WHERE id = 1", "SELECT @@in_transaction",
               "START TRANSACTION READ WRITE", "SET autocommit = 1"]
        _reset(sandbox)
        direct = _run(sandbox.primary_port, seq)
        want = sandbox.primary.sql("SELECT v FROM shop.lb_t WHERE id = 1")
        _reset(sandbox)
        assert _run(lproxy.port, seq) == direct, begin
        assert sandbox.primary.sql("SELECT v FROM shop.lb_t WHERE id = 1") == want == [(1,)]
        c = lproxy.connect()
        with c.cursor() as cur:
            cur.execute("START TRANSACTION READ ONLY")
            cur.execute(begin)
            cur.execute("SELECT @@server_id")
            assert cur.fetchone() == (1,)  # the primary's
            cur.execute("ROLLBACK")
        c.close()

