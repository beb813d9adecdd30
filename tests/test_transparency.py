"""Issue 13's findings, each shown against real MariaDB: through the proxy a client gets what
MySQL itself gives it (compared with a direct connection where the answer is comparable)."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy


@pytest.fixture(scope="module")
def tproxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    sandbox.primary.sql(
        "CREATE DATABASE IF NOT EXISTS shop2",
        "CREATE TABLE IF NOT EXISTS shop.tr_t (id INT PRIMARY KEY, v VARCHAR(20))",
        "CREATE TABLE IF NOT EXISTS shop2.tr_t (id INT PRIMARY KEY, v VARCHAR(20))",
        "REPLACE INTO shop.tr_t VALUES (1, 'shop')", "REPLACE INTO shop2.tr_t VALUES (1, 'shop2')",
        "CREATE TABLE IF NOT EXISTS shop.tr_log (id INT AUTO_INCREMENT PRIMARY KEY, "
        "note TEXT CHARACTER SET utf8mb4)",
        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id BIGINT PRIMARY KEY, "
        "quantity INT NOT NULL)",
        "DROP FUNCTION IF EXISTS shop.tr_writes",
        "CREATE FUNCTION shop.tr_writes(x INT) RETURNS INT DETERMINISTIC MODIFIES SQL DATA "
        "BEGIN INSERT INTO shop.tr_log (note) VALUES ('from a SELECT'); RETURN x; END",
        "SET GLOBAL local_infile = 1",
    )
    sandbox.wait_replicas()
    cfg = make_config(sandbox, routing={"read_consistency": "session", "max_wait_ms": 500})
    p = start_proxy(tmp_path_factory.mktemp("transparency"), cfg)
    try:
        yield p
    finally:
        p.stop()


def _both(sandbox: Sandbox, proxy: ProxyProc, **kw: Any) -> tuple[Any, Any]:
    args: dict[str, Any] = dict(host="127.0.0.1", user="app", password="app", database="shop",
                                autocommit=True)
    args.update(kw)
    return pymysql.connect(port=sandbox.primary_port, **args), pymysql.connect(port=proxy.port,
                                                                               **args)


def _q(c: Any, sql: str, args: Any = None) -> Any:
    with c.cursor() as cur:
        try:
            cur.execute(sql, args)
            out = ("ok", [tuple(r) for r in cur.fetchall()], cur.rowcount)
            while cur.nextset():
                pass
            return out
        except pymysql.err.MySQLError as e:
            return ("err", e.args[0])


def test_stored_function_in_select_runs_on_the_primary(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    """`SELECT f(x)` where f writes: on a replica it would break replication (or fail)."""
    c = tproxy.connect()
    before = sandbox.primary.sql("SELECT COUNT(*) FROM shop.tr_log")[0][0]
    assert _q(c, "SELECT *, tr_writes(id) FROM tr_t")[0] == "ok"
    assert _q(c, "SELECT shop.tr_writes(1)")[0] == "ok"
    assert sandbox.primary.sql("SELECT COUNT(*) FROM shop.tr_log")[0][0] == before + 2
    sandbox.wait_replicas()
    st = sandbox.replicas[0].sql("SHOW SLAVE STATUS")
    assert st and st[0][10] == "Yes" and st[0][11] == "Yes"  # both threads still running
    c.close()


def test_server_local_tables_and_locking_comments_stay_on_the_primary(
        sandbox: Sandbox, tproxy: ProxyProc) -> None:
    c = tproxy.connect()
    server_id = sandbox.primary.sql("SELECT @@server_id")[0][0]
    rows = _q(c, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES "
                 "WHERE VARIABLE_NAME = 'SERVER_ID'")
    assert rows[1] == [(str(server_id),)]
    # /*!50000 FOR UPDATE */ is executed by MySQL: the row lock must be taken on the primary
    c.begin()
    assert _q(c, "SELECT v FROM tr_t WHERE id = 1 /*!50000 FOR UPDATE */")[1] == [("shop",)]
    other = sandbox.primary.root()
    with other.cursor() as cur:
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("UPDATE shop.tr_t SET v = v WHERE id = 1")
        assert ei.value.args[0] == 1205  # locked by the proxied SELECT
    c.rollback()
    other.close()
    c.close()


def test_found_rows_and_warnings_of_the_clients_own_statement(
        sandbox: Sandbox, tproxy: ProxyProc) -> None:
    d, p = _both(sandbox, tproxy)
    for c in (d, p):
        c.cursor().execute("SELECT 1")  # a previous statement of the session
    for sql in ["SELECT SQL_CALC_FOUND_ROWS * FROM tr_t LIMIT 0", "SELECT FOUND_ROWS()",
                "SELECT CAST('x' AS INT)", "SHOW WARNINGS", "SELECT @@warning_count",
                "SHOW COUNT(*) WARNINGS", "SELECT nosuch FROM tr_t", "SHOW ERRORS"]:
        assert _q(p, sql) == _q(d, sql), sql
    d.close()
    p.close()


_CARRY_CAUSES = ["SELECT nosuchcol", "SELECT CAST('x' AS SIGNED), CAST('y' AS SIGNED)",
                 "SELECT 1/0 FROM tr_t"]
_CARRY_STEPS = [["COMMIT"], ["SET @tr_a = 1"], ["SET SESSION sql_mode = DEFAULT"], ["DO 1"],
                ["BEGIN", "COMMIT"], ["ROLLBACK"], ["COMMIT", "SET autocommit = 1"],
                ["COMMIT", "DO 1/0"], ["COMMIT", "SELECT COUNT(*) FROM tr_t"],
                ["SET @tr_b = (SELECT COUNT(*) FROM tr_t)"]]
_CARRY_DIAG = ["SHOW WARNINGS", "SHOW ERRORS", "SHOW WARNINGS LIMIT 1", "SHOW WARNINGS LIMIT 1, 1",
               "SHOW COUNT(*) WARNINGS", "SHOW COUNT(*) ERRORS", "SELECT @@warning_count",
               "SELECT @@session.error_count"]


@pytest.mark.parametrize("cause", _CARRY_CAUSES)
def test_diagnostics_stay_across_statements_that_open_no_table(
        sandbox: Sandbox, tproxy: ProxyProc, cause: str) -> None:
    """MySQL keeps the diagnostics area across a statement that opens no table and raises
    nothing (COMMIT, SET, DO 1), and replaces it when one does. Through the proxy the read that
    left them ran on a replica and the next statement on the primary: the area goes along."""
    for steps in _CARRY_STEPS:
        for diag in _CARRY_DIAG:
            d, p = _both(sandbox, tproxy)
            got = []
            for c in (d, p):
                _q(c, cause)
                for sql in steps:
                    _q(c, sql)
                with c.cursor() as cur:
                    cur.execute(diag)
                    got.append((cur.fetchall(), [x[:2] for x in cur.description],
                                cur._result.warning_count))
            assert got[1] == got[0], (cause, steps, diag)
            d.close()
            p.close()


def test_read_only_transaction_pin_does_not_send_writes_to_the_replica(
        tproxy: ProxyProc) -> None:
    c = tproxy.connect()
    with c.cursor() as cur:
        cur.execute("START TRANSACTION READ ONLY")
        cur.execute("SELECT @@server_id")
        assert cur.fetchone()[0] == 2  # on the replica
        cur.execute("SET @x = 5")
        cur.execute("COMMIT")
        cur.execute("INSERT INTO tr_log (note) VALUES ('after a read-only transaction')")
        assert cur.rowcount == 1  # on the primary, not 1290 from the replica
    c.close()


UVARS = ["SET @i = 42, @neg = -7, @d = 1.50, @f = 2.5e0, @s = 'h\U0001F600',",
         " @l1 = _latin1'caf\u00e9' COLLATE latin1_german1_ci, @b = X'00ff', @n = NULL"]


def test_user_variables_outlive_a_read_only_transaction_on_a_replica(
        sandbox: Sandbox, tproxy: ProxyProc) -> None:
    """User variables are not transactional: set inside START TRANSACTION READ ONLY (which
    runs on a replica), they are there after COMMIT, with their type and collation."""
    check = ("SELECT @i, @neg, @d, @f, @s, @l1, HEX(@b), @n, @never, COLLATION(@s), "
             "COLLATION(@l1), @d * 2, @i / 5, @f + 1, @s = 'h\U0001F600', @l1 = 'cafe'")
    d, p = _both(sandbox, tproxy, charset="utf8mb4")
    for c in (d, p):
        with c.cursor() as cur:
            cur.execute("START TRANSACTION READ ONLY")
            cur.execute("SELECT @@server_id")
            cur.execute("".join(UVARS))
            cur.execute("SELECT @sel := 3")
            cur.execute("SELECT COUNT(*) INTO @cnt FROM tr_log")
            cur.execute("COMMIT")
    with p.cursor() as cur:
        cur.execute("SELECT @@server_id")
        assert cur.fetchone()[0] == 1  # the session is back on the primary
    assert _q(p, check) == _q(d, check)
    assert _q(p, "SELECT @sel, @cnt") == _q(d, "SELECT @sel, @cnt")
    for c in (d, p):  # and they behave as variables of the session from then on
        c.cursor().execute("SET @i = @i + 1")
    assert _q(p, "SELECT @i") == _q(d, "SELECT @i")
    assert _q(p, "SELECT @i")[1] == [(43,)]
    d.close()
    p.close()
    # a utf8mb3 connection putting 4-byte UTF-8 into a variable (what the mariadb CLI does
    # with an emoji): MariaDB keeps the bytes; an introducer would refuse them
    d, p = _both(sandbox, tproxy, charset="utf8")
    for c in (d, p):
        with c.cursor() as cur:
            cur.execute("START TRANSACTION READ ONLY")
            cur.execute("SET @e = 'w\U0001F600', @q = 'it''s'")
            cur.execute("COMMIT")
    check = "SELECT HEX(@e), COLLATION(@e), @q, COLLATION(@q)"
    assert _q(p, check) == _q(d, check)
    assert _q(d, check)[1][0][0] == "77F09F9880"
    d.close()
    p.close()


def test_multi_statements_follow_the_client(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    for flags in (0, CLIENT.MULTI_STATEMENTS):
        d, p = _both(sandbox, tproxy, client_flag=flags)
        sql = "SELECT 1; DELETE FROM tr_log WHERE note = 'never'"
        assert _q(p, sql) == _q(d, sql)
        d.close()
        p.close()
    # COM_SET_OPTION switches them for the session (what mysql_set_server_option sends)
    d, p = _both(sandbox, tproxy, client_flag=CLIENT.MULTI_STATEMENTS)
    for c in (d, p):
        c._execute_command(0x1B, b"\x01\x00")  # COM_SET_OPTION: MULTI_STATEMENTS_OFF
        c._read_packet()  # MySQL answers COM_SET_OPTION with an EOF packet
    assert _q(p, "SELECT 1; SELECT 2") == _q(d, "SELECT 1; SELECT 2") == ("err", 1064)
    d.close()
    p.close()


def test_login_to_an_unknown_database_is_refused(tproxy: ProxyProc) -> None:
    with pytest.raises(pymysql.err.OperationalError) as ei:
        tproxy.connect(database="no_such_db")
    assert ei.value.args[0] == 1049


def test_prepared_statements_resolve_in_their_own_database(tproxy: ProxyProc) -> None:
    """Two clients prepare the same text in different databases; MariaDB resolves tables at
    PREPARE time, so a statement cache keyed by text alone would answer from the wrong one."""
    import mysql.connector

    got = []
    for db in ("shop", "shop2", "shop"):
        c = mysql.connector.connect(host="127.0.0.1", port=tproxy.port, user="app", password="app",
                                    database=db, autocommit=True)
        cur = c.cursor(prepared=True)
        cur.execute("SELECT v FROM tr_t WHERE id = ?", (1,))
        got.append(cur.fetchall()[0][0])
        cur.close()
        c.close()
    assert [g.decode() if isinstance(g, bytes) else g for g in got] == ["shop", "shop2", "shop"]


def test_kill_and_connection_id_use_the_handshake_id(tproxy: ProxyProc) -> None:
    a, b = tproxy.connect(), tproxy.connect()
    assert _q(a, "SELECT CONNECTION_ID()")[1] == [(a.thread_id(),)]
    res: list[Any] = []

    def sleeper() -> None:
        res.append(_q(a, "SELECT SLEEP(10)"))

    th = threading.Thread(target=sleeper)
    th.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert _q(b, f"KILL QUERY {a.thread_id()}")[0] == "ok"
    th.join()
    assert time.monotonic() - t0 < 5 and res[0] in (("err", 1317), ("ok", [(1,)], 1))
    assert _q(a, "SELECT 1")[1] == [(1,)]  # KILL QUERY leaves the connection
    assert _q(b, f"KILL {a.thread_id()}")[0] == "ok"
    with pytest.raises(pymysql.err.OperationalError):
        a.cursor().execute("SELECT 1")
    assert _q(b, "KILL 4294967295") == ("err", 1094)  # neither a proxy client nor a thread
    assert _q(b, f"KILL {b.thread_id()}") == ("err", 1927)


def test_kill_works_when_every_pooled_connection_is_busy(sandbox: Sandbox,
                                                        tmp_path: Path) -> None:
    """The pool's one connection runs a client's long statement: another client's KILL QUERY
    (the same user's, and a DBA's: another user with SUPER) still interrupts it. MySQL keeps a
    connection for this; the proxy's KILL takes a service connection beyond the limit, where
    it waited acquire_timeout_s and got 1040 before."""
    sandbox.primary.sql("CREATE USER IF NOT EXISTS 'tr_dba'@'%' IDENTIFIED BY 'dba'",
                        "GRANT SUPER ON *.* TO 'tr_dba'@'%'")
    cfg = make_config(sandbox, routing={"read_consistency": "primary"},
                      users=[{"name": "app", "password": "app"},
                             {"name": "tr_dba", "password": "dba"}],
                      backends={"pool": {"max_connections": 1, "acquire_timeout_s": 20}})
    p = start_proxy(tmp_path, cfg)
    try:
        a = p.connect()
        for killer in (p.connect(), p.connect(user="tr_dba", password="dba")):
            res: list[Any] = []
            th = threading.Thread(target=lambda out=res: out.append(_q(a, "SELECT SLEEP(15)")))
            th.start()
            time.sleep(0.5)
            assert _q(killer, f"KILL QUERY {a.thread_id()}")[0] == "ok"
            th.join()
            assert res[0] in (("err", 1317), ("ok", [(1,)], 1))  # interrupted, as directly
            assert _q(a, "SELECT 1")[1] == [(1,)]
    finally:
        p.stop()


def test_wait_timeout_closes_an_idle_client(tproxy: ProxyProc) -> None:
    c = tproxy.connect()
    c.cursor().execute("SET SESSION wait_timeout = 1")
    time.sleep(2.5)
    with pytest.raises(pymysql.err.OperationalError) as ei:
        c.cursor().execute("SELECT 1")
    assert ei.value.args[0] in (2006, 2013)


def test_load_data_local_infile(sandbox: Sandbox, tproxy: ProxyProc, tmp_path: Path) -> None:
    f = tmp_path / "rows.csv"
    f.write_text("".join(f"{i},row {i}\n" for i in range(1, 1001)))
    sql = (f"LOAD DATA LOCAL INFILE '{f}' INTO TABLE tr_li FIELDS TERMINATED BY ','")
    results = []
    for local in (True, False):
        d, p = _both(sandbox, tproxy, local_infile=local)
        for c in (d, p):
            _q(c, "CREATE TABLE IF NOT EXISTS tr_li (id INT, v VARCHAR(20))")
            _q(c, "TRUNCATE tr_li")
            results.append((_q(c, sql), _q(c, "SELECT COUNT(*), SUM(id) FROM tr_li")))
        d.close()
        p.close()
    assert results[0] == results[1] and results[0][0][0] == "ok"
    assert results[0][1][1] == [(1000, 500500)]
    assert results[2] == results[3] and results[2][0][0] == "err"  # 4166 both ways


def test_hot_row_respects_the_members_session(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    """A temporary table shadowing the rule's table, and another-case table name: MySQL's
    answers, not a merged OK on shop.inventory."""
    sandbox.primary.sql("REPLACE INTO shop.inventory VALUES (901, 10)")
    sandbox.wait_replicas()
    upd = "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 901 AND quantity > 0"
    c = tproxy.connect()
    _q(c, "CREATE TEMPORARY TABLE inventory (sku_id BIGINT PRIMARY KEY, quantity INT)")
    _q(c, "INSERT INTO inventory VALUES (901, 3)")
    assert _q(c, upd)[2] == 1
    assert _q(c, "SELECT quantity FROM inventory WHERE sku_id = 901")[1] == [(2,)]
    c.close()
    assert sandbox.primary.sql("SELECT quantity FROM shop.inventory WHERE sku_id = 901")[0][0] == 10
    d, p = _both(sandbox, tproxy)
    sql = "UPDATE SHOP.INVENTORY SET quantity = quantity - 1 WHERE sku_id = 901 AND quantity > 0"
    assert _q(p, sql) == _q(d, sql)  # 1146 with lower_case_table_names=0
    d.close()
    p.close()


def test_readyz_does_not_count_as_a_connect_error(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    def aborted() -> int:
        return int(sandbox.primary.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'")[0][1])

    before = aborted()
    for _ in range(5):
        with urllib.request.urlopen(f"http://127.0.0.1:{tproxy.metrics_port}/readyz") as r:
            assert r.status == 200
    assert aborted() == before


def test_handshake_character_sets_and_collations(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    for charset, collation in (("koi8r", None), ("cp1251", None), ("latin1", None),
                               ("utf8mb4", "utf8mb4_unicode_ci"), ("utf8mb4", "utf8mb4_bin")):
        d, p = _both(sandbox, tproxy, charset=charset, collation=collation)
        sql = ("SELECT @@character_set_client, @@character_set_results, @@collation_connection, "
               "CHARSET('x'), COLLATION('x')")
        assert _q(p, sql) == _q(d, sql), charset
        text = {"koi8r": "жук", "cp1251": "жук", "latin1": "café"}.get(charset, "w\U0001F600")
        for c in (d, p):
            _q(c, "DELETE FROM tr_log WHERE id = 9999")
            _q(c, "INSERT INTO tr_log (id, note) VALUES (9999, %s)", (text,))
            assert _q(c, "SELECT note FROM tr_log WHERE id = 9999")[1] == [(text,)], charset
        d.close()
        p.close()


def test_processlist_shows_the_handshake_id_and_driver_kill_works(tproxy: ProxyProc) -> None:
    """What PyMySQL's own test_issue_36 does: find yourself in SHOW PROCESSLIST by the id of
    your handshake, and another client ends you with the driver's kill() (COM_PROCESS_KILL)."""
    a, b = tproxy.connect(), tproxy.connect()
    rows = _q(a, "SHOW PROCESSLIST")[1]
    mine = [r for r in rows if r[7] == "SHOW PROCESSLIST"]
    assert [r[0] for r in mine] == [a.thread_id()]
    b.kill(a.thread_id())
    with pytest.raises(pymysql.err.MySQLError):
        a.cursor().execute("SELECT 1")
    time.sleep(0.2)
    assert a.thread_id() not in [r[0] for r in _q(b, "SHOW FULL PROCESSLIST")[1]]
    b.close()


def test_killed_backend_connection_reaches_the_client_as_lost(sandbox: Sandbox,
                                                             tproxy: ProxyProc) -> None:
    """KILL of the backend thread under an open transaction, and idle_transaction_timeout:
    MySQL's client sees a lost connection (2013/2006), never a malformed packet (2027)."""
    for setup in ("KILL", "idle_transaction_timeout"):
        c = tproxy.connect()
        cur = c.cursor()
        if setup == "idle_transaction_timeout":
            cur.execute("SET SESSION idle_transaction_timeout = 1")
        cur.execute("BEGIN")
        cur.execute("SELECT @@pseudo_thread_id")
        tid = cur.fetchone()[0]
        if setup == "KILL":
            sandbox.primary.sql(f"KILL {tid}")
        time.sleep(2 if setup != "KILL" else 0.3)
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("SELECT 1")
        assert ei.value.args[0] in (2013, 2006), ei.value.args


def test_config_can_refuse_load_data_local(sandbox: Sandbox, tmp_path: Path) -> None:
    p = start_proxy(tmp_path, make_config(sandbox, limits={"local_infile": False}))
    try:
        f = tmp_path / "one.csv"
        f.write_text("1,one\n")
        c = p.connect(local_infile=True)
        _q(c, "CREATE TABLE IF NOT EXISTS tr_li (id INT, v VARCHAR(20))")
        _q(c, "TRUNCATE tr_li")
        sql = f"LOAD DATA LOCAL INFILE '{f}' INTO TABLE tr_li FIELDS TERMINATED BY ','"
        assert _q(c, sql) == ("err", 4166)
        assert _q(c, "SELECT COUNT(*) FROM tr_li")[1] == [(0,)]
        c.close()
    finally:
        p.stop()


def test_warnings_after_a_merged_decrement_are_its_own(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    sandbox.primary.sql("REPLACE INTO shop.inventory VALUES (902, 10)")
    d, p = _both(sandbox, tproxy)
    # the session's very first statement warns (on a replica), then a merged decrement
    assert _q(p, "SELECT CAST('x' AS INT)") == _q(d, "SELECT CAST('x' AS INT)")
    assert _q(p, "SHOW WARNINGS") == _q(d, "SHOW WARNINGS") != ("ok", [], 0)
    for c in (d, p):
        _q(c, "SELECT CAST('x' AS INT)")  # a warning on the previous statement
        assert _q(c, "UPDATE inventory SET quantity = quantity - 1 "
                     "WHERE sku_id = 902 AND quantity > 0")[2] == 1
    assert _q(p, "SHOW WARNINGS") == _q(d, "SHOW WARNINGS") == ("ok", [], 0)
    for sku in (902, 903):  # ROW_COUNT() of a merged hit, then of a merged miss (no such SKU)
        for c in (d, p):
            _q(c, f"UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = {sku} AND quantity > 0")
        assert _q(p, "SELECT ROW_COUNT()") == _q(d, "SELECT ROW_COUNT()")
    d.close()
    p.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{tproxy.metrics_port}/metrics") as r:
        text = r.read().decode()
    merged = [ln for ln in text.splitlines()
              if ln.startswith('seckill_proxy_hotrow_statements_total{mode="merge",outcome="succeeded"}')]
    assert merged and float(merged[0].split()[-1]) >= 1, merged  # it really was merged


def test_pool_reclaims_connections_without_pending_warnings_first(
        sandbox: Sandbox, tmp_path: Path) -> None:
    """At the pool's limit a soft-held connection is taken back from its idle session; one
    whose last statement left warnings goes last, so that session's SHOW WARNINGS still shows
    them (directly, they would always be there)."""
    p = start_proxy(tmp_path, make_config(sandbox, backends={
        "primary": f"127.0.0.1:{sandbox.primary_port}", "replicas": [],
        "pool": {"max_connections": 2, "acquire_timeout_s": 5}}))
    try:
        a, b = p.connect(), p.connect()
        a.cursor().execute("SELECT CAST('x' AS INT)")  # a warning; a holds its connection first
        b.cursor().execute("SELECT 1")
        c = p.connect()
        c.cursor().execute("SELECT 2")  # the pool is full: one soft-held connection goes
        assert _q(a, "SHOW WARNINGS")[1] == [
            ("Warning", 1292, "Truncated incorrect INTEGER value: 'x'")]
        assert _q(a, "SELECT @@warning_count")[1] == [(1,)]
        for x in (a, b, c):
            x.close()
    finally:
        p.stop()


ERRORS_IN_TXN = [
    # (statement that fails inside the transaction, what the client does next)
    ("SELECT * FROM no_such_table", "ROLLBACK"),
    ("SELECT * FROM no_such_table", "COMMIT"),
    ("INSERT INTO tr_err VALUES (1)", "COMMIT"),  # duplicate key
    ("INSERT INTO tr_err VALUES (1)", "ROLLBACK"),
    ("SELEC 1", "ROLLBACK"),  # syntax error
    ("UPDATE tr_err SET id = id + 'x' WHERE id = 1 AND no_such_col = 1", "ROLLBACK"),
]


@pytest.mark.parametrize("failing,then", ERRORS_IN_TXN)
def test_an_error_does_not_end_the_transaction(sandbox: Sandbox, tproxy: ProxyProc,
                                                failing: str, then: str) -> None:
    """An ERR packet carries no status flags. The proxy once took the error for the end of the
    transaction: it gave the connection back (the pool's reset rolled the first INSERT back)
    and ran the rest in autocommit, so a later ROLLBACK left the second INSERT committed."""
    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.tr_err (id INT PRIMARY KEY)")
    got = []
    for c in _both(sandbox, tproxy):
        _q(c, "DELETE FROM tr_err")
        steps = [_q(c, "BEGIN"), _q(c, "INSERT INTO tr_err VALUES (1)"), _q(c, failing)]
        c.ping()
        steps.append(("status", c.server_status & 1))  # SERVER_STATUS_IN_TRANS
        steps += [_q(c, "SELECT @@in_transaction"), _q(c, "INSERT INTO tr_err VALUES (2)"),
                  _q(c, then), _q(c, "SELECT id FROM tr_err ORDER BY id")]
        got.append(steps)
        c.close()
    assert got[0][3] == ("status", 1)
    assert got[1] == got[0]


def test_a_deadlock_ends_the_transaction(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    """MariaDB rolls back the whole transaction of the deadlock victim: after it, the victim
    is not in a transaction any more, directly or through the proxy."""
    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.tr_dl (id INT PRIMARY KEY, v INT)",
                        "REPLACE INTO shop.tr_dl VALUES (1, 0), (2, 0)")
    got = []
    for victim_port in (sandbox.primary_port, tproxy.port):
        other = sandbox.primary.root()
        v = pymysql.connect(host="127.0.0.1", port=victim_port, user="app", password="app",
                            database="shop", autocommit=True)
        with other.cursor() as oc:
            oc.execute("BEGIN")
            oc.execute("UPDATE shop.tr_dl SET v = v + 1 WHERE id = 1")
        _q(v, "BEGIN")
        _q(v, "UPDATE tr_dl SET v = v + 1 WHERE id = 2")
        t = threading.Thread(target=other.cursor().execute,  # waits for the victim's lock
                             args=("UPDATE shop.tr_dl SET v = v + 1 WHERE id = 2",))
        t.start()
        time.sleep(0.5)
        err = _q(v, "UPDATE tr_dl SET v = v + 1 WHERE id = 1")  # closes the cycle
        t.join(10)
        other.commit()
        v.ping()
        got.append((err, v.server_status & 1, _q(v, "SELECT @@in_transaction")))
        v.close()
        other.close()
    assert got[0][0] == ("err", 1213)
    assert got[1] == got[0]


def test_answers_the_proxy_gives_in_the_binary_protocol(sandbox: Sandbox,
                                                        tproxy: ProxyProc) -> None:
    """`SELECT CONNECTION_ID()`, `ROW_COUNT()`, `@@last_gtid` as server-side prepared
    statements (mysql-connector `prepared=True`): the proxy answers them as it does in the text
    protocol, in binary rows (CONNECTION_ID() came from the backend thread before), and a
    prepared statement's PREPARE is the client's last command (ROW_COUNT() 0, its error in
    SHOW WARNINGS)."""
    import mysql.connector

    got = []
    for port in (sandbox.primary_port, tproxy.port):
        c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app",
                                    database="shop")
        cur = c.cursor(prepared=True)
        cur.execute("SELECT CONNECTION_ID()")
        ids = cur.fetchall()
        assert ids == [(c.connection_id,)]
        seen: list[Any] = [cur.description]
        for sql in ("SELECT ROW_COUNT()", "SELECT @@last_gtid"):
            cur.execute(sql)
            seen.append((cur.fetchall(), cur.description))
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute("SELECT * FROM no_such_table")
        seen.append(ei.value.errno)
        t = c.cursor()
        t.execute("SHOW WARNINGS")
        seen.append(t.fetchall())
        c.close()
        got.append(seen)
    assert got[1] == got[0]


@pytest.mark.parametrize("sql", [
    "SELECT CONNECTION_ID()", "select connection_id()", "SELECT CONNECTION_ID() AS id",
    "SELECT CONNECTION_ID() `my id`", "SELECT CONNECTION_ID() FROM DUAL",
])
def test_connection_id_forms(sandbox: Sandbox, tproxy: ProxyProc, sql: str) -> None:
    """The forms the proxy answers with the handshake's id: the column described as MariaDB
    describes it (name from the alias or the text as written)."""
    got = []
    for c in _both(sandbox, tproxy):
        with c.cursor() as cur:
            cur.execute(sql)
            assert cur.fetchall() == ((c.thread_id(),),)
            got.append(cur.description)
        c.close()
    assert got[1] == got[0]


def test_connection_id_in_writes_is_the_clients(sandbox: Sandbox, tproxy: ProxyProc) -> None:
    """An audit row written with CONNECTION_ID(), a SET of it, a prepared INSERT of it: the
    client's id (its handshake's, SHOW PROCESSLIST's and KILL's through the proxy), not the id
    of whichever pooled backend thread ran it; strings that spell it stay as they are."""
    import mysql.connector

    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.tr_audit (id INT AUTO_INCREMENT "
                        "PRIMARY KEY, cid BIGINT, note VARCHAR(40))", "DELETE FROM shop.tr_audit")
    c = tproxy.connect()
    cid = c.thread_id()
    assert _q(c, "INSERT INTO tr_audit (cid, note) VALUES (CONNECTION_ID(), "
                 "'CONNECTION_ID()')")[0] == "ok"
    assert _q(c, "SET @me = CONNECTION_ID()")[0] == "ok"
    assert _q(c, "SELECT @me")[1] == [(cid,)]
    c.close()
    m = mysql.connector.connect(host="127.0.0.1", port=tproxy.port, user="app", password="app",
                                database="shop", autocommit=True)
    cur = m.cursor(prepared=True)
    cur.execute("INSERT INTO tr_audit (cid, note) VALUES (CONNECTION_ID(), ?)", ("prepared",))
    mid = m.connection_id
    m.close()
    rows = sandbox.primary.sql("SELECT cid, note FROM shop.tr_audit ORDER BY id")
    assert [(int(a), b) for a, b in rows] == [(cid, "CONNECTION_ID()"), (mid, "prepared")]


def test_information_schema_processlist_shows_the_handshake_id(tproxy: ProxyProc) -> None:
    """As SHOW PROCESSLIST: a client finds itself in information_schema.PROCESSLIST by its
    CONNECTION_ID(), under any alias of the ID column, and KILL works with what it reads."""
    c = tproxy.connect()
    me = c.thread_id()
    assert _q(c, "SELECT ID, COMMAND FROM information_schema.PROCESSLIST "
                 "WHERE ID = CONNECTION_ID()")[1] == [(me, "Query")]
    ids = [r[0] for r in _q(c, "SELECT p.id AS x FROM information_schema.processlist p")[1]]
    assert me in ids
    victim = tproxy.connect()
    vid = victim.thread_id()
    assert vid in [r[0] for r in _q(c, "SELECT ID FROM information_schema.PROCESSLIST")[1]]
    assert _q(c, f"KILL {vid}")[0] == "ok"
    with pytest.raises(pymysql.err.OperationalError):  # the proxy closed that client
        victim.cursor().execute("SELECT 1")
    c.close()


def test_a_reclaimed_connection_never_shows_the_next_users_warnings(sandbox: Sandbox,
                                                                    tmp_path: Path) -> None:
    """Pool of one: A's connection (its area holding A's warning) is reclaimed for B, whose
    statement leaves another warning; A gets the same connection back for a statement that
    opens no table. A's SHOW WARNINGS must not show B's warning (issue 23's suspected defect:
    the session trusted the connection's identity although another session had used it)."""
    cfg = make_config(sandbox, backends={"primary": f"127.0.0.1:{sandbox.primary_port}",
                                         "replicas": [], "pool": {"max_connections": 1}})
    p = start_proxy(tmp_path, cfg)
    try:
        a, b = p.connect(), p.connect()
        ca, cb = a.cursor(), b.cursor()
        ca.execute("SELECT CAST('1x' AS UNSIGNED)")  # 1292 Truncated incorrect INTEGER value
        cb.execute("SELECT 1/0")  # 1365 Division by 0: the pool took A's connection for it
        cb.execute("SHOW WARNINGS")
        assert [r[1] for r in cb.fetchall()] == [1365]
        ca.execute("DO 1")  # no table: MySQL keeps A's area (here A gets the connection back)
        ca.execute("SHOW WARNINGS")
        codes = [r[1] for r in ca.fetchall()]
        assert 1365 not in codes, codes  # never B's; A's own (1292) is lost with the reclaim
        a.close()
        b.close()
    finally:
        p.stop()
