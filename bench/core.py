"""`make bench`: sysbench oltp_point_select and oltp_write_only, direct vs through the proxy."""

from __future__ import annotations

import sys

from .common import Proxy, machine, prepare_oltp, publish, sandbox, sysbench

THREADS = [1, 16, 64]
SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
TABLE = ["--tables=4", "--table-size=10000"]


def main() -> None:
    sb = sandbox()
    p = Proxy(sb)
    try:
        prepare_oltp(sb, TABLE)
        rows = []
        for test, extra in (("oltp_point_select", []), ("oltp_point_select", ["--db-ps-mode=disable"]),
                            ("oltp_write_only", [])):
            for t in THREADS:
                d = sysbench(TABLE, sb.primary_port, t, SECONDS, test, extra)
                c0 = p.cpu()
                x = sysbench(TABLE, p.port, t, SECONDS, test, extra)
                cpu = p.cpu() - c0
                q = x.qps * SECONDS
                name = test + (" (text protocol)" if extra else "")
                rows.append((name, t, d.qps, x.qps, x.qps / d.qps if d.qps else 0, d.p95_ms, x.p95_ms,
                             cpu / q * 1e6 if q else 0))
                print(f"{name:36s} {t:3d} thr  direct {d.qps:9.0f} q/s p95 {d.p95_ms:6.2f} ms | "
                      f"proxy {x.qps:9.0f} q/s p95 {x.p95_ms:6.2f} ms | ratio {rows[-1][4]:.2f} | "
                      f"proxy CPU {rows[-1][7]:.0f} us/query", flush=True)
        lines = [f"Measured {machine()}; {SECONDS} s per run, proxy and direct runs back to back.", "",
                 "| test | threads | direct q/s | proxy q/s | proxy/direct | direct p95 ms | proxy p95 ms | proxy CPU us/query |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.0f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.0f} |")
        publish("bench-core.md", lines)
    finally:
        p.stop()
        sb.stop()


if __name__ == "__main__":
    main()
