"""Accounts from MySQL (`auth: backend`): users are managed with CREATE/ALTER/DROP USER on the
primary only, as MaxScale does it.

The monitor account reads each account's `mysql_native_password` hash (SHA1(SHA1(password)))
and host pattern from the primary, refreshed every `refresh_s` and at most once a second after
a failed login. A client's login token is SHA1(password) XOR SHA1(nonce + hash): given the
hash, the proxy recovers SHA1(password) from it (`NativeCapture`), which checks the password
and is all a native-password login to the backends needs (`PreHashed`). So no plaintext
password is stored anywhere; what is kept in memory (SHA1(password)) is password-equivalent
for MySQL logins, like the hash in `mysql.global_priv` is not.

Accounts with MySQL 8's `caching_sha2_password` are served by client/sha2.py against the
stored `$A$005$...` string: the first login of such a user after the proxy started is a full
authentication (the password over TLS, or RSA-encrypted), as on MySQL after a restart; the
proxy keeps the password it checked (MySQL needs it, or the fast-path cache MySQL fills from
it, to log the proxy in as that user) and serves the fast path after.

Host patterns follow MySQL's rules in the common forms: `%`, literal addresses, `%`/`_`
wildcards, `localhost` (= 127.0.0.1 and ::1 for a TCP proxy); the most specific match wins.
A server with `skip_name_resolve` matches `localhost` only for socket connections, so a TCP
client from 127.0.0.1 gets its `%` account there (MariaDB's `root@localhost` has no password
a TCP login could give): read with the accounts, the proxy then leaves `localhost` accounts
out as the server does (found by aiomysql's suite, which logs in as `root@%`).
Locked accounts and accounts with another plugin (ed25519, sha256_password, unix_socket,
PAM...) are refused, the plugin named: their stored string does not let a proxy check a
password.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from hashlib import sha1
from typing import Any

from mysql_mimic.auth import AuthInfo, AuthState, Forbidden, NativePasswordAuthPlugin, Success, User

log = logging.getLogger("seckill.accounts")


@dataclass(frozen=True)
class Account:
    user: str
    host: str
    auth: str  # the stored string as MySQL keeps it ('*' + hex for native; '$A$005$...')
    plugin: str
    locked: bool

    @property
    def hash_hex(self) -> str:
        """mysql_native_password: SHA1(SHA1(password)) in lower-case hex, "" for none."""
        return self.auth.lstrip("*").lower()


def host_matches(pattern: str, addr: str) -> bool:
    if pattern in ("%", ""):
        return True
    if pattern == "localhost":
        return addr in ("127.0.0.1", "::1", "local")
    rx = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, addr, re.I) is not None


def specificity(pattern: str) -> tuple[int, int]:
    """MySQL sorts host patterns most specific first: literal before wildcard, longer first."""
    wild = "%" in pattern or "_" in pattern or pattern == ""
    return (1 if wild else 0, -len(pattern.replace("%", "").replace("_", "")))


def pick(accounts: list[Account], user: str, addr: str) -> Account | None:
    cands = [a for a in accounts if a.user == user and host_matches(a.host, addr)]
    cands.sort(key=lambda a: specificity(a.host))
    return cands[0] if cands else None


SHA2 = "caching_sha2_password"
SERVED = ("mysql_native_password", "", SHA2)


class PreHashed(str):
    """A backend login credential that is SHA1(password), not the password: aiomysql passes
    `.encode()` of it to PyMySQL's native-password scramble, which `_patch` teaches to use it."""

    stage1: bytes

    def __new__(cls, stage1: bytes) -> PreHashed:
        obj = super().__new__(cls, "*prehashed*")
        obj.stage1 = stage1
        return obj

    def encode(self, *_: Any, **__: Any) -> bytes:  # type: ignore[override]
        return _Stage1(self.stage1)


class _Stage1(bytes):
    pass


def _patch() -> None:
    from pymysql import _auth

    if getattr(_auth.scramble_native_password, "_seckill", False):
        return
    orig = _auth.scramble_native_password

    def scramble(password: bytes, message: bytes) -> bytes:
        if isinstance(password, _Stage1):
            stage1 = bytes(password)
            s = sha1(message[:20] + sha1(stage1).digest()).digest()
            return bytes(a ^ b for a, b in zip(s, stage1, strict=True))
        return orig(password, message)  # type: ignore[no-any-return]

    scramble._seckill = True  # type: ignore[attr-defined]
    _auth.scramble_native_password = scramble  # type: ignore[assignment]


_patch()


class NativeCapture(NativePasswordAuthPlugin):
    """mysql-mimic's native-password check, keeping the SHA1(password) it recovers, and
    refusing with a reason when the account cannot log in through the proxy."""

    def __init__(self, credentials: dict[str, str] | None = None) -> None:
        self.captured: bytes | None = None
        self.refusal: str | None = None
        # where a successful login leaves its SHA1(password), before the login OK goes out
        # (the login check already connects to MySQL as the user)
        self.credentials = credentials if credentials is not None else {}
        # after a wrong password: the account re-read from MySQL (its password may have
        # changed since the last refresh; set by the identity provider)
        self.recheck: Callable[[str], Awaitable[User | None]] | None = None
        self._tried: tuple[bytes, bytes] | None = None  # the last (scramble, nonce) checked

    def password_matches(self, user: User, scramble: bytes, nonce: bytes) -> bool:
        self._tried = (scramble, nonce)
        return bool(super().password_matches(user, scramble, nonce))

    async def auth(self, auth_info: AuthInfo | None = None) -> AuthState:
        inner = super().auth(auth_info)
        decision = await inner.__anext__()
        while not isinstance(decision, (Success, Forbidden)):
            sent = yield decision
            if isinstance(sent, AuthInfo):
                auth_info = sent  # the handshake's response (the user is known from here)
            decision = await inner.asend(sent)
        if (isinstance(decision, Forbidden) and self.refusal is None and self.recheck is not None
                and self._tried is not None and auth_info is not None):
            old = auth_info.user.auth_string
            user = await self.recheck(auth_info.username)
            if (user is not None and user.auth_string != old
                    and super().password_matches(user, *self._tried)):
                decision = Success(user.name)
        if isinstance(decision, Success) and self.captured is not None:
            self.credentials[decision.authenticated_as] = PreHashed(self.captured)
        if isinstance(decision, Forbidden) and self.refusal is not None:
            decision = Forbidden(self.refusal)  # user_for found a reason (locked, plugin)
        yield decision

    def verify_scramble(self, auth_string: str | None, scramble: bytes, nonce: bytes) -> bool:
        try:
            h2 = bytes.fromhex(auth_string or "")
            stage1 = bytes(a ^ b for a, b in zip(
                scramble, sha1(nonce + h2).digest(), strict=True))
        except ValueError:
            return False
        if sha1(stage1).digest() == h2:
            self.captured = stage1
            return True
        return False


Load = Callable[[], Awaitable[list[Account]]]


class AccountStore:
    def __init__(self, load: Load, refresh_s: float) -> None:
        self.load = load
        self.refresh_s = refresh_s
        self.accounts: list[Account] = []
        self.loaded_at = 0.0
        self.tried_at = 0.0
        # user -> what the proxy logs in to MySQL with as that user, learned from the user's
        # own login: SHA1(password) (native), the password (caching_sha2)
        self.credentials: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def refresh(self, min_age: float = 0.0, since: float | None = None) -> None:
        """Read the accounts again, unless one was read less than `min_age` ago, or (`since`)
        one was read after that moment (concurrent lookups share one read)."""
        async with self._lock:
            if since is not None and self.loaded_at >= since:
                return
            if time.monotonic() - max(self.loaded_at, self.tried_at) < min_age:
                return
            self.tried_at = time.monotonic()
            try:
                self.accounts = await self.load()
                self.loaded_at = time.monotonic()
            except Exception as e:  # noqa: BLE001 - keep the last good list
                log.warning("accounts not refreshed from the primary: %s", e)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_s)

    async def look_up(self, name: str, addr: str, always: bool = False) -> None:
        """An account this proxy does not know yet (created since the last refresh), or
        (`always`) one whose password did not match: read the accounts as they are now, once
        for all lookups waiting meanwhile, for at most 2 s, so a new user or a new password
        logs in (or COM_CHANGE_USERs) at once, as on MySQL. A failed attempt costs one read of
        the accounts table; the login guard bounds the attempts."""
        if always or pick(self.accounts, name, addr) is None:
            try:
                await asyncio.wait_for(self.refresh(since=time.monotonic()), 2.0)
            except TimeoutError:
                pass

    def user_for(self, name: str, addr: str, plugin: NativeCapture) -> User:
        """The user record mysql-mimic checks the login against (an impossible hash and a
        reason when the account may not log in)."""
        a = pick(self.accounts, name, addr)
        deny = User(name=name, auth_string="00" * 20, auth_plugin="mysql_native_password")
        if a is None:
            return deny  # as a wrong password: does not reveal which accounts exist
        if a.locked:
            plugin.refusal = f"Access denied, this account is locked: '{name}'@'{a.host}'"
            return deny
        if a.plugin not in SERVED or (a.plugin == SHA2 and not a.auth.startswith("$A$")):
            plugin.refusal = (f"Access denied for user '{name}': its authentication plugin "
                              f"'{a.plugin}' is not supported by seckill-proxy under auth: "
                              "backend (use mysql_native_password or caching_sha2_password, "
                              "or list the user in the config)")
            return deny
        if a.plugin == SHA2:
            return User(name=name, auth_string=a.auth, auth_plugin=SHA2)
        return User(name=name, auth_string=a.hash_hex, auth_plugin="mysql_native_password")

    def learn(self, name: str, password: bytes) -> None:
        """A caching_sha2 account's full authentication succeeded: what the proxy logs in to
        MySQL with as that user from now on."""
        self.credentials[name] = password.decode("utf-8", "surrogateescape")

    async def stored_now(self, name: str, addr: str) -> str | None:
        """After a failed caching_sha2 login: the account's stored string as MySQL has it now
        (read again, as for a native login that failed)."""
        await self.look_up(name, addr, always=True)
        a = pick(self.accounts, name, addr)
        return None if a is None or a.locked or a.plugin != SHA2 else a.auth


async def load_mariadb(query: Callable[[str], Awaitable[list[list[str | None]]]]) -> list[Account]:
    """Accounts from MariaDB's mysql.global_priv (10.4+), else MySQL's mysql.user."""
    try:
        rows = await query(
            "SELECT User, Host, JSON_VALUE(Priv, '$.authentication_string'), "
            "JSON_VALUE(Priv, '$.plugin'), JSON_VALUE(Priv, '$.account_locked') "
            "FROM mysql.global_priv")
    except Exception:  # noqa: BLE001 - not MariaDB 10.4+: MySQL's table
        rows = await query("SELECT User, Host, authentication_string, plugin, account_locked "
                           "FROM mysql.user")
    by_ip = await query("SELECT @@skip_name_resolve")
    only_ip = bool(by_ip) and str(by_ip[0][0]).lower() in ("1", "on")
    out = []
    for user, host, auth, plugin, locked in rows:
        if only_ip and (host or "").lower() == "localhost":
            continue  # matches socket connections only there; the proxy's clients are TCP
        out.append(Account(user or "", host or "", auth or "", plugin or "mysql_native_password",
                           str(locked).lower() in ("true", "1", "y")))
    return out
