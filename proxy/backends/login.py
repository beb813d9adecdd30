"""aiomysql's login with MariaDB's extended capabilities (kept apart from backend.py, which
is compiled: a class deriving from aiomysql's cannot be)."""

from __future__ import annotations

import struct
from typing import Any

import aiomysql
from pymysql import _auth

from proxy.net import protocol as P


class LoginConn(aiomysql.Connection):  # type: ignore[misc]
    """aiomysql's login, plus MariaDB's extended capabilities in the handshake response: with
    CLIENT_MYSQL cleared, the last 4 of the 23 reserved bytes carry bits 32-63."""

    ext_caps = 0
    _ext_pending = False

    async def _request_authentication(self) -> None:
        if self.ext_caps:
            self.client_flag &= ~P.CLIENT_MYSQL
            self._ext_pending = True
        try:
            await super()._request_authentication()
        finally:
            self._ext_pending = False

    def write_packet(self, payload: bytes) -> None:
        if self._ext_pending and len(payload) >= 32:
            payload = payload[:28] + struct.pack("<I", self.ext_caps >> 32) + payload[32:]
            self._ext_pending = len(payload) == 32  # an SSLRequest: the full response follows
        super().write_packet(payload)

    async def caching_sha2_password_auth(self, pkt: Any) -> Any:
        """aiomysql keeps the NUL that ends an auth switch's nonce (MySQL sends 20 bytes + NUL)
        and scrambles with 21 bytes: the fast path then fails where the server's greeting
        named another plugin (PyMySQL strips it). The switch's answer is made here, the rest
        (fast_auth_success, or full authentication over TLS or RSA) is aiomysql's."""
        if self._password and pkt.is_auth_switch_request():
            salt = pkt.read_all()
            self.salt = salt[:-1] if salt.endswith(b"\0") else salt
            self.write_packet(_auth.scramble_caching_sha2(self._password.encode("latin1"),
                                                          self.salt))
            pkt = await self._read_packet()
            pkt.check_error()
        return await super().caching_sha2_password_auth(pkt)
