"""Capabilities MariaDB offers that the proxy relays: session-state tracking
(CLIENT_SESSION_TRACK), MariaDB's extended type metadata, the compressed protocol.

Extended type metadata through the proxy (issue 13, "capabilities MySQL/MariaDB offer
that the proxy drops"): MariaDB Connector/Python and the `mariadb` CLI negotiate
MARIADB_CLIENT_EXTENDED_METADATA and learn from it that a column is JSON, UUID, INET6 or POINT
(the base type is only STRING/BLOB/GEOMETRY). Each check compares the proxy with a direct
connection to MariaDB; a client that did not negotiate it (PyMySQL) must never be served by a
backend connection that did, or it would misparse every column definition."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import mariadb
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.net import protocol as P
from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy

TABLE = "shop.cap_ext"


@pytest.fixture(scope="module")
def xproxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    sandbox.primary.sql(
        f"CREATE TABLE IF NOT EXISTS {TABLE} (id INT PRIMARY KEY, j JSON, u UUID, "
        "ip INET6, p POINT, s VARCHAR(10))",
        f"REPLACE INTO {TABLE} VALUES (1, '{{\"a\": 1}}', 'e5cf2b8e-1f1b-11ef-9c25-000000000001', "
        "'::1', POINT(1, 2), 'x')",
    )
    sandbox.wait_replicas()
    # One backend connection per server: every client is served by the connection the one
    # before it left, unless the pool keeps connections of different capabilities apart.
    cfg = make_config(sandbox, routing={"read_consistency": "session", "max_wait_ms": 500},
                      backends={"pool": {"max_connections": 1, "connect_timeout_s": 5,
                                         "acquire_timeout_s": 20}})
    p = start_proxy(tmp_path_factory.mktemp("capabilities"), cfg)
    try:
        yield p
    finally:
        p.stop()


def _mariadb(port: int) -> Any:
    return mariadb.connect(host="127.0.0.1", port=port, user="app", password="app",
                           database="shop", autocommit=True)


def _meta(c: Any, sql: str, prepared: bool = False, drop: tuple[str, ...] = ()) -> Any:
    cur = c.cursor(prepared=prepared)
    cur.execute(sql, (1,) if "?" in sql else ())
    rows = cur.fetchall()
    meta = {k: v for k, v in cur.metadata.items() if k not in drop}
    cur.close()
    return meta, rows


SELECTS = [
    f"SELECT j, u, ip, ST_AsText(p), s FROM {TABLE} WHERE id = 1",
    f"SELECT * FROM {TABLE}",
    f"SELECT j, u FROM {TABLE} WHERE id = ?",
    "SELECT JSON_OBJECT('k', 1) AS o, 1 AS n",
]


@pytest.mark.parametrize("sql", SELECTS)
@pytest.mark.parametrize("prepared", [False, True])
def test_extended_metadata_as_direct(sandbox: Sandbox, xproxy: ProxyProc, sql: str,
                                     prepared: bool) -> None:
    d, p = _mariadb(sandbox.primary_port), _mariadb(xproxy.port)
    try:
        assert d.extended_server_capabilities & 8  # MARIADB_CLIENT_EXTENDED_METADATA >> 32
        assert p.extended_server_capabilities & 8
        want = _meta(d, sql, prepared)
        got = _meta(p, sql, prepared)
        assert got == want
        if "cap_ext" in sql and "*" not in sql:
            assert 1 in got[0]["ext_type_or_format"]  # JSON was recognised
    finally:
        d.close()
        p.close()


def test_answers_the_proxy_builds_carry_the_field(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """CONNECTION_ID() and ROW_COUNT() are answered by the proxy itself: their column
    definitions must have the extended field too, and match MariaDB's."""
    d, p = _mariadb(sandbox.primary_port), _mariadb(xproxy.port)
    try:
        for sql in ("SELECT CONNECTION_ID()", "SELECT ROW_COUNT()"):
            # max_length depends on the value (the ids differ)
            want, _ = _meta(d, sql, drop=("length",))
            got, rows = _meta(p, sql, drop=("length",))
            assert got == want, sql
        assert _meta(p, "SELECT CONNECTION_ID()")[1] == [(p.connection_id,)]
    finally:
        d.close()
        p.close()


def test_clients_without_it_never_get_a_connection_that_has_it(sandbox: Sandbox,
                                                               xproxy: ProxyProc) -> None:
    """Alternating MariaDB Connector/Python (extended metadata) and PyMySQL (without) through
    one backend connection per server: each gets the column definitions it negotiated."""
    sql = f"SELECT j, u, s FROM {TABLE} WHERE id = 1"

    def pym(port: int) -> Any:
        c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                            database="shop", autocommit=True)
        try:
            with c.cursor() as cur:
                cur.execute(sql)
                return cur.description, cur.fetchall()
        finally:
            c.close()

    want_py = pym(sandbox.primary_port)
    d = _mariadb(sandbox.primary_port)
    want_m = _meta(d, sql)
    d.close()
    for _ in range(3):
        p = _mariadb(xproxy.port)
        assert _meta(p, sql) == want_m
        p.close()
        assert pym(xproxy.port) == want_py


def test_user_variables_out_of_a_replica_transaction(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """The proxy reads a replica transaction's user variables itself (uservars.py) on a
    connection with extended metadata: it must skip the field to find each value's type."""
    out = []
    for port in (sandbox.primary_port, xproxy.port):
        c = _mariadb(port)
        cur = c.cursor()
        cur.execute("START TRANSACTION READ ONLY")
        cur.execute(f"SELECT j, u, id INTO @cj, @cu, @ci FROM {TABLE} WHERE id = 1")
        cur.execute("COMMIT")
        cur.execute("SELECT @cj, @cu, @ci + 1")
        out.append(cur.fetchall())
        c.close()
    assert out[0] == out[1]


def test_mariadb_cli_column_type_info(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """The DBA's view: `mariadb --column-type-info` prints `BLOB (format=json)`,
    `STRING (type=uuid)`... through the proxy as it does directly."""

    def cli(port: int) -> bytes:
        return subprocess.run(
            ["mariadb", "-h127.0.0.1", f"-P{port}", "-uapp", "-papp", "--column-type-info", "-t",
             "-e", f"SELECT j, u, ip, p FROM {TABLE} WHERE id = 1"],
            capture_output=True, check=True, timeout=30).stdout

    direct = cli(sandbox.primary_port)
    assert b"format=json" in direct and b"type=uuid" in direct and b"type=inet6" in direct
    assert cli(xproxy.port) == direct


# ---- the compressed protocol (CLIENT_COMPRESS, compress.py) ------------------------------

ZIP = "shop.cap_zip"
BIG = bytes(range(256)) * 24_000  # 6 MB: more than one frame's worth once inflated


def _zip_session(conn: Any, prepared: bool) -> list[Any]:
    """A compressed session's answers: small and large results, a blob larger than a frame
    both ways, a prepared statement, an error, the session's own Compression status."""
    out: list[Any] = []
    cur = conn.cursor(prepared=prepared) if prepared else conn.cursor()
    for sql, args in (
        (f"INSERT INTO {ZIP} VALUES (?, ?)", (1, BIG)),
        (f"INSERT INTO {ZIP} VALUES (?, ?)", (2, b"tiny")),
        (f"SELECT id, LENGTH(b), MD5(b) FROM {ZIP} ORDER BY id", ()),
        (f"SELECT b FROM {ZIP} WHERE id = ?", (1,)),
        ("SELECT REPEAT('ab', 40000), 42, DATABASE()", ()),
        ("SHOW SESSION STATUS LIKE 'Compression'", ()),
        ("SELECT no_such_column FROM dual", ()),
        ("SELECT 1", ()),
    ):
        q = sql if prepared or not args else sql.replace("?", "%s")
        try:
            cur.execute(q, args)
            rows = cur.fetchall() if cur.description else cur.rowcount
        except Exception as e:  # noqa: BLE001 - the answer is what is compared
            rows = ("error", getattr(e, "errno", None) or e.args[0])
        out.append([tuple(bytes(v) if isinstance(v, bytearray) else v for v in r)
                    for r in rows] if isinstance(rows, list) else rows)
    return out


@pytest.mark.parametrize("prepared", [False, True])
def test_compressed_protocol_as_direct(sandbox: Sandbox, xproxy: ProxyProc,
                                       prepared: bool) -> None:
    """mysql-connector-python with `compress=True`: every answer as MariaDB gives it directly
    (a 6 MB blob written and read back, an error, `Compression` ON)."""
    import mysql.connector

    sandbox.primary.sql(f"CREATE TABLE IF NOT EXISTS {ZIP} (id INT PRIMARY KEY, b LONGBLOB)")
    got = {}
    for port in (sandbox.primary_port, xproxy.port):
        sandbox.primary.sql(f"DELETE FROM {ZIP}")
        c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app",
                                    database="shop", compress=True, autocommit=True)
        try:
            got[port] = _zip_session(c, prepared)
        finally:
            c.close()
    direct, proxied = got[sandbox.primary_port], got[xproxy.port]
    assert direct[5] == [("Compression", "ON")]
    assert proxied == direct


def test_compressed_mariadb_connector_and_cli(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """MariaDB Connector/Python (`compress=True`) and `mariadb --compress`, as direct."""
    def connector(port: int) -> Any:
        c = mariadb.connect(host="127.0.0.1", port=port, user="app", password="app",
                            database="shop", compress=True, autocommit=True)
        try:
            cur = c.cursor()
            cur.execute("SELECT REPEAT('xyz', 30000), ?", (7,))
            a = cur.fetchall()
            cur.execute("SHOW STATUS LIKE 'Compr%'")
            return a, cur.fetchall()
        finally:
            c.close()

    def cli(port: int) -> bytes:
        return subprocess.run(
            ["mariadb", "-h127.0.0.1", f"-P{port}", "-uapp", "-papp", "--compress", "-N", "-e",
             "SELECT MD5(REPEAT('q', 500000)); SHOW STATUS LIKE 'Compression'; SELECT 2"],
            capture_output=True, check=True, timeout=30).stdout

    assert connector(xproxy.port) == connector(sandbox.primary_port)
    assert b"Compression\tON" in cli(sandbox.primary_port)
    assert cli(xproxy.port) == cli(sandbox.primary_port)


def test_connector_python_without_a_database(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """mysql-connector-python without a database sends CLIENT_CONNECT_WITH_DB and an empty
    name: that is no database (its `SET NAMES` at connect used to fail with 1046)."""
    import mysql.connector

    for port in (sandbox.primary_port, xproxy.port):
        c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="app")
        try:
            cur = c.cursor()
            cur.execute("SELECT DATABASE(), @@character_set_client")
            assert cur.fetchall() == [(None, "utf8mb4")], port
        finally:
            c.close()


# ---- session-state tracking (CLIENT_SESSION_TRACK) ---------------------------------------

class _Tracking(pymysql.connections.Connection):  # type: ignore[misc]
    """PyMySQL asking for CLIENT_SESSION_TRACK, keeping the raw OK packets it reads."""

    last = b""
    login_ok = b""

    def _read_packet(self, packet_type: Any = pymysql.connections.MysqlPacket) -> Any:
        p = super()._read_packet(packet_type)
        self.last = p._data
        return p

    def _request_authentication(self) -> None:
        super()._request_authentication()
        self.login_ok = self.last

    def run(self, sql: str) -> tuple[Any, ...]:
        """One statement: its error code, or the OK's status bits and what it tracked."""
        try:
            self._execute_command(pymysql.constants.COMMAND.COM_QUERY, sql)
            self._read_packet()
        except pymysql.err.MySQLError as e:
            return ("err", e.args[0])
        return _decode(self.last)


def _decode(ok: bytes) -> tuple[Any, ...]:
    o = P.parse_ok(ok, True)
    sysvars = dict(o.sysvars)
    if o.gtid_var:
        sysvars["last_gtid"] = "(a gtid)"
    bits = P.SERVER_STATUS_IN_TRANS | P.SERVER_STATUS_AUTOCOMMIT | P.SERVER_SESSION_STATE_CHANGED
    return ("ok", o.status & bits, sysvars, o.schema, o.state_changed)


def _tracking_conn(port: int, db: str | None = "shop") -> _Tracking:
    return _Tracking(host="127.0.0.1", port=port, user="app", password="app", database=db,
                     autocommit=None, client_flag=pymysql.constants.CLIENT.SESSION_TRACK)


TRACKED = [
    "USE mysql", "USE shop", "USE no_such_db", "SET NAMES latin1",
    "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci", "SET character_set_results = NULL",
    "SET autocommit = 0", "SET autocommit = 1", "SET time_zone = '+01:00'",
    "SET time_zone = DEFAULT", "SET sql_mode = 'ANSI'", "SET sql_mode = DEFAULT", "SET @v = 1",
    "BEGIN", "COMMIT", "SET SESSION wait_timeout = 1000",
    "CREATE TEMPORARY TABLE IF NOT EXISTS cap_tmp (a INT)",
    "SET SESSION session_track_state_change = ON", "SET SESSION session_track_state_change = OFF",
    "SET SESSION session_track_schema = OFF", "SET SESSION session_track_schema = ON",
    "SET SESSION session_track_system_variables = '*'",
    "SET SESSION session_track_system_variables = 'sql_mode,time_zone'",
    "SET SESSION session_track_system_variables = ''",
    "SET SESSION session_track_system_variables = DEFAULT",
    "SET SESSION session_track_schema = 'maybe'",
]


@given(st.lists(st.sampled_from(TRACKED), min_size=1, max_size=8),
       st.sampled_from(["shop", None]))
@settings(max_examples=int(os.environ.get("TRACKING_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_session_tracking_as_direct(sandbox: Sandbox, xproxy: ProxyProc, stmts: list[str],
                                    db: str | None) -> None:
    """A client that negotiated CLIENT_SESSION_TRACK gets, for each statement, the session
    state MariaDB reports to it directly: only what its own session_track_* settings ask for
    (the proxy's backend connections track everything), including after it changed those
    settings, and from whichever pooled connection served it."""
    out = []
    for port in (sandbox.primary_port, xproxy.port):
        c = _tracking_conn(port, db)
        try:
            out.append([_decode(c.login_ok)] + [c.run(s) for s in stmts])
        finally:
            c.close()
    assert out[1] == out[0]


def test_mariadb_connector_follows_the_schema(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """libmariadb keeps the current database from the session tracking: MariaDB
    Connector/Python's `connection.database` after a text `USE` (it was stale through the
    proxy before it offered CLIENT_SESSION_TRACK)."""
    seen = []
    for port in (sandbox.primary_port, xproxy.port):
        c = _mariadb(port)
        cur = c.cursor()
        got = [c.database]
        cur.execute("USE mysql")
        got.append(c.database)
        c.select_db("shop")
        got.append(c.database)
        cur.execute("SET autocommit = 0")
        got.append(c.autocommit)
        c.close()
        seen.append(got)
    assert seen[0] == ["shop", "mysql", "shop", False]
    assert seen[1] == seen[0]


# ---- MariaDB Connector/Python's binary-protocol features -----------------------------------

def _cursor_rows(port: int) -> Any:
    """A server-side (read-only) cursor, then executemany as COM_STMT_BULK_EXECUTE with an
    indicator variable (MariaDB Connector/Python needs the bulk capability for those)."""
    from mariadb.constants import CURSOR, INDICATOR

    c = _mariadb(port)
    try:
        cur = c.cursor()
        cur.execute("CREATE TEMPORARY TABLE cap_cur (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                    "name VARCHAR(64) DEFAULT 'dflt', n INT)")
        cur.executemany("INSERT INTO cap_cur (name, n) VALUES (?, ?)",
                        [("foo", 1), ("bar", 2), (INDICATOR.DEFAULT, 3), (None, 4)])
        bulk = (cur.rowcount, cur.affected_rows, cur.lastrowid)
        cur.executemany("UPDATE cap_cur SET n = n + ? WHERE id = ?", [(10, 1), (10, 2), (10, 99)])
        upd = (cur.rowcount, cur.affected_rows)
        rc = c.cursor(cursor_type=CURSOR.READ_ONLY)
        rc.execute("SELECT id, name, n FROM cap_cur WHERE id > ? ORDER BY id", (0,))
        rows = [tuple(r) for r in rc]
        rc.close()
        cur.execute("SELECT COUNT(*) FROM cap_cur")
        return bulk, upd, rows, cur.fetchall()
    finally:
        c.close()


def test_server_side_cursor_and_bulk_execute(sandbox: Sandbox, xproxy: ProxyProc) -> None:
    """Both once failed through the proxy (found by running MariaDB Connector/Python's own
    suite, scripts/compat-mariadb.sh): a COM_STMT_EXECUTE that opens a cursor was answered
    with nothing (the proxy waited for rows that only COM_STMT_FETCH sends: the client hung),
    and executemany fell back to one statement per row (affected_rows 1, not 4) because
    COM_STMT_BULK_EXECUTE was not offered (indicator variables refused)."""
    want = _cursor_rows(sandbox.primary_port)
    assert want[0][1] == 4 and want[1][1] == 2
    for _ in range(2):  # the second time on a pooled connection the statement was not on
        assert _cursor_rows(xproxy.port) == want
