"""Outcome records: the truth about a COMMIT whose connection died.

With `durability.track_commits: all`, the proxy writes one row into `<batch_schema>.commit_outcome`
inside the client's transaction, just before its COMMIT. If the connection to MySQL is lost
during COMMIT, the row tells whether the transaction committed: looked up with a locking read
(which waits for a COMMIT still in flight) on whichever server is the primary by then, retried
while it restarts or fails over. Hot-row batches carry their own record (hotrow_batch).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from typing import TYPE_CHECKING, Final

from proxy.core import metrics as M
from proxy.core.errors import ER_SECKILL_NOT_COMMITTED as ER_SECKILL_NOT_COMMITTED
from proxy.core.errors import BackendError, BackendLost, ProxyError

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.engines.ports import Topology

log = logging.getLogger("seckill.outcome")
RESOLVE_TIMEOUT_S = 60.0
# Old records go in statements of at most PRUNE_CHUNK rows (a short lock, a bounded binlog
# event each), as many as it takes, at most PRUNE_PASS_MAX per pass (the next pass, a minute
# later, goes on). One chunk per pass, before, was 167 records a second: under a flash sale's
# load (thousands of batches or tracked commits a second) the tables grew without end.
PRUNE_CHUNK: Final = 10_000
PRUNE_PASS_MAX: Final = 200
PRUNE_PAUSE_S: Final = 0.05  # between chunks: the purge threads and other writers go first


class OutcomeTracker:
    def __init__(self, app: Topology) -> None:
        self.app = app
        self.proxy_id = random.getrandbits(31)
        self._seq = itertools.count(1)
        self._ready = False
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """The outcome table exists (created at start or at the first tracked COMMIT)."""
        return self._ready

    @property
    def table(self) -> str:
        return f"`{self.app.cfg.hotrow.batch_schema}`.`commit_outcome`"

    def wants(self) -> bool:
        return self.app.cfg.durability.track_commits == "all"

    def next_id(self) -> int:
        return (self.proxy_id << 32) | (next(self._seq) & 0xFFFFFFFF)

    async def ensure_table(self, c: BackendConn | None = None) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            schema = self.app.cfg.hotrow.batch_schema.replace("`", "``")
            # DDL on the client's own connection would commit its transaction, and the pool may
            # be exhausted: a short-lived connection of its own.

            user = self.app.cfg.users[0]
            addr = c.addr if c is not None else self.app.primary_pool().addr
            d = await self.app.dial.connect(addr, user.name, user.password,
                                          self.app.cfg.backends.pool.connect_timeout_s)
            try:
                await d.execute(f"CREATE DATABASE IF NOT EXISTS `{schema}`")
                await d.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (id BIGINT UNSIGNED NOT NULL "
                                "PRIMARY KEY, created_at TIMESTAMP(6) NOT NULL DEFAULT "
                                "CURRENT_TIMESTAMP(6), KEY (created_at)) ENGINE=InnoDB")
            finally:
                d.close()
            self._ready = True

    async def resolve(self, oid: int, user: str, password: str) -> bool | None:
        """True: committed; False: not committed; None: could not be learned in time."""
        found = await find_record(self.app, self.table, oid, user, password)
        M.COMMIT_IN_DOUBT.labels({True: "committed", False: "not_committed", None: "unknown"}[found]).inc()
        return found

    async def prune(self) -> None:
        pool = self.app.primary_pool()
        user = self.app.cfg.users[0]
        c = await pool.acquire(user.name, user.password)
        try:
            await prune_old(c, self.table, self.app.cfg.hotrow.prune_after_s)
        except BackendError as e:
            log.info("outcome record pruning stopped: %s", e)
        finally:
            await pool.release(c)


async def prune_old(c: BackendConn, table: str, older_than_s: int) -> int:
    """Delete `table`'s records older than `older_than_s` (its `created_at` index), chunk by
    chunk until one deletes fewer than PRUNE_CHUNK; how many went. Each chunk is its own
    autocommit statement on `c`."""
    gone = 0
    for _ in range(PRUNE_PASS_MAX):
        ok = await c.execute(f"DELETE FROM {table} WHERE created_at < NOW(6) - INTERVAL "
                             f"{older_than_s} SECOND LIMIT {PRUNE_CHUNK}")
        gone += ok.affected_rows
        if ok.affected_rows < PRUNE_CHUNK:
            break
        await asyncio.sleep(PRUNE_PAUSE_S)
    return gone


async def find_record(app: Topology, table: str, rid: int, user: str, password: str) -> bool | None:
    """Does record `rid` exist on the primary (whichever server that is by now)?

    A locking read waits for a COMMIT still in flight; after a restart, crash recovery has
    settled the transaction before the server accepts connections; during a failover the
    lookup goes to the promoted server. None: not learned within RESOLVE_TIMEOUT_S.
    """
    deadline = time.monotonic() + RESOLVE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            pool = await app.writable_primary()
            c = await pool.acquire(user, password)
        except (BackendLost, BackendError, ProxyError):
            await asyncio.sleep(0.2)
            continue
        try:
            rows, _ = await c.query(f"SELECT id FROM {table} WHERE id = {rid} LOCK IN SHARE MODE")
        except (BackendLost, BackendError):
            await pool.release(c, "record lookup failed")
            await asyncio.sleep(0.2)
            continue
        await pool.release(c)
        return bool(rows)
    return None
