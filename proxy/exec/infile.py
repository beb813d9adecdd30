"""LOAD DATA LOCAL INFILE through the proxy: MySQL asks for the client's file in the middle of
a statement's reply, and the client's packets must reach that same backend connection.

Allowed as MySQL allows it (the client offered CLIENT_LOCAL_FILES) and as the proxy's config
allows it (`limits.local_infile`); otherwise the client gets MariaDB's own refusal, 4166.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.backends.backend import BackendConn
from proxy.backends.reply import BufferWriter, Relayed
from proxy.core.errors import CloseReason, ProxyError
from proxy.net import protocol as P
from proxy.plan.classify import Shape


def refused() -> ProxyError:
    return ProxyError((4166, "HY000"), "The used command is not allowed because the MariaDB "
                      "server or client has disabled the local infile capability")


def allowed(shape: Shape, config_allows: bool, client_caps: int | None) -> bool:
    """A LOAD DATA without LOCAL is the server's business; with LOCAL, both must allow it."""
    if " LOCAL " not in shape.digest.upper():
        return True
    return config_allows and client_caps is not None and bool(client_caps & P.CLIENT_LOCAL_FILES)


async def relay_file(c: BackendConn, out: Any, client_out: Any, reader: asyncio.StreamReader,
                     drain: Callable[[], Awaitable[None]], ok_hook: Any) -> Relayed:
    """MySQL asked for the client's file (its request went to the client with the reply): pass
    the client's packets through to MySQL up to the empty one, then relay MySQL's answer.
    Sequence ids carry on unchanged on both sides."""
    if isinstance(out, BufferWriter):  # ack: replica holds only the final OK
        client_out.write(bytes(out.buf))
        out.buf.clear()
    await drain()
    while True:
        try:
            hdr = await reader.readexactly(4)
            n = hdr[0] | (hdr[1] << 8) | (hdr[2] << 16)
            body = await reader.readexactly(n) if n else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            c.retire(CloseReason.REPLY_ABANDONED)  # MySQL still waits for the rest of the file
            raise
        c.io.write(hdr + body)
        if n == 0:
            break
    await c.io.drain()
    return await c.relay(out, ok_hook)
