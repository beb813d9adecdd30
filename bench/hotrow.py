"""`make bench-hotrow`: one hot SKU (and a 10-SKU variant), direct vs proxy off/queue/merge."""

from __future__ import annotations

import sys

from .common import ROOT, Proxy, machine, publish, sandbox, sysbench

THREADS = [1, 16, 64, 128, 256]
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
STOCK = 10**9  # never sells out during a run: every statement is a real deduction


def reset(sb, skus: int) -> None:  # type: ignore[no-untyped-def]
    sb.primary.sql(
        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
        "DELETE FROM shop.inventory",
        "INSERT INTO shop.inventory VALUES " + ",".join(f"({i}, {STOCK})" for i in range(1, skus + 1)),
    )


def batch_stats(sb) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    r = sb.primary.sql("SELECT COUNT(*), COALESCE(SUM(members), 0) FROM seckill_proxy.hotrow_batch")
    return int(r[0][0]), int(r[0][1])


def main() -> None:
    sb = sandbox()
    p = Proxy(sb, {"mode": "off", "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}],
                   "merge": {"max_batch": 256, "max_wait_us": 200}})
    rows = []
    try:
        for skus in (1, 10):
            reset(sb, skus)
            threads = THREADS if skus == 1 else [16, 128]
            for t in threads:
                res = {"direct": sysbench([f"--skus={skus}"], sb.primary_port, t, SECONDS, "inventory.lua")}
                for mode in ("off", "queue", "merge"):
                    p.admin(f"SET hotrow.mode = '{mode}'")
                    b0 = batch_stats(sb) if mode == "merge" else (0, 0)
                    res[mode] = sysbench([f"--skus={skus}"], p.port, t, SECONDS, "inventory.lua")
                    if mode == "merge":
                        b1 = batch_stats(sb)
                        avg = (b1[1] - b0[1]) / (b1[0] - b0[0]) if b1[0] > b0[0] else 0.0
                d = res["direct"]
                rows.append((skus, t, d.tps, d.p95_ms, res["off"].tps, res["queue"].tps,
                             res["merge"].tps, res["merge"].p95_ms, res["merge"].tps / d.tps if d.tps else 0,
                             avg, res["merge"].errors))
                print(f"skus={skus} threads={t:3d} direct {d.tps:7.0f}/s p95 {d.p95_ms:7.2f} | off "
                      f"{res['off'].tps:7.0f} | queue {res['queue'].tps:7.0f} | merge {res['merge'].tps:7.0f}/s "
                      f"p95 {res['merge'].p95_ms:7.2f} | merge/direct {rows[-1][8]:.1f}x | avg batch {avg:.1f}",
                      flush=True)
        lines = [f"Measured {machine()}; {SECONDS} s per run, all targets back to back in one run.", "",
                 "| SKUs | threads | direct UPDATE/s | direct p95 ms | proxy off | proxy queue | proxy merge | merge p95 ms | merge/direct | avg batch |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.2f} | {r[4]:.0f} | {r[5]:.0f} | {r[6]:.0f} | {r[7]:.2f} | {r[8]:.1f}x | {r[9]:.1f} |")
        publish("bench-hotrow.md", lines)
        plot([r for r in rows if r[0] == 1])
    finally:
        p.stop()
        sb.stop()


def plot(rows: list[tuple]) -> None:  # type: ignore[type-arg]
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    th = [r[1] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for idx, label in ((2, "direct MariaDB"), (4, "proxy, mode off"), (5, "proxy, queue"), (6, "proxy, merge")):
        ax.plot(th, [r[idx] for r in rows], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sysbench threads")
    ax.set_ylabel("hot-row UPDATEs per second")
    ax.set_title("One hot SKU, autocommit decrements (MariaDB 10.11, double-1 durability)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "bench-hotrow.png", dpi=110)


if __name__ == "__main__":
    main()
