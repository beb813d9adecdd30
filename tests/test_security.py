"""Admin console hardening: no built-in account, no weak password off loopback (config tests in
test_robustness.py), a connection cap, and an audit trail of who ran what."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pymysql
import pytest

from proxy.sandbox import Sandbox

from .conftest import make_config, start_proxy


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
