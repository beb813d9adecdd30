"""Shared fixtures: a real MariaDB primary + GTID replica, and the proxy run as users run it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import yaml
from hypothesis import settings

from proxy import compiled
from proxy.tools.sandbox import Sandbox, free_port

ROOT = Path(__file__).resolve().parent.parent

# `make test` replays the same generated examples every run (a landing must not depend on a
# lucky draw); HYPOTHESIS_PROFILE=explore draws new ones, as done by hand while developing
# (cases found that way become table rows).
settings.register_profile("replay", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "replay"))


def pytest_configure(config: pytest.Config) -> None:
    """The tests (and the proxies they start) load the compiled hot modules: one older than its
    source would test yesterday's code."""
    stale = compiled.stale()
    if stale:
        raise pytest.UsageError(f"compiled modules whose source changed since the build: {stale}; "
                                "rebuild with `make deps`")


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(tmp_path_factory.mktemp("sandbox"))
    sb.start()
    try:
        yield sb
    finally:
        sb.destroy()


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


@dataclass
class ProxyProc:
    port: int
    admin_port: int
    metrics_port: int
    config_path: Path
    proc: subprocess.Popen[bytes]
    log_path: Path

    def connect(self, **kw: Any) -> pymysql.connections.Connection:  # type: ignore[type-arg]
        args: dict[str, Any] = dict(host="127.0.0.1", port=self.port, user="app", password="app",
                                    database="shop", autocommit=True)
        args.update(kw)
        return pymysql.connect(**args)

    def admin(self, sql: str) -> list[tuple[Any, ...]]:
        c = pymysql.connect(host="127.0.0.1", port=self.admin_port, user="admin", password="admin")
        try:
            with c.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            c.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def hang_report(self) -> str:
        """What the proxy waits on (its SIGUSR1 task dump), for a test whose clients hung:
        a failure that says where, not a bare timeout."""
        n = self.log().count("SIGUSR1:")
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while self.log().count("SIGUSR1:") <= n and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.log()[-20000:]

    def scrape(self) -> str:
        """The proxy's /metrics page."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=5) as r:
            return str(r.read().decode())

    def metric(self, pattern: str) -> float:
        """The value of the one series `pattern` (a regex of name and labels) names; 0 if absent."""
        m = re.search("^" + pattern + r" (\S+)$", self.scrape(), re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self, sig: int = 15, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


def make_config(sb: Sandbox, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}", "users": [{"name": "admin", "password": "admin"}]},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "users": [{"name": "app", "password": "app"}],
        "backends": {
            "primary": f"127.0.0.1:{sb.primary_port}",
            "replicas": [f"127.0.0.1:{p}" for p in sb.replica_ports],
            "pool": {"max_connections": 200, "connect_timeout_s": 5},
        },
        "hotrow": {
            "mode": "merge",
            "rules": [{"table": "shop.inventory", "key": "sku_id", "column": "quantity"}],
        },
        # Many tests write straight to MariaDB and read through the proxy: global consistency
        # makes those reads see every commit made before them, replica or not.
        "routing": {"read_consistency": "global", "max_wait_ms": 2000},
        # tests log in wrongly on purpose from one address: the brute-force limit
        # (test_security.py) would block the rest of the suite
        "limits": {"login_max_failures": 0},
        # one process unless a test asks for more (test_workers.py); the default is the cores
        "workers": 1,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def start_proxy(tmp: Path, cfg: dict[str, Any]) -> ProxyProc:
    path = tmp / f"proxy-{free_port()}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = path.with_suffix(".log")
    logf = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(path)],
        cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    port = int(cfg["listen"].rsplit(":", 1)[1])
    p = ProxyProc(port, int(cfg["admin"]["listen"].rsplit(":", 1)[1]),
                  int(cfg["metrics"]["listen"].rsplit(":", 1)[1]), path, proc, log_path)
    try:
        # the client port opens first, the admin and metrics ports just after (server.py):
        # a test that scrapes at once must not find them still closed
        for q in (port, p.admin_port, p.metrics_port):
            wait_port(q)
    except RuntimeError:
        p.stop()
        raise RuntimeError("proxy did not start:\n" + p.log()) from None
    return p


@pytest.fixture(scope="session")
def proxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    p = start_proxy(tmp_path_factory.mktemp("proxy"), make_config(sandbox))
    try:
        yield p
    finally:
        p.stop()


async def app_conn(port: int) -> Any:
    """An aiomysql connection as the tests' application user, database shop, autocommit."""
    import aiomysql

    return await aiomysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                                  db="shop", autocommit=True)


def concurrent_decrements(port: int, n: int, sku: int = 1) -> list[Any]:
    """`n` clients at once, each one autocommit hot decrement through the proxy: the rows
    affected (0/1) or the error args each client got, in client order."""
    import asyncio


    async def one() -> Any:
        conn = await app_conn(port)
        try:
            async with conn.cursor() as k:
                return await k.execute("UPDATE inventory SET quantity = quantity - 1 "
                                       f"WHERE sku_id = {sku} AND quantity > 0")
        except pymysql.err.MySQLError as e:
            return e.args
        finally:
            conn.close()

    async def run() -> list[Any]:
        return list(await asyncio.gather(*(one() for _ in range(n))))

    return asyncio.run(run())


@pytest.fixture
def direct(sandbox: Sandbox) -> Iterator[pymysql.connections.Connection]:  # type: ignore[type-arg]
    c = pymysql.connect(host="127.0.0.1", port=sandbox.primary_port, user="app", password="app",
                        database="shop", autocommit=True)
    yield c
    c.close()
