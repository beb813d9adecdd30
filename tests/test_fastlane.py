"""The fast lane (statements run in socket callbacks) against real MariaDB: it answers exactly as
the general path does, including when clients pipeline, leave, or the backend dies under it."""

from __future__ import annotations

import struct
import threading
import time
from pathlib import Path

import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, make_config, start_proxy
from .faultproxy import FaultProxy


def _packet(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload))[:3] + b"\x00" + payload


def _open_lane(cur: pymysql.cursors.Cursor) -> None:
    """Run one statement: the session then holds a backend connection, and the lane is open."""
    cur.execute("SELECT 1")
    cur.fetchall()


def _hang_up(c: pymysql.connections.Connection) -> None:  # type: ignore[type-arg]
    """Close the client's socket for real (PyMySQL's file object keeps it open otherwise)."""
    import socket
    c._sock.shutdown(socket.SHUT_RDWR)
    c._sock.close()
    c._rfile.close()


def _lane_count(p: ProxyProc) -> float:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("seckill_proxy_fastlane_statements_total "):
                return float(line.split()[1])
    raise AssertionError("fast lane counter missing")


@pytest.fixture(scope="module")
def primary_proxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> ProxyProc:
    """Reads on the primary, so SELECTs may take the lane too."""
    p = start_proxy(tmp_path_factory.mktemp("lane"), make_config(
        sandbox, routing={"read_consistency": "primary"}))
    yield p  # type: ignore[misc]
    p.stop()


def test_lane_runs_plain_statements_with_general_path_answers(primary_proxy: ProxyProc) -> None:
    c = primary_proxy.connect()
    cur = c.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS lane_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    _open_lane(cur)
    before = _lane_count(primary_proxy)
    cur.execute("INSERT INTO lane_t (v) VALUES (1), (2)")
    assert cur.rowcount == 2 and c.insert_id() > 0
    first = c.insert_id()
    cur.execute("UPDATE lane_t SET v = v + 10 WHERE id >= %s", (first,))
    assert cur.rowcount == 2
    c.begin()
    cur.execute("DELETE FROM lane_t WHERE id = %s", (first,))
    c.rollback()
    cur.execute("SELECT v FROM lane_t WHERE id IN (%s, %s) ORDER BY id", (first, first + 1))
    assert cur.fetchall() == ((11,), (12,))
    with pytest.raises(pymysql.err.ProgrammingError) as ei:
        cur.execute("SELECT * FROM lane_no_such_table")
    assert ei.value.args[0] == 1146
    assert _lane_count(primary_proxy) - before >= 7
    c.close()


def test_pipelined_commands_answer_in_order(primary_proxy: ProxyProc) -> None:
    c = primary_proxy.connect()
    _open_lane(c.cursor())
    # Two commands in one TCP write: the lane takes only whole single commands, the session
    # task the rest, and the answers come back in order.
    c._sock.sendall(_packet(b"\x03SELECT 2") + _packet(b"\x03SELECT 3"))
    for want in (2, 3):
        c._next_seq_id = 1
        c._read_query_result()
        assert c._result.rows == ((want,),)
    cur = c.cursor()
    cur.execute("SELECT 4")
    assert cur.fetchone() == (4,)
    c.close()


def test_client_gone_mid_statement_leaks_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    p = start_proxy(tmp_path, make_config(sandbox, routing={"read_consistency": "primary"},
                                          backends={"replicas": [], "pool": {"max_connections": 1}}))
    try:
        a = p.connect()
        _open_lane(a.cursor())
        a._sock.sendall(_packet(b"\x03SELECT SLEEP(1), 'a'"))
        _hang_up(a)
        # The only backend connection had a reply pending: the next client must not get it.
        b = p.connect()
        cur = b.cursor()
        cur.execute("SELECT 'b'")
        assert cur.fetchone() == ("b",)
        cur.execute("SELECT 'c'")
        assert cur.fetchone() == ("c",)
        b.close()
        # A client that leaves in the middle of a large result it stopped reading (the lane
        # has paused reading MySQL for it): the connection is freed for the next client.
        a = p.connect()
        _open_lane(a.cursor())
        a._sock.sendall(_packet(b"\x03SELECT seq, REPEAT('z', 1000) FROM seq_1_to_200000"))
        a._sock.recv(65536)
        time.sleep(0.5)
        _hang_up(a)
        b = p.connect()
        cur = b.cursor()
        cur.execute("SELECT 'd'")
        assert cur.fetchone() == ("d",)
        b.close()
    finally:
        p.stop()


def test_backend_lost_under_lane_statements(sandbox: Sandbox, tmp_path: Path) -> None:
    fp = FaultProxy(sandbox.primary_port)
    p = start_proxy(tmp_path, make_config(sandbox, routing={"read_consistency": "primary"}, backends={
        "primary": f"127.0.0.1:{fp.port}", "replicas": [], "pool": {"connect_timeout_s": 1}}))
    try:
        c = p.connect()
        cur = c.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS lane_cut (v INT)")
        _open_lane(cur)
        # A write cut before its reply: outcome unknown, as on the general path.
        threading.Timer(0.3, fp.cut).start()
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("INSERT INTO lane_cut SELECT SLEEP(2)")
        # (the proxy closes the client connection, as MySQL's death would: its library says
        # 2013; the proxy's log says "outcome unknown")
        assert ei.value.args[0] == 2013
        c = p.connect()  # a new connection works at once
        cur = c.cursor()
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)
        # A transaction cut under a statement: told, and the connection is closed.
        c.begin()
        threading.Timer(0.3, fp.cut).start()
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("SELECT SLEEP(2)")
        assert ei.value.args[0] == 2013
        with pytest.raises((pymysql.err.OperationalError, pymysql.err.InterfaceError)):
            c.cursor().execute("SELECT 1")
        # A large result cut after part of it reached the client: the client learns it too.
        c = p.connect(cursorclass=pymysql.cursors.SSCursor)
        cur = c.cursor()
        _open_lane(cur)
        cur.execute("SELECT seq, REPEAT('x', 200) FROM seq_1_to_2000000")
        rows = 0
        with pytest.raises(pymysql.err.OperationalError) as ei:
            for _ in cur:
                rows += 1
                if rows == 1000:
                    fp.cut()
        assert ei.value.args[0] == 2013 and rows < 2_000_000
        for res in (c._result, cur._result):  # the socket is gone: nothing left to drain
            if res is not None:
                res.unbuffered_active = False
        d = p.connect()  # the proxy itself is fine
        d.cursor().execute("SELECT 1")
        d.close()
        assert "Traceback" not in p.log()
    finally:
        p.stop()
        fp.close()


def test_slow_reader_of_a_large_lane_result(primary_proxy: ProxyProc) -> None:
    """Backpressure: a client that reads slowly stops the lane from reading MySQL, and the whole
    result still arrives intact."""
    c = primary_proxy.connect(cursorclass=pymysql.cursors.SSCursor)
    cur = c.cursor()
    _open_lane(cur)
    cur.execute("SELECT seq, REPEAT('y', 1000) FROM seq_1_to_20000")
    n = 0
    for i, row in enumerate(cur):
        assert row[0] == i + 1 and len(row[1]) == 1000
        n += 1
        if i % 2000 == 0:
            time.sleep(0.2)
    assert n == 20000
    cur.execute("SELECT 6")
    assert list(cur.fetchall()) == [(6,)]
    cur.close()
    c.close()
