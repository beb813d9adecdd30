"""Benchmark plumbing: a fresh sandbox, the proxy as a subprocess, sysbench runs, CPU accounting.

Benchmarks are not tests: they print and write tables of ratios measured in one run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proxy.tools.sandbox import Sandbox, free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


@dataclass
class Result:
    tps: float
    qps: float
    p95_ms: float
    errors: float
    proxy_cpu_s: float = 0.0


def sysbench(args: list[str], port: int, threads: int, seconds: int, script: str,
             extra: list[str] | None = None, pin: str | None = None) -> Result:
    """One sysbench run; `pin`: the CPUs it may run on (taskset -c), e.g. "1"."""
    cmd = [*(["taskset", "-c", pin] if pin else []), "sysbench", script, "--mysql-host=127.0.0.1", f"--mysql-port={port}",
           "--mysql-user=app", "--mysql-password=app", "--mysql-db=shop", f"--threads={threads}",
           f"--time={seconds}", "--report-interval=0", "--percentile=95", *args, *(extra or []), "run"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "bench").stdout
    def num(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else 0.0
    return Result(num(r"transactions:\s+\d+\s+\(([\d.]+) per sec"),
                  num(r"queries:\s+\d+\s+\(([\d.]+) per sec"),
                  num(r"95th percentile:\s+([\d.]+)"),
                  num(r"ignored errors:\s+\d+\s+\(([\d.]+) per sec"))


def pin_threads(pid: int, cpus: str) -> None:
    """Every thread of `pid` onto `cpus` (taskset -a), e.g. MariaDB onto "0"."""
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True,
                   capture_output=True)


def children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proxy:
    def __init__(self, sb: Sandbox, hotrow: dict[str, Any] | None = None,
                 routing: dict[str, Any] | None = None,
                 durability: dict[str, Any] | None = None, name: str = "proxy",
                 root: Path | None = None, workers: int = 1) -> None:
        """`root`: another checkout to run (its own .venv), for comparing two builds;
        `workers`: processes (1: the proxy is one process, as before `workers:` existed)."""
        self.port, self.admin_port, self.metrics_port = free_port(), free_port(), free_port()
        cfg = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": {"listen": f"127.0.0.1:{self.admin_port}", "users": [{"name": "admin", "password": "admin"}]},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
            "users": [{"name": "app", "password": "app"}],
            "backends": {"primary": f"127.0.0.1:{sb.primary_port}",
                         "replicas": [f"127.0.0.1:{p}" for p in sb.replica_ports],
                         "pool": {"max_connections": 300}},
            "hotrow": hotrow or {"mode": "off"},
            "routing": routing or {"read_consistency": "primary"},
            "durability": durability or {},
            "log_level": "WARNING",
            # a build from before `workers:` existed knows no such key (and is one process)
            **({"workers": workers} if workers != 1 or (root or ROOT).joinpath(
                "proxy", "workers.py").exists() else {}),
        }
        OUT.mkdir(parents=True, exist_ok=True)
        path = OUT / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        python = str(root / ".venv" / "bin" / "python") if root else sys.executable
        self.proc = subprocess.Popen([python, "-m", "proxy.cli", "--config", str(path)],
                                     cwd=root or ROOT, stdout=open(OUT / f"{name}.log", "ab"),
                                     stderr=subprocess.STDOUT)
        import socket
        log = OUT / f"{name}.log"
        start = log.stat().st_size if log.exists() else 0
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                # with workers, every one of them (the supervisor says when)
                if workers == 1 or f"{workers} workers)" in log.read_text()[start:]:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("proxy did not start")

    def admin(self, sql: str) -> list[tuple[Any, ...]]:
        import pymysql
        c = pymysql.connect(host="127.0.0.1", port=self.admin_port, user="admin", password="admin")
        try:
            with c.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            c.close()

    def pids(self) -> list[int]:
        """The proxy's processes: itself and, with workers, each worker."""
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu(self) -> float:
        """User + system seconds of all the proxy's processes."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def sandbox(name: str = "sandbox", replicas: int = 0) -> Sandbox:
    if (OUT / name / "sandbox.json").exists():
        sb = Sandbox.load(OUT / name)
    else:
        sb = Sandbox(OUT / name, replicas_n=replicas)
    sb.start()
    return sb


def metrics(port: int) -> dict[str, float]:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    ver = subprocess.run(["mariadbd", "--version"], capture_output=True, text=True).stdout.split("Ver ")[-1].split(" for")[0]
    return f"{os.cpu_count()} cores ({cpu}), MariaDB {ver}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"


def prepare_oltp(sb: Sandbox, table_args: list[str]) -> None:
    """Fresh sysbench oltp tables on the sandbox primary."""
    args = ["--mysql-host=127.0.0.1", f"--mysql-port={sb.primary_port}", "--mysql-user=app",
            "--mysql-password=app", "--mysql-db=shop", *table_args]
    subprocess.run(["sysbench", "oltp_common", *args, "cleanup"], capture_output=True)
    subprocess.run(["sysbench", "oltp_common", *args, "prepare"], capture_output=True, check=True)


def publish(name: str, lines: list[str]) -> None:
    """Write a result table to docs/<name> and print it."""
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


STOCK = 10**9  # never sells out during a run: every statement is a real deduction
SECKILL = str(ROOT / "proxy" / "tools" / "seckill.lua")


def clear_orders(sb) -> None:  # type: ignore[no-untyped-def]
    """Empty shop.orders with TRUNCATE. In the minute after a DELETE of the million rows a
    benchmark run leaves there, MariaDB spent 3-4x its CPU per order (stop 54; the purge alone
    took about 9 CPU-seconds), and a table that grows all through a run (beyond the sandbox's
    128 MB buffer pool) makes its later points slower than its first."""
    c = sb.primary.root()
    try:
        with c.cursor() as cur:
            cur.execute("TRUNCATE TABLE shop.orders")
    finally:
        c.close()


def reset(sb, skus: int) -> None:  # type: ignore[no-untyped-def]
    """shop.inventory with `skus` rows of STOCK units, no orders."""
    from proxy.tools import shop

    c = sb.primary.root()
    try:
        with c.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE "
                        "TABLE_SCHEMA='shop' AND TABLE_NAME='inventory'")
            if cur.fetchone()[0] not in (0, 4):
                cur.execute("DROP TABLE shop.inventory")  # an older bench's two-column table
        shop.ensure(c)
        clear_orders(sb)
        with c.cursor() as cur:
            cur.execute("DELETE FROM shop.inventory")
            # the proxy's batch and outcome records of earlier runs: a proxy prunes those
            # older than an hour, which in a run would charge MariaDB for runs before it
            # (TRUNCATE, as in `clear_orders`)
            cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                        "'seckill_proxy' AND TABLE_NAME IN ('hotrow_batch', 'commit_outcome')")
            for (t,) in cur.fetchall():
                cur.execute(f"TRUNCATE TABLE seckill_proxy.{t}")
            cur.execute("INSERT INTO shop.inventory (sku_id, quantity) VALUES "
                        + ",".join(f"({i}, {STOCK})" for i in range(1, skus + 1)))
        c.commit()
    finally:
        c.close()
