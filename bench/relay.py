"""The floor of any asyncio proxy on this machine: a byte relay with no parsing at all.

`python -m bench.relay [SECONDS] [PAIRS]` runs sysbench oltp_point_select (16 threads, server-side
prepared) directly against MariaDB and through a 1:1 uvloop byte relay (one backend connection
per client, bytes copied both ways, nothing else), alternating, and prints the ratio and the
relay's user/system CPU per query. Whatever the proxy does per statement (plan, lease, reply
scanning, metrics) is on top of this; the kernel part (four socket syscalls per query and the
wake-ups they cause) is the same for both.

`python -m bench.relay seed [SECONDS]`: issue 24's yardstick for the proxy's CPU per order. The
seed's order (BEGIN; INSERT; UPDATE; COMMIT, 128 threads) through the relay on 1,000 SKUs, through
the proxy (mode auto) on 1,000 SKUs and on 1 SKU, and directly, pinned (MariaDB on core 0, the
rest on core 1) and unpinned: orders per second and CPU per order of the relay or proxy and of
MariaDB (the relay's and the proxy's split into user and system time). The relay makes four
backend round trips per order where the proxy makes two (BEGIN
goes with the INSERT, the confirm row with the COMMIT, the UPDATE is the group's).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from .common import prepare_oltp, sandbox, sysbench

TABLE = ["--tables=4", "--table-size=10000"]


def _relay(listen: int, backend: int) -> None:
    import uvloop

    class Back(asyncio.Protocol):
        def __init__(self, front: Front) -> None:
            self.front = front

        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = t  # type: ignore[assignment]

        def data_received(self, d: bytes) -> None:
            self.front.t.write(d)

        def connection_lost(self, e: Exception | None) -> None:
            self.front.t.close()

    class Front(asyncio.Protocol):
        def connection_made(self, t: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = t  # type: ignore[assignment]
            self.back: Back | None = None
            self.t.pause_reading()
            asyncio.ensure_future(self.open())

        async def open(self) -> None:
            loop = asyncio.get_running_loop()
            _, self.back = await loop.create_connection(lambda: Back(self), "127.0.0.1", backend)
            self.t.resume_reading()

        def data_received(self, d: bytes) -> None:
            assert self.back is not None
            self.back.t.write(d)

        def connection_lost(self, e: Exception | None) -> None:
            if self.back is not None:
                self.back.t.close()

    async def main() -> None:
        srv = await asyncio.get_running_loop().create_server(Front, "127.0.0.1", listen)
        await srv.serve_forever()

    uvloop.install()
    asyncio.run(main())


def _cpu(pid: int) -> tuple[float, float]:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / 100, int(f[12]) / 100


def _start(port: int, backend: int) -> subprocess.Popen[bytes]:
    relay = subprocess.Popen([sys.executable, "-c", f"from bench.relay import _relay; "
                              f"_relay({port}, {backend})"],
                             cwd=Path(__file__).resolve().parent.parent)
    time.sleep(1)
    return relay


def seed(seconds: int) -> None:
    """The seed order through the relay, the proxy and directly (see the module's docstring)."""
    from proxy.tools.sandbox import free_port

    from .common import SECKILL, Proxy, clear_orders, cpu_seconds, machine, pin_threads, reset

    sb = sandbox()
    db = sb.primary.pid()
    assert db is not None
    port = free_port()
    relay = _start(port, sb.primary_port)
    rule = {"table": "shop.inventory", "key": "sku_id", "column": "quantity"}
    p = Proxy(sb, {"mode": "auto", "rules": [rule]}, name="relay-seed")
    print(f"Measured {machine()}; seed order, 128 threads, {seconds} s per run")
    try:
        reset(sb, 1000)
        for pinned in (True, False):
            pin_threads(db, "0" if pinned else "0,1")
            for pid in (relay.pid, p.proc.pid):
                pin_threads(pid, "1" if pinned else "0,1")
            for label, at, pid, skus in (("relay, 1000 SKUs", port, relay.pid, 1000),
                                         ("proxy, 1000 SKUs", p.port, p.proc.pid, 1000),
                                         ("proxy, 1 SKU", p.port, p.proc.pid, 1),
                                         ("direct, 1000 SKUs", sb.primary_port, 0, 1000)):
                clear_orders(sb)
                c0, d0 = _cpu(pid) if pid else (0.0, 0.0), cpu_seconds(db)
                r = sysbench([f"--skus={skus}", "--sku=1", "--form=txn"], at, 128, seconds,
                             SECKILL, pin="1" if pinned else None)
                n = r.tps * seconds or 1
                c1 = _cpu(pid) if pid else (0.0, 0.0)
                user, system = ((c1[i] - c0[i]) / n * 1e6 for i in (0, 1))
                print(f"{'pinned' if pinned else 'unpinned':8s} {label:18s} {r.tps:6.0f} orders/s"
                      f" | own CPU {user + system:4.0f} us ({user:.0f} user + {system:.0f} system)"
                      f" | MariaDB {(cpu_seconds(db) - d0) / n * 1e6:4.0f} us per order", flush=True)
    finally:
        pin_threads(db, "0,1")
        relay.kill()
        p.stop()


def main() -> None:
    from proxy.tools.sandbox import free_port

    if len(sys.argv) > 1 and sys.argv[1] == "seed":
        seed(int(sys.argv[2]) if len(sys.argv) > 2 else 8)
        return
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    sb = sandbox("sandbox-rs", replicas=1)
    port = free_port()
    relay = _start(port, sb.primary_port)
    try:
        prepare_oltp(sb, TABLE)
        for _ in range(pairs):
            d = sysbench(TABLE, sb.primary_port, 16, seconds, "oltp_point_select")
            u0 = _cpu(relay.pid)
            x = sysbench(TABLE, port, 16, seconds, "oltp_point_select")
            u1 = _cpu(relay.pid)
            n = x.qps * seconds or 1
            print(f"direct {d.qps:7.0f} q/s | relay {x.qps:7.0f} q/s | ratio {x.qps / d.qps:.2f} | "
                  f"relay CPU user {(u1[0] - u0[0]) / n * 1e6:.0f} us + system "
                  f"{(u1[1] - u0[1]) / n * 1e6:.0f} us per query", flush=True)
    finally:
        relay.kill()
        sb.stop()


if __name__ == "__main__":
    main()
