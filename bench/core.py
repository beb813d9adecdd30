"""`make bench`: sysbench oltp_point_select and oltp_write_only, direct vs through the proxy.

Every point is measured as REPS alternating pairs (direct, then proxy, back to back) and the
table gives the median pair's numbers plus the range of the ratio over all pairs: on this
shared 2-core machine one 10-second pair can be off by a third either way.
"""

from __future__ import annotations

import os
import sys

from .common import Proxy, machine, metrics, prepare_oltp, publish, sandbox, sysbench

THREADS = [1, 16, 64]
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
QUICK = len(sys.argv) > 3 and sys.argv[3] == "quick"  # point selects at 16 threads only
TABLE = ["--tables=4", "--table-size=10000"]


def main() -> None:
    sb = sandbox("sandbox-rs", replicas=1)
    # The default config: one replica, read_consistency: session (reads go to the replica);
    # BENCH_CONSISTENCY=primary measures the same with every read on the primary.
    p = Proxy(sb, routing={"read_consistency": os.environ.get("BENCH_CONSISTENCY", "session")})
    try:
        prepare_oltp(sb, TABLE)
        sb.wait_replicas()
        rows = []
        tests = [("oltp_point_select", []), ("oltp_point_select", ["--db-ps-mode=disable"])]
        if not QUICK:
            tests.append(("oltp_write_only", []))
        for test, extra in tests:
            for t in ([16] if QUICK else THREADS):
                pairs = []
                for _ in range(REPS):
                    d = sysbench(TABLE, sb.primary_port, t, SECONDS, test, extra)
                    c0 = p.cpu()
                    lane0 = _lane(p)
                    x = sysbench(TABLE, p.port, t, SECONDS, test, extra)
                    cpu = p.cpu() - c0
                    q = x.qps * SECONDS
                    lane1 = _lane(p)
                    done = lane1[0] - lane0[0]
                    lane = (lane1[1] - lane0[1]) / done if done else 0.0
                    rep = (lane1[2] - lane0[2]) / done if done else 0.0
                    pairs.append((x.qps / d.qps if d.qps else 0.0, d, x, cpu / q * 1e6 if q else 0.0,
                                  lane, rep))
                pairs.sort(key=lambda r: r[0])
                ratio, d, x, cpu_us, lane, rep = pairs[len(pairs) // 2]
                lo, hi = pairs[0][0], pairs[-1][0]
                name = test + (" (text protocol)" if extra else "")
                rows.append((name, t, d.qps, x.qps, ratio, lo, hi, d.p95_ms, x.p95_ms, cpu_us, lane,
                             rep))
                print(f"{name:36s} {t:3d} thr  direct {d.qps:9.0f} q/s p95 {d.p95_ms:6.2f} ms | "
                      f"proxy {x.qps:9.0f} q/s p95 {x.p95_ms:6.2f} ms | ratio {ratio:.2f} "
                      f"({lo:.2f}-{hi:.2f}) | proxy CPU {cpu_us:.0f} us/query | lane {lane:.0%} | "
                      f"on the replica {rep:.0%}",
                      flush=True)
        lines = [f"Measured {machine()}; {REPS} pairs of {SECONDS} s runs per point (direct, then "
                 "proxy, back to back); the median pair is shown, with the ratio's range over all pairs.",
                 "",
                 "| test | threads | direct q/s | proxy q/s | proxy/direct | range | direct p95 ms | "
                 "proxy p95 ms | proxy CPU us/query | fast lane | served by the replica |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.2f} | {r[5]:.2f}-{r[6]:.2f} "
                         f"| {r[7]:.2f} | {r[8]:.2f} | {r[9]:.0f} | {r[10]:.0%} | {r[11]:.0%} |")
        publish("bench-core.md", lines)
    finally:
        p.stop()
        sb.stop()


def _lane(p: Proxy) -> tuple[float, float, float]:
    """Statements the proxy ran so far: all of them, those on its fast lane, and the reads a
    replica served."""
    m = metrics(p.metrics_port)
    total = sum(v for k, v in m.items() if k.startswith("seckill_proxy_statements_total{"))
    replica = sum(v for k, v in m.items()
                  if k.startswith("seckill_proxy_reads_total{") and 'outcome="replica' in k)
    return total, m.get("seckill_proxy_fastlane_statements_total", 0.0), replica


if __name__ == "__main__":
    main()
