"""ROW_COUNT() after a single INSERT/UPDATE/DELETE/REPLACE is answered by the proxy from that
statement's OK (plan.Plan.row_count): differential against MariaDB. Generated sequences of DML
forms (multi-row, IGNORE, ON DUPLICATE KEY UPDATE, REPLACE, INSERT ... SELECT, multi-table,
a table with a trigger, errors, RETURNING), interleaved with ROW_COUNT(), warnings, other
statements and transactions, run directly and through the proxy from the same state; in the
text protocol (PyMySQL, with and without CLIENT_FOUND_ROWS) and the binary one
(mysql-connector's server-side prepared statements: MariaDB's COM_STMT_RESET, which the proxy
answers, makes ROW_COUNT() 0). Every answer must be MariaDB's. Other forms of ROW_COUNT() run
on the backend connection; where the session's value is one the proxy made (-1 after a
`SELECT ROW_COUNT()` it answered, 0 after a reset it answered) a statement that leaves that
value there runs first (Plan.row_count_sync)."""

from __future__ import annotations

import os
import random
from typing import Any

import mysql.connector
import pymysql
import pytest
from pymysql.constants import CLIENT

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc

EXAMPLES = int(os.environ.get("ROW_COUNT_EXAMPLES", "25"))
SEED = int(os.environ.get("ROW_COUNT_SEED", "5"))

DML = [
    "INSERT INTO rc_t (id, v) VALUES (5, 1)",  # a duplicate key after the first time
    "INSERT INTO rc_t (v) VALUES (1), (2), (3)",
    "INSERT IGNORE INTO rc_t (id, v) VALUES (1, 5), (1000, 5)",
    "INSERT INTO rc_t (id, v) VALUES (1, 9) ON DUPLICATE KEY UPDATE v = v + 1",
    "INSERT INTO rc_t (id, v) VALUES (1, 9) ON DUPLICATE KEY UPDATE v = v",
    "REPLACE INTO rc_t (id, v) VALUES (2, 7)",
    "UPDATE rc_t SET v = v WHERE id <= 3",  # matched, not changed: CLIENT_FOUND_ROWS differs
    "UPDATE rc_t SET v = v + 1 WHERE id <= 3",
    "UPDATE rc_t SET v = v + 1 WHERE id = -1",
    "DELETE FROM rc_t WHERE id > 100 LIMIT 2",
    "INSERT INTO rc_t (v) SELECT v FROM rc_t WHERE id <= 2",
    "UPDATE rc_t a JOIN rc_u b ON a.id = b.id SET a.v = a.v + b.w",
    "DELETE a FROM rc_t a JOIN rc_u b ON a.id = b.id WHERE b.w > 100",
    "UPDATE rc_trg SET v = v + 1",  # its trigger writes rc_log rows
    "INSERT INTO rc_nosuch VALUES (1)",  # 1146
    "UPDATE rc_t SET v = 'x' WHERE id = 1",  # 1366 (strict)
    "INSERT INTO rc_t (v) VALUES (300000000000)",  # 1264 (strict)
    "DELETE FROM rc_t WHERE id = 3 RETURNING id",
    "update rc_t set v = v + 2 where id = 2",
]
OTHERS = [
    "SELECT ROW_COUNT()", "SELECT ROW_COUNT()", "SELECT ROW_COUNT()", "SHOW WARNINGS",
    "SELECT @@warning_count", "DO 1", "SET @a = 1", "BEGIN", "COMMIT", "ROLLBACK",
    "SELECT ROW_COUNT() AS n", "SELECT ROW_COUNT() + 0",
]


def _reset(sandbox: Sandbox) -> None:
    sandbox.primary.sql(
        "DROP TABLE IF EXISTS shop.rc_t, shop.rc_u, shop.rc_trg, shop.rc_log",
        "CREATE TABLE shop.rc_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        "CREATE TABLE shop.rc_u (id INT PRIMARY KEY, w INT)",
        "CREATE TABLE shop.rc_trg (id INT PRIMARY KEY, v INT)",
        "CREATE TABLE shop.rc_log (id INT AUTO_INCREMENT PRIMARY KEY, n INT)",
        "CREATE TRIGGER shop.rc_trg_au AFTER UPDATE ON shop.rc_trg FOR EACH ROW "
        "INSERT INTO shop.rc_log (n) VALUES (NEW.v), (NEW.v)",
        "INSERT INTO shop.rc_t (id, v) VALUES (1, 0), (2, 0), (3, 0)",
        "INSERT INTO shop.rc_u VALUES (1, 1), (2, 0)",
        "INSERT INTO shop.rc_trg VALUES (1, 0), (2, 0), (3, 0)")


def _answers(cur: Any, seq: list[str]) -> list[Any]:
    """Each statement's rows or affected rows, or its error number (a DB-API cursor)."""
    out: list[Any] = []
    cur.execute("SET sql_mode = 'STRICT_TRANS_TABLES'")
    for sql in seq:
        try:
            cur.execute(sql)
            out.append((sql, [tuple(r) for r in cur.fetchall()] if cur.description
                        else cur.rowcount))
        except (pymysql.MySQLError, mysql.connector.Error) as e:
            out.append((sql, "error", getattr(e, "errno", None) or e.args[0]))
    cur.execute("ROLLBACK")
    return out


def _text(port: int, seq: list[str], found_rows: bool) -> list[Any]:
    c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="shop",
                        autocommit=True, client_flag=CLIENT.FOUND_ROWS if found_rows else 0)
    try:
        return _answers(c.cursor(), seq)
    finally:
        c.close()


def _prepared(port: int, seq: list[str]) -> list[Any]:
    c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app",
                                database="shop", autocommit=True, use_pure=True)
    try:
        return _answers(c.cursor(prepared=True), seq)
    finally:
        c.close()


@pytest.mark.parametrize("form", ["text", "text-found-rows", "prepared"])
def test_row_count_answers_as_mariadb(sandbox: Sandbox, proxy: ProxyProc, form: str) -> None:
    rnd = random.Random(f"{SEED}-{form}")
    for n in range(EXAMPLES):
        seq = []
        for _ in range(rnd.randint(4, 14)):
            seq.append(rnd.choice(DML) if rnd.random() < 0.5 else rnd.choice(OTHERS))
            if rnd.random() < 0.5:
                seq.append("SELECT ROW_COUNT()")
        got = []
        for port in (sandbox.primary_port, proxy.port):
            _reset(sandbox)
            got.append(_prepared(port, seq) if form == "prepared"
                       else _text(port, seq, form == "text-found-rows"))
            got.append(sandbox.primary.sql("SELECT * FROM shop.rc_t ORDER BY id"))
        direct, d_rows, proxied, p_rows = got
        for i, (d, p) in enumerate(zip(direct, proxied, strict=True)):
            assert d == p, f"example {n}, step {i}: {seq[:i + 1]}\ndirect {d}\nproxy  {p}\n{direct}\n{proxied}"
        assert d_rows == p_rows, (n, seq)


def test_another_form_right_after_the_answered_one(sandbox: Sandbox, proxy: ProxyProc) -> None:
    seq = ["UPDATE rc_t SET v = v + 1 WHERE id <= 3", "SELECT ROW_COUNT()",
           "SELECT ROW_COUNT() + 0", "INSERT INTO rc_t (v) VALUES (1), (2)", "SELECT ROW_COUNT()",
           "SELECT ROW_COUNT() AS n", "SELECT ROW_COUNT() + 0", "SHOW WARNINGS"]
    got = []
    for port in (sandbox.primary_port, proxy.port):
        _reset(sandbox)
        got.append(_text(port, seq, False))
    assert got[0] == got[1]
