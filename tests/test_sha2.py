"""caching_sha2_password for clients (client/sha2.py): the pure check against PyMySQL's own
scramble, then real clients through a proxy: PyMySQL, mysql-connector-python and the `mariadb`
CLI, full authentication (over TLS; with the proxy's RSA key without TLS) and the fast path."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

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


# MySQL 8's stored string for the password 'foobar' (from TiDB's caching_sha2 test, which
# checks its verifier against MySQL's): 20-byte salt with control characters, 5,000 rounds
MYSQL_FOOBAR = bytes.fromhex(
    "24412430303524031A69251C34295C4B35167C7F1E5A7B63091349503974624D34504B5A424679354856"
    "336868686F52485A736E4A733368786E427575516C73446469496537").decode("latin1")
PLACEHOLDER = "$A$005$THISISACOMBINATIONOFINVALIDSALTANDPASSWORDTHATMUSTNEVERBRBEUSED"


@pytest.mark.parametrize("stored,password,ok", [
    (MYSQL_FOOBAR, b"foobar", True),
    (MYSQL_FOOBAR, b"not_foobar", False),
    (MYSQL_FOOBAR, b"", False),
    (MYSQL_FOOBAR.replace("$A$", "$B$"), b"foobar", False),  # another digest type
    (MYSQL_FOOBAR.replace("$005$", "$00G$"), b"foobar", False),  # rounds not hex
    (MYSQL_FOOBAR[:-1], b"foobar", False),  # short
    (PLACEHOLDER, b"", False),  # MySQL's locked system accounts
    (PLACEHOLDER, b"THISISACOMBINATION", False),
    ("", b"", False),
    (sha2.auth_string("pw"), b"pw", True),  # a config user's hex SHA256(SHA256(pw))
    (sha2.auth_string("pw"), b"px", False),
])
def test_full_authentication_checks_mysqls_stored_string(stored: str, password: bytes,
                                                         ok: bool) -> None:
    assert sha2.password_matches(stored, password) is ok


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=40).filter(lambda b: b"\x00" not in b),
       st.text(alphabet="./0123456789abcdefghijKLMNOPQRSTUVWxyz", min_size=1, max_size=16),
       st.sampled_from([1000, 5000]))
def test_sha_crypt_is_glibcs_for_salts_glibc_takes(pw: bytes, salt: str, rounds: int) -> None:
    """MySQL's variant differs from glibc's `$5$` only in keeping a 20-byte salt."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    setting = f"$5$rounds={rounds}${salt}" if rounds != 5000 else f"$5${salt}"
    want = crypt.crypt(pw.decode("latin1"), setting)
    if want is None:  # glibc refused the input
        return
    # crypt() encodes a str as UTF-8; compare on the bytes it hashed
    got = sha2.sha256_crypt(pw.decode("latin1").encode(), salt.encode(), rounds)
    assert want.rsplit("$", 1)[1] == got


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


def test_accounts_from_mysql_with_caching_sha2(sandbox: Sandbox, tmp_path: Path) -> None:
    """`auth: backend` with MySQL 8's caching_sha2_password accounts. MariaDB 10.11 has no
    such plugin, so the account's row is written as MySQL 8 keeps it (plugin and `$A$005$`
    string for 'foobar') without FLUSH PRIVILEGES: the proxy reads MySQL 8's form from a real
    server, which still logs the proxy in as the user with the same password."""
    import pymysql

    certs = make_certs(tmp_path / "tls")
    sandbox.primary.sql(
        "CREATE USER IF NOT EXISTS 'monitor'@'%' IDENTIFIED BY 'mon'",
        "GRANT ALL ON *.* TO 'monitor'@'%'",
        "DROP USER IF EXISTS 'sha_acct'@'%'", "DROP USER IF EXISTS 'sha_other'@'%'",
        "CREATE USER 'sha_acct'@'%' IDENTIFIED BY 'foobar'",
        "GRANT ALL ON shop.* TO 'sha_acct'@'%'",
        "CREATE USER 'sha_other'@'%' IDENTIFIED BY 'foobar'",
        "UPDATE mysql.global_priv SET Priv = JSON_SET(Priv, '$.plugin', "
        "'caching_sha2_password', '$.authentication_string', "
        f"CONVERT(UNHEX('{MYSQL_FOOBAR.encode('latin1').hex()}') USING utf8mb4)) "
        "WHERE User = 'sha_acct'",
        "UPDATE mysql.global_priv SET Priv = JSON_SET(Priv, '$.plugin', 'sha256_password') "
        "WHERE User = 'sha_other'")
    cfg = make_config(sandbox, auth={"mode": "backend", "user": "monitor", "password": "mon",
                                     "refresh_s": 1},
                      tls={"cert": certs["cert"], "key": certs["key"], "ca": certs["ca"]})
    p = start_proxy(tmp_path, cfg)
    p.ca = certs["ca"]  # type: ignore[attr-defined]
    try:
        with pytest.raises(pymysql.err.OperationalError) as e:
            _pymysql(p, "sha_acct", "not_foobar")
        assert e.value.args[0] == 1045
        b = logins(p)
        assert _pymysql(p, "sha_acct", "foobar") == "sha_acct@%"  # no TLS: the RSA key
        assert _delta(b, logins(p)) == {("full_rsa", "ok"): 1}
        b = logins(p)
        assert _pymysql(p, "sha_acct", "foobar", tls=True) == "sha_acct@%"
        assert _delta(b, logins(p)) == {("fast", "ok"): 1}
        with pytest.raises(pymysql.err.OperationalError) as e:
            _pymysql(p, "sha_acct", "foobaz")
        assert e.value.args[0] == 1045
        r = subprocess.run(["mariadb", "-h127.0.0.1", f"-P{p.port}", "-usha_acct", "-pfoobar",
                            "--default-auth=caching_sha2_password", "--skip-ssl", "-NBe",
                            "SELECT CURRENT_USER()"], capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "sha_acct@%", r.stderr
        with pytest.raises(pymysql.err.OperationalError) as e:
            _pymysql(p, "sha_other", "foobar")
        assert e.value.args[0] == 1045 and "'sha256_password' is not supported" in e.value.args[1]
    finally:
        p.stop()
        sandbox.primary.sql("DROP USER IF EXISTS 'sha_acct'@'%'",
                            "DROP USER IF EXISTS 'sha_other'@'%'")
