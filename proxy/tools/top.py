"""`seckill-proxy top`: a live terminal view for DBAs, read from the admin port once a second.

Like innotop or pg_activity: hot keys (path, waiting, batch size, groups/s), statements/s by
route, replicas (lag, read share), durability (ack waits), pools and errors. Everything comes
from three admin commands (`SHOW METRICS`, `SHOW BACKENDS`, `SHOW HOT KEYS`), so it works where
only the admin port is reachable (over SSH, no HTTP scrape). Rates are differences of counters
between two refreshes. Drawn with rich (tables that fit 80x24, works in any terminal and tmux).
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pymysql
from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from proxy.core import config as C

Rows = list[tuple[Any, ...]]


@dataclass
class Snapshot:
    """One refresh: counters and gauges by (name, labels), plus the admin tables."""

    at: float
    metrics: dict[tuple[str, str], float]
    backends: Rows
    backend_cols: list[str]
    hot: Rows
    hot_cols: list[str]

    def value(self, name: str, **labels: str) -> float:
        """Sum of `name` over samples whose labels include `labels`."""
        want = [f"{k}={v}" for k, v in labels.items()]
        return sum(v for (n, lab), v in self.metrics.items()
                   if n == name and all(w in lab.split(",") for w in want))

    def by(self, name: str, label: str) -> dict[str, float]:
        """`name` summed per value of one label."""
        out: dict[str, float] = defaultdict(float)
        for (n, lab), v in self.metrics.items():
            if n != name:
                continue
            d = dict(kv.split("=", 1) for kv in lab.split(",") if "=" in kv)
            out[d.get(label, "")] += v
        return out


@dataclass
class Admin:
    host: str
    port: int
    user: str
    password: str
    conn: Any = field(default=None, repr=False)

    def _query(self, sql: str) -> tuple[Rows, list[str]]:
        if self.conn is None:
            self.conn = pymysql.connect(host=self.host, port=self.port, user=self.user,
                                        password=self.password, connect_timeout=3,
                                        read_timeout=5)
        with self.conn.cursor() as cur:
            cur.execute(sql)
            cols = [d[0] for d in cur.description or ()]
            return list(cur.fetchall()), cols

    def snapshot(self) -> Snapshot:
        try:
            mrows, _ = self._query("SHOW METRICS")
            brows, bcols = self._query("SHOW BACKENDS")
            hrows, hcols = self._query("SHOW HOT KEYS")
        except pymysql.MySQLError:
            self.close()
            raise
        return Snapshot(time.monotonic(), {(r[0], r[1]): float(r[2]) for r in mrows},
                        brows, bcols, hrows, hcols)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self.conn = None


def _rate(now: Snapshot, before: Snapshot | None, name: str, **labels: str) -> float:
    if before is None:
        return 0.0
    dt = max(now.at - before.at, 1e-3)
    return max(now.value(name, **labels) - before.value(name, **labels), 0.0) / dt


def _rates_by(now: Snapshot, before: Snapshot | None, name: str, label: str) -> dict[str, float]:
    if before is None:
        return {}
    dt = max(now.at - before.at, 1e-3)
    b = before.by(name, label)
    return {k: max(v - b.get(k, 0.0), 0.0) / dt for k, v in now.by(name, label).items()}


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


P = "seckill_proxy_"


def render(now: Snapshot, before: Snapshot | None, target: str) -> Group:
    """The whole screen for one refresh (kept within 80 columns and about 24 lines)."""
    stmts = _rate(now, before, P + "statements_total")
    lane = _rate(now, before, P + "fastlane_statements_total")
    errs = _rate(now, before, P + "statements_total", outcome="error")
    clients = now.value(P + "client_connections")
    head = Text.assemble(
        ("seckill-proxy top ", "bold"), (target, "cyan"),
        f"  clients {clients:.0f}  stmts/s {_fmt(stmts)}",
        f"  lane {100 * lane / stmts:.0f}%" if stmts else "  lane -",
        "  err/s ", (_fmt(errs), "red" if errs else "green"),
    )

    routes = Table(title="statements/s by route", box=box.SIMPLE, padding=(0, 1),
                   title_justify="left", show_edge=False, min_width=30)
    routes.add_column("route")
    routes.add_column("per s", justify="right")
    by_route = _rates_by(now, before, P + "statements_total", "route")
    for route, v in sorted(by_route.items(), key=lambda kv: -kv[1])[:5]:
        routes.add_row(route, _fmt(v))
    if not by_route:
        routes.add_row("-", "-")

    dur = Table(title="durability", box=box.SIMPLE, padding=(0, 1), title_justify="left",
                show_edge=False, show_header=False)
    dur.add_column("k")
    dur.add_column("v", justify="right")
    durable = now.value(P + "primary_durable")
    dur.add_row("primary durable", Text("yes" if durable else "NO", "green" if durable else "red"))
    acks = _rate(now, before, P + "replica_acks_total")
    dur.add_row("replica acks/s", _fmt(acks))
    wait_n = now.value(P + "replica_ack_wait_seconds_count")
    wait_s = now.value(P + "replica_ack_wait_seconds_sum")
    if before is not None and wait_n > before.value(P + "replica_ack_wait_seconds_count"):
        dn = wait_n - before.value(P + "replica_ack_wait_seconds_count")
        ds = wait_s - before.value(P + "replica_ack_wait_seconds_sum")
        dur.add_row("ack wait avg", f"{1000 * ds / dn:.1f} ms")
    else:
        dur.add_row("ack wait avg", "-")
    dur.add_row("in doubt (total)", _fmt(now.value(P + "commit_in_doubt_total")))
    dur.add_row("unsafe writes/s", _fmt(_rate(now, before, P + "durability_unsafe_writes_total")))

    top_row = Table.grid(padding=(0, 3))
    top_row.add_row(routes, dur)

    backends = Table(title="backends", box=box.SIMPLE, padding=(0, 1), title_justify="left",
                     show_edge=False)
    for col, just in (("backend", "left"), ("role", "left"), ("state", "left"),
                      ("lag s", "right"), ("pool use/idle/total", "right"), ("read share", "right")):
        backends.add_column(col, justify=just)  # type: ignore[arg-type]
    idx = {c: i for i, c in enumerate(now.backend_cols)}
    served = {str(b[idx["backend"]]): int(b[idx["reads_served"]] or 0) for b in now.backends}
    prev = ({str(b[idx["backend"]]): int(b[idx["reads_served"]] or 0) for b in before.backends}
            if before is not None else served)
    reads = {k: max(v - prev.get(k, v), 0) for k, v in served.items()}
    total_reads = sum(reads.values())
    for r in now.backends[:4]:
        key = str(r[idx["backend"]])
        lag = r[idx["lag_s"]]
        state = str(r[idx["state"]])
        backends.add_row(
            key, str(r[idx["role"]]), Text(state, "green" if state == "up" else "yellow"),
            "-" if lag is None else f"{float(lag):.1f}",
            f"{r[idx['conn_in_use']]}/{r[idx['conn_idle']]}/{r[idx['conn_total']]}",
            f"{100 * reads[key] / total_reads:.0f}%" if total_reads else "-",
        )

    hot = Table(title="hot keys", box=box.SIMPLE, padding=(0, 1), title_justify="left",
                show_edge=False)
    for col in ("table", "key", "path", "waiting", "in flight", "groups/s", "avg batch"):
        hot.add_column(col, justify="left" if col in ("table", "key", "path") else "right")
    hidx = {c: i for i, c in enumerate(now.hot_cols)}
    for r in now.hot[:5]:
        hot.add_row(str(r[hidx["table"]])[:20], str(r[hidx["key"]])[:12], str(r[hidx["mode"]]),
                    str(r[hidx["waiting"]]), str(r[hidx["in_flight"]]),
                    str(r[hidx["batches_per_s_10s"]]), str(r[hidx["avg_batch_10s"]]))
    if not now.hot:
        hot.add_row("(no hot keys in the last minute)", "", "", "", "", "", "")

    errors = _rates_by(now, before, P + "client_disconnects_total", "reason")
    exhausted = _rate(now, before, P + "backend_pool_exhausted_total")
    err_line = Text.assemble(
        ("errors/s ", "bold"),
        f"statements {_fmt(errs)}  pool exhausted {_fmt(exhausted)}  disconnects ",
        ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(errors.items()) if v) or "-",
        ("   q quits", "dim"),
    )
    return Group(head, top_row, backends, hot, err_line)


def _key_pressed(timeout: float) -> str | None:
    if not sys.stdin.isatty():
        time.sleep(timeout)
        return None
    r, _, _ = select.select([sys.stdin], [], [], timeout)
    return os.read(sys.stdin.fileno(), 1).decode(errors="ignore") if r else None


def run(admin: Admin, interval: float = 1.0, once: bool = False, svg: str | None = None) -> int:
    target = f"{admin.host}:{admin.port}"
    console = Console()
    before: Snapshot | None = None
    if once or svg:
        before = admin.snapshot()
        time.sleep(interval)
        rec = Console(record=True, width=80, height=24) if svg else console
        rec.print(render(admin.snapshot(), before, target))
        if svg:
            rec.save_svg(svg, title="seckill-proxy top")
        return 0
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if sys.stdin.isatty() else None
    try:
        if saved is not None:
            tty.setcbreak(fd)
        with Live(console=console, screen=True, auto_refresh=False) as live:
            while True:
                try:
                    now = admin.snapshot()
                    live.update(render(now, before, target), refresh=True)
                    before = now
                except pymysql.MySQLError as e:
                    live.update(Text(f"admin port {target}: {e}; retrying", "red"), refresh=True)
                    before = None
                if (_key_pressed(interval) or "").lower() == "q":
                    return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        admin.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="seckill-proxy top", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="take the admin address and first admin user from FILE")
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("--user", default=None)
    ap.add_argument("--password", default=os.environ.get("SECKILL_ADMIN_PASSWORD"))
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    ap.add_argument("--once", action="store_true", help="print one screen and exit")
    ap.add_argument("--svg", help="save one screen as an SVG screenshot and exit")
    a = ap.parse_args(argv)
    host, port, user, password = "127.0.0.1", 6032, "admin", a.password or ""
    if a.config:
        try:
            cfg = C.load(a.config)
        except C.ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return 2
        host = cfg.admin.listen.host if cfg.admin.listen.host not in ("", "0.0.0.0", "::") \
            else "127.0.0.1"
        port = cfg.admin.listen.port
        if cfg.admin.users:
            user, password = cfg.admin.users[0].name, a.password or cfg.admin.users[0].password
    admin = Admin(a.host or host, a.port or port, a.user or user, password)
    try:
        admin.snapshot()
    except pymysql.MySQLError as e:
        print(f"cannot read the admin port {admin.host}:{admin.port}: {e}", file=sys.stderr)
        return 1
    return run(admin, a.interval, a.once, a.svg)
