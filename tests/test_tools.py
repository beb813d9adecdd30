"""The newcomer's and the DBA's tools, run as users run them: the shop schema, `seckill-proxy
demo`, `seckill-proxy top` in a real terminal (tmux), and what Prometheus users see."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pymysql
import pytest
import yaml

from proxy.tools import shop
from proxy.tools.sandbox import Sandbox

from .conftest import ROOT, ProxyProc, concurrent_decrements, make_config, start_proxy


def test_shop_schema_is_idempotent_and_satisfies_the_rule(sandbox: Sandbox, tmp_path: Path) -> None:
    db = "shop_tools"
    for _ in range(2):  # a second run (every `make run`) changes nothing, keeps a DBA's stock
        c = sandbox.primary.root()
        try:
            shop.ensure(c, db)
            with c.cursor() as cur:
                cur.execute(f"UPDATE {db}.inventory SET quantity = 7 WHERE sku_id = 1")
        finally:
            c.close()
    rows = sandbox.primary.sql(f"SELECT sku_id, quantity FROM {db}.inventory ORDER BY sku_id")
    assert len(rows) == len(shop.SKUS) and rows[0] == (1, 7)
    tables = {r[0] for r in sandbox.primary.sql(f"SHOW TABLES FROM {db}")}
    assert tables == {"inventory", "inventory_log", "orders", "order_items"}
    p = start_proxy(tmp_path, make_config(sandbox, hotrow={
        "mode": "merge", "rules": [{"table": f"{db}.inventory", "key": "sku_id", "column": "quantity"}]}))
    try:
        rules = p.admin("SHOW HOTROW RULES")
        assert rules[0][0] == f"{db}.inventory" and rules[0][4] == "ok", rules
    finally:
        p.stop()


def test_no_created_series_and_show_metrics(proxy: ProxyProc) -> None:
    concurrent_decrements(proxy.port, 2, sku=424242)
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics") as r:
        text = r.read().decode()
    assert "_created" not in text
    rows = proxy.admin("SHOW METRICS LIKE 'seckill_proxy_statements%'")
    assert rows and all(r[0] == "seckill_proxy_statements_total" for r in rows)
    scraped = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and ln[0] != "#"}
    assert {r[0] for r in proxy.admin("SHOW METRICS")} <= scraped


def test_demo_runs_a_flash_sale(sandbox: Sandbox, tmp_path: Path) -> None:
    db = "demo_shop"
    cfg = make_config(sandbox, hotrow={
        "mode": "merge", "rules": [{"table": f"{db}.inventory", "key": "sku_id", "column": "quantity"}]},
        routing={"read_consistency": "session", "max_wait_ms": 3000})
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    # the demo starts the proxy itself when nothing listens on the config's address
    r = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "demo", "--config", str(path), "--db", db,
         "--buyers", "8", "--seconds", "2", "--sellout-stock", "50", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    last = r.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"demo: direct \d+ tps, proxy \d+ tps, ratio [\d.]+, oversold 0, "
                        r"mismatches 0", last), last
    assert "sell-out: each run sold exactly 50 units" in r.stdout
    assert re.search(r"missing through the proxy 0/5", r.stdout), r.stdout
    assert (out / "flash-sale.png").stat().st_size > 10_000
    # the replica's delay is undone
    delay = sandbox.replicas[0].root()
    try:
        with delay.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            st = cur.fetchone()
        assert st["SQL_Delay"] == 0 and st["Slave_SQL_Running"] == "Yes"
    finally:
        delay.close()


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_top_in_a_terminal_shows_a_hot_key_and_quits_on_q(sandbox: Sandbox, proxy: ProxyProc) -> None:
    sandbox.primary.sql(
        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
        "REPLACE INTO shop.inventory (sku_id, quantity) VALUES (31337, 1000000)")
    name = f"top{proxy.port}"
    cmd = (f"{sys.executable} -m proxy.cli top --host 127.0.0.1 --port {proxy.admin_port} "
           f"--user admin --password admin; echo TOP-EXITED $?; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "80", "-y", "24", cmd],
                   check=True, cwd=ROOT)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            concurrent_decrements(proxy.port, 16, sku=31337)

    t = threading.Thread(target=load, daemon=True)
    t.start()

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True,
                              text=True).stdout

    try:
        seen = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = screen()
            if re.search(r"shop\.inventory\s+31337\s+merge", seen):
                break
            time.sleep(0.5)
        assert re.search(r"shop\.inventory\s+31337\s+merge", seen), seen
        assert "statements/s by route" in seen and "backends" in seen
        assert max(len(ln) for ln in seen.splitlines()) <= 80
        subprocess.run(["tmux", "send-keys", "-t", name, "q"], check=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "TOP-EXITED" not in seen:
            time.sleep(0.3)
            seen = screen()
        assert "TOP-EXITED 0" in seen, seen
    finally:
        stop.set()
        t.join(30)
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_compiled_build_is_fresh_and_whole(tmp_path: Path) -> None:
    """A compiled module shadows its source: the build records each source's hash, and a
    module edited since is named (the CLI and the tests refuse to run then)."""
    from proxy import compiled

    for m in compiled.HOT:
        (tmp_path / m).parent.mkdir(exist_ok=True)
        (tmp_path / f"{m}.py").write_text(f"# {m}\n")
    assert compiled.stale(tmp_path) == []  # plain Python: nothing to be stale
    for m in compiled.HOT:
        (tmp_path / f"{m}.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    assert compiled.stale(tmp_path) == list(compiled.HOT)  # built, never recorded
    compiled.record(tmp_path)
    assert compiled.stale(tmp_path) == []
    (tmp_path / "plan/plan.py").write_text("# plan, edited\n")
    assert compiled.stale(tmp_path) == ["plan/plan"]
    compiled.remove_built(tmp_path)
    assert compiled.built(tmp_path) == [] and compiled.stale(tmp_path) == []
    # This checkout: all hot modules compiled (the install's default) or none (its fallback
    # when no compiler is there), never a mix.
    assert compiled.built() in ([], list(compiled.HOT))
    assert compiled.loaded() == compiled.built()  # and Python loads what was built
