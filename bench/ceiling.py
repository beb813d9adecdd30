"""`make bench-hotrow` (`python -m bench.ceiling [SECONDS] [ROUNDS]`): a hot SKU against the ceiling.

Issue 24's measure. Direct hot-row throughput is one fsync per order and swings 2x between
runs; the stable yardstick is what MariaDB does when nothing is hot. Per form (autocommit,
txn = the seed's BEGIN; INSERT; UPDATE; COMMIT, with sysbench's SELECT ROW_COUNT() before the
COMMIT: its Lua API does not return affected rows; txn_update_first), 128 threads, in one run:

- **H**: directly, every thread on 1 (or 10) SKUs: the problem;
- **C**: directly, the same threads spread over 1,000 SKUs: the ceiling (no contention);
- **P**: through the proxy (hot-row mode auto), 1 (or 10) SKUs;
- **Pc**: through the proxy, 1,000 SKUs: what passing through costs when nothing is hot;
- **P2**: P again through a second proxy with `workers: 2` (both proxies are up all along);

then P/H, P/C, Pc/C, P2/P, and CPU per order from /proc (user + system over the run / orders)
of the proxy (all its processes), of MariaDB and of sysbench (pinned, sysbench shares the
proxy's core: the proxy can spend there only what sysbench leaves). Two topologies: unpinned,
and pinned (MariaDB on core 0, sysbench and the proxy on core 1: the database on a host of its
own). Each point ROUNDS times (default 3), the order of the runs reversed every round, medians:
the machine's slow and fast phases last minutes.
Writes docs/bench-ceiling.md and .png.
"""

from __future__ import annotations

import resource
import statistics
import sys
from typing import Any

from .common import (
    ROOT,
    SECKILL,
    Proxy,
    clear_orders,
    cpu_seconds,
    machine,
    pin_threads,
    publish,
    reset,
    sandbox,
    sysbench,
)

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
THREADS = 128
SPREAD = 1000
FORMS = ("autocommit", "txn", "txn_update_first")
HOT_SKUS = (1, 10)
RULE = {"table": "shop.inventory", "key": "sku_id", "column": "quantity"}


def main() -> None:
    sb = sandbox()
    p = Proxy(sb, {"mode": "auto", "rules": [RULE]}, name="ceiling")
    p2 = Proxy(sb, {"mode": "auto", "rules": [RULE]}, name="ceiling-w2", workers=2)
    db_pid = sb.primary.pid()
    assert db_pid is not None
    rows: list[dict[str, Any]] = []
    try:
        reset(sb, SPREAD)  # SKUs 1..1000, never sold out during a run
        for topology in ("pinned", "unpinned"):
            pinned = topology == "pinned"
            pin_threads(db_pid, "0" if pinned else "0,1")
            for pid in (*p.pids(), *p2.pids()):
                pin_threads(pid, "1" if pinned else "0,1")
            for form in FORMS:
                def run(port: int, skus: int, form: str = form,
                        pinned: bool = pinned) -> dict[str, float]:
                    args = ([f"--skus={skus}"] if form == "autocommit"
                            else [f"--skus={skus}", "--sku=1", f"--form={form}"])
                    script = "inventory.lua" if form == "autocommit" else SECKILL
                    via = p2 if port == p2.port else p
                    clear_orders(sb)  # every point from an empty orders table
                    d0, p0, s0 = cpu_seconds(db_pid), via.cpu(), _children_cpu()
                    r = sysbench(args, port, THREADS, SECONDS, script,
                                 pin="1" if pinned else None)
                    n = r.tps * SECONDS
                    return {"tps": r.tps,
                            "sb_us": (_children_cpu() - s0) / n * 1e6 if n else 0.0,
                            "db_us": (cpu_seconds(db_pid) - d0) / n * 1e6 if n else 0.0,
                            "proxy_us": (via.cpu() - p0) / n * 1e6 if n else 0.0}

                # each point ROUNDS times, the order reversed every round, so that a slow or
                # fast phase of this shared machine falls on both sides of each ratio; medians
                points = [("C", sb.primary_port, SPREAD), ("Pc", p.port, SPREAD)] + [
                    (f"{k}{skus}", port, skus) for skus in HOT_SKUS
                    for k, port in (("H", sb.primary_port), ("P", p.port), ("P2", p2.port))]
                got: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in points}
                for rnd in range(ROUNDS):
                    for name, port, skus in (points if rnd % 2 == 0 else points[::-1]):
                        got[name].append(run(port, skus))
                med = {name: _median(runs) for name, runs in got.items()}
                for skus in HOT_SKUS:
                    row = {"form": form, "skus": skus, "topology": topology,
                           "H": med[f"H{skus}"], "C": med["C"], "P": med[f"P{skus}"],
                           "Pc": med["Pc"], "P2": med[f"P2{skus}"]}
                    rows.append(row)
                    print(_line(row), flush=True)
    finally:
        pin_threads(db_pid, "0,1")
        p.stop()
        p2.stop()
        sb.stop()
    lines = [f"Measured {machine()}; {SECONDS} s per run, {THREADS} threads, all in one run, "
             f"medians of {ROUNDS} rounds, the order reversed every round, shop.orders emptied (TRUNCATE) before every point (taskset for the pinned topology: MariaDB on core 0, sysbench and the proxy on "
             "core 1). Orders per second; CPU per order in microseconds of user + system time "
             "(/proc, all of a proxy's processes) over the run. P2: P through a proxy with "
             "`workers: 2`. sysbench: the load generator's own CPU per order (pinned, it shares "
             "the proxy's core: what the proxy may spend there is what sysbench leaves).", "",
             "| form | SKUs | topology | H | C | P | Pc | P/H | P/C | Pc/C | proxy CPU/order P "
             "| MariaDB CPU/order H / C / P | P2 | P2/P | proxy CPU/order P2 | sysbench CPU/order C / P |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_line(r) for r in rows]
    publish("bench-ceiling.md", lines)
    _plot(rows)


def _children_cpu() -> float:
    """User + system seconds of this process's waited-for children (each sysbench run)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def _line(r: dict[str, Any]) -> str:
    h, c, p, pc = (r[k]["tps"] for k in ("H", "C", "P", "Pc"))
    return (f"| {r['form']} | {r['skus']} | {r['topology']} | {h:.0f} | {c:.0f} | {p:.0f} | "
            f"{pc:.0f} | {_ratio(p, h)} | **{_ratio(p, c)}** | {_ratio(pc, c)} | "
            f"{r['P']['proxy_us']:.0f} | {r['H']['db_us']:.0f} / {r['C']['db_us']:.0f} / "
            f"{r['P']['db_us']:.0f} | {r['P2']['tps']:.0f} | {_ratio(r['P2']['tps'], p)} | "
            f"{r['P2']['proxy_us']:.0f} | {r['C']['sb_us']:.0f} / {r['P']['sb_us']:.0f} |")


def _plot(rows: list[dict[str, Any]]) -> None:
    """P/C and Pc/C per form and topology (1 SKU): how close to the ceiling."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    one = [r for r in rows if r["skus"] == 1]
    labels = [f"{r['form']}\n{r['topology']}" for r in one]
    xs = range(len(one))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar([x - 0.27 for x in xs], [r["P"]["tps"] / r["C"]["tps"] for r in one], 0.27,
           label="P/C (proxy, 1 hot SKU / direct, 1,000 SKUs)")
    ax.bar(list(xs), [r["P2"]["tps"] / r["C"]["tps"] for r in one], 0.27,
           label="P2/C (the same, workers: 2)")
    ax.bar([x + 0.27 for x in xs], [r["Pc"]["tps"] / r["C"]["tps"] for r in one], 0.27,
           label="Pc/C (proxy / direct, both 1,000 SKUs)")
    ax.bar([x - 0.27 for x in xs], [r["H"]["tps"] / r["C"]["tps"] for r in one], 0.1,
           color="black", label="H/C (direct, 1 hot SKU / 1,000 SKUs)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("fraction of the no-hotspot ceiling")
    ax.legend(fontsize=8)
    ax.set_title(f"Hot SKU vs the ceiling, {THREADS} threads, MariaDB 10.11 double-1, 2-core VM")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "bench-ceiling.png", dpi=100)


if __name__ == "__main__":
    main()
