"""`make bench-workers` (`python -m bench.workers [SECONDS] [ROUNDS]`): workers 1 vs 2.

Issue 24's "every core": the same proxy config with `workers: 1` and `workers: 2`, both up at
once, against C (directly, 1,000 SKUs: the no-hotspot ceiling), alternating in rounds, per
form (autocommit, the seed's transaction) and hot SKUs (1, and 1,000 = nothing hot), 128
threads, mode auto. Unpinned only: pinning the proxy to one core leaves a second worker no core
of its own. Orders per second (median of the rounds) and the proxy's CPU per order (every
process of it, from /proc). Writes docs/bench-workers.md.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .common import SECKILL, Proxy, machine, publish, reset, sandbox, sysbench

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
THREADS = 128
SPREAD = 1000
RULE = {"table": "shop.inventory", "key": "sku_id", "column": "quantity"}
POINTS = (("autocommit", 1), ("autocommit", SPREAD), ("txn", 1), ("txn", SPREAD))


def main() -> None:
    sb = sandbox()
    hot = {"mode": "auto", "rules": [RULE]}
    p1 = Proxy(sb, hot, name="workers1", workers=1)
    p2 = Proxy(sb, hot, name="workers2", workers=2)
    got: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    try:
        reset(sb, SPREAD)
        for _ in range(ROUNDS):
            for form, skus in POINTS:
                args = ([f"--skus={skus}"] if form == "autocommit"
                        else [f"--skus={skus}", "--sku=1", "--form=txn"])
                script = "inventory.lua" if form == "autocommit" else SECKILL
                targets: list[tuple[str, Any]] = [("w1", p1), ("w2", p2)]
                if skus == SPREAD:
                    targets.append(("C", None))
                for name, p in targets:
                    c0 = p.cpu() if p is not None else 0.0
                    r = sysbench(args, p.port if p is not None else sb.primary_port, THREADS,
                                 SECONDS, script)
                    n = r.tps * SECONDS
                    us = (p.cpu() - c0) / n * 1e6 if p is not None and n else 0.0
                    got.setdefault((form, skus, name), []).append((r.tps, us))
                    print(form, skus, name, f"{r.tps:.0f}/s", f"{us:.0f} us/order", flush=True)
    finally:
        p1.stop()
        p2.stop()
        sb.stop()

    def med(form: str, skus: int, name: str, i: int = 0) -> float:
        return statistics.median(x[i] for x in got.get((form, skus, name), [(0.0, 0.0)]))

    lines = [f"Measured {machine()}; {ROUNDS} rounds of {SECONDS} s, {THREADS} threads, "
             "unpinned, hot-row mode auto; medians. C: directly, 1,000 SKUs.", "",
             "| form | SKUs | C | workers 1 | workers 2 | w2/w1 | w1/C | w2/C "
             "| proxy CPU/order w1 / w2 |", "|---|---|---|---|---|---|---|---|---|"]
    for form, skus in POINTS:
        c = med(form, SPREAD, "C")
        w1, w2 = med(form, skus, "w1"), med(form, skus, "w2")
        lines.append(
            f"| {form} | {skus} | {c:.0f} | {w1:.0f} | {w2:.0f} | {w2 / w1 if w1 else 0:.2f} | "
            f"{w1 / c if c else 0:.2f} | {w2 / c if c else 0:.2f} | "
            f"{med(form, skus, 'w1', 1):.0f} / {med(form, skus, 'w2', 1):.0f} µs |")
    publish("bench-workers.md", lines)


if __name__ == "__main__":
    main()
