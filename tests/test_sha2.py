"""caching_sha2_password for clients (client/sha2.py): the pure check against PyMySQL's own
scramble, then real clients through a proxy: PyMySQL, mysql-connector-python and the `mariadb`
CLI, full authentication (over TLS; with the proxy's RSA key without TLS) and the fast path."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pymysql
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymysql import _auth

from proxy.client import sha2
from proxy.tools.sandbox import Sandbox, make_certs

from .conftest import ProxyProc, make_config, start_proxy

nonces = st.binary(min_size=20, max_size=20)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40), nonces)
def test_the_fast_check_accepts_the_password_and_only_it(pw: str, other: str, nonce: bytes) -> None:
    h2 = bytes.fromhex(sha2.auth_string(pw))
    assert sha2.scramble_matches(h2, _auth.scramble_caching_sha2(pw.encode(), nonce), nonce)
    if other != pw:
        assert not sha2.scramble_matches(h2, _auth.scramble_caching_sha2(other.encode(), nonce),
                                         nonce)


def test_auth_string_and_short_input() -> None:
    assert sha2.auth_string("") == ""
    assert len(bytes.fromhex(sha2.auth_string("x"))) == 32
    assert not sha2.scramble_matches(b"\0" * 32, b"short", b"n" * 20)


USERS = ["sha_py", "sha_py_tls", "sha_conn", "sha_cli", "sha_cli_tls", "sha_backend"]


@pytest.fixture(scope="module")
def sproxy(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProc]:
    tmp = tmp_path_factory.mktemp("sha2")
    certs = make_certs(tmp / "tls")
    for u in USERS:  # the same accounts on MariaDB: the proxy logs in there as the client
        sandbox.primary.sql(f"CREATE USER IF NOT EXISTS '{u}'@'%' IDENTIFIED BY 'pw-{u}'",
                            f"GRANT ALL ON shop.* TO '{u}'@'%'")
    cfg = make_config(sandbox, tls={"cert": certs["cert"], "key": certs["key"], "ca": certs["ca"]})
    cfg["users"] = [{"name": "app", "password": "app"}] + [
        {"name": u, "password": f"pw-{u}", "plugin": "caching_sha2_password"} for u in USERS]
    p = start_proxy(tmp, cfg)
    p.ca = certs["ca"]  # type: ignore[attr-defined]
    yield p
    p.stop()


def logins(p: ProxyProc) -> dict[tuple[str, str], float]:
    out = {}
    for m in re.finditer(r'^seckill_proxy_caching_sha2_logins_total\{outcome="(\w+)",path="(\w+)"\} '
                         r'(\S+)$', p.scrape(), re.M):
        out[(m.group(2), m.group(1))] = float(m.group(3))
    return out


def _delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
           ) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _pymysql(p: ProxyProc, user: str, password: str, tls: bool = False) -> str:
    # PyMySQL uses TLS whenever the server offers it, unless told not to
    kw = {"ssl": {"ca": p.ca}} if tls else {"ssl_disabled": True}  # type: ignore[attr-defined]
    c = pymysql.connect(host="127.0.0.1", port=p.port, user=user, password=password, **kw)
    with c.cursor() as cur:
        cur.execute("SELECT CURRENT_USER()")
        who = str(cur.fetchone()[0])
    c.close()
    return who


def test_pymysql_full_with_rsa_then_fast(sproxy: ProxyProc) -> None:
    b = logins(sproxy)
    assert _pymysql(sproxy, "sha_py", "pw-sha_py") == "sha_py@%"  # no TLS: the RSA key
    assert _delta(b, logins(sproxy)) == {("full_rsa", "ok"): 1}
    b = logins(sproxy)
    assert _pymysql(sproxy, "sha_py", "pw-sha_py") == "sha_py@%"
    assert _delta(b, logins(sproxy)) == {("fast", "ok"): 1}
    with pytest.raises(pymysql.err.OperationalError) as e:
        _pymysql(sproxy, "sha_py", "wrong")
    assert e.value.args[0] == 1045


def test_pymysql_full_over_tls(sproxy: ProxyProc) -> None:
    with pytest.raises(pymysql.err.OperationalError) as e:  # first login, wrong password
        _pymysql(sproxy, "sha_py_tls", "wrong", tls=True)
    assert e.value.args[0] == 1045
    b = logins(sproxy)
    assert _pymysql(sproxy, "sha_py_tls", "pw-sha_py_tls", tls=True) == "sha_py_tls@%"
    assert _delta(b, logins(sproxy)) == {("full_tls", "ok"): 1}


def test_mysql_connector_insisting_on_caching_sha2(sproxy: ProxyProc) -> None:
    import mysql.connector

    for path in ("full_tls", "fast"):
        b = logins(sproxy)
        c = mysql.connector.connect(host="127.0.0.1", port=sproxy.port, user="sha_conn",
                                    password="pw-sha_conn", auth_plugin="caching_sha2_password",
                                    ssl_ca=sproxy.ca, use_pure=True)  # type: ignore[attr-defined]
        cur = c.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone()[0] == "sha_conn@%"
        c.close()
        assert _delta(b, logins(sproxy)) == {(path, "ok"): 1}


def test_mariadb_cli_with_default_auth_caching_sha2(sproxy: ProxyProc) -> None:
    def cli(user: str, *extra: str) -> str:
        r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{sproxy.port}", f"-u{user}",
                            f"-ppw-{user}", "--default-auth=caching_sha2_password", *extra,
                            "-NBe", "SELECT CURRENT_USER()"], capture_output=True, text=True,
                           timeout=30)
        return r.stdout.strip() or r.stderr.strip()

    for path in ("full_rsa", "fast"):  # no TLS: libmariadb asks for the proxy's key
        b = logins(sproxy)
        assert cli("sha_cli", "--skip-ssl") == "sha_cli@%"
        assert _delta(b, logins(sproxy)) == {(path, "ok"): 1}
    b = logins(sproxy)
    assert cli("sha_cli_tls", f"--ssl-ca={sproxy.ca}") == "sha_cli_tls@%"  # type: ignore[attr-defined]
    assert _delta(b, logins(sproxy)) == {("full_tls", "ok"): 1}


def test_a_backend_login_with_caching_sha2(sproxy: ProxyProc) -> None:
    """The proxy's own backend login (aiomysql, with `cryptography` for the RSA exchange)
    against a server that speaks caching_sha2_password: here the proxy itself (MariaDB has
    no such accounts; MySQL 8.4's default plugin)."""
    import asyncio

    from proxy.backends.backend import BackendConn
    from proxy.core.config import parse_address

    async def login(user: str) -> str:
        c = await BackendConn.connect(parse_address(f"127.0.0.1:{sproxy.port}", "t"), user,
                                      f"pw-{user}", 5)
        try:
            row = await c.fetch_one("SELECT CURRENT_USER()")
            assert row is not None
            return str(row[0])
        finally:
            c.close()

    for path in ("full_rsa", "fast"):  # no TLS to this backend: RSA, as toward MySQL 8.4
        b = logins(sproxy)
        assert asyncio.run(login("sha_backend")) == "sha_backend@%"
        assert _delta(b, logins(sproxy)) == {(path, "ok"): 1}
