"""`seckill-proxy demo` (and `make demo`): a flash sale, directly against MariaDB and through
the proxy, in under two minutes.

N buyers (sysbench threads running `seckill.lua`) buy one hot SKU, first with the seed's
transaction (BEGIN; INSERT order; UPDATE inventory ... AND quantity > 0; COMMIT), then with the
autocommit UPDATE; each form directly against the primary, then through the proxy. Afterwards
the stock is checked against the orders (oversold units, orders without a deduction or the
other way round), a short sell-out shows that the last unit is sold exactly once, and a
read-your-writes check reads fresh orders back from a lagging replica, directly and through the
proxy. The last line is machine-readable for scripts.

sysbench drives the load (a C client: a Python load generator would eat the CPU the proxy and
MariaDB share on a small machine); rich draws the progress, matplotlib the chart.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from proxy.core import config as C
from proxy.tools import shop

LUA = Path(__file__).with_name("seckill.lua")
STOCK = 10**9  # the timed runs never sell out: every purchase is a real deduction
FORMS = {"txn": "transaction", "autocommit": "autocommit"}
SHORT = {"txn": "txn", "autocommit": "autocommit"}
_REPORT = re.compile(r"\[\s*(\d+)s \].*?tps: ([\d.]+).*?lat \(ms,95%\): ([\d.]+)")


@dataclass
class Endpoint:
    name: str  # "direct" or "proxy"
    host: str
    port: int


@dataclass
class Run:
    target: str
    form: str
    seconds: float
    orders: int
    deducted: int
    oversold: int
    mismatches: int
    p95_ms: float
    errors: float
    batch: float | None = None  # average merged batch size (proxy runs)
    series: list[tuple[int, float]] = field(default_factory=list)  # (second, orders/s)

    @property
    def tps(self) -> float:
        return self.orders / self.seconds if self.seconds else 0.0


@dataclass
class Setup:
    direct: Endpoint
    proxy: Endpoint
    replica: Endpoint | None
    user: str
    password: str
    db: str
    sku: int
    admin: tuple[str, int, str, str] | None


def _connect(ep: Endpoint, s: Setup, db: str | None = None, **kw: Any) -> Any:
    return pymysql.connect(host=ep.host, port=ep.port, user=s.user, password=s.password,
                           database=db, autocommit=True, connect_timeout=5, **kw)


def _one(conn: Any, sql: str, args: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
        return row[0] if row else None


def _listening(ep: Endpoint) -> bool:
    try:
        socket.create_connection((ep.host, ep.port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _admin_metric(s: Setup, name: str) -> float | None:
    """A metric's current value over the admin port (None without admin access)."""
    rows = _admin_rows(s, f"SHOW METRICS LIKE '{name}'")
    return sum(float(r[2]) for r in rows) if s.admin is not None and rows is not None else None


def _admin_rows(s: Setup, sql: str) -> list[tuple[Any, ...]]:
    if s.admin is None:
        return []
    host, port, user, password = s.admin
    try:
        c = pymysql.connect(host=host, port=port, user=user, password=password, connect_timeout=3)
    except pymysql.MySQLError:
        return []
    try:
        with c.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        c.close()


def reset(s: Setup, stock: int) -> None:
    c = _connect(s.direct, s, s.db)
    try:
        with c.cursor() as cur:
            cur.execute("REPLACE INTO inventory (sku_id, name, price, quantity) "
                        "VALUES (%s, 'demo flash-sale SKU', 1.00, %s)", (s.sku, stock))
            cur.execute("DELETE FROM orders WHERE sku_id = %s", (s.sku,))
    finally:
        c.close()


def tally(s: Setup, stock: int) -> tuple[int, int, int, int]:
    """(orders, units deducted, oversold units, mismatches) for the demo SKU."""
    c = _connect(s.direct, s, s.db)
    try:
        qty = int(_one(c, "SELECT quantity FROM inventory WHERE sku_id = %s", (s.sku,)))
        orders = int(_one(c, "SELECT COUNT(*) FROM orders WHERE sku_id = %s", (s.sku,)))
    finally:
        c.close()
    deducted = stock - qty
    oversold = max(0, -qty) + max(0, orders - stock)
    return orders, deducted, oversold, abs(deducted - orders)


def run_buyers(s: Setup, ep: Endpoint, form: str, buyers: int, seconds: int, stock: int,
               progress: Progress, label: str) -> Run:
    reset(s, stock)
    b0 = (_admin_metric(s, "seckill_proxy_hotrow_batch_size_sum"),
          _admin_metric(s, "seckill_proxy_hotrow_batch_size_count")) if ep.name == "proxy" else None
    cmd = ["sysbench", str(LUA), f"--mysql-host={ep.host}", f"--mysql-port={ep.port}",
           f"--mysql-user={s.user}", f"--mysql-password={s.password}", f"--mysql-db={s.db}",
           f"--threads={buyers}", f"--time={seconds}", "--report-interval=1", "--percentile=95",
           "--mysql-ignore-errors=1213,1205", f"--sku={s.sku}", f"--form={form}", "run"]
    if shutil.which("stdbuf"):
        cmd = ["stdbuf", "-oL", *cmd]
    task = progress.add_task(label, total=seconds)
    series: list[tuple[int, float]] = []
    out: list[str] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        m = _REPORT.search(line)
        if m:
            sec, tps, p95 = int(m.group(1)), float(m.group(2)), float(m.group(3))
            series.append((sec, tps))
            progress.update(task, completed=min(sec, seconds),
                            description=f"{label}  {tps:8,.0f} orders/s  p95 {p95:6.1f} ms")
    proc.wait()
    elapsed = time.monotonic() - t0
    progress.update(task, completed=seconds)
    text = "".join(out)
    if proc.returncode != 0:
        raise RuntimeError(f"sysbench failed against {ep.name} ({ep.host}:{ep.port}):\n"
                           + text[-2000:])

    def num(pattern: str) -> float:
        m = re.search(pattern, text)
        return float(m.group(1)) if m else 0.0

    run_s = num(r"total time:\s+([\d.]+)s") or elapsed
    orders, deducted, oversold, mismatches = tally(s, stock)
    batch = None
    if b0 is not None and b0[0] is not None and b0[1] is not None:
        s1 = _admin_metric(s, "seckill_proxy_hotrow_batch_size_sum") or 0.0
        n1 = _admin_metric(s, "seckill_proxy_hotrow_batch_size_count") or 0.0
        batch = (s1 - b0[0]) / (n1 - b0[1]) if n1 > b0[1] else 0.0
    return Run(ep.name, form, run_s, orders, deducted, oversold, mismatches,
               num(r"95th percentile:\s+([\d.]+)"), num(r"ignored errors:\s+\d+\s+\(([\d.]+) per sec"),
               batch, series)


def read_your_writes(s: Setup, n: int = 5) -> tuple[int, int, str] | None:
    """Orders written then read back at once: (missing directly from the replica, missing
    through the proxy, how the replica was made to lag). None without a replica."""
    if s.replica is None:
        return None
    how = "replica delayed 2 s (MASTER_DELAY)"
    r = _connect(s.replica, s, s.db)
    try:
        try:
            with r.cursor() as cur:
                cur.execute("STOP SLAVE")
                cur.execute("CHANGE MASTER TO MASTER_DELAY = 2")
                cur.execute("START SLAVE")
        except pymysql.MySQLError as e:
            how = f"replica not delayed ({e.args[1] if len(e.args) > 1 else e})"
        p, d = _connect(s.direct, s, s.db), _connect(s.proxy, s, s.db)
        missing_direct = missing_proxy = 0
        def missing(writer: Any, reader: Any, i: int) -> int:
            """An order written through `writer`, at once looked for through `reader`."""
            with writer.cursor() as cur:
                cur.execute("INSERT INTO orders (user_id, sku_id, status) VALUES (%s, %s, 'ryw')",
                            (i, s.sku))
                oid = cur.lastrowid
            return int(_one(reader, "SELECT COUNT(*) FROM orders WHERE order_id = %s", (oid,)) != 1)

        try:
            for i in range(n):
                missing_direct += missing(d, r, i)  # primary, then the lagging replica
                missing_proxy += missing(p, p, i)  # the same session through the proxy
        finally:
            p.close()
            d.close()
        return missing_direct, missing_proxy, how
    finally:
        if how.startswith("replica delayed"):
            with r.cursor() as cur:
                cur.execute("STOP SLAVE")
                cur.execute("CHANGE MASTER TO MASTER_DELAY = 0")
                cur.execute("START SLAVE")
        r.close()


def chart(runs: list[Run], path: Path, buyers: int) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, form in zip(axes, FORMS, strict=True):
        for run in (r for r in runs if r.form == form):
            xs = [t for t, _ in run.series]
            ys = [v for _, v in run.series]
            ax.plot(xs, ys, marker=".", label=f"{run.target}: {run.tps:,.0f} orders/s")
        ax.set_title(f"{FORMS[form]} form, {buyers} buyers, one hot SKU")
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("orders per second")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle("seckill-proxy demo: MariaDB directly vs through the proxy")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def setup_from(cfg: C.Config, db: str, sku: int) -> Setup:
    if not cfg.users:
        raise SystemExit("demo: the config has no users: to log in as")
    u = cfg.users[0]
    host = cfg.listen.host if cfg.listen.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    pri = cfg.backends.primary
    replica = cfg.backends.replicas[0] if cfg.backends.replicas else None
    admin = None
    if cfg.admin.users:
        ah = cfg.admin.listen.host if cfg.admin.listen.host not in ("", "0.0.0.0", "::") \
            else "127.0.0.1"
        admin = (ah, cfg.admin.listen.port, cfg.admin.users[0].name, cfg.admin.users[0].password)
    return Setup(Endpoint("direct", pri.host, pri.port), Endpoint("proxy", host, cfg.listen.port),
                 Endpoint("replica", replica.host, replica.port) if replica else None,
                 u.name, u.password, db, sku, admin)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="seckill-proxy demo", description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="conf/proxy.yaml")
    ap.add_argument("--buyers", type=int, default=128)
    ap.add_argument("--seconds", type=int, default=12, help="seconds per timed run (4 runs)")
    ap.add_argument("--db", default="shop")
    ap.add_argument("--sku", type=int, default=1001, help="the demo's own SKU id")
    ap.add_argument("--sellout-stock", type=int, default=500)
    ap.add_argument("--out", default="demo-out", help="directory for the chart")
    a = ap.parse_args(argv)
    try:
        cfg = C.load(a.config)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if not shutil.which("sysbench"):
        print("demo: sysbench is not installed (apt-get install sysbench)", file=sys.stderr)
        return 1
    s = setup_from(cfg, a.db, a.sku)
    console = Console()
    c = _connect(s.direct, s)
    try:
        shop.ensure(c, a.db)
    finally:
        c.close()
    started = None
    if not _listening(s.proxy):
        console.print(f"starting the proxy with {a.config}")
        Path(a.out).mkdir(parents=True, exist_ok=True)
        log = open(Path(a.out) / "demo-proxy.log", "ab")
        started = subprocess.Popen([sys.executable, "-m", "proxy.cli", "--config", a.config],
                                   stdout=log, stderr=subprocess.STDOUT)
        for _ in range(200):
            if _listening(s.proxy) or started.poll() is not None:
                break
            time.sleep(0.05)
        if not _listening(s.proxy):
            print("demo: the proxy did not start; run it with `make run` to see why",
                  file=sys.stderr)
            return 1
    try:
        return _demo(a, s, console)
    finally:
        if started is not None:
            started.terminate()
            started.wait(30)


def _demo(a: argparse.Namespace, s: Setup, console: Console) -> int:
    rules = _admin_rows(s, "SHOW HOTROW RULES")
    mode = next((str(r[3]) for r in rules if str(r[0]).lower() == f"{a.db}.inventory"), "unknown")
    console.print(f"[bold]Flash sale[/]: {a.buyers} buyers, one hot SKU ({a.db}.inventory "
                  f"sku_id={a.sku}), {a.seconds} s per run; direct {s.direct.host}:{s.direct.port}, "
                  f"proxy {s.proxy.host}:{s.proxy.port} (hot-row mode {mode})")
    runs: list[Run] = []
    sellouts: list[Run] = []
    with Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                  TimeRemainingColumn(), console=console) as progress:
        for form in FORMS:
            for ep in (s.direct, s.proxy):
                label = f"{ep.name:6} {FORMS[form]:11}"
                runs.append(run_buyers(s, ep, form, a.buyers, a.seconds, STOCK, progress, label))
        for ep in (s.direct, s.proxy):
            label = f"{ep.name:6} sell-out {a.sellout_stock}"
            sellouts.append(run_buyers(s, ep, "txn", a.buyers, 3, a.sellout_stock, progress, label))
    ryw = read_your_writes(s)

    t = Table(title="flash sale results", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              caption="txn: BEGIN; INSERT order; UPDATE ... AND quantity > 0; COMMIT\n"
                      "autocommit: UPDATE ... AND quantity > 0, then INSERT order if sold")
    for col in ("run", "target", "orders/s", "p95 ms", "orders", "oversold", "mismatch",
                "batch"):
        t.add_column(col, justify="left" if col in ("run", "target") else "right", no_wrap=True)
    for r in runs:
        t.add_row(SHORT[r.form], r.target, f"{r.tps:,.0f}", f"{r.p95_ms:.1f}", f"{r.orders:,}",
                  str(r.oversold), str(r.mismatches), "-" if r.batch is None else f"{r.batch:.1f}")
    for r in sellouts:
        t.add_row("sell-out", r.target, "-", f"{r.p95_ms:.1f}",
                  f"{r.orders:,}", str(r.oversold), str(r.mismatches),
                  "-" if r.batch is None else f"{r.batch:.1f}")
    console.print(t)
    for form in FORMS:
        d, p = (next(r for r in runs if r.form == form and r.target == x) for x in ("direct", "proxy"))
        console.print(f"{FORMS[form]} form: proxy {p.tps / d.tps if d.tps else 0:.2f}x direct")
    sold_ok = all(r.orders == a.sellout_stock and r.deducted == a.sellout_stock for r in sellouts)
    console.print(f"sell-out: {'each run sold exactly' if sold_ok else 'NOT exactly'} "
                  f"{a.sellout_stock} units to {a.buyers} buyers")
    if ryw is not None:
        md, mp, how = ryw
        console.print(f"read-your-writes ({how}): 5 fresh orders read back; missing directly from "
                      f"the replica {md}/5, missing through the proxy {mp}/5")
    png = Path(a.out) / "flash-sale.png"
    if chart(runs, png, a.buyers):
        console.print(f"chart: {png}")
    else:
        console.print("chart: matplotlib not installed, no PNG")
    all_runs = runs + sellouts
    direct = [r for r in runs if r.target == "direct"]
    proxy = [r for r in runs if r.target == "proxy"]
    dt = sum(r.orders for r in direct) / sum(r.seconds for r in direct)
    pt = sum(r.orders for r in proxy) / sum(r.seconds for r in proxy)
    oversold = sum(r.oversold for r in all_runs)
    mismatches = sum(r.mismatches for r in all_runs)
    ryw_ok = ryw is None or ryw[1] == 0  # an order missing through the proxy: a broken promise
    print(f"demo: direct {dt:.0f} tps, proxy {pt:.0f} tps, ratio {pt / dt if dt else 0:.2f}, "
          f"oversold {oversold}, mismatches {mismatches}", flush=True)
    return 0 if oversold == 0 and mismatches == 0 and sold_ok and ryw_ok else 1
