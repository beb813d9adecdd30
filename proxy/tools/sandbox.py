"""A local MariaDB primary + GTID replica in a folder, for `make run`, tests and benchmarks.

Real servers, not mocks: every test that touches MySQL runs against these. The servers run
with double-1 durability and row binlog, like the production setup the proxy is built for.

    python -m proxy.tools.sandbox start [--dir .sandbox] [--primary-port 3307] [--replica-port 3308]
    python -m proxy.tools.sandbox stop  [--dir .sandbox]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

APP_USER = "app"
APP_PASSWORD = "app"
REPL_USER = "repl"
REPL_PASSWORD = "repl"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """Ask the kernel for a free loopback port, never one this process handed out already: the
    kernel may give the same port twice in a row when nothing bound it in between (seen: a
    proxy's client and metrics ports the same). The race with another process is acceptable
    in tests."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _find(binary: str) -> str:
    for cand in (binary, f"/usr/sbin/{binary}", f"/usr/bin/{binary}"):
        path = shutil.which(cand) or (cand if os.path.exists(cand) else None)
        if path:
            return path
    raise RuntimeError(f"{binary} not found: apt-get install mariadb-server mariadb-client")


@dataclass
class Server:
    """One mariadbd process with its own datadir, socket and port."""

    name: str
    base: Path
    port: int
    server_id: int
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.base / self.name / "data"

    @property
    def socket_path(self) -> Path:
        return self.base / self.name / "mysql.sock"

    @property
    def pid_file(self) -> Path:
        return self.base / self.name / "mysqld.pid"

    @property
    def log_file(self) -> Path:
        return self.base / self.name / "error.log"

    def install(self) -> None:
        if (self.datadir / "mysql").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                _find("mariadb-install-db"),
                f"--datadir={self.datadir}",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def args(self) -> list[str]:
        return [
            _find("mariadbd"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log_file}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--user=root",
            "--skip-name-resolve",
            f"--server-id={self.server_id}",
            "--log-bin=mysql-bin",
            "--log-slave-updates=ON",
            "--binlog-format=ROW",
            "--gtid-strict-mode=ON",
            "--sync-binlog=1",
            "--innodb-flush-log-at-trx-commit=1",
            "--innodb-buffer-pool-size=128M",
            "--innodb-log-file-size=64M",
            "--max-connections=2000",
            "--max-allowed-packet=64M",
            "--performance-schema=OFF",
            "--skip-log-bin-compress",
            # TLS offered to clients (the proxy's backends.tls verifies against tls/ca.pem)
            f"--ssl-ca={self.base / 'tls' / 'ca.pem'}",
            f"--ssl-cert={self.base / 'tls' / 'server.pem'}",
            f"--ssl-key={self.base / 'tls' / 'server.key'}",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> None:
        self.install()
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.base / self.name / "stdout.log", "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log_file}")
            try:
                self.root().close()
                return
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start in {timeout}s; see {self.log_file}")

    def root(self) -> pymysql.connections.Connection:  # type: ignore[type-arg]
        """A root connection over the unix socket (root has no TCP access)."""
        return pymysql.connect(unix_socket=str(self.socket_path), user="root", autocommit=True)

    def sql(self, *stmts: str) -> list[tuple[object, ...]]:
        conn = self.root()
        try:
            rows: list[tuple[object, ...]] = []
            with conn.cursor() as cur:
                for s in stmts:
                    cur.execute(s)
                    rows = list(cur.fetchall())
            return rows
        finally:
            conn.close()

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 60.0) -> None:
        pid = self.proc.pid if self.proc else self.pid()
        if not pid:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def kill9(self) -> None:
        pid = self.proc.pid if self.proc else self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            if self.proc:
                self.proc.wait()


@dataclass
class Sandbox:
    """A primary and N replicas replicating with MariaDB GTID (MASTER_USE_GTID=slave_pos)."""

    base: Path
    primary_port: int = 0
    replica_ports: list[int] = field(default_factory=list)
    replicas_n: int = 1

    def __post_init__(self) -> None:
        self.base = Path(self.base).resolve()
        if not self.primary_port:
            self.primary_port = free_port()
        while len(self.replica_ports) < self.replicas_n:
            self.replica_ports.append(free_port())
        self.primary = Server("primary", self.base, self.primary_port, 1)
        self.replicas = [
            Server(f"replica{i + 1}", self.base, port, 2 + i, ["--read-only=ON"])
            for i, port in enumerate(self.replica_ports)
        ]

    @property
    def servers(self) -> list[Server]:
        return [self.primary, *self.replicas]

    def start(self) -> None:
        make_certs(self.base / "tls")
        fresh = not (self.primary.datadir / "mysql").exists()
        for s in self.servers:
            s.start()
        if fresh:
            self._setup()
        self._write_state()

    def _setup(self) -> None:
        # Replicas start from the same empty install; everything created on the primary replicates.
        for r in self.replicas:
            r.sql("RESET MASTER", "SET GLOBAL gtid_slave_pos=''")
        self.primary.sql("RESET MASTER")
        self.primary.sql(
            f"CREATE USER '{REPL_USER}'@'%' IDENTIFIED BY '{REPL_PASSWORD}'",
            f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'%'",
            f"CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{APP_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON *.* TO '{APP_USER}'@'%' WITH GRANT OPTION",
            "CREATE DATABASE IF NOT EXISTS shop",
        )
        for r in self.replicas:
            r.sql(
                f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={self.primary_port}, "
                f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', "
                "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                "START SLAVE",
            )
        self.wait_replicas()

    def wait_replicas(self, timeout: float = 30.0) -> None:
        pos = self.primary.sql("SELECT @@gtid_binlog_pos")[0][0]
        for r in self.replicas:
            got = r.sql(f"SELECT MASTER_GTID_WAIT('{pos}', {timeout})")[0][0]
            if got != 0:
                raise RuntimeError(f"{r.name} did not catch up to {pos}")

    def stop(self) -> None:
        for s in reversed(self.servers):
            s.stop()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def _write_state(self) -> None:
        state = {"primary_port": self.primary_port, "replica_ports": self.replica_ports}
        (self.base / "sandbox.json").write_text(json.dumps(state))

    @classmethod
    def load(cls, base: Path) -> Sandbox:
        state = json.loads((Path(base) / "sandbox.json").read_text())
        return cls(
            base=Path(base),
            primary_port=state["primary_port"],
            replica_ports=state["replica_ports"],
            replicas_n=len(state["replica_ports"]),
        )


def make_certs(d: Path) -> dict[str, str]:
    """A local CA and a server certificate for 127.0.0.1/localhost (openssl CLI), once: what
    `make run` gives the proxy for TLS, and what clients verify against (ca.pem)."""
    d.mkdir(parents=True, exist_ok=True)
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    if not all(p.exists() for p in paths.values()):
        def run(*a: str) -> None:
            subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "3650", "-subj", "/CN=seckill-proxy sandbox CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
        (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "3650", "-extfile", "san.ext")
    return {k: str(v) for k, v in paths.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m proxy.tools.sandbox")
    ap.add_argument("action", choices=["start", "stop", "destroy", "status"])
    ap.add_argument("--dir", default=".sandbox")
    ap.add_argument("--primary-port", type=int, default=3307)
    ap.add_argument("--replica-port", type=int, default=3308)
    a = ap.parse_args(argv)
    base = Path(a.dir)
    if a.action == "start":
        if (base / "sandbox.json").exists():
            sb = Sandbox.load(base)
        else:
            sb = Sandbox(base, a.primary_port, [a.replica_port])
        running = bool(sb.primary.pid() and _alive(sb.primary.pid()))
        if not running:
            sb.start()
        from proxy.tools import shop

        make_certs(base / "tls")  # conf/proxy.yaml's tls section points here
        conn = sb.primary.root()
        try:
            shop.ensure(conn)  # idempotent: the default config's hot-row rule points at it
        finally:
            conn.close()
        sb.wait_replicas()
        if running:
            print(f"sandbox already running: primary 127.0.0.1:{sb.primary_port}")
            return 0
        print(
            f"sandbox up: primary 127.0.0.1:{sb.primary_port}, replica "
            + ", ".join(f"127.0.0.1:{p}" for p in sb.replica_ports)
        )
        return 0
    if not (base / "sandbox.json").exists():
        print("no sandbox here")
        return 0
    sb = Sandbox.load(base)
    if a.action == "stop":
        sb.stop()
        print("sandbox stopped")
    elif a.action == "destroy":
        sb.destroy()
        print("sandbox removed")
    else:
        for s in sb.servers:
            pid = s.pid()
            print(f"{s.name}: 127.0.0.1:{s.port} {'up' if pid and _alive(pid) else 'down'}")
    return 0


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


if __name__ == "__main__":
    sys.exit(main())
