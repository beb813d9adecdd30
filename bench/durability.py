"""`make bench-durability`: what each guarantee costs, measured in one run.

Workloads: the hot-row merge benchmark (one SKU, 128 threads, autocommit decrements) and
sysbench oltp_write_only (explicit transactions, 16 threads). Variants: ack: commit,
ack: replica (one replica must have applied each write before its OK), track_commits: all
(an outcome record inside every explicit transaction).
"""

from __future__ import annotations

import sys
import time

from .common import Proxy, machine, prepare_oltp, publish, reset, sandbox, sysbench

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
TABLE = ["--tables=4", "--table-size=10000"]
VARIANTS = [("ack: commit", {"ack": "commit"}),
            ("ack: replica", {"ack": "replica", "replica_acks": 1, "replica_ack_timeout_ms": 1000}),
            ("track_commits: all", {"ack": "commit", "track_commits": "all"})]


def main() -> None:
    sb = sandbox("sandbox-rs", replicas=1)
    prepare_oltp(sb, TABLE)
    reset(sb, 1)
    sb.wait_replicas()
    rows = []
    try:
        for name, dur in VARIANTS:
            p = Proxy(sb, {"mode": "merge", "rules": [{"table": "shop.inventory", "key": "sku_id",
                                                       "column": "quantity"}]}, durability=dur)
            try:
                time.sleep(1.5)
                h = sysbench(["--skus=1"], p.port, 128, SECONDS, "inventory.lua")
                w = sysbench(TABLE + ["--mysql-ignore-errors=1213,1205"], p.port, 16, SECONDS,
                             "oltp_write_only")
            finally:
                p.stop()
            rows.append((name, h.tps, h.p95_ms, w.tps, w.p95_ms))
            print(f"{name:20s} hot-row merge {h.tps:7.0f}/s p95 {h.p95_ms:6.2f} ms | "
                  f"write_only {w.tps:6.0f} tps p95 {w.p95_ms:6.2f} ms", flush=True)
    finally:
        sb.stop()
    base = rows[0]
    lines = [f"Measured {machine()}; {SECONDS} s per run, one primary + one replica on the same machine.", "",
             "| variant | hot-row merge UPDATE/s (128 thr) | vs ack: commit | p95 ms | oltp_write_only tps (16 thr) | vs ack: commit | p95 ms |",
             "|---|---|---|---|---|---|---|"]
    for name, ht, hp, wt, wp in rows:
        lines.append(f"| {name} | {ht:.0f} | {ht / base[1]:.2f} | {hp:.2f} | {wt:.0f} | {wt / base[3]:.2f} | {wp:.2f} |")
    publish("bench-durability.md", lines)


if __name__ == "__main__":
    main()
