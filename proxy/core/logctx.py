"""The client connection a log line is about, without passing it to every call.

A client's session task sets `CONN_ID` once, after its handshake gave it an id (server.py);
asyncio copies the context into every task the session starts, so each line logged while
serving that client carries its id (`ConnIdFilter`, installed on the log handler by cli.py),
as a field, not inside the message. Work that serves many clients at once (a hot-row group's
leader task, a shared primary-position fetch) runs in a fresh context (`detached`), so it is
not billed to the client that happened to start it. Socket callbacks (the fast lane) run in
the transport's context, not the session's: they pass `extra={"conn_id": ...}` themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

CONN_ID: contextvars.ContextVar[int | None] = contextvars.ContextVar("conn_id", default=None)


class ConnIdFilter(logging.Filter):
    """Puts the current client's id on a record that has none of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "conn_id", None) is None:
            cid = CONN_ID.get()
            if cid is not None:
                record.conn_id = cid
        return True


def detached(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    """A task that belongs to no client (see the module's docstring)."""
    return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
