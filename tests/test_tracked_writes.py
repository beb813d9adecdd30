"""Every write is tracked (issue 25), against real MariaDB with a replica held back: writes
that return rows (INSERT/DELETE ... RETURNING) and writing procedures move the session's
read-your-writes position and are acknowledged only once a replica has them under
`ack: replica`; `SET SESSION TRANSACTION ...` is session state, not a pin."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy


@pytest.fixture(scope="module")
def tsb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("tracked-sandbox"))
    sb.start()
    sb.primary.sql(
        "CREATE TABLE shop.r (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
        "CREATE PROCEDURE shop.pw(x INT) BEGIN INSERT INTO r (v) VALUES (x); END",
        "CREATE PROCEDURE shop.pwr(x INT) BEGIN INSERT INTO r (v) VALUES (x); "
        "SELECT COUNT(*) FROM r; END")
    sb.wait_replicas()
    yield sb
    sb.destroy()


@pytest.fixture(scope="module")
def sproxy(tsb: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    p = start_proxy(tmp_path_factory.mktemp("tracked"), make_config(
        tsb, routing={"read_consistency": "session", "max_wait_ms": 100}))
    time.sleep(1.5)  # the monitor's first round: the replica is in rotation
    try:
        yield p
    finally:
        p.stop()


def _held_back(sb: Sandbox) -> None:
    """The replica has everything so far, then applies nothing more."""
    rep = sb.replicas[0]
    rep.sql("START SLAVE SQL_THREAD")
    sb.wait_replicas()
    rep.sql("STOP SLAVE SQL_THREAD")


WRITES = {
    "insert_returning": ("INSERT INTO r (v) VALUES ({v}) RETURNING id", True),
    "delete_returning": ("DELETE FROM r WHERE v = -1 RETURNING id", False),
    "procedure": ("CALL pw({v})", True),
    "procedure_with_result": ("CALL pwr({v})", True),
}


@pytest.mark.parametrize("kind", list(WRITES))
def test_a_write_that_returns_rows_is_read_back(sproxy: ProxyProc, tsb: Sandbox,
                                                kind: str) -> None:
    """The write, then a read of it on the same connection: never missed, with the replica
    not applying anything; `SELECT @@last_gtid` is the write's GTID."""
    sql, inserts = WRITES[kind]
    c = sproxy.connect()
    misses = 0
    try:
        for i in range(8):
            v = 1000 * (1 + list(WRITES).index(kind)) + i
            if not inserts:
                tsb.primary.sql("INSERT INTO shop.r (v) VALUES (-1)")
            _held_back(tsb)
            with c.cursor() as cur:
                cur.execute(sql.format(v=v))
                while cur.nextset():
                    pass
                cur.execute("SELECT @@last_gtid")
                gtid = cur.fetchone()[0]
                assert gtid == tsb.primary.sql("SELECT @@gtid_binlog_pos")[0][0]
                cur.execute("SELECT COUNT(*) FROM r WHERE v = %s", (v if inserts else -1,))
                n = cur.fetchone()[0]
                misses += n != (1 if inserts else 0)
    finally:
        c.close()
        tsb.replicas[0].sql("START SLAVE SQL_THREAD")
    assert misses == 0


def test_row_count_after_a_procedure_is_mysqls(sproxy: ProxyProc, tsb: Sandbox) -> None:
    """Reading a procedure's GTID changes nothing the client can see of its last statement."""
    out = []
    for port in (tsb.primary_port, sproxy.port):
        c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                            database="shop", autocommit=True)
        try:
            with c.cursor() as cur:
                cur.execute("CALL pw(5)")
                cur.execute("SELECT ROW_COUNT()")
                out.append(cur.fetchone())
        finally:
            c.close()
    assert out[0] == out[1]


def test_ack_replica_covers_returning_writes(tsb: Sandbox, tmp_path: Path) -> None:
    """`ack: replica`, replica not applying: INSERT ... RETURNING is not acknowledged, with
    the same error as a plain INSERT; once the replica applies, it is."""
    p = start_proxy(tmp_path, make_config(
        tsb, durability={"ack": "replica", "replica_acks": 1, "replica_ack_timeout_ms": 1000,
                         "on_ack_timeout": "error"},
        routing={"read_consistency": "primary"}))
    time.sleep(1.5)
    c = p.connect()
    try:
        with c.cursor() as cur:
            cur.execute("INSERT INTO r (v) VALUES (1) RETURNING id")
            assert cur.fetchall()
            tsb.replicas[0].sql("STOP SLAVE SQL_THREAD")
            codes = []
            for sql in ("INSERT INTO r (v) VALUES (2)", "INSERT INTO r (v) VALUES (3) RETURNING id",
                        "CALL pw(4)"):
                with pytest.raises(pymysql.err.OperationalError) as ei:
                    cur.execute(sql)
                    cur.fetchall()
                codes.append(ei.value.args[0])
            assert codes == [9101, 9101, 9101]
    finally:
        tsb.replicas[0].sql("START SLAVE SQL_THREAD")
        c.close()
        p.stop()


def test_set_session_transaction_is_session_state(sproxy: ProxyProc, tsb: Sandbox) -> None:
    """Django's `SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED` on every connection
    does not pin it: reads still go to the replica, and the session keeps the setting."""
    tsb.replicas[0].sql("START SLAVE SQL_THREAD")
    tsb.wait_replicas()
    time.sleep(2)  # the monitor sees the replica caught up again (earlier tests held it back)
    for sb_server, name in ((tsb.primary, "primary"), (tsb.replicas[0], "replica")):
        sb_server.sql("SET SESSION sql_log_bin = 0",
                      "CREATE TABLE IF NOT EXISTS shop.whoami (name VARCHAR(10))",
                      "DELETE FROM shop.whoami", f"INSERT INTO shop.whoami VALUES ('{name}')")
    c = sproxy.connect()
    try:
        with c.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute("SELECT name FROM whoami")
            assert cur.fetchone() == ("replica",)
            cur.execute("SET SESSION TRANSACTION READ ONLY")
            cur.execute("SELECT name FROM whoami")
            assert cur.fetchone() == ("replica",)
            cur.execute("SELECT @@tx_isolation, @@tx_read_only")
            assert cur.fetchone() == ("READ-COMMITTED", 1)
            cur.execute("SET SESSION TRANSACTION READ WRITE")
            cur.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")  # the next one only: pins
            cur.execute("SELECT name FROM whoami")
            assert cur.fetchone() == ("primary",)
    finally:
        c.close()


def test_a_select_calling_a_writing_function_is_read_back(sproxy: ProxyProc, tsb: Sandbox) -> None:
    """mtr's sp_trans: `SELECT f(id) FROM t` where f writes, then a read of what it wrote
    (replica held back): the function's write is the session's, read back on the primary."""
    tsb.primary.sql("CREATE TABLE IF NOT EXISTS shop.fw (v INT)",
                    "CREATE FUNCTION IF NOT EXISTS shop.fwrite(x INT) RETURNS INT DETERMINISTIC "
                    "MODIFIES SQL DATA "
                    "BEGIN INSERT INTO fw VALUES (x); RETURN x; END")
    c = sproxy.connect()
    try:
        for i in range(5):
            _held_back(tsb)
            with c.cursor() as cur:
                cur.execute(f"SELECT fwrite({100 + i})")
                cur.fetchall()
                cur.execute(f"SELECT COUNT(*) FROM fw WHERE v = {100 + i}")
                assert cur.fetchone() == (1,)
    finally:
        c.close()
        tsb.replicas[0].sql("START SLAVE SQL_THREAD")


def test_django_create_reads_back_and_keeps_the_read_split(sproxy: ProxyProc,
                                                           tsb: Sandbox) -> None:
    """Django with its default settings (it sends `SET SESSION TRANSACTION ISOLATION LEVEL READ
    COMMITTED` on each new connection; `Model.objects.create()` is an INSERT ... RETURNING on
    MariaDB): directly and through the proxy the same objects are read back, with the replica
    held back; through the proxy, plain reads still go to the replica."""
    pytest.importorskip("MySQLdb")
    django = pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        db = {"ENGINE": "django.db.backends.mysql", "NAME": "shop", "USER": "app",
              "PASSWORD": "app", "HOST": "127.0.0.1", "CONN_MAX_AGE": 0}
        settings.configure(
            DATABASES={"default": {**db, "PORT": str(sproxy.port)},
                       "direct": {**db, "PORT": str(tsb.primary_port)}},
            INSTALLED_APPS=["django.contrib.contenttypes"], USE_TZ=True)
        django.setup()
    from django.db import connections, models

    class Order(models.Model):
        v = models.IntegerField()

        class Meta:
            app_label = "contenttypes"
            db_table = "dj_order"

    tsb.replicas[0].sql("START SLAVE SQL_THREAD")
    tsb.primary.sql("DROP TABLE IF EXISTS shop.dj_order")
    with connections["direct"].schema_editor() as se:
        se.create_model(Order)
    tsb.wait_replicas()
    time.sleep(2)  # the monitor sees the replica caught up
    seen = {}
    try:
        for alias in ("direct", "default"):
            _held_back(tsb)
            found = []
            for i in range(10):
                o = Order.objects.using(alias).create(v=i)
                assert o.pk is not None  # from RETURNING
                found.append(Order.objects.using(alias).filter(pk=o.pk, v=i).exists())
            seen[alias] = found
            connections[alias].close()
    finally:
        tsb.replicas[0].sql("START SLAVE SQL_THREAD")
    assert seen["direct"] == seen["default"] == [True] * 10
    tsb.wait_replicas()
    time.sleep(2)
    for sb_server, name in ((tsb.primary, "primary"), (tsb.replicas[0], "replica")):
        sb_server.sql("SET SESSION sql_log_bin = 0",
                      "CREATE TABLE IF NOT EXISTS shop.whoami (name VARCHAR(10))",
                      "DELETE FROM shop.whoami", f"INSERT INTO shop.whoami VALUES ('{name}')")
    with connections["default"].cursor() as cur:  # a new connection: Django's SETs first
        cur.execute("SELECT name FROM whoami")
        assert cur.fetchone() == ("replica",)
    connections["default"].close()
