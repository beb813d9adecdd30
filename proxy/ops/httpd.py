"""Tiny HTTP endpoint on the event loop: /metrics for Prometheus, /healthz and /readyz."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST

from proxy.core import metrics as M
from proxy.core.config import Address

if TYPE_CHECKING:
    from proxy.engines.ports import Readiness


async def start_http(app: Readiness, addr: Address,
                     metrics: Callable[[], Awaitable[bytes]] | None = None) -> asyncio.Server:
    """`metrics`: how the page is made (the supervisor's: every worker's; default: this
    process's registry)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else "/"
            if path == "/metrics":
                body = await metrics() if metrics is not None else M.render()
                status, ctype = "200 OK", CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, ctype, body = "200 OK", "text/plain", b"ok\n"
            elif path == "/readyz":
                ready, why = await app.ready()
                status = "200 OK" if ready else "503 Service Unavailable"
                ctype, body = "text/plain", (why + "\n").encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, addr.host, addr.port, reuse_address=True)
