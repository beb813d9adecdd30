"""Zero loss of acknowledged orders: kill -9 the primary under load, promote the replica with SQL,
the proxy follows; with ack: replica nothing acknowledged is lost. Also: split brain stops writes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiomysql
import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, concurrent_decrements, make_config, start_proxy

SKUS = (1, 2, 3)
STOCK = 100000


@dataclass
class Log:
    acked_orders: set[str] = field(default_factory=set)
    unknown_orders: set[str] = field(default_factory=set)
    acked: dict[int, int] = field(default_factory=dict)
    unknown: dict[int, int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)


def setup(sb: Sandbox) -> None:
    sb.primary.sql(
        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop.orders (id VARCHAR(40) PRIMARY KEY, sku INT)",
        "DELETE FROM shop.inventory", "DELETE FROM shop.orders",
        *[f"INSERT INTO shop.inventory VALUES ({s}, {STOCK})" for s in SKUS],
    )
    sb.wait_replicas()


UPDATE = "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = %s AND quantity > 0"


async def order_txn(cur: aiomysql.Cursor, oid: str, sku: int, log: Log) -> None:
    """The seed's order transaction: the order row, the hot decrement (merged through escrow),
    COMMIT. Acknowledged = COMMIT answered OK; an error on COMMIT leaves it unknown."""
    await cur.execute("BEGIN")
    await cur.execute("INSERT INTO orders VALUES (%s, %s)", (oid, sku))
    if await cur.execute(UPDATE, (sku,)) != 1:
        await cur.execute("ROLLBACK")
        return
    try:
        await cur.execute("COMMIT")
    except pymysql.err.MySQLError as e:
        log.errors.append((e.args[0], str(e.args[1:])))
        log.unknown_orders.add(oid)
        log.unknown[sku] = log.unknown.get(sku, 0) + 1
        raise
    log.acked_orders.add(oid)
    log.acked[sku] = log.acked.get(sku, 0) + 1


async def client(port: int, cid: int, stop: asyncio.Event, log: Log, txn: bool = False) -> None:
    conn = None
    i = 0
    while not stop.is_set():
        i += 1
        sku = SKUS[(cid + i) % len(SKUS)]
        oid = f"c{cid}-{i}"
        try:
            if conn is None or conn.closed:
                conn = await aiomysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                                              db="shop", autocommit=True, connect_timeout=5)
            async with conn.cursor() as cur:
                if txn:
                    await order_txn(cur, oid, sku, log)
                    continue
                try:
                    n = await cur.execute(UPDATE, (sku,))
                    if n == 1:
                        log.acked[sku] = log.acked.get(sku, 0) + 1
                except pymysql.err.MySQLError as e:
                    log.errors.append((e.args[0], str(e.args[1:])))
                    if "NOT applied" not in str(e.args[1:]):
                        log.unknown[sku] = log.unknown.get(sku, 0) + 1
                    raise
                try:
                    await cur.execute("INSERT INTO orders VALUES (%s, %s)", (oid, sku))
                    log.acked_orders.add(oid)
                except pymysql.err.MySQLError as e:
                    log.errors.append((e.args[0], str(e.args[1:])))
                    log.unknown_orders.add(oid)
                    raise
        except (TimeoutError, pymysql.err.MySQLError, OSError):
            if conn is not None:
                conn.close()
            conn = None
            await asyncio.sleep(0.05)
    if conn is not None:
        conn.close()


def promote(sb: Sandbox) -> None:
    r = sb.replicas[0]
    r.sql("STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0")


def failover_proxy(tmp_path_factory: pytest.TempPathFactory, sb: Sandbox, wait_s: int,
                   primary_port: int | None = None, **over: object) -> ProxyProc:
    """A proxy on `sb`'s primary (or what stands in front of it: a fault proxy) and replicas
    that waits up to `wait_s` for a writable primary after losing it, reads on the primary."""
    return start_proxy(tmp_path_factory.mktemp("fproxy"), make_config(
        sb, backends={"primary": f"127.0.0.1:{primary_port or sb.primary_port}",
                      "replicas": [f"127.0.0.1:{x}" for x in sb.replica_ports],
                      "failover_wait_s": wait_s, "pool": {"connect_timeout_s": 1}},
        routing={"read_consistency": "primary"}, **over))


def run_failover(sb: Sandbox, p: ProxyProc, clients: int = 40,
                 txn: bool = False) -> tuple[Log, dict[int, int], set[str]]:
    log = Log()

    async def scenario() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(client(p.port, c, stop, log, txn)) for c in range(clients)]
        await asyncio.sleep(2.0)
        await asyncio.to_thread(sb.primary.kill9)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(promote, sb)
        await asyncio.sleep(5.0)
        stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    new = sb.replicas[0]
    if txn:  # reservations of buyers cut off by the kill are resolved by the proxy's recovery
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and int(new.sql(
                "SELECT COUNT(*) FROM seckill_proxy.hotrow_reservation")[0][0]):
            time.sleep(0.5)
    stock = {int(k): int(v) for k, v in new.sql("SELECT sku_id, quantity FROM shop.inventory")}
    orders = {str(r[0]) for r in new.sql("SELECT id FROM shop.orders")}
    return log, stock, orders


@pytest.mark.slow
@pytest.mark.parametrize("ack", ["replica", "commit"])
def test_kill9_primary_promote_replica(tmp_path_factory: pytest.TempPathFactory, ack: str) -> None:
    sb = Sandbox(tmp_path_factory.mktemp(f"failover-{ack}"))
    sb.start()
    p = None
    try:
        setup(sb)
        p = failover_proxy(tmp_path_factory, sb, 10, durability={
            "ack": ack, "replica_acks": 1, "replica_ack_timeout_ms": 2000,
            "on_ack_timeout": "error", "require": "warn"})
        time.sleep(1.5)
        log, stock, orders = run_failover(sb, p)
        lost_orders = log.acked_orders - orders
        lost_units = {s: max(0, log.acked.get(s, 0) - (STOCK - stock[s])) for s in SKUS}
        extra_units = {s: (STOCK - stock[s]) - log.acked.get(s, 0) - log.unknown.get(s, 0) for s in SKUS}
        print(f"\nack={ack}: acknowledged orders {len(log.acked_orders)}, lost {len(lost_orders)}; "
              f"acknowledged deductions {sum(log.acked.values())}, lost {sum(lost_units.values())}; "
              f"errors {len(log.errors)}")
        assert len(log.acked_orders) > 100 and sum(log.acked.values()) > 100
        # the proxy followed the promotion: writes after the kill were acknowledged by the new primary
        rows = p.admin("SHOW BACKENDS")
        roles = {r[0]: r[1] for r in rows}
        assert roles[f"127.0.0.1:{sb.replica_ports[0]}"] == "primary"
        assert roles[f"127.0.0.1:{sb.primary_port}"] == "fenced"
        # nothing applied twice, nothing beyond what clients were told or not told
        assert all(v <= 0 for v in extra_units.values()), extra_units
        assert orders - log.acked_orders <= log.unknown_orders
        if ack == "replica":
            assert lost_orders == set()
            assert sum(lost_units.values()) == 0
    finally:
        if p is not None:
            p.stop()
        sb.destroy()


def test_split_brain_stops_writes_and_old_primary_stays_fenced(tmp_path_factory: pytest.TempPathFactory) -> None:
    sb = Sandbox(tmp_path_factory.mktemp("splitbrain"))
    sb.start()
    p: ProxyProc | None = None
    try:
        setup(sb)
        p = failover_proxy(tmp_path_factory, sb, 1)
        time.sleep(1.5)
        sb.primary.kill9()
        c = p.connect()
        with pytest.raises(pymysql.err.OperationalError) as ei:  # no writable primary yet
            c.cursor().execute("INSERT INTO orders VALUES ('x1', 1)")
        assert ei.value.args[0] in (1290, 2003, 2013)
        c = p.connect()  # (a lost backend closes the client's connection, as MySQL's death)
        reader = p.connect()  # reads go on from the replica, global consistency included
        with reader.cursor() as cur:
            for level in ("eventual", "session", "global"):
                cur.execute(f"SET read_consistency = '{level}'")
                cur.execute("SELECT COUNT(*) FROM orders")
                assert cur.fetchone() == (0,)
        reader.close()
        promote(sb)
        time.sleep(2.5)
        c.cursor().execute("INSERT INTO orders VALUES ('x2', 1)")  # to the promoted replica
        assert sb.replicas[0].sql("SELECT COUNT(*) FROM shop.orders WHERE id = 'x2'") == [(1,)]
        sb.primary.start()  # the old primary returns, still writable: two writable servers
        time.sleep(2.5)
        with pytest.raises(pymysql.err.OperationalError) as ei:
            c.cursor().execute("INSERT INTO orders VALUES ('x3', 1)")
        assert ei.value.args[0] == 1290 and "two writable servers" in ei.value.args[1]
        sb.primary.sql("SET GLOBAL read_only = 1")  # the DBA fences it
        time.sleep(2.5)
        c.cursor().execute("INSERT INTO orders VALUES ('x4', 1)")
        assert sb.replicas[0].sql("SELECT COUNT(*) FROM shop.orders WHERE id = 'x4'") == [(1,)]
        assert sb.primary.sql("SELECT COUNT(*) FROM shop.orders WHERE id IN ('x2', 'x4')") == [(0,)]
        c.close()
    finally:
        if p is not None:
            p.stop()
        sb.destroy()



@pytest.mark.slow
@pytest.mark.parametrize("trigger,action,phase", [
    # a batch's locking read, writes and COMMIT travel together (hotmerge._checked_commit)
    (b"FOR UPDATE", "drop_request", "batch collected, nothing of it delivered"),
    (b"FOR UPDATE", "drop_reply", "batch committed, its reply lost"),
])
def test_kill9_primary_at_batch_phase(tmp_path_factory: pytest.TempPathFactory, trigger: bytes,
                                      action: str, phase: str) -> None:
    """kill -9 the primary exactly while a merged batch is at `phase`, promote the replica: every
    member gets the true outcome on the new primary, nothing is applied twice."""
    import threading

    from .faultproxy import FaultProxy

    sb = Sandbox(tmp_path_factory.mktemp("phase"))
    sb.start()
    fp = FaultProxy(sb.primary_port)
    p = None
    try:
        setup(sb)
        p = failover_proxy(tmp_path_factory, sb, 20, primary_port=fp.port, durability={
            "ack": "replica", "replica_ack_timeout_ms": 500, "on_ack_timeout": "degrade"})
        time.sleep(1.5)
        warm = p.connect()
        assert warm.cursor().execute("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0") == 1
        warm.close()
        sb.wait_replicas()
        fp.trigger, fp.on_commit = trigger, action

        def killer() -> None:
            while fp.on_commit is not None:
                time.sleep(0.001)
            time.sleep(0.05)
            sb.primary.kill9()
            promote(sb)

        th = threading.Thread(target=killer)
        th.start()

        results = concurrent_decrements(p.port, 20)
        th.join()
        told_ok = sum(1 for r in results if r == 1)
        unknown = sum(1 for r in results if r != 1 and "NOT applied" not in str(r))
        left = int(sb.replicas[0].sql("SELECT quantity FROM shop.inventory WHERE sku_id = 1")[0][0])
        deducted = (STOCK - 1) - left  # the warm-up deduction replicated before the kill
        print(f"\n{phase}: told ok {told_ok}, unknown {unknown}, deducted on new primary {deducted}")
        assert told_ok <= deducted <= told_ok + unknown, results
        assert told_ok > 0
    finally:
        if p is not None:
            p.stop()
        fp.close()
        sb.destroy()


@pytest.mark.slow
def test_kill9_primary_promote_replica_order_transactions(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The seed's order transaction with its hot decrement merged (escrow), `ack: replica`,
    kill -9 of the primary and promotion mid-load: every acknowledged order and its unit are on
    the new primary, every unit sold there belongs to a committed order (reservations of
    buyers cut off are returned by recovery, none is turned into a sale), nothing twice."""
    sb = Sandbox(tmp_path_factory.mktemp("failover-txn"))
    sb.start()
    p = None
    try:
        setup(sb)
        p = failover_proxy(tmp_path_factory, sb, 10, durability={
            "ack": "replica", "replica_acks": 1, "replica_ack_timeout_ms": 2000,
            "on_ack_timeout": "error", "require": "warn"}, hotrow={
            "mode": "merge", "recover_after_s": 2,
            "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}]})
        time.sleep(1.5)
        log, stock, orders = run_failover(sb, p, txn=True)
        new = sb.replicas[0]
        by_sku = {int(k): int(v) for k, v in new.sql("SELECT sku, COUNT(*) FROM shop.orders GROUP BY sku")}
        merged = int(new.sql("SELECT COALESCE(SUM(members), 0) FROM seckill_proxy.hotrow_batch")[0][0])
        left = int(new.sql("SELECT COUNT(*) FROM seckill_proxy.hotrow_reservation")[0][0])
        print(f"\ntransactions, ack=replica: acknowledged orders {len(log.acked_orders)}, lost "
              f"{len(log.acked_orders - orders)}; unknown {len(log.unknown_orders)}; merged members "
              f"{merged}; reservations left {left}; errors {len(log.errors)}")
        kinds: dict[str, int] = {}
        for code, msg in log.errors:
            k = f"{code} {msg[:40]}"
            kinds[k] = kinds.get(k, 0) + 1
        print("\n".join(f"  {n:5d} x {k}" for k, n in sorted(kinds.items(), key=lambda x: -x[1])[:6]))
        assert len(log.acked_orders) > 100 and merged > 0
        assert left == 0
        roles = {r[0]: r[1] for r in p.admin("SHOW BACKENDS")}
        assert roles[f"127.0.0.1:{sb.replica_ports[0]}"] == "primary"
        assert log.acked_orders <= orders  # no acknowledged order lost
        assert orders - log.acked_orders <= log.unknown_orders  # nothing nobody asked for
        for s in SKUS:  # each unit sold belongs to exactly one committed order
            assert STOCK - stock[s] == by_sku.get(s, 0), (s, stock[s], by_sku.get(s, 0))
    finally:
        if p is not None:
            p.stop()
        sb.destroy()


@pytest.mark.slow
def test_a_transaction_on_the_former_primary_does_not_go_on_on_the_new_one(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """BEGIN; INSERT on the primary; kill -9 and promotion; then COMMIT: the transaction ends
    as when MySQL dies under it (2013), the order is not on the new primary, new clients are
    served there. (The race this guards, a held connection to the fenced former primary
    swapped for one on the new primary and a COMMIT there answering OK for nothing, was found
    by the order-transaction failover test above once the confirm row moved to COMMIT: a
    session whose statement arrives before its held connection's close was seen.)"""
    sb = Sandbox(tmp_path_factory.mktemp("failover-held"))
    sb.start()
    p = None
    try:
        setup(sb)
        p = failover_proxy(tmp_path_factory, sb, 10)
        c = p.connect()
        with c.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO orders VALUES ('held-1', 1)")
        sb.primary.kill9()
        promote(sb)
        new = f"127.0.0.1:{sb.replica_ports[0]}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if {r[0]: r[1] for r in p.admin("SHOW BACKENDS")}.get(new) == "primary":
                break
            time.sleep(0.2)
        with pytest.raises(pymysql.err.OperationalError) as e:
            with c.cursor() as cur:
                cur.execute("COMMIT")
        assert e.value.args[0] in (2013, 2006)
        assert str(sb.replicas[0].sql(
            "SELECT COUNT(*) FROM shop.orders WHERE id = 'held-1'")[0][0]) == "0"
        c2 = p.connect()  # the proxy serves new clients on the new primary
        with c2.cursor() as cur:
            cur.execute("INSERT INTO orders VALUES ('after-1', 1)")
        c2.close()
    finally:
        if p is not None:
            p.stop()
        sb.destroy()
