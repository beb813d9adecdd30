"""Queue mode of the hot-row engine (hotrow.py): one row's decrements in line at the proxy.

The simplest remedy for a hot row, and the one the kernels call "queue": InnoDB's lock queue
for one row degrades as it grows (deadlock checks, wake-ups); a bounded queue per key in front
of it keeps InnoDB's to `queue.concurrency`. Each client still runs its own statement and gets
MySQL's own answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from proxy.core import metrics as M
from proxy.core.config import HotRowCfg
from proxy.core.errors import ER_LOCK_WAIT_TIMEOUT, ProxyError
from proxy.engines.hotalloc import HotStmt
from proxy.engines.hotkeys import KeyState
from proxy.engines.ports import HotRowMember


async def queue(session: HotRowMember, hs: HotStmt, ks: KeyState,
                forward: Callable[[], Awaitable[Any]], cfg: HotRowCfg) -> tuple[str, str]:
    """Run the statement once one of the key's `queue.concurrency` slots is free: at most that
    many decrements of one row at InnoDB at once, the rest wait here in order instead of in
    InnoDB's lock queue; full queue or too long a wait: MySQL's lock wait timeout (1205). A
    slot taken inside a transaction is kept until the transaction ends (hold_slot)."""
    name = f"{hs.rule.qualified} {hs.rule.key}={hs.key_value}"
    if ks.waiting >= cfg.queue_max_waiting:
        M.HOTROW_STATEMENTS.inc("queue", "rejected")
        raise ProxyError(ER_LOCK_WAIT_TIMEOUT,
                         f"Lock wait timeout exceeded; seckill-proxy hot-row queue for {name} is "
                         f"full ({cfg.queue_max_waiting} waiting)")
    if ks.sem not in session.held_slots:
        ks.waiting += 1
        M.HOTROW_QUEUE_DEPTH.inc()
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(ks.sem.acquire(), cfg.queue_wait_timeout_ms / 1000)
        except TimeoutError:
            M.HOTROW_STATEMENTS.inc("queue", "timeout")
            raise ProxyError(ER_LOCK_WAIT_TIMEOUT,
                             f"Lock wait timeout exceeded; waited {cfg.queue_wait_timeout_ms} ms "
                             f"in seckill-proxy hot-row queue for {name}") from None
        finally:
            ks.waiting -= 1
            M.HOTROW_QUEUE_DEPTH.dec()
            M.HOTROW_QUEUE_WAIT.observe(time.perf_counter() - t0)
        session.hold_slot(ks.sem)
    ks.in_flight += 1
    outcome = "error"
    try:
        r = await forward()
        if r is not None and r.err is None:
            outcome = "succeeded" if r.affected_rows else "sold_out"
    finally:
        ks.in_flight -= 1
        session.release_slots()
        M.HOTROW_STATEMENTS.inc("queue", outcome)
    return "hotrow-queue", "ok" if outcome != "error" else "error"
