"""aiomysql's login with MariaDB's extended capabilities (kept apart from backend.py, which
is compiled: a class deriving from aiomysql's cannot be)."""

from __future__ import annotations

import struct

import aiomysql

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
