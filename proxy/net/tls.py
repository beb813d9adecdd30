"""TLS on the client side: the connection upgrades after the client's SSLRequest, as in MySQL.

The TLS layer is an `ssl.SSLObject` over memory BIOs, put between the client socket's raw
transport and everything above it (`TLSTransport` stands in for the transport). Why not
`loop.start_tls`: a client sends its TLS ClientHello right behind the SSLRequest, without
waiting, so those bytes may already sit in the proxy's read buffer when the upgrade starts;
`start_tls` cannot be given them and the handshake would hang. Here they are simply fed first.
Reads are decrypted in the protocol callback (`feed`), so the fast lane sees plaintext; every
write (session or lane) goes through `TLSTransport.write`.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from proxy.net.layer import LayerTransport


def server_context(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(ca)  # client certificates are optional (CERT_NONE stays)
    return ctx


def client_context(ca: str | None, verify: bool) -> ssl.SSLContext:
    """For the proxy's own connections to MySQL (aiomysql's login, then raw packets)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class TLSTransport(LayerTransport):
    """The client's transport, encrypting on the way out."""

    def __init__(self, raw: Any, ctx: ssl.SSLContext) -> None:
        super().__init__(raw)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed_by_peer = False

    # ---- inbound ----------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Raw bytes from the socket in, plaintext out (maybe empty)."""
        self._in.write(data)
        if not self.handshake.done():
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                return b""
            except (ssl.SSLError, OSError) as e:
                self._flush()
                self.handshake.set_exception(ConnectionResetError(f"TLS handshake failed: {e}"))
                self.raw.abort()
                return b""
            self.handshake.set_result(None)
        out = bytearray()
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.closed_by_peer = True
                break
            except (ssl.SSLError, OSError):
                self.closed_by_peer = True
                self.raw.abort()
                break
            if not chunk:  # SSLObject.read gives b"" (no exception) once the peer's
                self.closed_by_peer = True  # close_notify is in: the client is gone
                break
            out += chunk
        self._flush()
        return bytes(out)

    def _flush(self) -> None:
        pending = self._out.read()
        if pending and not self.raw.is_closing():
            self.raw.write(pending)

    # ---- the transport API the proxy uses -------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.raw.is_closing():
            return
        try:
            self.obj.write(data)
        except ssl.SSLError:
            self.raw.abort()
            return
        self._flush()

    def close(self) -> None:
        if not self.raw.is_closing():
            try:
                self.obj.unwrap()  # close_notify
            except (ssl.SSLError, OSError):
                pass
            self._flush()
        self.raw.close()

    def get_write_buffer_size(self) -> int:
        return int(self.raw.get_write_buffer_size()) + self._out.pending

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.obj
        if name == "cipher":
            return self.obj.cipher()
        return self.raw.get_extra_info(name, default)

    def cipher(self) -> tuple[str, str]:
        """(cipher name, protocol version) as MySQL's Ssl_cipher / Ssl_version show them."""
        c = self.obj.cipher()
        return (c[0], self.obj.version() or "") if c else ("", "")
