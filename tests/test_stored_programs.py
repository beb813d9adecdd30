"""Stored programs reach the client exactly as MySQL sends them (issue 22), against real
MariaDB: generated procedures and compound statements (cursors, handlers, SIGNAL/RESIGNAL,
nested calls, result sets interleaved with warnings and errors), directly and through the
proxy, over the text protocol (PyMySQL), the binary protocol (mysql-connector-python's
prepared cursor) and the `mariadb` CLI; the same result sets, errors and warnings.

`STORED_EXAMPLES` sets how many generated programs run (CI: 25)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest
from pymysql.constants import CLIENT

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc


@pytest.fixture(scope="module")
def sp_tables(sandbox: Sandbox) -> Iterator[None]:
    sandbox.primary.sql(
        "CREATE TABLE IF NOT EXISTS shop.sp_t (a INT)", "DELETE FROM shop.sp_t",
        "INSERT INTO shop.sp_t VALUES (1), (2), (3)",
        "CREATE TABLE IF NOT EXISTS shop.sp_log (a INT)")
    sandbox.wait_replicas()
    yield


# Fragments of a program body; {n} is a fresh number.
FRAGMENTS = [
    "SELECT {n} AS x",
    "SELECT a FROM sp_t ORDER BY a",
    "INSERT INTO sp_log VALUES ({n})",
    "DO 1/0",  # a warning (division by zero), no result
    "SELECT 1/0 AS w",  # a result and a warning
    "BEGIN DECLARE done INT DEFAULT 0; DECLARE v INT; DECLARE c CURSOR FOR SELECT a FROM sp_t; "
    "DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1; OPEN c; l{n}: LOOP FETCH c INTO v; "
    "IF done THEN LEAVE l{n}; END IF; SELECT v; END LOOP; CLOSE c; END",
    "BEGIN DECLARE v INT; DECLARE c CURSOR FOR SELECT a FROM sp_t WHERE a > 99; OPEN c; "
    "FETCH c INTO v; CLOSE c; END",  # 1329: no data, unhandled
    "BEGIN DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN SELECT 'handled' AS h; END; "
    "SELECT nosuchcol FROM sp_t; END",
    "BEGIN DECLARE EXIT HANDLER FOR SQLEXCEPTION RESIGNAL; SELECT nosuchcol FROM sp_t; END",
    "BEGIN DECLARE v INT; DECLARE c CURSOR FOR SELECT a FROM sp_t WHERE a > 99; "
    "DECLARE EXIT HANDLER FOR NOT FOUND RESIGNAL; OPEN c; FETCH c INTO v; END",
    "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'custom {n}', MYSQL_ERRNO = 1644",
    "SIGNAL SQLSTATE '01000' SET MESSAGE_TEXT = 'a warning {n}'",
    "CALL sp_inner()",
    "SELECT COUNT(*) FROM sp_log",
    "SELECT sp_fcur() AS f",  # a cursor loop inside a function
]


def program(rnd: random.Random) -> str:
    parts = [rnd.choice(FRAGMENTS).format(n=rnd.randrange(1000)) for _ in range(rnd.randint(1, 5))]
    return "BEGIN " + "; ".join(parts) + "; END"


def collect(cur: Any) -> list[Any]:
    """Every result set of the reply, with the warning count after each."""
    out: list[Any] = []
    while True:
        rows = cur.fetchall() if cur.description else None
        out.append((tuple(map(tuple, rows)) if rows is not None else None,
                    cur.connection._result.warning_count if cur.connection._result else 0))
        if not cur.nextset():
            return out


def run_pymysql(port: int, body: str, as_procedure: bool) -> list[Any]:
    c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                        database="shop", autocommit=True, client_flag=CLIENT.MULTI_STATEMENTS)
    out: list[Any] = []
    try:
        with c.cursor() as cur:
            cur.execute("DELETE FROM sp_log")  # the same state for both runs
            cur.execute("DROP PROCEDURE IF EXISTS sp_inner")
            cur.execute("CREATE PROCEDURE sp_inner() BEGIN SELECT 'inner' AS i; "
                        "SELECT a FROM sp_t WHERE a = 2; END")
            cur.execute("DROP FUNCTION IF EXISTS sp_fcur")
            cur.execute("CREATE FUNCTION sp_fcur() RETURNS INT READS SQL DATA BEGIN DECLARE done "
                        "INT DEFAULT 0; DECLARE v, s INT DEFAULT 0; DECLARE c CURSOR FOR SELECT a "
                        "FROM sp_t; DECLARE CONTINUE HANDLER FOR NOT FOUND SET done = 1; OPEN c; "
                        "l: LOOP FETCH c INTO v; IF done THEN LEAVE l; END IF; SET s = s + v; "
                        "END LOOP; CLOSE c; RETURN s; END")
            sql = body
            if as_procedure:
                cur.execute("DROP PROCEDURE IF EXISTS sp_gen")
                cur.execute(f"CREATE PROCEDURE sp_gen() {body}")
                sql = "CALL sp_gen()"
            else:
                sql = body.replace("BEGIN ", "BEGIN NOT ATOMIC ", 1)
            try:
                cur.execute(sql)
                out.append(collect(cur))
            except pymysql.MySQLError as e:
                out.append(("error", e.args[0], e.args[1]))
            cur.execute("SHOW WARNINGS")
            out.append(cur.fetchall())
            cur.execute("SELECT 42")  # the session goes on
            out.append(cur.fetchall())
    finally:
        c.close()
    return out


@pytest.mark.parametrize("as_procedure", [True, False], ids=["procedure", "compound"])
def test_generated_stored_programs_answer_as_mysql(proxy: ProxyProc, sandbox: Sandbox,
                                                   sp_tables: None, as_procedure: bool) -> None:
    rnd = random.Random(int(os.environ.get("STORED_SEED", "22")) + as_procedure)
    for i in range(int(os.environ.get("STORED_EXAMPLES", "25"))):
        body = program(rnd)
        direct = run_pymysql(sandbox.primary_port, body, as_procedure)
        proxied = run_pymysql(proxy.port, body, as_procedure)
        assert proxied == direct, f"example {i}: {body}"


def test_cursor_loop_in_a_procedure_by_cli_and_binary_protocol(
        proxy: ProxyProc, sandbox: Sandbox, sp_tables: None) -> None:
    """The issue's reproduction with the `mariadb` CLI (2027 before) and over the binary
    protocol (MariaDB Connector/Python's binary cursor)."""
    import mariadb

    setup = ("DROP PROCEDURE IF EXISTS p1cur; CREATE PROCEDURE p1cur() BEGIN DECLARE done INT "
             "DEFAULT FALSE; DECLARE v INT; DECLARE c CURSOR FOR SELECT a FROM sp_t ORDER BY a; "
             "DECLARE CONTINUE HANDLER FOR NOT FOUND SET done=TRUE; OPEN c; l: LOOP FETCH c INTO "
             "v; IF done THEN LEAVE l; END IF; SELECT v; END LOOP; CLOSE c; END")
    c = proxy.connect(client_flag=CLIENT.MULTI_STATEMENTS)
    try:
        with c.cursor() as cur:
            cur.execute(setup)
    finally:
        c.close()
    cli = shutil.which("mariadb") or shutil.which("mysql")
    assert cli is not None
    outs = []
    for port in (sandbox.primary_port, proxy.port):
        r = subprocess.run([cli, "-h127.0.0.1", f"-P{port}", "-uapp", "-papp", "shop", "-e",
                            "CALL p1cur(); SELECT 'after'"],
                           capture_output=True, text=True, timeout=30)
        outs.append((r.returncode, r.stdout, r.stderr))
    assert outs[0] == outs[1] and outs[0][0] == 0
    binary = []
    for port in (sandbox.primary_port, proxy.port):
        conn = mariadb.connect(host="127.0.0.1", port=port, user="app", password="app",
                               database="shop", autocommit=True)
        try:
            cur = conn.cursor(binary=True)
            cur.execute("CALL p1cur()")
            got = [cur.fetchall()]
            while cur.nextset():
                got.append(cur.fetchall() if cur.description else None)
            cur.close()
            binary.append(got)
        finally:
            conn.close()
    assert binary[0] == binary[1] and binary[0][:2] == [[(1,)], [(2,)]]


# ---- connections the server ends (issue 22, point 2) -----------------------------------------

def _cli_idle_timeout(port: int) -> str:
    script = ("SET SESSION idle_transaction_timeout=1;\nBEGIN;\nSELECT 1;\n\\! sleep 2\n"
              "SELECT 2;\n")
    cli = shutil.which("mariadb") or shutil.which("mysql")
    assert cli is not None
    r = subprocess.run([cli, "--skip-ssl", "-h127.0.0.1", f"-P{port}", "-uapp", "-papp", "shop"],
                       input=script, capture_output=True, text=True, timeout=30)
    return r.stderr.strip().splitlines()[-1]


def test_a_transaction_ended_by_the_server_is_told_as_mysql_tells_it(
        proxy: ProxyProc, sandbox: Sandbox) -> None:
    """`idle_transaction_timeout` ends the transaction and the connection: the `mariadb` CLI
    and PyMySQL see what they see directly (2006, not 2027 "malformed packet")."""
    assert _cli_idle_timeout(proxy.port) == _cli_idle_timeout(sandbox.primary_port)
    codes = []
    for port in (sandbox.primary_port, proxy.port):
        c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                            database="shop", autocommit=True)
        with c.cursor() as cur:
            cur.execute("SET SESSION idle_transaction_timeout = 1")
            cur.execute("BEGIN")
            cur.execute("SELECT 1")
        import time

        time.sleep(2)
        with pytest.raises(pymysql.err.OperationalError) as ei:
            with c.cursor() as cur:
                cur.execute("SELECT 2")
        codes.append(ei.value.args[0])
    assert codes[0] == codes[1]


def test_a_killed_backend_thread_is_told_as_mysql_tells_it(proxy: ProxyProc,
                                                           sandbox: Sandbox) -> None:
    """A DBA kills the server thread running a client's statement: the client gets the code
    it gets directly, and the connection is gone as directly."""
    import threading
    import time

    codes = []
    for port in (sandbox.primary_port, proxy.port):
        c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                            database="shop", autocommit=True)
        got: list[int] = []

        def run(conn: Any = c, out: list[int] = got) -> None:
            try:
                with conn.cursor() as cur:
                    cur.execute("DO SLEEP(20)")  # on the primary, as a write would run
            except pymysql.MySQLError as e:
                out.append(e.args[0])

        t = threading.Thread(target=run)
        t.start()
        for _ in range(50):
            ids = sandbox.primary.sql("SELECT ID FROM information_schema.PROCESSLIST "
                                      "WHERE INFO = 'DO SLEEP(20)'")
            if ids:
                sandbox.primary.sql(f"KILL {int(ids[0][0])}")  # type: ignore[call-overload]
                break
            time.sleep(0.1)
        t.join(10)
        codes.append(got[0] if got else None)
        with pytest.raises(pymysql.MySQLError):
            with c.cursor() as cur:
                cur.execute("SELECT 1")
    assert codes[0] == codes[1] and codes[0] is not None


# ---- the session's character set in errors (issue 22, point 3) -------------------------------

@pytest.mark.parametrize("charset", ["binary", "utf8mb4", "latin1"])
def test_a_login_database_is_checked_in_the_clients_character_set(
        proxy: ProxyProc, sandbox: Sandbox, charset: str) -> None:
    """The default database of the handshake is converted from the client's character set,
    and MariaDB names that set when the name is invalid ("Invalid binary character string"):
    the proxy selects it as the client did (COM_INIT_DB after the names), not by `USE`, whose
    error names the system character set. The same for the CLI's own `use` command."""
    cli = shutil.which("mariadb") or shutil.which("mysql")
    assert cli is not None
    outs = []
    for port in (sandbox.primary_port, proxy.port):
        login = subprocess.run([cli, "-h127.0.0.1", f"-P{port}", "-uapp", "-papp",
                                f"--default-character-set={charset}", "test\U0001F601 ",
                                "-e", "SELECT 1"], capture_output=True, text=True,
                               errors="replace",
                               timeout=30)
        use = subprocess.run([cli, "-h127.0.0.1", f"-P{port}", "-uapp", "-papp",
                              f"--default-character-set={charset}"],
                             input="use test\U0001F601\nSELECT DATABASE();\n",
                             capture_output=True, text=True, errors="replace", timeout=30)
        outs.append((login.returncode, login.stderr, use.returncode, use.stdout, use.stderr))
    assert outs[0] == outs[1]
    assert "ERROR 1" in outs[0][1]
