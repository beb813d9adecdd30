"""The compressed client protocol (CLIENT_COMPRESS): zlib frames around the MySQL packets.

Offered to clients (`mysql --compress`, Connector/Python's `compress=True`); backends are
spoken to uncompressed. As with TLS (tls.py), the layer sits between the client socket's
transport and everything above it, so the session, mysql-mimic and the fast lane all see plain
packets: `Compression.feed` unwraps what arrives, and `Compression` stands in for the
transport on the way out. It starts right after the login OK, as in MySQL.

A frame is a 7-byte header (3 bytes compressed length, 1 byte compressed sequence id, 3 bytes
length before compression, 0 when the payload is stored as it is) and its payload; one frame
may hold several packets or part of one. The sequence id restarts with each command: a reply's
frames go out numbered on from the client's last frame.
"""

from __future__ import annotations

import zlib
from typing import Any

from proxy.net.layer import LayerTransport

MIN_COMPRESS = 50  # as MySQL: shorter payloads are not worth deflating
MAX_FRAME = 0xFFFFFF  # a frame's length field is 3 bytes


class CompressionError(ValueError):
    """The client sent a frame that does not inflate to its announced length."""


class Compression(LayerTransport):
    """The client's transport, compressing on the way out (the layer below: the socket's
    transport, or TLS)."""

    def __init__(self, raw: Any) -> None:
        super().__init__(raw)
        self.seq = 0  # the next outgoing frame's sequence id
        self._in = bytearray()

    # ---- inbound --------------------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """Frames from the client in (any split), the packets they carry out (maybe empty)."""
        buf = self._in
        buf += data
        out = bytearray()
        pos, n = 0, len(buf)
        while n - pos >= 7:
            clen = buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16)
            if n - pos - 7 < clen:
                break
            self.seq = (buf[pos + 3] + 1) & 0xFF
            ulen = buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16)
            body = bytes(buf[pos + 7 : pos + 7 + clen])
            if ulen:
                d = zlib.decompressobj()
                try:
                    body = d.decompress(body, ulen + 1)  # bounded: no inflation bomb
                except zlib.error as e:
                    raise CompressionError(f"bad compressed frame: {e}") from None
                if len(body) != ulen or not d.eof:
                    raise CompressionError("compressed frame does not match its length")
            out += body
            pos += 7 + clen
        del buf[:pos]
        return bytes(out)

    # ---- outbound -------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self.raw.is_closing():
            return
        mv = memoryview(data)
        frames: list[bytes] = []
        for start in range(0, len(mv), MAX_FRAME):
            chunk = bytes(mv[start : start + MAX_FRAME])
            ulen = len(chunk)
            if ulen >= MIN_COMPRESS:
                z = zlib.compress(chunk, 1)
                if len(z) < ulen:
                    chunk = z
                else:
                    ulen = 0
            else:
                ulen = 0
            frames.append(len(chunk).to_bytes(3, "little") + bytes((self.seq,))
                          + ulen.to_bytes(3, "little"))
            frames.append(chunk)
            self.seq = (self.seq + 1) & 0xFF
        self.raw.write(b"".join(frames))
