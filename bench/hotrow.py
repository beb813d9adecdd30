"""`make bench-modes`: hot SKUs, direct MariaDB vs the proxy in modes off / queue / merge / auto.

Forms: `autocommit` (the bare UPDATE, bench/inventory.lua), `txn` (BEGIN; INSERT order;
UPDATE; COMMIT) and `txn_update_first` (proxy/tools/seckill.lua). `python -m bench.hotrow
[SECONDS] [quick]`: 1 SKU at 1/16/64/128/256 threads, 10 and 100 SKUs at 16/128; quick runs
1/16/128 threads and 1/10 SKUs only. Besides transactions per second: the
proxy's CPU per transaction (its process's user+system time over the run / transactions), and a
point with two proxy instances sharing 128 threads on one SKU (what a second proxy buys when
one proxy's loop is the ceiling).
"""

from __future__ import annotations

import sys
import threading

from .common import ROOT, SECKILL, Proxy, machine, publish, reset, sandbox, sysbench

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
QUICK = "quick" in sys.argv[2:]
THREADS = [1, 16, 128] if QUICK else [1, 16, 64, 128, 256]
MODES = ("off", "auto", "merge", "queue")  # auto next to off: drift within a point hits both alike


def batch_stats(sb) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    r = sb.primary.sql("SELECT COUNT(*), COALESCE(SUM(members), 0) FROM seckill_proxy.hotrow_batch")
    return int(r[0][0]), int(r[0][1])


def load(form: str, skus: int, port: int, threads: int):  # type: ignore[no-untyped-def]
    if form == "autocommit":
        return sysbench([f"--skus={skus}"], port, threads, SECONDS, "inventory.lua")
    return sysbench([f"--skus={skus}", "--sku=1", f"--form={form}"], port, threads, SECONDS, SECKILL)


def main() -> None:
    sb = sandbox()
    p = Proxy(sb, {"mode": "off", "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}],
                   "merge": {"max_batch": 256, "max_wait_us": 200}})
    rows = []
    try:
        for form in ("autocommit", "txn", "txn_update_first"):
            for skus in ((1, 10) if QUICK else (1, 10, 100)):
                reset(sb, skus)
                for t in THREADS if skus == 1 else [16, 128]:
                    res = {"direct": load(form, skus, sb.primary_port, t)}
                    avg = 0.0
                    cpu: dict[str, float] = {}
                    for mode in MODES:
                        p.admin(f"SET hotrow.mode = '{mode}'")
                        b0 = batch_stats(sb) if mode == "merge" else (0, 0)
                        c0 = p.cpu()
                        res[mode] = load(form, skus, p.port, t)
                        n = res[mode].tps * SECONDS
                        cpu[mode] = (p.cpu() - c0) / n * 1e6 if n else 0.0
                        if mode == "merge":
                            b1 = batch_stats(sb)
                            avg = (b1[1] - b0[1]) / (b1[0] - b0[0]) if b1[0] > b0[0] else 0.0
                    d = res["direct"]
                    rows.append((form, skus, t, d.tps, {m: res[m].tps for m in MODES},
                                 res["auto"].p95_ms, avg, cpu))
                    print(f"{form:10} skus={skus:2} threads={t:3d} direct {d.tps:7.0f} | "
                          + " | ".join(f"{m} {res[m].tps:7.0f}" for m in MODES)
                          + f" | auto/direct {res['auto'].tps / d.tps if d.tps else 0:.2f}x"
                          f" auto/off {res['auto'].tps / res['off'].tps if res['off'].tps else 0:.2f}"
                          f" | CPU us/txn off {cpu['off']:.0f} merge {cpu['merge']:.0f}",
                          flush=True)
        lines = [f"Measured {machine()}; {SECONDS} s per run, all targets back to back in one run. "
                 "Transactions (orders) per second.", "",
                 "| form | SKUs | threads | direct | off | queue | merge | auto | auto p95 ms | auto/direct | auto/off | merge/off | merge avg batch | proxy CPU us/txn off / merge |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for f, s, t, d, r, p95, avg, cpu in rows:
            lines.append(f"| {f} | {s} | {t} | {d:.0f} | {r['off']:.0f} | {r['queue']:.0f} | {r['merge']:.0f} | "
                         f"{r['auto']:.0f} | {p95:.1f} | {r['auto'] / d if d else 0:.2f}x | "
                         f"{r['auto'] / r['off'] if r['off'] else 0:.2f} | {r['merge'] / r['off'] if r['off'] else 0:.2f} | {avg:.1f} "
                         f"| {cpu['off']:.0f} / {cpu['merge']:.0f} |")
        lines += ["", "Two proxy instances (mode merge) sharing 128 threads on one SKU, 64 each, "
                  "against one proxy with all 128 and direct MariaDB:", "",
                  "| form | direct | one proxy | two proxies | two/direct |", "|---|---|---|---|---|"]
        p.admin("SET hotrow.mode = 'merge'")
        q = Proxy(sb, {"mode": "merge", "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}],
                       "merge": {"max_batch": 256, "max_wait_us": 200}}, name="proxy2")
        try:
            for form in ("autocommit", "txn"):
                reset(sb, 1)
                d = load(form, 1, sb.primary_port, 128).tps
                one = load(form, 1, p.port, 128).tps
                both = two(form, p.port, q.port)
                lines.append(f"| {form} | {d:.0f} | {one:.0f} | {both:.0f} | {both / d if d else 0:.2f}x |")
                print(lines[-1], flush=True)
        finally:
            q.stop()
        publish("bench-hotrow.md", lines)
        plot([r for r in rows if r[1] == 1])
    finally:
        p.stop()
        sb.stop()


def two(form: str, port_a: int, port_b: int) -> float:
    """Transactions per second of 64 threads on each of two proxies, run at the same time."""
    out: list[float] = [0.0, 0.0]

    def run(i: int, port: int) -> None:
        out[i] = load(form, 1, port, 64).tps

    ts = [threading.Thread(target=run, args=(i, port)) for i, port in enumerate((port_a, port_b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(out)


def plot(rows: list[tuple]) -> None:  # type: ignore[type-arg]
    """One panel per form, one SKU: transactions per second over threads, every target."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    forms = sorted({r[0] for r in rows}, key=["autocommit", "txn", "txn_update_first"].index)
    fig, axes = plt.subplots(1, len(forms), figsize=(5 * len(forms), 4), squeeze=False)
    for ax, form in zip(axes[0], forms, strict=True):
        rs = [r for r in rows if r[0] == form]
        th = [r[2] for r in rs]
        ax.plot(th, [r[3] for r in rs], marker="o", label="direct MariaDB", color="black")
        for m in MODES:
            ax.plot(th, [r[4][m] for r in rs], marker="o", label=f"proxy, {m}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sysbench threads")
        ax.set_ylabel("transactions per second")
        ax.set_title(f"1 hot SKU, {form}")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend()
    fig.suptitle("Hot-row decrements, MariaDB 10.11 double-1 durability, 2-core VM")
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "bench-hotrow.png", dpi=100)


if __name__ == "__main__":
    main()
