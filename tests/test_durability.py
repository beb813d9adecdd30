"""Durability audit and replica acknowledgement against a real primary + replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from proxy.engines.monitor import durable_problems
from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, concurrent_decrements, make_config, start_proxy
from .faultproxy import FaultProxy


def test_durable_problems_table() -> None:
    assert durable_problems({"innodb_flush_log_at_trx_commit": "1", "sync_binlog": "1", "log_bin": "1"}) == []
    assert durable_problems({"innodb_flush_log_at_trx_commit": "2", "sync_binlog": "0", "log_bin": "1"}) == [
        "innodb_flush_log_at_trx_commit=2", "sync_binlog=0"]
    assert durable_problems({"innodb_flush_log_at_trx_commit": "1", "sync_binlog": "1", "log_bin": "0"}) == [
        "log_bin=OFF"]


@pytest.fixture(scope="module")
def dsb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("durability-sandbox"))
    sb.start()
    sb.primary.sql("CREATE TABLE shop.orders (id INT AUTO_INCREMENT PRIMARY KEY, v INT)",
                   "CREATE TABLE shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
                   "INSERT INTO shop.inventory VALUES (1, 100000)")
    sb.wait_replicas()
    yield sb
    sb.destroy()


def proxy_with(sb: Sandbox, tmp: Path, **durability: object) -> ProxyProc:
    p = start_proxy(tmp, make_config(sb, durability=durability,
                                     routing={"read_consistency": "primary"}))
    time.sleep(1.5)  # first monitor round
    return p


def test_strict_refuses_writes_while_primary_not_durable(dsb: Sandbox, tmp_path: Path) -> None:
    p = proxy_with(dsb, tmp_path, require="strict")
    try:
        c = p.connect()
        cur = c.cursor()
        cur.execute("INSERT INTO orders (v) VALUES (1)")
        dsb.primary.sql("SET GLOBAL sync_binlog = 0")
        time.sleep(1.5)
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("INSERT INTO orders (v) VALUES (2)")
        assert ei.value.args[0] == 1290 and "sync_binlog=0" in ei.value.args[1]
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0")
        assert ei.value.args[0] == 1290
        cur.execute("SELECT COUNT(*) FROM orders WHERE v = 2")  # reads go on
        assert cur.fetchone() == (0,)
        backends = p.admin("SHOW BACKENDS")
        assert "sync_binlog=0" in next(r[7] for r in backends if r[1] == "primary")
        assert p.metric("seckill_proxy_primary_durable") == 0
        assert p.metric("seckill_proxy_durability_refused_writes_total") >= 2
        dsb.primary.sql("SET GLOBAL sync_binlog = 1")
        time.sleep(1.5)
        cur.execute("INSERT INTO orders (v) VALUES (3)")
        assert p.metric("seckill_proxy_primary_durable") == 1
        c.close()
    finally:
        dsb.primary.sql("SET GLOBAL sync_binlog = 1")
        p.stop()


def test_warn_counts_unsafe_writes(dsb: Sandbox, tmp_path: Path) -> None:
    p = proxy_with(dsb, tmp_path, require="warn")
    try:
        dsb.primary.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
        time.sleep(1.5)
        c = p.connect()
        c.cursor().execute("INSERT INTO orders (v) VALUES (4)")
        c.close()
        assert p.metric("seckill_proxy_durability_unsafe_writes_total") >= 1
        assert "not durable" in p.log()
    finally:
        dsb.primary.sql("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
        p.stop()


def test_ack_replica_ok_means_on_the_replica(dsb: Sandbox, tmp_path: Path) -> None:
    p = proxy_with(dsb, tmp_path, ack="replica", replica_acks=1, replica_ack_timeout_ms=2000,
                   on_ack_timeout="error")
    try:
        c = p.connect()
        cur = c.cursor()
        for i in range(30):
            cur.execute("INSERT INTO orders (v) VALUES (%s)", (1000 + i,))
            new_id = cur.lastrowid
            # the OK arrived: the row must already be on the replica, no waiting here
            got = dsb.replicas[0].sql(f"SELECT v FROM shop.orders WHERE id = {new_id}")
            assert got == [(1000 + i,)]
        # A merged hot-row batch is acknowledged once the replica has the deduction.
        async def buy() -> list[int]:
            import aiomysql

            async def one() -> int:
                conn = await aiomysql.connect(host="127.0.0.1", port=p.port, user="app",
                                              password="app", db="shop", autocommit=True)
                async with conn.cursor() as k:
                    n = await k.execute("UPDATE inventory SET quantity = quantity - 1 "
                                        "WHERE sku_id = 1 AND quantity > 0")
                conn.close()
                return n
            return await asyncio.gather(*(one() for _ in range(40)))

        before = dsb.replicas[0].sql("SELECT quantity FROM shop.inventory WHERE sku_id = 1")[0][0]
        assert sum(asyncio.run(buy())) == 40
        after = dsb.replicas[0].sql("SELECT quantity FROM shop.inventory WHERE sku_id = 1")[0][0]
        assert before - after == 40
        # Replication stopped: the write commits on the primary, and the client is told exactly that.
        dsb.replicas[0].sql("STOP SLAVE SQL_THREAD")
        t0 = time.monotonic()
        with pytest.raises(pymysql.err.OperationalError) as ei:
            cur.execute("INSERT INTO orders (v) VALUES (7777)")
        assert ei.value.args[0] == 9101 and "Committed on the primary" in ei.value.args[1]
        assert 1.5 < time.monotonic() - t0 < 6
        assert dsb.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE v = 7777") == [(1,)]
        c.close()
    finally:
        dsb.replicas[0].sql("START SLAVE SQL_THREAD")
        p.stop()


def test_ack_timeout_degrades_and_counts(dsb: Sandbox, tmp_path: Path) -> None:
    p = proxy_with(dsb, tmp_path, ack="replica", replica_ack_timeout_ms=300, on_ack_timeout="degrade")
    try:
        dsb.replicas[0].sql("STOP SLAVE SQL_THREAD")
        c = p.connect()
        c.cursor().execute("INSERT INTO orders (v) VALUES (8888)")  # acknowledged (degraded)
        c.close()
        assert p.metric('seckill_proxy_replica_acks_total{outcome="degraded"}') >= 1
    finally:
        dsb.replicas[0].sql("START SLAVE SQL_THREAD")
        p.stop()


def _tracking_proxy_behind_faults(dsb: Sandbox, tmp_path: Path) -> tuple[FaultProxy, ProxyProc]:
    """A proxy with track_commits: all whose primary connections run through a fault proxy."""
    fp = FaultProxy(dsb.primary_port)
    p = start_proxy(tmp_path, make_config(
        dsb, durability={"track_commits": "all"}, routing={"read_consistency": "primary"},
        backends={"primary": f"127.0.0.1:{fp.port}", "replicas": [], "failover_wait_s": 30,
                  "pool": {"connect_timeout_s": 2}}))
    return fp, p


def test_tracked_commit_tells_the_truth_after_connection_loss(dsb: Sandbox, tmp_path: Path) -> None:
    fp, p = _tracking_proxy_behind_faults(dsb, tmp_path)
    try:
        time.sleep(1.5)
        c = p.connect()
        # 1. COMMIT reaches MySQL and commits, but its reply is lost: the client gets OK.
        c.begin()
        c.cursor().execute("INSERT INTO orders (v) VALUES (4242)")
        fp.on_commit = "drop_reply"
        fp.heal_after_trigger()
        c.commit()
        assert dsb.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE v = 4242") == [(1,)]
        # 2. COMMIT never reaches MySQL: the client is told it did NOT commit (9102), not "unknown".
        c.begin()
        c.cursor().execute("INSERT INTO orders (v) VALUES (4343)")
        fp.on_commit = "drop_request"
        fp.heal_after_trigger()
        with pytest.raises(pymysql.err.MySQLError) as ei:
            c.commit()
        assert ei.value.args[0] == 9102 and "NOT committed" in ei.value.args[1]
        assert dsb.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE v = 4343") == [(0,)]
        # the same client connection goes on working
        c.cursor().execute("INSERT INTO orders (v) VALUES (4444)")
        assert p.metric('seckill_proxy_commit_in_doubt_total{resolution="committed"}') == 1
        assert p.metric('seckill_proxy_commit_in_doubt_total{resolution="not_committed"}') == 1
        c.close()
    finally:
        p.stop()
        fp.close()


@pytest.mark.parametrize("trigger,action,path,expect", [
    (b"FOR UPDATE", "drop_request", "first", "retried"),    # lock, writes, COMMIT never arrive
    (b"FOR UPDATE", "drop_reply", "first", "in_doubt_ok"),  # committed, reply lost: record found
    (b"FOR UPDATE", "drop_request", "read", "retried"),     # lost while locking the row
    (b"FOR UPDATE", "drop_reply", "read", "retried"),       # row locked, reply lost: rolled back
    (b"hotrow_batch", "drop_request", "read", "retried"),   # writes and COMMIT never arrive
    (b"hotrow_batch", "drop_reply", "read", "in_doubt_ok"),  # committed, reply lost: record found
])
def test_batch_connection_lost_at_each_phase(dsb: Sandbox, tmp_path: Path, trigger: bytes,
                                             action: str, path: str, expect: str) -> None:
    """Every member gets the true outcome whatever phase the batch connection dies in. A
    batch's COMMIT travels with its writes (hotmerge._checked_commit): on a first try with
    the locking read too; after a read first (`read`: the key's last batch left no stock,
    then the stock was raised behind the proxy's back) in the round trip after it."""
    fp = FaultProxy(dsb.primary_port)
    sku = "UPDATE shop.inventory SET quantity = {} WHERE sku_id = 1"
    dsb.primary.sql(sku.format(1 if path == "read" else 1000))
    p = start_proxy(tmp_path, make_config(
        dsb, routing={"read_consistency": "primary"},
        backends={"primary": f"127.0.0.1:{fp.port}", "replicas": [], "failover_wait_s": 30,
                  "pool": {"connect_timeout_s": 2}}))
    try:
        time.sleep(1.5)
        warm = p.connect()  # first use checks the rule and creates the batch table
        assert warm.cursor().execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0") == 1
        warm.close()
        if path == "read":  # the last batch left 0: the next one reads before it writes
            dsb.primary.sql(sku.format(1000))
        base = int(dsb.primary.sql("SELECT quantity FROM shop.inventory WHERE sku_id = 1")[0][0])
        held0 = p.metric('seckill_proxy_hotrow_batch_first_try_total{outcome="held"}')
        fp.trigger = trigger
        fp.on_commit = action
        fp.heal_after_trigger()

        results = concurrent_decrements(p.port, 20)
        ok = sum(1 for r in results if r == 1)
        left = dsb.primary.sql("SELECT quantity FROM shop.inventory WHERE sku_id = 1")[0][0]
        assert base - left == ok, (results, left)  # told-success == applied, nothing twice
        assert ok == 20, results  # retried once (not committed) or resolved (committed)
        inds = p.metric('seckill_proxy_hotrow_batch_in_doubt_total{resolution="committed"}')
        assert inds == (1 if expect == "in_doubt_ok" else 0)
        if path == "first":
            assert p.metric('seckill_proxy_hotrow_batch_first_try_total{outcome="held"}') > held0
    finally:
        p.stop()
        fp.close()


def test_tracked_autocommit_writes(dsb: Sandbox, tmp_path: Path) -> None:

    import mysql.connector

    dsb.primary.sql("CREATE TABLE IF NOT EXISTS shop.uq (id INT AUTO_INCREMENT PRIMARY KEY, "
                    "code VARCHAR(20) UNIQUE)")
    fp, p = _tracking_proxy_behind_faults(dsb, tmp_path)

    def count(code: str) -> int:
        return int(dsb.primary.sql(f"SELECT COUNT(*) FROM shop.uq WHERE code = '{code}'")[0][0])

    try:
        time.sleep(1.5)
        c = p.connect()
        cur = c.cursor()
        assert cur.execute("INSERT INTO uq (code) VALUES ('a1')") == 1
        new_id = cur.lastrowid
        assert new_id and count("a1") == 1
        cur.execute("SELECT LAST_INSERT_ID()")
        assert cur.fetchone()[0] == new_id
        with pytest.raises(pymysql.err.IntegrityError) as ei:  # MySQL's own error, unchanged
            cur.execute("INSERT INTO uq (code) VALUES ('a1')")
        assert ei.value.args[0] == 1062
        # COMMIT's reply lost: the proxy finds the record and answers OK
        fp.trigger, fp.on_commit = b"commit_outcome", "drop_reply"
        fp.heal_after_trigger()
        assert cur.execute("INSERT INTO uq (code) VALUES ('a2')") == 1
        assert count("a2") == 1
        # COMMIT never arrives: verified not applied
        fp.trigger, fp.on_commit = b"commit_outcome", "drop_request"
        fp.heal_after_trigger()
        with pytest.raises(pymysql.err.MySQLError) as ei:
            cur.execute("INSERT INTO uq (code) VALUES ('a3')")
        assert ei.value.args[0] == 9102
        assert count("a3") == 0
        c.close()
        # server-side prepared statements are tracked the same way
        mc = mysql.connector.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                                     database="shop", autocommit=True, use_pure=True)
        mcur = mc.cursor(prepared=True)
        mcur.execute("INSERT INTO uq (code) VALUES (?)", ("a4",))
        assert mcur.rowcount == 1 and count("a4") == 1
        mc.close()
        n = int(dsb.primary.sql("SELECT COUNT(*) FROM seckill_proxy.commit_outcome")[0][0])
        assert n >= 3
    finally:
        p.stop()
        fp.close()
