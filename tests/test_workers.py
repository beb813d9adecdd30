"""`workers: N`: several processes share the proxy's port (workers.py, ops/peers.py). Against
real MariaDB: a client id names one worker, and KILL and SHOW PROCESSLIST work across them;
the admin console and a scrape show the whole proxy (one value per series); a buyer near
sell-out on one worker waits for units another worker's transaction reserved; kill -9 of one
worker mid-load: the others keep serving, it is started again, its reservations are
recovered, and sold units equal committed orders. Merges of admin answers: table tests."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest

from proxy.ops import fanout
from proxy.ops.peers import WorkerSlot
from proxy.tools.sandbox import Sandbox

from .conftest import ProxyProc, app_conn, make_config, start_proxy
from .test_escrow import UPD, buyers, settle, setup, state, waits_then_buys

# ---- pure: who owns an id, how admin answers add up ---------------------------------------


@pytest.mark.parametrize("cid,owner", [
    ((100 << 16) | 5, 0), ((101 << 16) | 0xFFFF, 1), ((102 << 16) | 1, 2),
    ((103 << 16) | 1, None), ((99 << 16) | 1, None), (7, None),
])
def test_the_owner_of_a_client_id(cid: int, owner: int | None) -> None:
    slot = WorkerSlot(1, 3, "/run", 100)
    assert slot.owner(cid) == owner
    assert slot.server_id == 101 and slot.others() == [0, 2]
    assert WorkerSlot(0, 1, "/r", 5).owner((5 << 16) | 1) == 0


def test_admin_answers_add_up() -> None:
    b = [[("p:1", "primary", "up", "", 0, None, "0-1-5", "durable", 2, 3, 5, 0)],
         [("p:1", "primary", "up", "", 0, None, "0-1-5", "durable", 1, 4, 5, 7)]]
    assert fanout.backends(b) == [("p:1", "primary", "up", "", 0, None, "0-1-5", "durable",
                                   3, 7, 10, 7)]
    hk = [[("shop.inventory", "1", "auto:merge", 2, 1, 4.0, 10.0, 40, 400, 3, "crowded")],
          [("shop.inventory", "1", "auto:plain", 0, 1, 1.0, 5.0, 10, 50, 0, "little company"),
           ("shop.inventory", "2", "merge", 0, 0, 0.0, 0.0, 1, 1, 0, "")]]
    got = fanout.hot_keys(hk)
    # the path and auto's reason of the worker that ran the most statements on the key
    assert got[0] == ("shop.inventory", "1", "auto:merge", 2, 2, 5.0, 9.0, 50, 450, 3, "crowded")
    assert fanout.hot_keys(hk[::-1])[0] == got[0]
    assert got[1][1] == "2"
    d = [[("SELECT ?", 2, 300, 150, 200, 2, "primary", "-")],
         [("SELECT ?", 1, 100, 100, 100, 1, "primary", "-"), ("DO ?", 5, 500, 100, 120, 0, "primary", "-")]]
    assert fanout.digest(d) == [("DO ?", 5, 500, 100, 120, 0, "primary", "-"),
                                ("SELECT ?", 3, 400, 133, 200, 3, "primary", "-")]
    assert fanout.digest(d, 1) == [("DO ?", 5, 500, 100, 120, 0, "primary", "-")]


# ---- against MariaDB --------------------------------------------------------------------


def on_each_worker(p: ProxyProc, n: int = 2, **kw: Any) -> list[Any]:
    """One client connection on each of `n` workers (the kernel picks; ids say which)."""
    got: dict[int, Any] = {}
    for _ in range(200):
        c = p.connect(**kw)
        w = c.thread_id() & ~0xFFFF
        if w in got or len(got) >= n:
            c.close()
        else:
            got[w] = c
        if len(got) == n:
            return [got[k] for k in sorted(got)]
    raise AssertionError(f"connections reached {len(got)} of {n} workers")


@pytest.fixture(scope="module")
def two(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = make_config(sandbox, workers=2, hotrow={"mode": "merge", "recover_after_s": 1})
    p = start_proxy(tmp_path_factory.mktemp("workers"), cfg)
    deadline = time.monotonic() + 30
    while "2 workers" not in p.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield p
    finally:
        p.stop()


def test_two_workers_serve_the_port_and_kill_across_them(two: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {70: 1})
    a, b = on_each_worker(two)
    try:
        with b.cursor() as cur:  # b holds a backend connection: its thread is in the list
            cur.execute("BEGIN")
            cur.execute("SELECT COUNT(*) FROM inventory")
        with a.cursor() as cur:
            cur.execute("SHOW PROCESSLIST")
            ids = {int(r[0]) for r in cur.fetchall()}
            assert b.thread_id() in ids and a.thread_id() in ids
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST")
            assert b.thread_id() in {int(r[0]) for r in cur.fetchall()}
        with b.cursor() as cur:
            cur.execute("ROLLBACK")
        # KILL QUERY from worker A interrupts B's statement
        err: list[Any] = []

        def sleeper() -> None:
            try:
                with b.cursor() as cur:
                    cur.execute("SELECT SLEEP(30)")
                    err.append(cur.fetchall())
            except pymysql.MySQLError as e:
                err.append(e.args[0])

        t = threading.Thread(target=sleeper)
        t0 = time.monotonic()
        t.start()
        time.sleep(0.5)
        with a.cursor() as cur:
            cur.execute(f"KILL QUERY {b.thread_id()}")
        t.join(20)
        assert time.monotonic() - t0 < 20 and err in ([((1,),)], [1317])  # SLEEP says 1 if killed
        with b.cursor() as cur:  # B's connection still works after KILL QUERY
            cur.execute("SELECT 2")
            assert cur.fetchall() == ((2,),)
        with a.cursor() as cur:  # and KILL CONNECTION closes it
            cur.execute(f"KILL {b.thread_id()}")
        with pytest.raises(pymysql.err.OperationalError):
            with b.cursor() as cur:
                cur.execute("SELECT 3")
        with a.cursor() as cur:  # an id no worker has is MySQL's: its own error
            with pytest.raises(pymysql.err.OperationalError) as e:
                cur.execute(f"KILL {(two_base(a) + 1) << 16 | 0xFFFE}")
            assert e.value.args[0] == 1094
    finally:
        a.close()
        b.close()


def two_base(c: Any) -> int:
    return int(c.thread_id() >> 16)


def _series(page: str) -> list[str]:
    return [ln.rsplit(" ", 1)[0] for ln in page.splitlines() if ln and not ln.startswith("#")]


def test_the_whole_proxy_in_one_scrape_and_one_admin_answer(two: ProxyProc, sandbox: Sandbox
                                                             ) -> None:
    setup(sandbox, {70: 1})
    before = two.metric(r'seckill_proxy_statements_total\{kind="other",outcome="ok",route="primary"\}')
    conns = on_each_worker(two)
    try:
        for c in conns:
            with c.cursor() as cur:
                for _ in range(5):
                    cur.execute("DO 1")
        page = two.scrape()
        series = _series(page)
        assert len(series) == len(set(series))  # one value per series for the whole proxy
        after = two.metric(r'seckill_proxy_statements_total\{kind="other",outcome="ok",route="primary"\}')
        assert after - before == 10  # both workers' statements
        assert two.metric("seckill_proxy_client_connections") >= 2
        assert two.metric(r'seckill_proxy_build_info\{version="[^"]+"\}') == 1
        rows = two.admin("SHOW METRICS LIKE 'seckill_proxy_statements_total'")
        assert sum(float(r[2]) for r in rows if "kind=other" in r[1] and "outcome=ok" in r[1]
                   and "route=primary" in r[1]) == after
        # SHOW BACKENDS adds the workers' pools up: both hold a connection now
        for c in conns:
            with c.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT 1 FROM inventory LIMIT 1")
        backs = two.admin("SHOW BACKENDS")
        primary = [r for r in backs if r[1] == "primary"][0]
        assert int(primary[8]) >= 2
        # a change made through one admin connection is every worker's
        two.admin("SET hotrow.mode = 'queue'")
        for _ in range(4):
            rules = two.admin("SHOW HOTROW RULES")
            assert all("queue" in " ".join(map(str, r)) for r in rules), rules
        two.admin("SET hotrow.mode = 'merge'")
        digest = two.admin("SHOW QUERY DIGEST 200")
        assert sum(int(r[1]) for r in digest if r[0].upper().startswith("DO ")) >= 10
    finally:
        for c in conns:
            c.close()
    with urlopen_text(two, "/readyz") as body:
        assert body == "ready"


class urlopen_text:
    def __init__(self, p: ProxyProc, path: str) -> None:
        import urllib.request

        self.r = urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}{path}", timeout=10)

    def __enter__(self) -> str:
        return str(self.r.read().decode().strip())

    def __exit__(self, *a: object) -> None:
        self.r.close()


def test_a_buyer_on_one_worker_waits_for_units_reserved_on_another(
        two: ProxyProc, sandbox: Sandbox) -> None:
    setup(sandbox, {71: 2})
    ha, hb = on_each_worker(two)
    ha.close()
    hb.close()

    async def run() -> tuple[int, float]:
        holder = buyer = None
        for _ in range(100):  # a holder on one worker and a buyer on the other
            c = await app_conn(two.port)
            if holder is None:
                holder = c
            elif c.thread_id() >> 16 != holder.thread_id() >> 16:
                buyer = c
                break
            else:
                c.close()
        assert holder is not None and buyer is not None
        try:
            async with holder.cursor() as h:
                await h.execute("BEGIN")
                assert await h.execute(UPD.format(n=2, sku=71)) == 1  # reserved, not sold

                async def rollback() -> None:
                    await h.execute("ROLLBACK")

                return await waits_then_buys(buyer, 71, rollback)
        finally:
            holder.close()
            buyer.close()

    rows, waited = asyncio.run(run())
    assert rows == 1 and waited >= 1.0
    settle(sandbox)
    stock, _ = state(sandbox)
    assert stock[71] == 1


def worker_pids(p: ProxyProc) -> list[int]:
    import psutil

    return sorted(c.pid for c in psutil.Process(p.proc.pid).children())


def test_kill_9_of_one_worker_mid_load(two: ProxyProc, sandbox: Sandbox) -> None:
    """The others keep serving, the dead one is started again, its open transactions'
    reserved units come back (escrow recovery) and sold units equal committed orders."""
    setup(sandbox, {72: 3000})
    pids = worker_pids(two)
    assert len(pids) == 2

    async def run() -> Any:
        task = asyncio.ensure_future(buyers(two.port, 40, 30, [72], [1], hold_s=0.02))
        await asyncio.sleep(2)
        os.kill(pids[0], signal.SIGKILL)  # mid-load: transactions open with reserved units
        try:
            return await asyncio.wait_for(task, 60)
        except Exception:  # noqa: BLE001 - the buyers on the dead worker lose their connection
            return None

    asyncio.run(run())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = worker_pids(two)
        if len(now) == 2 and pids[0] not in now:
            break
        time.sleep(0.2)
    assert len(worker_pids(two)) == 2 and pids[0] not in worker_pids(two)
    conns = on_each_worker(two)  # both workers serve again
    for c in conns:
        with c.cursor() as cur:
            cur.execute("SELECT quantity FROM inventory WHERE sku_id = 72")
        c.close()
    settle(sandbox, 60)
    stock, logged = state(sandbox)
    assert stock[72] >= 0
    assert 3000 - stock[72] == logged.get(72, 0)  # sold units = committed orders
    assert re.search(r"worker \d \(pid \d+\) ended", two.log())


def test_sighup_reloads_every_worker_and_sigterm_stops_them(
        sandbox: Sandbox, tmp_path: Path) -> None:
    import yaml

    cfg = make_config(sandbox, workers=2)
    p = start_proxy(tmp_path, cfg)
    try:
        deadline = time.monotonic() + 30
        while "2 workers" not in p.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = worker_pids(p)
        assert len(pids) == 2
        cfg["hotrow"]["mode"] = "queue"
        p.config_path.write_text(yaml.safe_dump(cfg))
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while p.log().count("SIGHUP: config reloaded") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert p.log().count("SIGHUP: config reloaded") == 2  # each worker
        for _ in range(4):  # whichever worker the admin connection reaches
            assert all("queue" in " ".join(map(str, r)) for r in p.admin("SHOW HOTROW RULES"))
    finally:
        assert p.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
