"""Process conventions operators expect (issue 26, in part): `--version`, SIGHUP reloads the
config, `SECKILL_PROXY_CONFIG`, typed `${VAR}` values and shell-like `${VAR:-default}`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from proxy.core import config as C
from proxy.tools.sandbox import Sandbox, free_port

from .conftest import ROOT, make_config, start_proxy, wait_port


def test_version() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("seckill-proxy ")


def test_config_path_from_the_environment(tmp_path: Path, sandbox: Sandbox) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(make_config(sandbox)))
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "--check-config", str(path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    # no --config: SECKILL_PROXY_CONFIG names the file (checked: an invalid one is refused)
    path.write_text("listen: nowhere\n")
    out = subprocess.run([sys.executable, "-m", "proxy.cli"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, env={**os.environ, "SECKILL_PROXY_CONFIG": str(path)})
    assert out.returncode == 2 and "config error" in out.stderr


@pytest.mark.parametrize("env,text,want", [
    ({"POOL_MAX": "37"}, "max_connections: ${POOL_MAX}", 37),
    ({}, "max_connections: ${POOL_MAX:-41}", 41),
    ({"POOL_MAX": ""}, "max_connections: ${POOL_MAX:-43}", 43),  # set but empty: the default
])
def test_typed_env_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str],
                          text: str, want: int) -> None:
    monkeypatch.delenv("POOL_MAX", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("APP_PW", "123456")  # a password of digits stays a string
    monkeypatch.setenv("LOG_SLOW", "250")
    path = tmp_path / "p.yaml"
    path.write_text(
        "listen: 127.0.0.1:6033\nusers: [{name: app, password: \"${APP_PW}\"}]\n"
        "admin: {listen: 127.0.0.1:6032, users: [{name: admin, password: x}]}\n"
        "backends:\n  primary: 127.0.0.1:3306\n  pool:\n    " + text + "\n"
        "slow_query_ms: ${LOG_SLOW}\n")
    cfg = C.load(path)
    assert cfg.backends.pool.max_connections == want
    assert cfg.users[0].password == "123456"
    assert cfg.slow_query_ms == 250
    monkeypatch.setenv("POOL_MAX", "many")
    path.write_text(path.read_text().replace(text, "max_connections: ${POOL_MAX}"))
    with pytest.raises(C.ConfigError, match="max_connections"):
        C.load(path)


def test_sighup_reloads_the_config(sandbox: Sandbox, tmp_path: Path) -> None:
    """Edit the file, send SIGHUP: a hot-row rule's mode changes without a restart; a file
    that does not validate is refused and the running config stays."""
    cfg = make_config(sandbox, hotrow={"mode": "merge"})
    p = start_proxy(tmp_path, cfg)
    try:
        def mode() -> str:
            return str(next(r for r in p.admin("SHOW HOTROW RULES") if r[0] == "shop.inventory")[3])

        assert mode() == "merge"
        cfg["hotrow"] = {**cfg["hotrow"], "mode": "queue"}
        p.config_path.write_text(yaml.safe_dump(cfg))
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while mode() != "queue" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mode() == "queue"
        p.config_path.write_text("listen: nowhere\n")
        p.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert p.proc.poll() is None and mode() == "queue"
        assert "config not reloaded" in p.log()
    finally:
        p.stop()


def test_sigusr1_logs_where_every_task_waits(sandbox: Sandbox, tmp_path: Path) -> None:
    """SIGUSR1 logs each task and where it waits, each client's session (a client in a
    transaction shows its lease), each pool, each hot-row group not done (where its leader
    waits: test_merged_answers' kill storm reports one that hangs with it) and the escrow, and
    the proxy goes on serving; with workers, sent to the supervisor, every worker logs."""
    for workers in (1, 2):
        (tmp_path / f"w{workers}").mkdir()
        p = start_proxy(tmp_path / f"w{workers}", make_config(sandbox, workers=workers))
        try:
            c = p.connect()
            with c.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute("SELECT 1")
                p.proc.send_signal(signal.SIGUSR1)
                deadline = time.monotonic() + 10
                while p.log().count("SIGUSR1:") < workers and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert p.log().count("SIGUSR1:") == workers
                assert "lease=LeaseState.TRANSACTION" in p.log()
                # the primary's pool: the transaction's connection in use, none waiting
                assert f"pool 127.0.0.1:{sandbox.primary_port}: total=" in p.log()
                assert "in_use=1" in p.log() and "waiters=0" in p.log()
                # the hot-row engine's groups (none now) and its reservations
                assert "escrow: 0 units outstanding, 0 reservations pending" in p.log()
                cur.execute("COMMIT")
                cur.execute("SELECT 2")
                assert cur.fetchone() == (2,)
            c.close()
            assert p.proc.poll() is None
        finally:
            p.stop()


def test_sigterm_lets_open_transactions_finish(sandbox: Sandbox, tmp_path: Path) -> None:
    """PgBouncer's safe shutdown: after SIGTERM no new client gets in, an idle client outside a
    transaction is closed, and one inside a transaction may still commit within the grace."""
    import pymysql

    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.term_t (v INT)", "DELETE FROM shop.term_t")
    p = start_proxy(tmp_path, make_config(sandbox, limits={"login_max_failures": 0,
                                                           "shutdown_grace_s": 20}))
    try:
        inside = p.connect()
        idle = p.connect()
        with inside.cursor() as cur:
            cur.execute("BEGIN")
            cur.execute("INSERT INTO term_t VALUES (1)")
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert p.proc.poll() is None  # waiting for the open transaction
        with pytest.raises(pymysql.err.OperationalError):
            p.connect()  # no new clients
        with pytest.raises(pymysql.MySQLError):
            with idle.cursor() as cur:
                cur.execute("SELECT 1")  # closed: it had nothing open
        with inside.cursor() as cur:
            cur.execute("INSERT INTO term_t VALUES (2)")
            cur.execute("COMMIT")
        assert p.proc.wait(15) == 0  # at its COMMIT, not at the end of the 20 s grace
        assert sandbox.primary.sql("SELECT COUNT(*) FROM shop.term_t") == [(2,)]
    finally:
        p.stop()


def test_sigterm_with_a_delay_keeps_serving_while_not_ready(sandbox: Sandbox,
                                                            tmp_path: Path) -> None:
    """limits.shutdown_delay_s (for a preStop-less rollout): after SIGTERM /readyz fails at
    once, new clients still get in and are served during the delay, then the safe shutdown."""
    import urllib.error
    import urllib.request

    p = start_proxy(tmp_path, make_config(sandbox, limits={"login_max_failures": 0,
                                                           "shutdown_delay_s": 3}))
    url = f"http://127.0.0.1:{p.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 503
        c = p.connect()  # still accepted and served
        with c.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        c.close()
        assert p.proc.wait(15) == 0
        assert time.monotonic() - t0 >= 2.5  # not before the delay
    finally:
        p.stop()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """deploy/systemd/seckill-proxy.service passes `systemd-analyze verify` (its ExecStart
    pointed at this checkout's entry point)."""
    import shutil

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    unit = (ROOT / "deploy" / "systemd" / "seckill-proxy.service").read_text()
    exe = Path(sys.executable).parent / "seckill-proxy"
    (tmp_path / "seckill-proxy.service").write_text(
        unit.replace("/opt/seckill-proxy/.venv/bin/seckill-proxy", str(exe)))
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "seckill-proxy.service")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "seckill-proxy.service" not in out.stderr, out.stderr


def test_ready_notification_text_logs_and_open_files(sandbox: Sandbox, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Type=notify: READY=1 once listening, STOPPING=1 at SIGTERM; `log_format: text` gives a
    person's lines; the open-files limit is raised to what the config needs (or a warning)."""
    import resource
    import socket

    from proxy.cli import raise_open_files

    sock_path = tmp_path / "notify.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(sock_path))
    s.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    cfg = make_config(sandbox, log_format="text")
    p = start_proxy(tmp_path, cfg)
    try:
        assert s.recv(100) == b"READY=1"
        p.proc.send_signal(signal.SIGTERM)
        assert s.recv(100) == b"STOPPING=1"
        p.proc.wait(20)
    finally:
        p.stop()
        s.close()
    first = p.log().splitlines()[0]
    assert not first.startswith("{") and " INFO " in first
    msg = raise_open_files(C.load(p.config_path))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert msg is None or "open-files limit" in msg
    if msg is None:
        assert soft >= 10000


def test_a_monitor_account_without_the_grants_is_named_in_the_log(sandbox: Sandbox,
                                                                    tmp_path: Path) -> None:
    """Issue 26: a monitor account without SLAVE MONITOR made every server "down" with nothing
    in the log (error 1227 only in SHOW BACKENDS). The log now says which server, why, and
    the GRANT that fixes it."""
    sandbox.primary.sql("CREATE USER IF NOT EXISTS 'weakmon'@'%' IDENTIFIED BY 'weakmon'",
                        "GRANT SELECT ON shop.* TO 'weakmon'@'%'")
    sandbox.wait_replicas()
    cfg = make_config(sandbox)
    cfg["users"] = [{"name": "weakmon", "password": "weakmon"}, *cfg["users"]]
    p = start_proxy(tmp_path, cfg)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "SLAVE MONITOR" not in p.log():
            time.sleep(0.5)
        log = p.log()
    finally:
        p.stop()
    line = next(x for x in log.splitlines() if "SLAVE MONITOR" in x)
    assert "down" in line and "1227" in line and "weakmon" in line


def test_pip_install_without_a_compiler(tmp_path: Path) -> None:
    """`pip install .` on a machine with no C compiler: the compiled modules are optional
    (setup.py), so the install succeeds in plain Python and the proxy runs."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    bin_dir = tmp_path / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("SECKILL_PURE_PYTHON", "CC")}
    env["PATH"] = str(bin_dir)  # no gcc, no cc: only the fresh venv's own programs
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(src)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = subprocess.run([str(bin_dir / "python"), "-c",
                        "from proxy import compiled; print(len(compiled.loaded()))"],
                       env=env, capture_output=True, text=True, cwd=tmp_path, check=True)
    assert r.stdout.strip() == "0"  # plain Python
    v = subprocess.run([str(bin_dir / "seckill-proxy"), "--version"], env=env,
                       capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "seckill-proxy" in v.stdout


def test_a_clients_log_lines_carry_its_connection_id(sandbox: Sandbox, tmp_path: Path) -> None:
    """conn_id is a field of every line logged while serving a client (a context variable set
    by its session task), not only of the few calls that pass it."""
    import json

    p = start_proxy(tmp_path, make_config(sandbox, log_level="DEBUG", log_format="json"))
    try:
        c = p.connect()
        with c.cursor() as cur:
            cur.execute("SELECT CONNECTION_ID()")
            cid = cur.fetchone()[0]
            cur.execute("SET SESSION pseudo_thread_id = 12345")  # unreplayable: a pin, logged
        c.close()
        time.sleep(0.5)
    finally:
        p.stop()
    lines = [json.loads(line) for line in p.log().splitlines() if line.startswith("{")]
    pinned = [d for d in lines if "pinned by pseudo_thread_id" in d["msg"]]
    assert pinned and all(d.get("conn_id") == cid for d in pinned), pinned
    assert all("conn_id" not in d for d in lines if d["logger"] == "seckill.monitor")


@pytest.mark.skipif(os.environ.get("SECKILL_IMAGE_TEST") != "1" or not shutil.which("podman"),
                    reason="builds the container image with podman: SECKILL_IMAGE_TEST=1")
def test_the_container_image_builds_and_serves(sandbox: Sandbox, tmp_path: Path) -> None:
    """deploy/build-image.sh --debootstrap (no registry here) builds the image with its hot
    modules compiled; it runs as a non-root user on a read-only root filesystem, serves the
    sandbox through the proxy, and its HEALTHCHECK passes."""
    tag = "localhost/seckill-proxy:test"
    subprocess.run(["deploy/build-image.sh", "--debootstrap"], cwd=ROOT, check=True,
                   env={**os.environ, "TAG": tag}, timeout=1200)
    port, admin, metrics = free_port(), free_port(), free_port()
    conf = tmp_path / "proxy.yaml"
    conf.write_text(yaml.safe_dump({
        "listen": f"127.0.0.1:{port}",
        "admin": {"listen": f"127.0.0.1:{admin}", "users": [{"name": "admin", "password": "a"}]},
        "metrics": {"listen": f"127.0.0.1:{metrics}"},
        "users": [{"name": "app", "password": "${APP_PASSWORD}"}],
        "backends": {"primary": f"127.0.0.1:{sandbox.primary_port}"}}))
    conf.chmod(0o644)
    podman = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    name = f"sp-test-{port}"
    subprocess.run([*podman, "run", "-d", "--name", name, "--network", "host", "--read-only",
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                    "-e", "APP_PASSWORD=app", "-e",
                    f"SECKILL_HEALTH_URL=http://127.0.0.1:{metrics}/healthz",
                    "-v", f"{conf}:/etc/seckill-proxy/proxy.yaml:ro",
                    tag], check=True, capture_output=True)
    try:
        wait_port(port, 30)
        import pymysql
        c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                            autocommit=True)
        with c.cursor() as cur:
            cur.execute("SELECT @@server_id, CURRENT_USER()")
            assert cur.fetchone()[0] == 1
        c.close()
        logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True).stderr
        assert "hot modules compiled: 11 of 11" in logs or "compiled: 11" in logs, logs[-2000:]
        uid = subprocess.run([*podman, "exec", name, "id", "-u"], capture_output=True, text=True)
        assert uid.stdout.strip() == "10001"
        health = subprocess.run([*podman, "healthcheck", "run", name], capture_output=True)
        assert health.returncode == 0, health
    finally:
        subprocess.run([*podman, "rm", "-f", name], capture_output=True)


def test_install_deps_leaves_other_servers_alone(sandbox: Sandbox) -> None:
    """scripts/install-deps.sh (run by `make run`/`make test`) never stops a MariaDB it did not
    start: Debian's package is kept from starting one (policy-rc.d) instead of killing servers
    afterwards. A running sandbox server survives it."""
    script = (ROOT / "scripts" / "install-deps.sh").read_text()
    assert not any(k in script for k in ("pkill", "killall", "kill ", "systemctl stop",
                                         "service mariadb stop"))
    pid = sandbox.primary.pid()
    assert pid is not None
    subprocess.run(["scripts/install-deps.sh"], cwd=ROOT, check=True, timeout=900,
                   env={**os.environ, "WITH_TEST": "1"})
    assert sandbox.primary.pid() == pid  # the same process, still serving
    assert sandbox.primary.sql("SELECT 1")[0][0] == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_old_records_are_pruned_however_many(sandbox: Sandbox, tmp_path: Path,
                                             workers: int) -> None:
    """Batch and outcome records older than `hotrow.prune_after_s` all go in one pass, chunk by
    chunk (one chunk of 10,000 a minute fell behind a flash sale's load, and the tables grew
    without end); newer ones stay. With two workers both prune, each its chunks in turn."""
    schema, old, new = "prune_t", 25_000, 3
    cfg = make_config(sandbox, hotrow={"batch_schema": schema, "rules": [
        {"table": f"{schema}.stock", "key": "id", "column": "n"}]},
        durability={"track_commits": "all"}, workers=workers)
    tables = {"hotrow_batch": "(id, created_at, table_name, key_value, members, total) "
                              "SELECT seq, {at}, 'stock', '1', 1, 1",
              "commit_outcome": "(id, created_at) SELECT seq, {at}"}
    root = sandbox.primary.root()
    # the rule's table: the proxy makes its own tables once it checked the rule
    sandbox.primary.sql(f"DROP DATABASE IF EXISTS {schema}", f"CREATE DATABASE {schema}",
                        f"CREATE TABLE {schema}.stock (id INT PRIMARY KEY, n INT NOT NULL)")

    def count(sql: str) -> int:
        with root.cursor() as cur:
            cur.execute(sql)
            return int(cur.fetchone()[0])

    try:
        p = start_proxy(tmp_path, cfg)  # creates the tables
        try:
            deadline = time.monotonic() + 30
            while count("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                        f"'{schema}' AND TABLE_NAME IN ('hotrow_batch', 'commit_outcome')") < 2:
                assert time.monotonic() < deadline, p.log()
                time.sleep(0.2)
        finally:
            p.stop()
        with root.cursor() as cur:
            for t, cols in tables.items():
                cur.execute(f"DELETE FROM {schema}.{t}")
                cur.execute(f"INSERT INTO {schema}.{t} " + cols.format(
                    at="NOW(6) - INTERVAL 2 HOUR") + f" FROM {schema}.seq_1_to_{old}")
                cur.execute(f"INSERT INTO {schema}.{t} " + cols.format(at="NOW(6)")
                            + f" FROM {schema}.seq_{old + 1}_to_{old + new}")
        root.commit()
        p = start_proxy(tmp_path, cfg)
        try:  # the first pass 5 s after start (the next a minute later, if the rule's check
            # was not done by then); the old code's passes deleted 10,000 a minute
            deadline = time.monotonic() + 100
            while any(count(f"SELECT COUNT(*) FROM {schema}.{t}") > new for t in tables):
                assert time.monotonic() < deadline, p.log()
                time.sleep(0.5)
        finally:
            p.stop()
        for t in tables:
            assert count(f"SELECT COUNT(*) FROM {schema}.{t} WHERE id > {old}") == new
    finally:
        with root.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {schema}")
        root.close()
