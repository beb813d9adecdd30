"""Hot decrements merged inside transactions (escrow.py) against real MariaDB: the seed's order
transaction in both orders, rollbacks, vanishing buyers, long holders, outside writers, and a
proxy killed with -9 mid-load. Properties, not timings: every unit is sold at most once, sold
units match committed orders, units of rolled-back buyers come back."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, app_conn, make_config, start_proxy

UPD = "UPDATE inventory SET quantity = quantity - {n} WHERE sku_id = {sku} AND quantity >= {n}"
LOG = "INSERT INTO inventory_log (sku_id, delta) VALUES ({sku}, -{n})"


def setup(sb: Sandbox, stock: dict[int, int]) -> None:
    sb.primary.sql(
        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS shop.inventory_log (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
        "sku_id INT NOT NULL, delta INT NOT NULL)",
        "DELETE FROM shop.inventory", "DELETE FROM shop.inventory_log",
        *[f"INSERT INTO shop.inventory (sku_id, quantity) VALUES ({k}, {v})" for k, v in stock.items()],
    )


def state(sb: Sandbox) -> tuple[dict[int, int], dict[int, int]]:
    stock = {int(k): int(v) for k, v in sb.primary.sql("SELECT sku_id, quantity FROM shop.inventory")}
    logged = {int(k): -int(v) for k, v in
              sb.primary.sql("SELECT sku_id, SUM(delta) FROM shop.inventory_log GROUP BY sku_id")}
    return stock, logged


def leftovers(sb: Sandbox) -> int:
    sb.primary.sql("CREATE DATABASE IF NOT EXISTS seckill_proxy")
    if not sb.primary.sql("SHOW TABLES FROM seckill_proxy LIKE 'hotrow_reservation'"):
        return 0
    return int(sb.primary.sql("SELECT COUNT(*) FROM seckill_proxy.hotrow_reservation")[0][0])


def settle(sb: Sandbox, timeout: float = 30) -> None:
    """Reservations are resolved in the background once transactions end."""
    deadline = time.monotonic() + timeout
    while leftovers(sb) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(sb) == 0


@dataclass
class Tally:
    committed: dict[int, int] = field(default_factory=dict)  # units in committed transactions
    told_zero: int = 0
    rolled_back: int = 0
    errors: list[Any] = field(default_factory=list)


async def buyers(port: int, clients: int, tries: int, skus: list[int], amounts: list[int],
                 update_first: bool = False, rollback_share: float = 0.0,
                 vanish_share: float = 0.0, hold_s: float = 0.0) -> Tally:
    t = Tally()

    async def one(i: int) -> None:
        rnd = random.Random(i)
        conn = await app_conn(port)
        try:
            for _ in range(tries):
                sku, n = rnd.choice(skus), rnd.choice(amounts)
                async with conn.cursor() as cur:
                    await cur.execute("BEGIN")
                    if not update_first:
                        await cur.execute(LOG.format(sku=sku, n=n))
                    rows = await cur.execute(UPD.format(sku=sku, n=n))
                    if rows == 0:
                        t.told_zero += 1
                        await cur.execute("ROLLBACK")
                        continue
                    assert rows == 1
                    await cur.execute("SELECT ROW_COUNT()")
                    assert (await cur.fetchone()) == (1,)
                    if update_first:
                        await cur.execute(LOG.format(sku=sku, n=n))
                    if hold_s:
                        await asyncio.sleep(hold_s)
                    if rnd.random() < vanish_share:
                        conn.close()  # gone mid-transaction: MySQL rolls it back
                        t.rolled_back += n
                        conn = await app_conn(port)
                        continue
                    if rnd.random() < rollback_share:
                        await cur.execute("ROLLBACK")
                        t.rolled_back += n
                        continue
                    await cur.execute("COMMIT")
                    t.committed[sku] = t.committed.get(sku, 0) + n
        except pymysql.MySQLError as e:
            t.errors.append(e.args)
        finally:
            conn.close()

    await asyncio.gather(*(one(i) for i in range(clients)))
    return t


def reservations_made(sb: Sandbox) -> int:
    """Batches with members are recorded in hotrow_batch: merged groups really formed."""
    leftovers(sb)
    if not sb.primary.sql("SHOW TABLES FROM seckill_proxy LIKE 'hotrow_batch'"):
        return 0
    return int(sb.primary.sql("SELECT COALESCE(SUM(members), 0) FROM seckill_proxy.hotrow_batch")[0][0])


@pytest.mark.parametrize("update_first", [False, True], ids=["insert_first", "update_first"])
def test_300_buyers_5_transactions_exact(proxy: ProxyProc, sandbox: Sandbox, update_first: bool) -> None:
    setup(sandbox, {1: 1000})
    m0 = reservations_made(sandbox)
    t = asyncio.run(buyers(proxy.port, 300, 5, [1], [1], update_first=update_first))
    assert t.errors == []
    assert t.committed == {1: 1000} and t.told_zero == 500
    settle(sandbox)
    stock, logged = state(sandbox)
    assert stock == {1: 0} and logged == {1: 1000}
    assert reservations_made(sandbox) - m0 >= 1000  # they were merged, not queued


def test_rollbacks_and_vanishing_buyers_give_units_back(proxy: ProxyProc, sandbox: Sandbox) -> None:
    initial = {10: 400, 11: 250, 12: 100}
    setup(sandbox, initial)
    t = asyncio.run(buyers(proxy.port, 200, 6, list(initial), [1, 3, 5],
                           rollback_share=0.2, vanish_share=0.1))
    assert t.errors == []
    assert t.rolled_back > 0
    settle(sandbox)
    stock, logged = state(sandbox)
    for k in initial:
        assert stock[k] >= 0
        assert initial[k] - stock[k] == t.committed.get(k, 0) == logged.get(k, 0)


def test_a_long_holder_does_not_hold_up_others(proxy: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {20: 10_000})

    async def run() -> tuple[bool, Tally]:
        holder = await app_conn(proxy.port)
        async with holder.cursor() as cur:
            await cur.execute("BEGIN")
            assert await cur.execute(UPD.format(sku=20, n=1)) == 1
            # others buy the same SKU while the holder's transaction stays open
            t = await asyncio.wait_for(buyers(proxy.port, 50, 4, [20], [1]), 60)
            still_open = not holder.closed
            await cur.execute(LOG.format(sku=20, n=1))
            await cur.execute("COMMIT")
        holder.close()
        t.committed[20] = t.committed.get(20, 0) + 1
        return still_open, t

    still_open, t = asyncio.run(run())
    assert still_open and t.errors == [] and t.committed == {20: 201}
    settle(sandbox)
    stock, logged = state(sandbox)
    assert stock == {20: 10_000 - 201} and logged == {20: 201}


def test_outside_writer_on_the_same_row(proxy: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {30: 3000})
    outside = 0
    stop = False

    async def writer() -> None:
        nonlocal outside
        c = await app_conn(sandbox.primary_port)
        async with c.cursor() as cur:
            while not stop:
                outside += await cur.execute(UPD.format(sku=30, n=2))
        c.close()

    async def run() -> Tally:
        nonlocal stop
        w = asyncio.create_task(writer())
        t = await buyers(proxy.port, 100, 5, [30], [1], rollback_share=0.1)
        stop = True
        await w
        return t

    t = asyncio.run(run())
    assert t.errors == []
    settle(sandbox)
    stock, logged = state(sandbox)
    assert stock[30] >= 0
    assert 3000 - stock[30] == t.committed.get(30, 0) + 2 * outside
    assert logged.get(30, 0) == t.committed.get(30, 0)


# Merged, and reservations whose member connection is gone recovered after 1 s
RECOVERING = {"mode": "merge", "recover_after_s": 1,
              "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}]}


def recovered(p: ProxyProc, sb: Sandbox, sku: int) -> None:
    """Have `p` recover what another proxy left, and wait until nothing is reserved: its rule
    is checked on first use (one unit of `sku` decremented), then recovery runs."""
    c = p.connect()
    with c.cursor() as cur:
        cur.execute(UPD.format(sku=sku, n=1))
    c.close()
    settle(sb, 60)


def test_kill_9_of_the_proxy_mid_transactions_returns_unconfirmed_units(
        sandbox: Sandbox, tmp_path: Path) -> None:
    setup(sandbox, {40: 5000})
    cfg = make_config(sandbox, hotrow=RECOVERING)
    p = start_proxy(tmp_path, cfg)

    async def hold_forever() -> None:
        await buyers(p.port, 60, 50, [40], [1], hold_s=0.05)

    async def run() -> None:
        task = asyncio.create_task(hold_forever())
        await asyncio.sleep(3)
        p.stop(signal.SIGKILL)  # mid-load: transactions open with reserved units
        try:
            await asyncio.wait_for(task, 30)
        except Exception:  # noqa: BLE001 - the buyers' connections die with the proxy
            pass

    asyncio.run(run())
    print("reservations left by the killed proxy:", leftovers(sandbox))
    p2 = start_proxy(tmp_path, cfg)  # a new proxy recovers what the dead one left
    try:
        recovered(p2, sandbox, 40)
        stock, logged = state(sandbox)
        assert stock[40] >= 0
        assert 5000 - 1 - stock[40] == logged.get(40, 0)  # sold units = committed orders
    finally:
        p2.stop()


def test_reservations_an_older_proxy_left_are_resolved_by_their_confirm_rows(
        sandbox: Sandbox, tmp_path: Path) -> None:
    """Before stop 46 a member inserted a confirm row and its reservation stayed until a
    resolution. Two such reservations left by a crashed older proxy (its connections gone):
    the one with a confirm row was sold (its unit stays sold, both rows go), the other's unit
    comes back (escrow.resolve reads the confirm table still)."""
    from proxy.engines import escrow

    setup(sandbox, {91: 8})  # (10, less the two units the old batch reserved)
    sandbox.primary.sql("CREATE DATABASE IF NOT EXISTS seckill_proxy",
                        *escrow.ddl("seckill_proxy"))
    b = 9_000_000_000_001
    sandbox.primary.sql(
        f"INSERT INTO seckill_proxy.{escrow.RESERVATION} (batch_id, member, table_name, "
        "key_value, amount, server_id, conn_id, created_at) VALUES "
        f"({b}, 0, '`shop`.`inventory`', '91', 1, @@server_id, 4000000000, NOW(6) - INTERVAL 60 SECOND), "
        f"({b}, 1, '`shop`.`inventory`', '91', 1, @@server_id, 4000000000, NOW(6) - INTERVAL 60 SECOND)",
        f"INSERT INTO seckill_proxy.{escrow.CONFIRM} VALUES ({b}, 0)")
    p = start_proxy(tmp_path, make_config(sandbox, hotrow=RECOVERING))
    try:
        recovered(p, sandbox, 91)
        assert state(sandbox)[0] == {91: 8}  # 8, less the UPDATE above, plus the unit back
        assert sandbox.primary.sql(
            f"SELECT COUNT(*) FROM seckill_proxy.{escrow.CONFIRM} WHERE batch_id = {b}") == [(0,)]
        # (which proxy resolved them, this one or another test's, is not asked)
    finally:
        p.stop()


HINTED = ("UPDATE /*+ COMMIT_ON_SUCCESS ROLLBACK_ON_FAIL TARGET_AFFECT_ROW(1) */ inventory "
          "SET quantity = quantity - 1 WHERE sku_id = {sku} AND quantity > 0")


def test_alisql_inventory_hints(proxy: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {50: 1})
    c = proxy.connect()
    with c.cursor() as cur:
        with pytest.raises(pymysql.MySQLError) as ei:  # transactional hints need a transaction
            cur.execute(HINTED.format(sku=50))
        assert ei.value.args[0] == 7531
        cur.execute("BEGIN")
        cur.execute(LOG.format(sku=50, n=1))
        assert cur.execute(HINTED.format(sku=50)) == 1  # sold, and committed with the log row
        cur.execute("SELECT @@in_transaction")
        assert cur.fetchone() == (0,)
    settle(sandbox)
    assert state(sandbox) == ({50: 0}, {50: 1})
    with c.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(LOG.format(sku=50, n=1))
        with pytest.raises(pymysql.MySQLError) as ei:  # sold out: 0 rows != 1, rolled back
            cur.execute(HINTED.format(sku=50))
        assert ei.value.args[0] == 7532
        cur.execute("SELECT @@in_transaction")
        assert cur.fetchone() == (0,)
    c.close()
    assert state(sandbox) == ({50: 0}, {50: 1})  # the second log row went with the rollback


def test_inventory_hints_under_load_sell_exactly_the_stock(proxy: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {51: 150})
    sold = 0
    refused = 0

    async def one() -> None:
        nonlocal sold, refused
        conn = await app_conn(proxy.port)
        async with conn.cursor() as cur:
            for _ in range(3):
                await cur.execute("BEGIN")
                await cur.execute(LOG.format(sku=51, n=1))
                try:
                    await cur.execute(HINTED.format(sku=51))
                    sold += 1
                except pymysql.MySQLError as e:
                    assert e.args[0] == 7532, e.args
                    refused += 1
        conn.close()

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(100)))

    asyncio.run(run())
    settle(sandbox)
    assert sold == 150 and refused == 150
    assert state(sandbox) == ({51: 0}, {51: 150})


def test_two_proxies_on_the_same_key(sandbox: Sandbox, tmp_path: Path, proxy: ProxyProc) -> None:
    """Each proxy merges its own share; MySQL serialises their groups on the row lock."""
    setup(sandbox, {60: 700})
    p2 = start_proxy(tmp_path, make_config(sandbox))
    try:
        async def run() -> list[Tally]:
            return list(await asyncio.gather(
                buyers(proxy.port, 100, 5, [60], [1], rollback_share=0.1),
                buyers(p2.port, 100, 5, [60], [1], update_first=True, rollback_share=0.1)))

        t1, t2 = asyncio.run(run())
    finally:
        p2.stop()
    assert t1.errors == [] and t2.errors == []
    settle(sandbox)
    stock, logged = state(sandbox)
    sold = t1.committed.get(60, 0) + t2.committed.get(60, 0)
    assert 700 - stock[60] == sold == logged.get(60, 0)
    assert stock[60] >= 0


async def waits_then_buys(buyer: Any, sku: int,
                          resolve: Callable[[], Awaitable[None]]) -> tuple[int, float]:
    """`buyer` decrements `sku` by 1 while its last units are reserved: after 1 s it must still
    be waiting (not told "sold out"); then `resolve` ends the reserving transactions. Its
    rows and how long it waited."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def buy() -> int:
        async with buyer.cursor() as b:
            return int(await b.execute(UPD.format(n=1, sku=sku)))

    got = asyncio.ensure_future(buy())
    await asyncio.sleep(1.0)
    assert not got.done()  # waiting, not told "sold out"
    await resolve()
    return await got, loop.time() - t0


def test_sold_out_waits_for_another_proxys_reservations(
        sandbox: Sandbox, tmp_path: Path, proxy: ProxyProc) -> None:
    """Near sell-out a buyer on one proxy is not told "0 rows" while a transaction on another
    proxy holds the last units reserved: it waits, as it would wait on MySQL's row lock, and
    gets them when that transaction rolls back."""
    setup(sandbox, {61: 3})
    p2 = start_proxy(tmp_path, make_config(sandbox))
    try:
        async def run() -> tuple[int, float]:
            holder = await app_conn(proxy.port)
            buyer = await app_conn(p2.port)
            try:
                async with holder.cursor() as h:
                    await h.execute("BEGIN")
                    assert await h.execute(UPD.format(n=3, sku=61)) == 1  # reserved, not sold

                    async def rollback() -> None:
                        await h.execute("ROLLBACK")

                    return await waits_then_buys(buyer, 61, rollback)
            finally:
                holder.close()
                buyer.close()

        rows, waited = asyncio.run(run())
    finally:
        p2.stop()
    assert rows == 1 and waited >= 1.0
    settle(sandbox)
    stock, _ = state(sandbox)
    assert stock[61] == 2


def test_auto_does_not_run_plain_past_open_reservations(sandbox: Sandbox, tmp_path: Path) -> None:
    """Mode `auto` runs a lone decrement as it is (no group) on a key without company. But if
    units of that key are reserved by open transactions on this proxy, a plain UPDATE would
    see them gone and answer "0 rows" at once, though they may come back: it goes the group's
    way instead and waits for them, as MySQL's row lock would make it wait."""
    setup(sandbox, {62: 2})
    p = start_proxy(tmp_path, make_config(sandbox, hotrow={"mode": "auto"}))
    merged = "UPDATE /*+ HOTROW(merge) */ inventory SET quantity = quantity - 1 " \
             "WHERE sku_id = 62 AND quantity >= 1"
    try:
        async def run() -> tuple[int, float]:
            holders = [await app_conn(p.port) for _ in range(2)]
            buyer = await app_conn(p.port)
            try:
                for h in holders:  # both units reserved by open transactions
                    async with h.cursor() as cur:
                        await cur.execute("BEGIN")
                        assert await cur.execute(merged) == 1

                async def end() -> None:
                    async with holders[0].cursor() as cur:
                        await cur.execute("ROLLBACK")  # one unit comes back
                    async with holders[1].cursor() as cur:
                        await cur.execute("COMMIT")

                # the buyer has no hint: auto, and alone on the key
                return await waits_then_buys(buyer, 62, end)
            finally:
                for c in (*holders, buyer):
                    c.close()

        rows, waited = asyncio.run(run())
    finally:
        p.stop()
    assert rows == 1 and waited >= 1.0
    settle(sandbox)
    stock, _ = state(sandbox)
    assert stock[62] == 0


def test_auto_waits_for_another_proxys_reservations(sandbox: Sandbox, tmp_path: Path) -> None:
    """Mode `auto` on two proxies: the last units are reserved by a transaction on proxy A;
    a lone buyer on proxy B (no company, so auto would run it plain) is not told "0 rows":
    B sees the reservation in the shared reservation table, waits as MySQL's row lock would
    make it wait, and gets a unit when A's buyer rolls back."""
    setup(sandbox, {63: 1})
    pa = start_proxy(tmp_path, make_config(sandbox, hotrow={"mode": "auto"}))
    pb = start_proxy(tmp_path, make_config(sandbox, hotrow={"mode": "auto"}))
    merged = "UPDATE /*+ HOTROW(merge) */ inventory SET quantity = quantity - 1 " \
             "WHERE sku_id = 63 AND quantity >= 1"
    try:
        async def run() -> tuple[int, float]:
            holder = await app_conn(pa.port)
            buyer = await app_conn(pb.port)
            try:
                async with buyer.cursor() as cur:  # B has checked the rule: it knows the table
                    await cur.execute("SELECT 1")
                async with holder.cursor() as h:
                    await h.execute("BEGIN")
                    assert await h.execute(merged) == 1  # reserved on A, not sold
                    await asyncio.sleep(1.5)  # B reads the reservation table meanwhile

                    async def rollback() -> None:
                        await h.execute("ROLLBACK")

                    return await waits_then_buys(buyer, 63, rollback)
            finally:
                holder.close()
                buyer.close()

        rows, waited = asyncio.run(run())
    finally:
        pa.stop()
        pb.stop()
    assert rows == 1 and waited >= 1.0
    settle(sandbox)
    stock, _ = state(sandbox)
    assert stock[63] == 0


def test_a_key_that_cannot_be_resolved_holds_up_no_other(sandbox: Sandbox, tmp_path: Path) -> None:
    """Reservations of one user on every key are resolved together (escrow._drain); when one
    key's cannot be (its table was dropped while a buyer held units of it), the other keys'
    units still come back."""
    setup(sandbox, {70: 50})
    sandbox.primary.sql("DROP TABLE IF EXISTS shop.esc_gone",
                        "CREATE TABLE shop.esc_gone (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
                        "INSERT INTO shop.esc_gone VALUES (1, 50)")
    rules = [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"},
             {"table": "shop.esc_gone", "key": "sku_id", "column": "quantity"}]
    p = start_proxy(tmp_path, make_config(sandbox, hotrow={"mode": "merge", "rules": rules}))
    m0 = reservations_made(sandbox)

    async def run() -> None:
        a, b = await app_conn(p.port), await app_conn(p.port)
        try:
            async with a.cursor() as ca, b.cursor() as cb:
                await ca.execute("BEGIN")
                assert await ca.execute(
                    "UPDATE esc_gone SET quantity = quantity - 5 WHERE sku_id = 1 AND quantity >= 5") == 1
                await cb.execute("BEGIN")
                assert await cb.execute(UPD.format(n=7, sku=70)) == 1
                sandbox.primary.sql("DROP TABLE shop.esc_gone")
                await ca.execute("ROLLBACK")
                await cb.execute("ROLLBACK")
        finally:
            a.close()
            b.close()

    try:
        asyncio.run(run())
        assert reservations_made(sandbox) - m0 == 2  # both merged: two reservations
        deadline = time.monotonic() + 20
        while state(sandbox)[0][70] != 50 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state(sandbox)[0] == {70: 50}  # key 70's units are back
        rows = sandbox.primary.sql("SELECT key_value FROM seckill_proxy.hotrow_reservation")
        assert [str(k) for k, in rows] == ["1"]  # esc_gone's stays, retried
    finally:
        p.stop()
        sandbox.primary.sql("DELETE FROM seckill_proxy.hotrow_reservation")


def test_the_begin_after_a_merged_commit_is_deferred(proxy: ProxyProc, sandbox: Sandbox) -> None:
    """A merged order's COMMIT goes out as `DELETE reservation...; COMMIT` and a COM_PING; the
    session's next plain BEGIN is deferred all the same (lazybegin.py), and the orders are
    exact. (Alone, the ping's OK mostly arrives after the COMMIT's; under load it comes with
    it, the case `test_a_ping_reply_come_with_the_commits_is_dropped_at_once` holds to.)"""
    setup(sandbox, {1: 100})
    m0 = reservations_made(sandbox)
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="app", password="app",
                        database="shop", autocommit=True, ssl_disabled=True)
    with c.cursor() as cur:
        for _ in range(2):  # a real BEGIN on the fast lane: what allows deferring
            cur.execute("BEGIN")
            cur.execute("COMMIT")
        before = proxy.metric("seckill_proxy_deferred_begins_total")
        for _ in range(5):
            cur.execute("BEGIN")
            cur.execute(LOG.format(sku=1, n=1))
            assert cur.execute(UPD.format(sku=1, n=1)) == 1
            cur.execute("COMMIT")
            cur.execute("SELECT @@in_transaction")
            assert cur.fetchone() == (0,)
    c.close()
    assert proxy.metric("seckill_proxy_deferred_begins_total") - before == 5
    settle(sandbox)
    assert state(sandbox) == ({1: 95}, {1: 5})
    assert reservations_made(sandbox) - m0 >= 5  # merged


def test_a_resolution_that_raises_anything_is_tried_again_never_dropped() -> None:
    """The drain resolving ended transactions' reservations catches any exception of a
    resolution and tries it again (before, one it did not list, such as another task's
    exception a mypyc re-raise handed it, core/aio.py, ended the drain and the reservations
    were never resolved: their units never came back)."""
    from proxy.engines.escrow import Escrow, Reservation
    from proxy.net.protocol import OkPacket

    class Conn:  # a resolution that finds nothing left: a locking read, a count, a rollback
        async def query_each(self, sql: str) -> list[Any]:
            if "FOR UPDATE" in sql:
                return [(None, OkPacket()), (None, OkPacket()), ([], None)]
            return [([["0"]], None), (None, OkPacket())]

    calls: list[str] = []

    async def connect(user: str) -> Any:
        calls.append(user)
        if len(calls) == 1:
            raise RuntimeError("not one of the errors the drain knew")
        return Conn()

    async def release(c: Any, broken: bool) -> None:
        pass

    async def run() -> tuple[int, int, int]:
        e = Escrow("seckill_proxy", connect, release)
        r = Reservation("`shop`.`inventory`", "sku_id", "quantity", "7", ("shop", "inventory", 7),
                        1, 0, 2, "app")
        e.reserved(r)
        e.ended([r])
        deadline = time.monotonic() + 5
        while e.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return e.outstanding, len(calls), sum(map(len, e.pending.values()))

    assert asyncio.run(run()) == (0, 2, 0)
