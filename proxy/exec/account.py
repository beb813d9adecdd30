"""A statement's accounting, once, whichever path ran it: the statement metrics, its row in
the digest table, and the slow-statement log line.

The fast lane (from socket callbacks, also for the BEGIN it answers itself and the write gate's
refusal) and the general path (`general.run_plan`) each call `statement_done` exactly once per
statement; before, each wrote these three steps itself and one of them left out the digest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from proxy.core import metrics as M
from proxy.plan.classify import Shape

if TYPE_CHECKING:
    from proxy.exec.context import Statement

log = logging.getLogger("seckill.session")


def statement_done(s: Statement, shape: Shape, route: str, outcome: str, dt: float, rows: int,
                   lane: int = 0) -> None:
    """`route`: primary, replica, hotrow-* (a bounded label); `lane` 1: the fast lane ran it."""
    M.STATEMENT_STATS.observe(shape.verb, route, outcome, dt, lane)
    s.app.digest.record(shape, dt, route, rows)
    if dt * 1000 >= s.app.slow_ms > 0:
        slow(s, shape, dt, route, outcome)


def slow(s: Statement, shape: Shape, dt: float, route: str, outcome: str) -> None:
    conn_id = s.connection.connection_id if s.connection else None
    log.warning("slow statement: %.1f ms route=%s outcome=%s user=%s digest=%s",
                dt * 1000, route, outcome, s.username, shape.digest[:500],
                extra={"conn_id": conn_id, "event": "slow_statement",
                       "duration_ms": round(dt * 1000, 1), "route": route, "outcome": outcome,
                       "user": s.username, "digest": shape.digest[:500]})
