"""`make bench-readsplit`: sysbench oltp_read_write through the proxy, session consistency with a
replica vs everything on the primary; share of reads served by the replica, waits, fallbacks."""

from __future__ import annotations

import sys
import time

from .common import Proxy, machine, metrics, prepare_oltp, publish, sandbox, sysbench

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
TABLE = ["--tables=4", "--table-size=10000"]


def main() -> None:
    sb = sandbox("sandbox-rs", replicas=1)
    p = Proxy(sb, routing={"read_consistency": "session", "max_wait_ms": 50})
    try:
        prepare_oltp(sb, TABLE)
        sb.wait_replicas()
        time.sleep(1.5)
        rows = []
        for threads in (16, 64):
            for mode in ("primary", "session"):
                p.admin(f"SET routing.read_consistency = '{mode}'")
                m0 = metrics(p.metrics_port)
                r = sysbench(TABLE + ["--skip-trx=on", "--mysql-ignore-errors=1062,1213,1205"], p.port, threads, SECONDS,
                             "oltp_read_write")
                m1 = metrics(p.metrics_port)
                d = {o: sum(v - m0.get(k, 0) for k, v in m1.items()
                            if k.startswith("seckill_proxy_reads_total") and f'outcome="{o}"' in k)
                     for o in ("replica", "replica_waited", "primary_fallback")}
                on_rep = d["replica"] + d["replica_waited"]
                eligible = on_rep + d["primary_fallback"]
                rows.append((threads, mode, r.tps, r.qps, r.p95_ms, on_rep / eligible if eligible else 0,
                             d["replica_waited"], d["primary_fallback"]))
                print(f"{threads:3d} thr {mode:8s} tps {r.tps:7.0f} qps {r.qps:8.0f} p95 {r.p95_ms:7.2f} ms "
                      f"reads on replica {rows[-1][5]:.0%} waited {d['replica_waited']:.0f} "
                      f"fell back {d['primary_fallback']:.0f}", flush=True)
        lines = [f"Measured {machine()}; {SECONDS} s per run; sysbench oltp_read_write --skip-trx=on "
                 "(autocommit statements, so reads are eligible for the replica) through the proxy.", "",
                 "| threads | read_consistency | tps | qps | p95 ms | replica share of replica-eligible reads | reads that waited | reads that fell back to primary |",
                 "|---|---|---|---|---|---|---|---|"]
        for t, mode, tps, qps, p95, share, waited, fb in rows:
            lines.append(f"| {t} | {mode} | {tps:.0f} | {qps:.0f} | {p95:.2f} | {share:.0%} | {waited:.0f} | {fb:.0f} |")
        publish("bench-readsplit.md", lines)
    finally:
        p.stop()
        sb.stop()


if __name__ == "__main__":
    main()
