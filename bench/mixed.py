"""`make bench-mixed`: hot SKUs amid cold traffic, one proxy switching hotrow modes.

A flash sale is rarely alone: buyers of one or a few hot SKUs arrive while the rest of the
shop's orders spread over many cold ones. Two sysbench runs at once through one proxy: the hot
part (`HOT` threads on 1 or 10 SKUs) and the cold part (`COLD` threads on 1,000 other SKUs),
in modes off, auto and merge, alternating per round, medians. Pinned: MariaDB on core 0,
sysbench and the proxy on core 1. What it shows: whether auto finds the hot keys (their orders
per second near merge's) without taxing the cold ones (near off's). It found two ways auto
missed them (stop 42, docs/benchmarks.md). `python -m bench.mixed [SECONDS] [ROUNDS]`.
"""

from __future__ import annotations

import statistics
import sys
import threading

from .common import (
    SECKILL,
    Proxy,
    Result,
    machine,
    pin_threads,
    publish,
    reset,
    sandbox,
    sysbench,
)

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
MODES = ("off", "auto", "merge")
# (form, hot SKUs, hot threads, cold threads)
POINTS = [("txn", 1, 16, 112), ("txn", 1, 64, 64), ("txn", 10, 64, 64),
          ("autocommit", 1, 16, 112), ("autocommit", 10, 64, 64)]
COLD_FIRST = 101  # the cold SKUs: 101..1100, the hot ones from 1


def both(port: int, form: str, hot: int, ht: int, ct: int) -> tuple[Result, Result]:
    out: dict[str, Result] = {}

    def run(name: str, first: int, skus: int, threads: int) -> None:
        out[name] = sysbench([f"--skus={skus}", f"--sku={first}", f"--form={form}"], port,
                             threads, SECONDS, SECKILL, pin="1")

    ts = [threading.Thread(target=run, args=("hot", 1, hot, ht)),
          threading.Thread(target=run, args=("cold", COLD_FIRST, 1000, ct))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out["hot"], out["cold"]


def main() -> None:
    sb = sandbox()
    db = sb.primary.pid()
    p = Proxy(sb, {"mode": "auto", "rules": [{"table": "shop.inventory", "key": "sku_id",
                                              "column": "quantity"}]}, name="mixed")
    res: dict[tuple[tuple[str, int, int, int], str], list[tuple[float, float]]] = {}
    try:
        pin_threads(db, "0")
        pin_threads(p.proc.pid, "1")
        reset(sb, COLD_FIRST + 1000)
        for r in range(ROUNDS):
            for pt in POINTS:
                for mode in MODES:
                    p.admin(f"SET hotrow.mode = '{mode}'")
                    h, c = both(p.port, *pt)
                    res.setdefault((pt, mode), []).append((h.tps, c.tps))
                    print(r, *pt, mode, round(h.tps), round(c.tps), flush=True)
    finally:
        pin_threads(db, "0,1")
        p.stop()
        sb.stop()
    lines = [f"Measured {machine()}; pinned (MariaDB on core 0, sysbench and the proxy on core "
             f"1), {ROUNDS} rounds of {SECONDS} s, modes alternating, medians. Orders per second "
             "of the hot part and of the cold part (1,000 other SKUs), run at the same time.", "",
             "| form | hot SKUs | threads hot / cold | off hot / cold | auto hot / cold | "
             "merge hot / cold | auto/off hot | auto/off cold |", "|---|---|---|---|---|---|---|---|"]
    for pt in POINTS:
        med = {m: (statistics.median(x for x, _ in res[(pt, m)]),
                   statistics.median(y for _, y in res[(pt, m)])) for m in MODES}
        (oh, oc), (ah, ac), (mh, mc) = med["off"], med["auto"], med["merge"]
        lines.append(f"| {pt[0]} | {pt[1]} | {pt[2]} / {pt[3]} | {oh:.0f} / {oc:.0f} | "
                     f"{ah:.0f} / {ac:.0f} | {mh:.0f} / {mc:.0f} | {ah / oh if oh else 0:.2f} | "
                     f"{ac / oc if oc else 0:.2f} |")
    publish("bench-mixed.md", lines)


if __name__ == "__main__":
    main()
