"""`caching_sha2_password` for clients: MySQL 8's default authentication, server side.

MySQL 8.4 creates accounts with it and MySQL 9 clients may offer nothing else, so the proxy
speaks it as MySQL does (sql/auth/sha2_password.cc):

- **fast path**: the client answers the 20-byte nonce with
  `SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)`; a server that has `SHA256(SHA256(pw))`
  in its cache checks it, sends `fast_auth_success` (AuthMoreData 0x03) and the OK.
- **full authentication** (the user is not in the cache: the first login after the server
  started): the server asks for it (AuthMoreData 0x04); over TLS the client sends its password in
  clear; without TLS it asks for the server's RSA public key (0x02), gets it, and sends
  `RSA-OAEP(password + NUL XOR nonce)`. A success fills the cache.

The proxy keeps the same cache, per process, so clients see the same exchange as from MySQL:
full authentication once per user after a start (or after the user's password changed), the
fast path after. What full authentication checks the password against is the account's
stored string: hex SHA256(SHA256(password)) for users of the config file, MySQL's own
`$A$005$<salt><hash>` (SHA-crypt with a 20-byte salt, `crypt_matches`) for accounts read from
MySQL under `auth: backend`. The RSA key pair is made at the first need (`cryptography`); a
client that has no TLS and does not ask for the key gets MySQL's own answer (1045 after its
empty reply).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any

from mysql_mimic.auth import AuthInfo, AuthPlugin, AuthState, Forbidden, Success
from mysql_mimic.utils import nonce as make_nonce
from mysql_mimic.utils import xor

from proxy.core import metrics as M

NAME = "caching_sha2_password"
FAST_AUTH_SUCCESS = b"\x03"
PERFORM_FULL_AUTHENTICATION = b"\x04"
REQUEST_PUBLIC_KEY = b"\x02"


def auth_string(password: str) -> str:
    """What the proxy keeps for a user: hex SHA256(SHA256(password)); '' for no password."""
    if password == "":
        return ""
    return hashlib.sha256(hashlib.sha256(password.encode()).digest()).hexdigest()


_B64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# the digest's bytes in the order SHA-crypt (and MySQL's crypt_genhash_impl.cc) encodes them
_ORDER = ((0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5),
          (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29))


def sha256_crypt(password: bytes, salt: bytes, rounds: int) -> str:
    """SHA-crypt with SHA-256 (Drepper's specification, steps 1-22): the 43-character hash
    part. MySQL keeps the whole salt (20 bytes) where glibc's `$5$` stops at 16; with a salt
    of 16 bytes or fewer this is glibc's `crypt()` (the test checks against it)."""
    sha = hashlib.sha256
    alt = sha(password + salt + password).digest()
    a = sha(password + salt)
    n = len(password)
    a.update((alt * (n // 32 + 1))[:n])
    i = n
    while i:
        a.update(alt if i & 1 else password)
        i >>= 1
    d = a.digest()
    p = (sha(password * n).digest() * (n // 32 + 1))[:n]
    s = (sha(salt * (16 + d[0])).digest() * (len(salt) // 32 + 1))[:len(salt)]
    for r in range(rounds):
        c = sha(p if r & 1 else d)
        if r % 3:
            c.update(s)
        if r % 7:
            c.update(p)
        c.update(d if r & 1 else p)
        d = c.digest()
    out = []
    for b2, b1, b0 in (*_ORDER, (None, 31, 30)):
        w = (0 if b2 is None else d[b2]) << 16 | d[b1] << 8 | d[b0]
        for _ in range(3 if b2 is None else 4):
            out.append(_B64[w & 63])
            w >>= 6
    return "".join(out)


def crypt_matches(stored: str, password: bytes) -> bool:
    """Does `password` match MySQL's stored caching_sha2_password string
    `$A$<rounds/1000 in 3 hex digits>$<20-byte salt><43-character hash>`? False for anything
    else (MySQL's placeholder strings included)."""
    m = re.fullmatch(r"\$A\$([0-9A-Fa-f]{3})\$(.{20})(.{43})", stored, re.S)
    if m is None:
        return False
    rounds = int(m.group(1), 16) * 1000
    if not 1000 <= rounds <= 4_095_000:
        return False
    salt = m.group(2).encode("latin1")
    return hmac.compare_digest(sha256_crypt(password, salt, rounds), m.group(3))


def password_matches(stored: str, password: bytes) -> bool:
    """Full authentication's check against an account's stored string, either form."""
    if stored.startswith("$A$"):
        return crypt_matches(stored, password)
    try:
        h2 = bytes.fromhex(stored)
    except ValueError:
        return False
    return bool(h2) and hmac.compare_digest(
        hashlib.sha256(hashlib.sha256(password).digest()).digest(), h2)


def scramble_matches(h2: bytes, scramble: bytes, nonce: bytes) -> bool:
    """The fast path's check (pure): the client's scramble against SHA256(SHA256(pw))."""
    if len(scramble) != 32 or len(h2) != 32:
        return False
    stage1 = xor(scramble, hashlib.sha256(h2 + nonce).digest())
    return hashlib.sha256(stage1).digest() == h2


class RsaKeys:
    """The proxy's RSA key pair for full authentication without TLS, made at first use."""

    def __init__(self) -> None:
        self._private: Any = None
        self.public_pem = b""

    def _ensure(self) -> None:
        if self._private is None:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric import rsa

            self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.public_pem = self._private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def public(self) -> bytes:
        self._ensure()
        return self.public_pem

    def decrypt(self, data: bytes) -> bytes | None:
        """RSA-OAEP (SHA-1, as MySQL's RSA_PKCS1_OAEP_PADDING); None when it does not decrypt."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        self._ensure()
        try:
            out: bytes = self._private.decrypt(data, padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
            return out
        except ValueError:
            return None


KEYS = RsaKeys()
# (user name, stored string) -> SHA256(SHA256(password)) of a full authentication that
# succeeded (MySQL's cache; a changed password is a new stored string, so full again)
CACHE: dict[tuple[str, str], bytes] = {}


class CachingSha2Plugin(AuthPlugin):
    """One per client connection: `secure` says whether the connection is TLS now, `more`
    sends an AuthMoreData packet without waiting for an answer (fast_auth_success)."""

    name = NAME
    client_plugin_name = NAME

    def __init__(self, keys: RsaKeys = KEYS, cache: dict[tuple[str, str], bytes] = CACHE,
                 on_full: Callable[[str, bytes], None] | None = None) -> None:
        self.keys = keys
        self.cache = cache
        self.secure: Callable[[], bool] = lambda: False
        self.more: Callable[[bytes], Awaitable[None]] | None = None
        # after a full authentication that succeeded: the user and the password (`auth:
        # backend` logs in to MySQL as the user with it)
        self.on_full = on_full
        # after a full authentication that failed: the account's stored string as MySQL has
        # it now (its password may have changed since the proxy read it), or None
        self.recheck: Callable[[str], Awaitable[str | None]] | None = None

    async def auth(self, auth_info: AuthInfo | None = None) -> AuthState:
        if (auth_info is not None and auth_info.handshake_auth_data
                and NAME in (auth_info.handshake_plugin_name, auth_info.client_plugin_name)):
            # the client answered the handshake's nonce with this plugin already
            nonce = auth_info.handshake_auth_data.rstrip(b"\x00")[:20]
        else:
            nonce = make_nonce(20)
            auth_info = yield nonce + b"\x00"
        user = auth_info.user
        stored = user.auth_string or ""
        scramble = auth_info.data
        if not scramble or scramble == b"\x00":
            yield Success(user.name) if not stored else Forbidden()
            return
        if not stored:
            yield Forbidden()
            return
        h2 = self.cache.get((user.name, stored))
        if h2 is not None:
            ok = scramble_matches(h2, scramble, nonce) and self.more is not None
            M.SHA2_LOGINS.labels("fast", "ok" if ok else "denied").inc()
            if ok:
                assert self.more is not None
                await self.more(FAST_AUTH_SUCCESS)
            yield Success(user.name) if ok else Forbidden()
            return
        reply = yield PERFORM_FULL_AUTHENTICATION
        data = reply.data
        path = "full_tls" if self.secure() else "full_rsa"
        password: bytes | None
        if self.secure():
            password = data.split(b"\x00", 1)[0]
        else:
            if data == REQUEST_PUBLIC_KEY:
                reply = yield self.keys.public()
                data = reply.data
            plain = self.keys.decrypt(data) if len(data) > 1 else None
            password = None if plain is None else xor(
                plain, (nonce * (len(plain) // len(nonce) + 1))[:len(plain)]).split(b"\x00", 1)[0]
        ok = password is not None and password_matches(stored, password)
        if not ok and password is not None and self.recheck is not None:
            now = await self.recheck(user.name)
            if now is not None and now != stored and password_matches(now, password):
                ok, stored = True, now
        M.SHA2_LOGINS.labels(path, "ok" if ok else "denied").inc()
        if ok:
            assert password is not None
            self.cache[(user.name, stored)] = hashlib.sha256(hashlib.sha256(password).digest()
                                                             ).digest()
            if self.on_full is not None:
                self.on_full(user.name, password)
        yield Success(user.name) if ok else Forbidden()
