"""Proxy core against real MariaDB with real drivers: what the client sees equals what MySQL says."""

from __future__ import annotations

import datetime
import decimal
import socket
import subprocess
import threading
import time
from typing import Any

import mysql.connector
import pymysql
import pytest

from .conftest import ProxyProc


def _ok_fields(c: pymysql.connections.Connection, sql: str) -> tuple[Any, ...]:  # type: ignore[type-arg]
    with c.cursor() as cur:
        cur.execute(sql)
        r = c._result
        assert r is not None
        return (r.affected_rows, r.insert_id, r.warning_count, r.message, c.server_status & 0x3)


def test_ok_packets_match_direct(proxy: ProxyProc, direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS okp")
        cur.execute("CREATE TABLE okp (id INT AUTO_INCREMENT PRIMARY KEY, v TINYINT)")
    via = proxy.connect()
    got = []
    for c in (direct, via):
        with c.cursor() as cur:
            cur.execute("TRUNCATE okp")
        got.append([
            _ok_fields(c, "INSERT INTO okp (v) VALUES (1), (2), (3)"),
            _ok_fields(c, "UPDATE okp SET v = v + 1 WHERE id <= 2"),
            _ok_fields(c, "UPDATE okp SET v = v WHERE id = 1"),
            _ok_fields(c, "INSERT IGNORE INTO okp (id, v) VALUES (1, 9)"),
            _ok_fields(c, "INSERT INTO okp (v) VALUES (300)") if False else (),
            _ok_fields(c, "BEGIN"),
            _ok_fields(c, "DELETE FROM okp WHERE id = 3"),
            _ok_fields(c, "ROLLBACK"),
        ])
    assert got[0] == got[1]
    assert got[1][0][:2] == (3, 1)  # affected rows, first insert id
    assert b"Rows matched: 2  Changed: 2  Warnings: 0" in got[1][1][3]
    assert got[1][3][2] == 1  # INSERT IGNORE duplicate: one warning
    assert got[1][5][4] & 1  # in transaction after BEGIN
    via.close()


TYPES_DDL = """CREATE TABLE types_rt (
  id INT PRIMARY KEY, ti TINYINT, tiu TINYINT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED,
  dec65 DECIMAL(65,30), f FLOAT, d DOUBLE, s VARCHAR(100) CHARACTER SET utf8mb4, t TEXT,
  b VARBINARY(20), bl BLOB, dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP NULL,
  y YEAR, bt BIT(10), j JSON, e ENUM('a','b'), st SET('x','y','z'), n INT NULL)"""

TYPES_ROWS = [
    (1, -128, 255, -9223372036854775808, 18446744073709551615,
     decimal.Decimal("12345678901234567890123456789012345.123456789012345678901234567890"),
     1.5, 2.2250738585072014e-308, "héllo 🚀 世界", "x" * 1000, b"\x00\x01\x00\xff",
     bytes(range(256)) * 4, datetime.date(2024, 2, 29), datetime.timedelta(hours=-838, minutes=-59, seconds=-59),
     datetime.datetime(2024, 1, 2, 3, 4, 5, 123456), datetime.datetime(2038, 1, 1, 0, 0, 0),
     2155, b"\x03\xff", '{"a": [1, 2, {"b": null}]}', "b", "x,z", None),
    (2, 127, 0, 9223372036854775807, 0, decimal.Decimal("-0.000000000000000000000000000001"),
     -0.0, 1.7976931348623157e308, "", "", b"", b"", datetime.date(1000, 1, 1),
     datetime.timedelta(0), datetime.datetime(9999, 12, 31, 23, 59, 59, 999999), None, 1901,
     b"\x00\x00", "[]", "a", "", 0),
]


@pytest.fixture(scope="module")
def types_table(direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS types_rt")
        cur.execute(TYPES_DDL)
        cur.executemany("INSERT INTO types_rt VALUES (" + ",".join(["%s"] * 22) + ")", TYPES_ROWS)


@pytest.fixture(scope="module")
def direct(sandbox: Any) -> Any:  # module-scoped variant of the conftest fixture
    c = pymysql.connect(host="127.0.0.1", port=sandbox.primary_port, user="app", password="app",
                        database="shop", autocommit=True)
    yield c
    c.close()


def _connector(port: int, **kw: Any) -> Any:
    return mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app",
                                   database="shop", use_pure=True, **kw)


@pytest.mark.parametrize("prepared", [False, True])
def test_types_round_trip(proxy: ProxyProc, sandbox: Any, types_table: None, prepared: bool) -> None:
    # mysql-connector-python's pure binary-protocol decoder cannot read BIT, YEAR and MariaDB JSON
    # columns (it fails the same way directly against MariaDB), so its binary run leaves those
    # out; test_binary_rows_byte_exact covers every column at the packet level.
    cols = "*" if not prepared else (
        "id, ti, tiu, bi, biu, dec65, f, d, s, t, b, bl, dt, tm, dtm, ts, e, st, n")
    out = []
    for port in (sandbox.primary_port, proxy.port):
        c = _connector(port)
        cur = c.cursor(prepared=prepared)
        cur.execute(f"SELECT {cols} FROM types_rt WHERE id >= %s ORDER BY id" if not prepared
                    else f"SELECT {cols} FROM types_rt WHERE id >= ? ORDER BY id", (0,))
        out.append((cur.fetchall(), [d[:2] for d in cur.description]))
        c.close()
    assert out[0] == out[1]
    rows = out[1][0]
    assert rows[0][4] == 18446744073709551615
    assert rows[0][8] == "héllo 🚀 世界"
    assert bytes(rows[0][10]) == b"\x00\x01\x00\xff"


def test_binary_rows_byte_exact(proxy: ProxyProc, sandbox: Any, types_table: None) -> None:
    """COM_STMT_EXECUTE rows for every column type are the same bytes through the proxy."""
    import asyncio

    from proxy.backends.backend import BackendConn
    from proxy.core.config import Address
    from proxy.net.protocol import COM_STMT_EXECUTE

    async def rows(port: int) -> list[bytes]:
        c = await BackendConn.connect(Address("127.0.0.1", port), "app", "app", 5)
        await c.execute("USE shop")
        pok = await c.prepare("SELECT * FROM types_rt ORDER BY id")
        await c.command(bytes((COM_STMT_EXECUTE,)) + pok.stmt_id.to_bytes(4, "little") + b"\0\1\0\0\0")
        pkts = [await c.read_packet()]
        while not (pkts[-1][0] == 0xFE and len(pkts[-1]) < 9 and len(pkts) > 24):
            pkts.append(await c.read_packet())
        c.close()
        return pkts[-3:-1]  # the two binary rows

    direct_rows = asyncio.run(rows(sandbox.primary_port))
    proxied_rows = asyncio.run(rows(proxy.port))
    assert direct_rows == proxied_rows
    assert len(direct_rows) == 2 and all(r[0] == 0 for r in direct_rows)


def test_types_pymysql_text(proxy: ProxyProc, direct: Any, types_table: None) -> None:
    via = proxy.connect()
    res = []
    for c in (direct, via):
        with c.cursor() as cur:
            cur.execute("SELECT * FROM types_rt ORDER BY id")
            res.append(cur.fetchall())
    assert res[0] == res[1]
    assert res[1][0][5] == TYPES_ROWS[0][5]
    via.close()


def test_errors_keep_code_and_sqlstate(proxy: ProxyProc, direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS uniq (id INT PRIMARY KEY)")
        cur.execute("INSERT IGNORE INTO uniq VALUES (1)")
    c = _connector(proxy.port, autocommit=True)
    cur = c.cursor()
    cases = [
        ("INSERT INTO uniq VALUES (1)", 1062, "23000"),
        ("SELEC 1", 1064, "42000"),
        ("SELECT * FROM no_such_table", 1146, "42S02"),
    ]
    for sql, code, state in cases:
        with pytest.raises(mysql.connector.Error) as ei:
            cur.execute(sql)
        assert (ei.value.errno, ei.value.sqlstate) == (code, state), sql
    cur.execute("SELECT 1")  # the session still works after errors
    assert cur.fetchall() == [(1,)]
    c.close()


def test_deadlock_reaches_client(proxy: ProxyProc, direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS dl (id INT PRIMARY KEY, v INT)")
        cur.execute("REPLACE INTO dl VALUES (1, 0), (2, 0)")
    a, b = proxy.connect(autocommit=False), proxy.connect(autocommit=False)
    ca, cb = a.cursor(), b.cursor()
    ca.execute("UPDATE dl SET v = 1 WHERE id = 1")
    cb.execute("UPDATE dl SET v = 1 WHERE id = 2")
    errors: list[int] = []

    def t() -> None:
        try:
            ca.execute("UPDATE dl SET v = 2 WHERE id = 2")
        except pymysql.err.OperationalError as e:
            errors.append(e.args[0])

    th = threading.Thread(target=t)
    th.start()
    time.sleep(0.3)
    try:
        cb.execute("UPDATE dl SET v = 2 WHERE id = 1")
    except pymysql.err.OperationalError as e:
        errors.append(e.args[0])
    th.join()
    assert 1213 in errors
    a.rollback()
    b.rollback()
    a.close()
    b.close()


def test_session_features(proxy: ProxyProc) -> None:
    c = proxy.connect()
    cur = c.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS li (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    cur.execute("INSERT INTO li (v) VALUES (1)")
    last = cur.lastrowid
    cur.execute("SELECT LAST_INSERT_ID()")
    assert cur.fetchone()[0] == last
    cur.execute("SET @x = 41")
    cur.execute("SELECT @x + 1")
    assert cur.fetchone()[0] == 42
    cur.execute("CREATE TEMPORARY TABLE tmp1 (a INT)")
    cur.execute("INSERT INTO tmp1 VALUES (7)")
    cur.execute("SELECT a FROM tmp1")
    assert cur.fetchall() == ((7,),)
    cur.execute("SET NAMES latin1")
    cur.execute("SELECT @@character_set_client, @@character_set_results")
    assert cur.fetchone() == ("latin1", "latin1")
    cur.execute("SET NAMES utf8mb4")
    cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
    cur.execute("SELECT @@sql_mode")
    assert cur.fetchone()[0] == "ANSI_QUOTES"
    cur.execute("USE mysql")
    cur.execute("SELECT DATABASE()")
    assert cur.fetchone()[0] == "mysql"
    c.select_db("shop")
    cur.execute("SELECT DATABASE()")
    assert cur.fetchone()[0] == "shop"
    c.ping()
    c.close()


def test_variables_follow_session_across_pooled_connections(proxy: ProxyProc) -> None:
    """Without pinning, a session's SET must apply on whatever connection serves it next."""
    c = proxy.connect()
    cur = c.cursor()
    cur.execute("SET SESSION time_zone = '+08:00'")
    others = [proxy.connect() for _ in range(5)]
    for o in others:  # keep other sessions busy so the pool hands out different connections
        o.cursor().execute("SELECT @@time_zone")
    for _ in range(10):
        cur.execute("SELECT @@time_zone")
        assert cur.fetchone()[0] == "+08:00"
    for o in others:
        with o.cursor() as oc:
            oc.execute("SELECT @@time_zone")
            assert oc.fetchone()[0] == "SYSTEM"
        o.close()
    c.close()


def test_transactions_and_autocommit_off(proxy: ProxyProc, direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS tx (id INT PRIMARY KEY)")
        cur.execute("DELETE FROM tx")
    c = proxy.connect(autocommit=False)
    cur = c.cursor()
    cur.execute("INSERT INTO tx VALUES (1)")
    with direct.cursor() as d:
        d.execute("SELECT COUNT(*) FROM tx")
        assert d.fetchone()[0] == 0  # not committed yet
    c.commit()
    cur.execute("START TRANSACTION")
    cur.execute("INSERT INTO tx VALUES (2)")
    c.rollback()
    with direct.cursor() as d:
        d.execute("SELECT id FROM tx ORDER BY id")
        assert d.fetchall() == ((1,),)
    c.close()


def test_multi_statement_and_procedure(proxy: ProxyProc, direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("DROP PROCEDURE IF EXISTS two_sets")
        cur.execute("CREATE PROCEDURE two_sets() BEGIN SELECT 1 AS a; SELECT 2 AS b, 3 AS c; END")
    c = proxy.connect(client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS)
    cur = c.cursor()
    cur.execute("SELECT 'x'; SELECT 'y', 'z'")
    assert cur.fetchall() == (("x",),)
    assert cur.nextset()
    assert cur.fetchall() == (("y", "z"),)
    cur.execute("CALL two_sets()")
    assert cur.fetchall() == ((1,),)
    assert cur.nextset()
    assert cur.fetchall() == ((2, 3),)
    while cur.nextset():
        pass
    cur.execute("SELECT 5")
    assert cur.fetchall() == ((5,),)
    c.close()


def test_reset_and_change_user(proxy: ProxyProc) -> None:
    c = _connector(proxy.port, autocommit=True)
    cur = c.cursor()
    cur.execute("SET @v = 1")
    c.cmd_reset_connection()
    cur = c.cursor()
    cur.execute("SELECT @v")
    assert cur.fetchall() == [(None,)]
    cur.execute("SET @v = 2")
    c.cmd_change_user(username="app", password="app", database="shop")
    cur = c.cursor()
    cur.execute("SELECT @v, DATABASE()")
    assert cur.fetchall() == [(None, "shop")]
    c.close()


def test_pooled_connection_carries_no_state(sandbox: Any, tmp_path: Any) -> None:
    from .conftest import make_config, start_proxy

    p = start_proxy(tmp_path, make_config(sandbox, backends={
        "primary": f"127.0.0.1:{sandbox.primary_port}", "replicas": [],
        "pool": {"max_connections": 1}}))
    try:
        a = p.connect(autocommit=False)
        cur = a.cursor()
        # the backend thread (CONNECTION_ID() answers the id of the client's handshake)
        cur.execute("SELECT @@pseudo_thread_id")
        backend_id = cur.fetchone()[0]
        cur.execute("SET @leak = 1")
        cur.execute("CREATE TEMPORARY TABLE leak_tmp (a INT)")
        cur.execute("SET SESSION sql_mode = 'NO_ZERO_DATE'")
        cur.execute("SELECT GET_LOCK('leak_lock', 0)")
        cur.execute("CREATE TABLE IF NOT EXISTS leak_t (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO leak_t VALUES (99)")  # open transaction, never committed
        a.close()
        b = p.connect()
        cur = b.cursor()
        cur.execute("SELECT @@pseudo_thread_id")
        assert cur.fetchone()[0] == backend_id  # the very same backend connection (pool of 1)
        cur.execute("SELECT @leak, @@sql_mode = @@GLOBAL.sql_mode, IS_FREE_LOCK('leak_lock'), @@in_transaction")
        assert cur.fetchone() == (None, 1, 1, 0)
        with pytest.raises(pymysql.err.ProgrammingError):
            cur.execute("SELECT * FROM leak_tmp")
        cur.execute("SELECT COUNT(*) FROM leak_t WHERE id = 99")
        assert cur.fetchone()[0] == 0
        b.close()
    finally:
        p.stop()


def test_disconnect_mid_transaction_releases_locks(proxy: ProxyProc, direct: Any) -> None:
    with direct.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS lk (id INT PRIMARY KEY, v INT)")
        cur.execute("REPLACE INTO lk VALUES (1, 0)")
    a = proxy.connect(autocommit=False)
    a.cursor().execute("UPDATE lk SET v = 5 WHERE id = 1")
    a._sock.shutdown(socket.SHUT_RDWR)  # vanish without COM_QUIT
    a._sock.close()
    time.sleep(0.3)
    b = proxy.connect()
    cur = b.cursor()
    cur.execute("SET SESSION innodb_lock_wait_timeout = 3")
    assert cur.execute("UPDATE lk SET v = 7 WHERE id = 1") == 1
    cur.execute("SELECT v FROM lk")
    assert cur.fetchone()[0] == 7
    b.close()


def test_authentication(proxy: ProxyProc) -> None:
    for user, pw in (("app", "wrong"), ("nobody", "app"), ("", "")):
        with pytest.raises(pymysql.err.OperationalError) as ei:
            proxy.connect(user=user, password=pw)
        assert ei.value.args[0] == 1045


def test_mariadb_cli(proxy: ProxyProc) -> None:
    out = subprocess.run(
        ["mariadb", "-h127.0.0.1", f"-P{proxy.port}", "-uapp", "-papp", "shop", "-N", "-e",
         "SELECT 40 + 2; CREATE TABLE IF NOT EXISTS cli (id INT); SHOW TABLES LIKE 'cli'"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["42", "cli"]


def test_aiomysql_client(proxy: ProxyProc) -> None:
    import asyncio

    import aiomysql

    async def go() -> Any:
        conn = await aiomysql.connect(host="127.0.0.1", port=proxy.port, user="app",
                                      password="app", db="shop", autocommit=True)
        async with conn.cursor() as cur:
            await cur.execute("SELECT %s + 1", (41,))
            r = await cur.fetchone()
        conn.close()
        return r

    assert asyncio.run(go()) == (42,)


def test_large_result_streams(proxy: ProxyProc) -> None:
    """1,000,000 rows through the proxy with a streaming client; proxy memory stays bounded."""
    import psutil  # type: ignore[import-untyped]

    proc = psutil.Process(proxy.proc.pid)
    before = proc.memory_info().rss
    c = proxy.connect(cursorclass=pymysql.cursors.SSCursor)
    cur = c.cursor()
    # Twice: first on the session task's relay, then (the session holding a connection, in a
    # transaction so the primary answers) on the fast lane.
    for sql in ("SELECT seq, REPEAT('x', 100) FROM seq_1_to_1000000",
                "START TRANSACTION", "SELECT seq, REPEAT('x', 100) FROM seq_1_to_1000000"):
        cur.execute(sql)
        if sql.startswith("START"):
            continue
        n = 0
        peak = before
        for i, _row in enumerate(cur):
            n += 1
            if i % 100000 == 0:
                peak = max(peak, proc.memory_info().rss)
        assert n == 1_000_000
        assert peak - before < 64 * 1024 * 1024, (before, peak)  # the result itself is ~110 MB
    cur.execute("ROLLBACK")
    c.close()
