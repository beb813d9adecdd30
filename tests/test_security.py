"""Admin console hardening: no built-in account, no weak password off loopback (config tests in
test_robustness.py), a connection cap, and an audit trail of who ran what."""

from __future__ import annotations

import hashlib
import struct
import time
import urllib.request
from pathlib import Path

import pymysql
import pytest

from proxy.tools.sandbox import Sandbox

from .conftest import app_conn, make_config, start_proxy


def test_admin_connection_cap_and_audit_log(sandbox: Sandbox, tmp_path: Path) -> None:
    cfg = make_config(sandbox)
    cfg["admin"] = {**cfg["admin"], "max_connections": 2}
    p = start_proxy(tmp_path, cfg)
    try:
        def admin() -> pymysql.connections.Connection:  # type: ignore[type-arg]
            return pymysql.connect(host="127.0.0.1", port=p.admin_port, user="admin",
                                   password="admin")

        a, b = admin(), admin()
        with pytest.raises(pymysql.MySQLError) as ei:
            admin()
        assert ei.value.args[0] == 1040
        a.close()
        time.sleep(0.2)
        c = admin()  # a slot is free again
        with c.cursor() as cur:
            cur.execute("SET hotrow.mode = 'queue'")
            cur.execute("SHOW HOT KEYS")  # what top polls: not audited
        c.close()
        b.close()
        with pytest.raises(pymysql.MySQLError) as ei:
            pymysql.connect(host="127.0.0.1", port=p.admin_port, user="admin", password="wrong")
        assert ei.value.args[0] == 1045
        time.sleep(0.3)
        log = p.log()
        assert "admin admin from 127.0.0.1:" in log and "SET hotrow.mode = 'queue'" in log
        assert "SHOW HOT KEYS" not in log
        assert "admin login failed from 127.0.0.1:" in log
        assert "refused: 2 open (admin.max_connections)" in log
    finally:
        p.stop()


def test_brute_force_blocks_the_user_then_the_address(sandbox: Sandbox, tmp_path: Path) -> None:
    cfg = make_config(sandbox, limits={"login_max_failures": 3, "login_window_s": 60,
                                       "login_block_s": 3})
    p = start_proxy(tmp_path, cfg)
    try:
        def login(port: int, user: str, password: str) -> int:
            try:
                pymysql.connect(host="127.0.0.1", port=port, user=user, password=password).close()
                return 0
            except pymysql.MySQLError as e:
                return int(e.args[0])

        for _ in range(3):
            assert login(p.port, "app", "wrong") == 1045
        # blocked now (user and address): even the right password fails, with MySQL's codes
        assert login(p.port, "app", "app") == 1129  # the address is refused first
        time.sleep(3.2)
        assert login(p.port, "app", "app") == 0  # the block expired
        # admin port: its own counts
        for _ in range(3):
            assert login(p.admin_port, "admin", "nope") == 1045
        assert login(p.admin_port, "admin", "admin") == 1129
        assert login(p.port, "app", "app") == 0  # the client port is not affected
        with urllib.request.urlopen(f"http://127.0.0.1:{p.metrics_port}/metrics") as r:
            text = r.read().decode()
        assert 'seckill_proxy_login_blocks_total{kind="address",port="client"} 1.0' in text
        assert 'seckill_proxy_login_blocks_total{kind="user",port="admin"} 1.0' in text
        assert 'seckill_proxy_login_failures_total{port="client"} 3.0' in text
        assert "blocked for 3 s after 3 failed logins" in p.log()
    finally:
        p.stop()


def _rss_mb(pid: int) -> float:
    import psutil

    return float(psutil.Process(pid).memory_info().rss) / 2**20


RSS_GROWTH_BOUND_MB = 100  # README: what one hostile client may add to the proxy's memory


def test_hostile_client_cannot_grow_memory_without_bound(sandbox: Sandbox, tmp_path: Path) -> None:
    import asyncio
    import socket

    from proxy.tools.sandbox import make_certs

    sandbox.primary.sql(
        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)")
    certs = make_certs(tmp_path / "tls")
    p = start_proxy(tmp_path, make_config(sandbox, tls={"cert": certs["cert"],
                                                        "key": certs["key"]}))
    try:
        c = p.connect()
        with c.cursor() as cur:
            cur.execute("SELECT 1")
        c.close()
        base = _rss_mb(p.proc.pid)

        async def shapes(start: int, n: int) -> None:
            conn = await app_conn(p.port)
            async with conn.cursor() as cur:
                for i in range(start, start + n):
                    await cur.execute(f"SELECT {i} AS c{i}")  # a new shape every time
            conn.close()

        async def all_shapes() -> None:
            await asyncio.gather(*(shapes(k * 25_000, 25_000) for k in range(8)))

        asyncio.run(all_shapes())  # 200,000 distinct statement shapes

        # 10,000 server-side prepared statements kept open by one client, plus 1 MB hot keys
        c = p.connect()
        for i in range(10_000):
            c._execute_command(0x16, f"SELECT ? + {i}")  # COM_STMT_PREPARE
            ok = c._read_packet()
            assert ok.read_uint8() == 0, i
            ok.read_uint32()
            cols, params = ok.read_uint16(), ok.read_uint16()
            for _ in range(params + (1 if params else 0) + cols + (1 if cols else 0)):
                c._read_packet()
        big = "k" * (1 << 20)
        with c.cursor() as cur:
            for _ in range(20):
                cur.execute("UPDATE inventory SET quantity = quantity - 1 "
                            f"WHERE sku_id = '{big}' AND quantity > 0")
        grown = _rss_mb(p.proc.pid) - base
        c.close()
        print(f"proxy RSS grew {grown:.0f} MB (from {base:.0f} MB)")
        assert grown < RSS_GROWTH_BOUND_MB, grown

        # 5,000 connections opened and abandoned: half in the handshake (greeting read, never
        # answered), half in the middle of the TLS handshake (SSLRequest and a partial
        # ClientHello, then gone)
        ssl_request = struct.pack("<I", 32 | (1 << 24)) + struct.pack(
            "<IIB23s", 0x000FA68D | 0x800, 1 << 24, 45, b"")
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40)  # cut short
        for _batch in range(25):
            socks = []
            for _ in range(200):
                s = socket.create_connection(("127.0.0.1", p.port))
                socks.append(s)
            for i, s in enumerate(socks):
                s.recv(128)  # the server greeting
                if i % 2:
                    s.sendall(ssl_request + hello)
                s.close()
        c = p.connect()
        with c.cursor() as cur:
            cur.execute("SELECT 42")
            assert cur.fetchone() == (42,)
        c.close()
        assert p.proc.poll() is None
    finally:
        p.stop()


def test_tls_for_clients(sandbox: Sandbox, tmp_path: Path) -> None:
    import subprocess

    from proxy.tools.sandbox import make_certs

    certs = make_certs(tmp_path / "tls")
    cfg = make_config(sandbox, tls={"cert": certs["cert"], "key": certs["key"], "ca": certs["ca"]})
    cfg["users"] = [{"name": "app", "password": "app"},
                    {"name": "app_tls", "password": "app", "require_tls": True}]
    sandbox.primary.sql("CREATE USER IF NOT EXISTS 'app_tls'@'%' IDENTIFIED BY 'app'",
                        "GRANT ALL ON shop.* TO 'app_tls'@'%'",
                        "CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, quantity INT NOT NULL)",
                        "REPLACE INTO shop.inventory (sku_id, quantity) VALUES (4242, 10)")
    p = start_proxy(tmp_path, cfg)
    try:
        # PyMySQL verifying the proxy's certificate (CA and host name)
        c = pymysql.connect(host="127.0.0.1", port=p.port, user="app_tls", password="app",
                            database="shop", autocommit=True, ssl_ca=certs["ca"],
                            ssl_verify_cert=True, ssl_verify_identity=True)
        with c.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
            (name, cipher), = cur.fetchall()
            assert name == "Ssl_cipher" and cipher
            cur.execute("SHOW SESSION STATUS LIKE 'Ssl_version'")
            assert cur.fetchone()[1].startswith("TLSv1.")
            cur.execute("SHOW STATUS LIKE 'Com_select'")  # other patterns: MySQL answers
            assert cur.fetchone()[0] == "Com_select"
            for _ in range(50):  # the fast lane and the hot-row engine over TLS
                cur.execute("SELECT quantity FROM inventory WHERE sku_id = 4242")
            assert cur.execute("UPDATE inventory SET quantity = quantity - 1 "
                               "WHERE sku_id = 4242 AND quantity > 0") == 1
            cur.execute("SELECT REPEAT('x', 300000)")  # a reply larger than a TLS record
            assert len(cur.fetchone()[0]) == 300000
        c.close()
        # the mariadb CLI with --ssl-verify-server-cert
        r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{p.port}", "-uapp_tls", "-papp",
                            f"--ssl-ca={certs['ca']}", "--ssl-verify-server-cert", "-N", "-e",
                            "SHOW STATUS LIKE 'Ssl_cipher'"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.split("\t")[1].strip(), r.stdout + r.stderr
        # TLS and the compressed protocol together: frames inside the TLS records
        r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{p.port}", "-uapp_tls", "-papp",
                            f"--ssl-ca={certs['ca']}", "--ssl-verify-server-cert", "--compress",
                            "-N", "-e", "SHOW STATUS LIKE 'Ssl_version'; SHOW STATUS LIKE "
                            "'Compression'; SELECT MD5(REPEAT('tls', 200000))"],
                           capture_output=True, text=True)
        lines = r.stdout.splitlines()
        assert r.returncode == 0 and lines[0].split("\t")[1].startswith("TLSv1."), r.stderr
        assert lines[1] == "Compression\tON"
        assert lines[2] == hashlib.md5(b"tls" * 200000).hexdigest()
        # a require_tls user without TLS: 1045, as MySQL's REQUIRE SSL (PyMySQL prefers TLS
        # when offered, so it is turned off here)
        with pytest.raises(pymysql.MySQLError) as ei:
            pymysql.connect(host="127.0.0.1", port=p.port, user="app_tls", password="app",
                            ssl_disabled=True)
        assert ei.value.args[0] == 1045
        # other users may still come without TLS
        c = pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                            ssl_disabled=True)
        with c.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")  # MySQL answers: nothing encrypted
            assert cur.fetchone()[1] == ""
        # RELOAD CONFIG with new certificates: new connections get them, open ones stay
        import yaml
        keep = pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                               ssl_ca=certs["ca"], ssl_verify_cert=True)
        new = make_certs(tmp_path / "tls2")
        cfg["tls"] = {"cert": new["cert"], "key": new["key"]}
        p.config_path.write_text(yaml.safe_dump(cfg))
        assert any("tls: certificates reloaded" in str(r) for r in p.admin("RELOAD CONFIG"))
        pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                        ssl_ca=new["ca"], ssl_verify_cert=True).close()
        with pytest.raises(pymysql.MySQLError):  # the old CA does not vouch for the new one
            pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                            ssl_ca=certs["ca"], ssl_verify_cert=True)
        with keep.cursor() as cur:
            cur.execute("SELECT 1")
        keep.close()
    finally:
        p.stop()


def test_a_tls_client_that_leaves_with_close_notify_leaves_no_lock_behind(
        sandbox: Sandbox, tmp_path: Path) -> None:
    """Python's asyncio ends a TLS connection with close_notify and keeps the socket open for
    the peer's reply (up to 30 s); aiomysql's `close()` (no COM_QUIT) does that. MariaDB ends
    the session at the alert, and so must the proxy: `ssl.SSLObject.read` reports the alert
    with an empty read, not an exception, and the proxy took it for "no data yet" and kept the
    client's backend connection, its open transaction and row locks with it, for the 30 s
    (found by aiomysql's suite: a DROP TABLE waited 30 s after a client left in the middle of
    LOAD DATA LOCAL). Against MariaDB directly and through the proxy: the row a client locked
    and left is free for the next one within MariaDB's own lock wait of 5 s."""
    import asyncio
    import ssl

    import aiomysql

    from proxy.tools.sandbox import make_certs

    certs = make_certs(tmp_path / "tls")
    cfg = make_config(sandbox, tls={"cert": certs["cert"], "key": certs["key"]})
    sandbox.primary.sql("CREATE TABLE IF NOT EXISTS shop.inventory (sku_id INT PRIMARY KEY, "
                        "quantity INT NOT NULL)",
                        "REPLACE INTO shop.inventory (sku_id, quantity) VALUES (4243, 10)")
    p = start_proxy(tmp_path, cfg)

    def next_buyer(port: int) -> int:
        c = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                            database="shop", ssl_disabled=True)
        try:
            with c.cursor() as cur:
                cur.execute("SET SESSION innodb_lock_wait_timeout = 5")
                cur.execute("BEGIN")
                cur.execute("SELECT quantity FROM inventory WHERE sku_id = 4243 FOR UPDATE")
                got = int(cur.fetchone()[0])
                cur.execute("ROLLBACK")
                return got
        finally:
            c.close()

    async def lock_and_leave(port: int) -> int:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = await aiomysql.connect(host="127.0.0.1", port=port, user="app", password="app",
                                      db="shop", ssl=ctx)
        cur = await conn.cursor()
        await cur.execute("BEGIN")
        await cur.execute("SELECT quantity FROM inventory WHERE sku_id = 4243 FOR UPDATE")
        assert conn.get_transaction_status()
        conn.close()  # close_notify; this loop keeps waiting for the answer meanwhile
        return await asyncio.get_running_loop().run_in_executor(None, next_buyer, port)

    try:
        for port in (sandbox.primary_port, p.port):  # MariaDB, then the same through the proxy
            assert asyncio.run(lock_and_leave(port)) == 10, port
    finally:
        p.stop()


def test_tls_to_the_backends_verified_against_the_sandbox_ca(sandbox: Sandbox,
                                                              tmp_path: Path) -> None:
    from proxy.tools.sandbox import make_certs

    ca = str(sandbox.base / "tls" / "ca.pem")
    p = start_proxy(tmp_path, make_config(sandbox, backends={"tls": {"ca": ca, "verify": True}},
                                          routing={"read_consistency": "primary"}))
    try:
        c = pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                            ssl_disabled=True)  # the client hop in clear: what MySQL sees is the proxy's
        with c.cursor() as cur:
            cur.execute("SHOW STATUS LIKE 'Ssl_cipher'")
            assert cur.fetchone()[1]  # the proxy's connection to MariaDB is encrypted
            cur.execute("SELECT 1")
        c.close()
    finally:
        p.stop()
    other = make_certs(tmp_path / "other-ca")  # a CA that did not sign MariaDB's certificate
    p = start_proxy(tmp_path, make_config(sandbox, backends={"tls": {"ca": other["ca"]},
                                                             "failover_wait_s": 0.5},
                                          routing={"read_consistency": "primary"}))
    try:
        with pytest.raises(pymysql.MySQLError) as ei:
            c = pymysql.connect(host="127.0.0.1", port=p.port, user="app", password="app",
                                database="shop")
            with c.cursor() as cur:
                cur.execute("SELECT 1")
        assert ei.value.args[0] in (1290, 2003), ei.value.args  # certificate not trusted
        state = {r[0]: r for r in p.admin("SHOW BACKENDS")}[f"127.0.0.1:{sandbox.primary_port}"]
        assert state[2] == "down" and "connect" in state[3]
    finally:
        p.stop()


def test_accounts_from_mysql(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.primary.sql(
        "CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY 'mon'",
        "GRANT ALL ON *.* TO 'monitor'@'%'",
        "DROP USER IF EXISTS 'buyer'@'%'", "DROP USER IF EXISTS 'far'@'10.9.9.9'",
        "CREATE USER 'buyer'@'%' IDENTIFIED BY 'pw1'", "GRANT ALL ON shop.* TO 'buyer'@'%'",
        "CREATE USER 'far'@'10.9.9.9' IDENTIFIED BY 'x'",
        "DROP USER IF EXISTS 'two'@'localhost'", "DROP USER IF EXISTS 'two'@'%'",
        "CREATE USER 'two'@'localhost' IDENTIFIED BY 'socket'",
        "CREATE USER 'two'@'%' IDENTIFIED BY 'tcp'", "GRANT ALL ON shop.* TO 'two'@'%'")
    cfg = make_config(sandbox, auth={"mode": "backend", "user": "monitor", "password": "mon",
                                     "refresh_s": 1})
    p = start_proxy(tmp_path, cfg)

    def login(user: str, password: str) -> int | str:
        try:
            c = pymysql.connect(host="127.0.0.1", port=p.port, user=user, password=password,
                                database="shop", ssl_disabled=True)
        except pymysql.MySQLError as e:
            return f"{e.args[0]} {e.args[1]}"
        with c.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")  # runs on MariaDB as that user
            who = str(cur.fetchone()[0])
        c.close()
        return who

    def eventually(user: str, password: str, want: str) -> int | str:
        deadline = time.monotonic() + 10
        got = login(user, password)
        while want not in str(got) and time.monotonic() < deadline:
            time.sleep(0.3)
            got = login(user, password)
        return got

    try:
        assert login("buyer", "pw1") == "buyer@%"  # created on MariaDB only, not in the YAML
        assert str(login("buyer", "nope")).startswith("1045")
        assert str(login("far", "x")).startswith("1045")  # allowed from another host only
        # the sandbox runs with skip_name_resolve: a TCP login from 127.0.0.1 is two@% on
        # MariaDB, never two@localhost; the same through the proxy (root@localhost as
        # MariaDB installs it made aiomysql's suite fail to log in as root@%)
        direct = pymysql.connect(host="127.0.0.1", port=sandbox.primary_port, user="two",
                                 password="tcp", ssl_disabled=True)
        direct.close()
        assert login("two", "tcp") == "two@%"
        assert str(login("two", "socket")).startswith("1045")
        sandbox.primary.sql("ALTER USER 'buyer'@'%' ACCOUNT LOCK")
        got = eventually("buyer", "pw1", "locked")
        assert str(got).startswith("1045") and "locked" in str(got), got
        sandbox.primary.sql("ALTER USER 'buyer'@'%' ACCOUNT UNLOCK",
                            "ALTER USER 'buyer'@'%' IDENTIFIED BY 'pw2'")
        assert eventually("buyer", "pw2", "buyer@%") == "buyer@%"  # no restart needed
        assert str(login("buyer", "pw1")).startswith("1045")
        # at once, not eventually: an unknown account or a password that does not match makes
        # the proxy read the accounts again before it answers (found by MariaDB
        # Connector/Python's test_change_user: CREATE USER, then COM_CHANGE_USER to it)
        sandbox.primary.sql("ALTER USER 'buyer'@'%' IDENTIFIED BY 'pw3'")
        assert login("buyer", "pw3") == "buyer@%"
        sandbox.primary.sql("DROP USER IF EXISTS 'fresh'@'%'",
                            "CREATE USER 'fresh'@'%' IDENTIFIED BY 'f1'",
                            "GRANT ALL ON shop.* TO 'fresh'@'%'")
        import mariadb
        m = mariadb.connect(host="127.0.0.1", port=p.port, user="buyer", password="pw3")
        m.change_user("fresh", "f1", "shop")
        assert m.user == "fresh" and m.database == "shop"
        sandbox.primary.sql("ALTER USER 'fresh'@'%' IDENTIFIED BY 'f2'")
        m.change_user("fresh", "f2", "")
        cur = m.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchall() == [("fresh@%",)]
        m.close()
        try:  # on every server: the CREATE USER replicates, and a replica without the
            for srv in sandbox.servers:  # plugin would stop replicating
                if not srv.sql("SELECT 1 FROM information_schema.PLUGINS "
                               "WHERE PLUGIN_NAME = 'ed25519'"):
                    srv.sql("INSTALL SONAME 'auth_ed25519'")
            sandbox.primary.sql("DROP USER IF EXISTS 'edu'@'%'",
                                "CREATE USER 'edu'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('x')")
        except pymysql.MySQLError:
            return  # no ed25519 plugin in this build
        got = eventually("edu", "x", "ed25519")
        assert str(got).startswith("1045") and "'ed25519' is not supported" in str(got), got
    finally:
        p.stop()
        sandbox.primary.sql("DROP USER IF EXISTS 'edu'@'%'", "DROP USER IF EXISTS 'two'@'%'",
                            "DROP USER IF EXISTS 'two'@'localhost'")
        sandbox.wait_replicas()  # replication is intact for the tests that follow
