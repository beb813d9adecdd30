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
full authentication once per user after a start (or after the user's password changed in the
config), the fast path after. The RSA key pair is made at the first need (`cryptography`); a
client that has no TLS and does not ask for the key gets MySQL's own answer (1045 after its
empty reply).
"""

from __future__ import annotations

import hashlib
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
# user name -> SHA256(SHA256(password)) that logged in with full authentication (MySQL's cache)
CACHE: dict[str, bytes] = {}


class CachingSha2Plugin(AuthPlugin):
    """One per client connection: `secure` says whether the connection is TLS now, `more`
    sends an AuthMoreData packet without waiting for an answer (fast_auth_success)."""

    name = NAME
    client_plugin_name = NAME

    def __init__(self, keys: RsaKeys = KEYS, cache: dict[str, bytes] = CACHE) -> None:
        self.keys = keys
        self.cache = cache
        self.secure: Callable[[], bool] = lambda: False
        self.more: Callable[[bytes], Awaitable[None]] | None = None

    async def auth(self, auth_info: AuthInfo | None = None) -> AuthState:
        if (auth_info is not None and auth_info.handshake_auth_data
                and NAME in (auth_info.handshake_plugin_name, auth_info.client_plugin_name)):
            # the client answered the handshake's nonce with this plugin already
            nonce = auth_info.handshake_auth_data.rstrip(b"\x00")[:20]
        else:
            nonce = make_nonce(20)
            auth_info = yield nonce + b"\x00"
        user = auth_info.user
        h2 = bytes.fromhex(user.auth_string or "")
        scramble = auth_info.data
        if not scramble or scramble == b"\x00":
            yield Success(user.name) if not h2 else Forbidden()
            return
        if not h2:
            yield Forbidden()
            return
        if self.cache.get(user.name) == h2:
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
        ok = (password is not None
              and hashlib.sha256(hashlib.sha256(password).digest()).digest() == h2)
        M.SHA2_LOGINS.labels(path, "ok" if ok else "denied").inc()
        if ok:
            self.cache[user.name] = h2
        yield Success(user.name) if ok else Forbidden()
