"""Two builds of the proxy against each other, in one run: `python -m bench.ab OLD_CHECKOUT
[SECONDS] [REPS]` (OLD_CHECKOUT: e.g. `git worktree add /tmp/old <commit>` with its own
`.venv`, `pip install -e .`).

Both proxies run at once against one sandbox; each point is REPS rounds of old, new, direct
back to back, so drift on this shared machine hits both alike. Points: point selects (sysbench
oltp_point_select, 16 threads, prepared and text) and the seed's order on one hot SKU (BEGIN;
INSERT; UPDATE; COMMIT, 32 and 128 threads, mode auto). Reported: the median round's
transactions per second of each, new/old, and each proxy's CPU per transaction (its
process's user + system time over the run / transactions).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from .common import SECKILL, Proxy, machine, prepare_oltp, reset, sandbox, sysbench

OLD = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/old")
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
REPS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
TABLE = ["--tables=4", "--table-size=10000"]
HOT = {"mode": "auto", "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}]}


def main() -> None:
    sb = sandbox()
    new = Proxy(sb, HOT, name="ab-new")
    old = Proxy(sb, HOT, name="ab-old", root=OLD)
    points = [("point_select ps", "oltp_point_select", [], 16),
              ("point_select text", "oltp_point_select", ["--db-ps-mode=disable"], 16),
              ("seed order, 1 SKU", "txn", [], 32),
              ("seed order, 1 SKU", "txn", [], 128)]
    lines = [f"Measured {machine()}; {SECONDS} s per run, {REPS} rounds of old / new / direct.",
             f"old: {OLD}", "",
             "| point | threads | direct | old | new | new/old (range) | CPU us/txn old | new |",
             "|---|---|---|---|---|---|---|---|"]
    try:
        prepare_oltp(sb, TABLE)
        for name, test, extra, threads in points:
            if test == "txn":
                reset(sb, 1)

            def run(port: int, test: str = test, extra: list[str] = extra,
                    threads: int = threads) -> float:
                if test == "txn":
                    return sysbench(["--skus=1", "--sku=1", "--form=txn"], port, threads,
                                    SECONDS, SECKILL).tps
                return sysbench(TABLE, port, threads, SECONDS, test, extra).tps

            rounds = []
            for _ in range(REPS):
                got = {}
                for label, p in (("old", old), ("new", new)):
                    c0 = p.cpu()
                    tps = run(p.port)
                    got[label] = (tps, (p.cpu() - c0) / (tps * SECONDS) * 1e6 if tps else 0.0)
                got["direct"] = (run(sb.primary_port), 0.0)
                rounds.append(got)
            ratios = [r["new"][0] / r["old"][0] for r in rounds if r["old"][0]]
            mid = sorted(rounds, key=lambda r: r["new"][0] / r["old"][0] if r["old"][0] else 0)[
                len(rounds) // 2]
            lines.append(f"| {name} | {threads} | {mid['direct'][0]:.0f} | {mid['old'][0]:.0f} | "
                         f"{mid['new'][0]:.0f} | {statistics.median(ratios):.2f} "
                         f"({min(ratios):.2f}-{max(ratios):.2f}) | "
                         f"{statistics.median(r['old'][1] for r in rounds):.0f} | "
                         f"{statistics.median(r['new'][1] for r in rounds):.0f} |")
            print(lines[-1], flush=True)
    finally:
        new.stop()
        old.stop()
        sb.stop()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
