"""Read/write split behind a GTID watermark.

A read goes to a replica only once that replica has applied the GTID the reader must see:
`session` — the session's own last write; `global` — the primary's position when the read
starts; a token — `READ_AFTER_GTID('...')` or the session's `read_after_gtid`; `eventual` — no
watermark, only replicas within `max_replica_lag_s`. Replica positions come from the monitor
(every second) and from successful waits; when no replica is known to have the watermark, one
waits at most `max_wait_ms` (MASTER_GTID_WAIT / WAIT_FOR_EXECUTED_GTID_SET) and otherwise the
read goes to the primary.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from proxy.backends.backend import BackendConn
from proxy.core import gtid as G
from proxy.core import metrics as M
from proxy.core.errors import BackendError, BackendLost, ProxyError
from proxy.core.logctx import detached
from proxy.plan.plan import ReadPlan

if TYPE_CHECKING:
    from proxy.backends.pool import Pool
    from proxy.engines.ports import Reader, Topology

log = logging.getLogger("seckill.readsplit")


class ReadRouter:
    def __init__(self, app: Topology) -> None:
        self.app = app
        self.known: dict[str, G.Gtid] = {}  # replica key -> position known to be applied
        self.reads: dict[str, int] = {}
        self._pos_fetch: asyncio.Future[G.Gtid] | None = None
        self._next_fetch: asyncio.Future[G.Gtid] | None = None

    # ---- positions ----------------------------------------------------------------------

    def note_replica(self, key: str, pos: str) -> None:
        try:
            g = G.parse(pos)
        except G.GtidError:
            return
        old = self.known.get(key)
        try:
            self.known[key] = g if old is None else G.union(old, g)
        except G.GtidError:
            self.known[key] = g

    def forget(self, key: str) -> None:
        """Drop what is known of a replica's position: the monitor saw its GTID history stop
        being the primary's (known positions only ever grow by union, so a replica re-pointed
        to a lower position would otherwise keep its old, meaningless one)."""
        self.known.pop(key, None)

    async def primary_position(self) -> G.Gtid:
        """The primary's position, fetched after the caller asked (never a stale cached one).

        Concurrent callers share fetches: one that arrives while a fetch is in flight waits for
        the next one, which starts after its arrival, so every caller gets a position taken
        after its read started, at the cost of one primary round trip per group of callers.
        """
        if self._pos_fetch is None:
            self._pos_fetch = asyncio.get_running_loop().create_future()
            detached(self._fetch_primary(self._pos_fetch))
            return await asyncio.shield(self._pos_fetch)
        if self._next_fetch is None:
            self._next_fetch = asyncio.get_running_loop().create_future()
        return await asyncio.shield(self._next_fetch)

    async def _fetch_primary(self, fut: asyncio.Future[G.Gtid]) -> None:
        user = self.app.cfg.users[0]
        try:
            pool = await self.app.writable_primary()
            c = await pool.acquire(user.name, user.password)
            try:
                row = await c.fetch_one("SELECT @@gtid_binlog_pos" if c.mariadb else "SELECT @@gtid_executed")
            except BaseException as e:  # (named; no `async with`, no `finally`: core/aio.py)
                await pool.release(c)
                raise e
            await pool.release(c)
            fut.set_result(G.parse((row or [""])[0] or ""))
        except (BackendError, BackendLost, ProxyError, G.GtidError) as e:
            fut.set_exception(ProxyError((2013, "HY000"), f"cannot read the primary's GTID position: {e}"))
            fut.exception()  # mark retrieved
        finally:
            nxt, self._pos_fetch, self._next_fetch = self._next_fetch, None, None
            if nxt is not None:
                self._pos_fetch = nxt
                detached(self._fetch_primary(nxt))

    # ---- choosing a replica --------------------------------------------------------------

    def _weight(self, st: Any, consistency: str) -> int:
        """A backend's weight in the read rotation at this consistency level; 0: not in it
        (not a healthy replica, weighted out, or lag unknown for reads without a watermark).
        The one test for both the router's choice and the fast lane's."""
        if st.role != "replica" or not st.up or st.state != "up":
            return 0
        if consistency == "eventual" and st.lag_s is None:
            return 0
        return self.app.cfg.backends.weight(st.addr)

    def candidates(self, consistency: str) -> list[Pool]:
        """Healthy replicas in weighted random order."""
        out: list[tuple[float, Pool]] = []
        mon = self.app.monitor
        for key, st in (mon.states if mon is not None else {}).items():
            w = self._weight(st, consistency)
            if w > 0:
                out.append((random.random() ** (1.0 / w), self.app.pools[key]))
        out.sort(key=lambda t: t[0], reverse=True)
        return [p for _, p in out]

    def ready_now(self, pool: Pool, p: ReadPlan, last_gtid: str | None) -> bool:
        """Whether `pool`'s replica may serve this read at once, with nothing to fetch or wait
        for: in rotation and known to have applied the watermark (the fast lane's test)."""
        st = self.app.monitor.states.get(pool.label) if self.app.monitor else None
        if st is None or self._weight(st, p.consistency) <= 0:
            return False
        if p.consistency == "eventual":
            return True
        token = p.token or (last_gtid if p.consistency == "session" else None)
        if p.consistency not in ("session", "eventual") and not p.token:
            return False  # global: the primary's position must be fetched first
        if token is None:
            return True
        try:
            return G.applied(self.known.get(pool.label), G.parse(token))
        except G.GtidError:
            return False

    async def watermark(self, session: Reader, p: ReadPlan) -> G.Gtid | None:
        if p.token:
            return G.parse(p.token)
        if p.consistency == "global":
            mon = self.app.monitor
            st = mon.states.get(self.app.primary_key()) if mon is not None else None
            if st is not None and st.checked_at and not st.up:
                # No primary to ask (crashed, failover in progress): nothing can commit there
                # now, so the last position seen on it is the watermark replicas must reach.
                return G.parse(st.gtid) if st.gtid else None
            try:
                return await self.primary_position()
            except ProxyError:
                if st is None or not st.gtid:
                    raise
                return G.parse(st.gtid)  # the primary just became unreachable: same reasoning
        if p.consistency == "session" and session.last_gtid:
            return G.parse(session.last_gtid)
        return None

    async def acquire(self, session: Reader, p: ReadPlan) -> tuple[BackendConn, Pool, str] | None:
        """A replica connection that has applied the watermark, or None: read from the primary.
        Returns (connection, pool, outcome) with outcome 'replica' or 'replica_waited'."""
        try:
            wm = await self.watermark(session, p)
        except G.GtidError as e:
            raise ProxyError((1231, "42000"), f"Invalid GTID for READ_AFTER_GTID: {e}") from None
        pools = self.candidates(p.consistency)
        if not pools:
            return None
        if wm is not None:
            ready = [pl for pl in pools if G.applied(self.known.get(pl.label), wm)]
            pools = ready + [pl for pl in pools if pl not in ready]
        wait_s = self.app.cfg.routing.max_wait_ms / 1000
        for i, pool in enumerate(pools[:2]):
            try:
                c = await pool.acquire(session.username or "", session.password, session.backend_caps,
                                       want=session.wanted())
            except (BackendLost, BackendError, ProxyError):
                continue
            try:
                if wm is None or G.applied(self.known.get(pool.label), wm):
                    return c, pool, "replica"
                if i == 0 and wait_s > 0:
                    if await c.wait_gtid(str(wm), wait_s):
                        self.known[pool.label] = G.merged(self.known.get(pool.label), wm)
                        return c, pool, "replica_waited"
            except (BackendLost, BackendError):
                pass
            await pool.release(c)
        return None


    def count(self, consistency: str, outcome: str, backend: str | None = None) -> None:
        M.READS.inc(consistency, outcome)
        if backend:
            self.reads[backend] = self.reads.get(backend, 0) + 1
