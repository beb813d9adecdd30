"""Backend connection pools, one per server, shared by every client session.

As in asyncpg: a connection goes back to the pool through one shielded release that resets it
when it carries state (open transaction, temp tables, user variables, locks), so a connection
handed to the next session carries nothing across; a broken one is closed, never reused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from proxy.backends.backend import BackendConn
from proxy.backends.dial import Dial
from proxy.core import metrics as M
from proxy.core.config import Address, PoolCfg
from proxy.core.errors import (
    ER_CON_COUNT_ERROR,
    BackendError,
    BackendLost,
    CloseReason,
    LeaseReason,
    ProxyError,
    ResetReason,
)
from proxy.core.state import Wanted

log = logging.getLogger("seckill.pool")


SERVICE_RESERVE = 8  # connections the hot-row engine may open beyond max_connections

class Pool:
    """Connections to one server. Keyed by (user, caps) because the login user and the
    capabilities that change what the server sends (CLIENT_FOUND_ROWS, MariaDB's extended type
    metadata) are fixed per connection."""

    def __init__(self, addr: Address, cfg: PoolCfg, role: str, dial: Dial | None = None) -> None:
        self.addr = addr
        self.dial = dial if dial is not None else Dial()  # how new connections are made
        self.cfg = cfg
        self.role = role
        self.idle: dict[tuple[str, int], deque[BackendConn]] = {}
        self.total = 0
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Clean connections that idle sessions keep until someone else needs one ("soft hold").
        self.soft: dict[BackendConn, Any] = {}
        self.closed = False
        self.label = str(addr)
        # Gauges are read at scrape time (no cost per statement); the wait histogram is only
        # observed when an acquire had to wait or connect (the instant path is the common one).
        self._m_wait = M.POOL_WAIT.labels(self.label)
        M.live(M.POOL_IN_USE.labels(self.label), lambda: self.in_use)
        M.live(M.POOL_IDLE.labels(self.label), self.idle_count)

    def _label(self) -> str:
        return self.label

    def _wake(self) -> None:
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    async def acquire(
        self, user: str, password: str, caps: int = 0,
        prefer: BackendConn | None = None, want: Wanted | None = None, service: bool = False,
    ) -> BackendConn:
        """A connection for `user` carrying the state `want` (database, names, variables).

        Among idle connections one already in the wanted database is preferred; a session
        without a default database needs a connection that never had one (MySQL has no way to
        unselect a database), so when none is idle a new one is opened."""
        c = await self._acquire(user, password, caps, prefer,
                                None if want is None or want.any_db else want.database,
                                service=service)
        if service:  # the proxy's own statements: whoever holds it next is new to it
            c.holder = None
            c.hands += 1
        if want is None:
            return c
        while not await self._replay(c, want):
            # It has a default database and the session has none: replace it (a `fresh`
            # acquire only gives one that never had a database).
            self.in_use -= 1
            self._discard(c, CloseReason.NEEDS_NO_DATABASE)
            c = await self._acquire(user, password, caps, None, None, fresh=True)
        return c

    async def _replay(self, c: BackendConn, want: Wanted) -> bool:
        """`apply_state` on a connection just taken; if it fails, the connection goes back
        (closed if the failure left it unusable) before the error goes on to the caller."""
        try:
            return await self.apply_state(c, want)
        except (BackendError, BackendLost):
            await self.release(c, "state replay failed")
            raise
        except BaseException:
            # Cancelled (its client left) while the state was replayed: a statement may be
            # on the wire, so the connection is closed, at once (no await: it is cancelled).
            c.retire(CloseReason.CLIENT_GONE)
            self._hand_back(c, "cancelled during the state replay")
            raise

    async def _acquire(
        self, user: str, password: str, caps: int, prefer: BackendConn | None,
        schema: str | None, fresh: bool = False, service: bool = False,
    ) -> BackendConn:
        key = (user, caps)
        # The hot-row engine's batches may open a few connections beyond the limit: members
        # waiting for their group hold theirs (inside transactions), and a batch that waited
        # for one of them would wait for itself.
        limit = self.cfg.max_connections + (SERVICE_RESERVE if service else 0)
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.cfg.acquire_timeout_s
        waited = False
        while True:
            if self.closed:
                raise BackendLost(f"pool for {self.addr} is closed", sent=False)
            # Beyond the limit only the engine's batches may take a connection, idle ones too.
            over = not service and self.in_use >= self.cfg.max_connections
            q = None if over else self.idle.get(key)
            while q:
                if prefer is None or prefer not in q:
                    prefer = _matching(q, schema)
                if fresh and prefer is None:
                    break  # every idle one had a database: make room instead (_free_idle)
                if prefer is not None and q[-1] is not prefer:
                    q.remove(prefer)
                    c = prefer
                else:
                    c = q.pop()
                prefer = None
                if c.broken or c.io.at_eof():
                    self._discard(c, CloseReason.STALE)
                    continue
                self.in_use += 1
                c.pool = self
                if waited:
                    self._m_wait.observe(time.perf_counter() - t0)
                return c
            if self.total < limit:
                self.total += 1
                try:
                    c = await self.dial.connect(
                        self.addr, user, password, self.cfg.connect_timeout_s, caps
                    )
                except BaseException:
                    self.total -= 1
                    M.BACKEND_CONNECT_ERRORS.labels(self._label()).inc()
                    self._wake()
                    raise
                M.BACKEND_CONNECTS.labels(self._label()).inc()
                c.pool = self
                self.in_use += 1
                self._m_wait.observe(time.perf_counter() - t0)
                return c
            if self.soft:
                stolen = self._take_soft(key, fresh)
                if stolen is not None:
                    return stolen
                continue  # it closed one this acquire cannot use: room was made
            if not self._free_idle(key, fresh):
                left = deadline - time.monotonic()
                if left <= 0:
                    M.POOL_EXHAUSTED.labels(self._label()).inc()
                    raise ProxyError(
                        ER_CON_COUNT_ERROR,
                        f"Too many connections: backend pool {self.addr} has all "
                        f"{self.cfg.max_connections} connections in use",
                    )
                w = asyncio.get_running_loop().create_future()
                self._waiters.append(w)
                waited = True
                try:
                    await asyncio.wait_for(w, timeout=left)
                except TimeoutError:
                    pass
                except BaseException:
                    # Cancelled (its client left) after being woken: the connection it was
                    # woken for is there for the next waiter, who must hear of it.
                    if w.done() and not w.cancelled():
                        self._wake()
                    raise

    def can_lend_now(self) -> bool:
        """An acquire would not wait (an idle connection, or room to open one)."""
        return self.total < self.cfg.max_connections or any(self.idle.values())

    def hold_soft(self, c: BackendConn, owner: Any) -> None:
        """A session keeps its clean connection between statements; the pool may take it back
        whenever it is soft-held, which by construction means no statement is using it."""
        self.soft[c] = owner
        if self._waiters:  # someone is already waiting: don't keep it
            self._wake()

    def unhold_soft(self, c: BackendConn) -> None:
        self.soft.pop(c, None)

    def _take_soft(self, key: tuple[str, int], fresh: bool = False) -> BackendConn | None:
        """At the limit: take back a soft-held connection, of this user if there is one (else
        close another user's to make room; `fresh`: also one in a database, which the session
        that needs one that never had a database cannot use). Connections whose session may
        still ask about its last statement (warnings, an error: SHOW WARNINGS) go last: once
        taken, that session can only be shown an empty diagnostics area. (Asked only while
        some are soft-held.)"""
        c = min(self.soft, key=lambda x: (x.key != key, x.warned))
        owner = self.soft.pop(c)
        owner.reclaimed(c)
        if c.key != key or (fresh and c.schema is not None):
            self.in_use -= 1
            self._discard(c, CloseReason.EVICTED if c.key != key
                          else CloseReason.NEEDS_NO_DATABASE)
            return None
        if c.broken or c.io.at_eof():
            self.in_use -= 1
            self._discard(c, CloseReason.STALE)
            return None
        return c

    def _free_idle(self, key: tuple[str, int], fresh: bool) -> bool:
        """At the limit, close an idle connection this acquire cannot use to make room: another
        user's, or (`fresh`: it needs one that never had a database) one of its own user's.
        The hot-row engine's batches may have left the pool above its limit with idle
        connections in a database; a session without one waited out acquire_timeout_s beside
        them before (1040)."""
        for k, q in self.idle.items():
            if q and (k != key or fresh):
                self._discard(q.popleft(), CloseReason.EVICTED)
                return True
        return False

    def _discard(self, c: BackendConn, reason: CloseReason, detail: str = "") -> None:
        c.close()
        self.total -= 1
        M.BACKEND_DISCONNECTS.labels(self._label(), reason.value).inc()
        log.debug("closed backend connection %s to %s: %s %s", c.thread_id, self.addr,
                  reason.value, detail)

    def give_back(self, c: BackendConn, reason: LeaseReason) -> asyncio.Future[None] | None:
        """A lease gives its connection back (lease.py); see `_hand_back`."""
        return self._hand_back(c, reason.value)

    async def release(self, c: BackendConn, reason: str = "") -> None:
        """Give a connection back and wait until it is back (reset included): a cancelled
        caller cannot leak or poison it, the reset runs under shield."""
        back = self._hand_back(c, reason)
        if back is not None:
            await asyncio.shield(back)

    def _hand_back(self, c: BackendConn, detail: str) -> asyncio.Future[None] | None:
        """A clean connection goes straight back to the idle list and a broken one is closed,
        both at once (no await, nothing to cancel); one that needs a reset is reset in a task,
        returned so the caller can wait for it."""
        if (c.dirty or c.in_trans) and not (c.broken or self.closed):
            return asyncio.ensure_future(self._release(c, detail))
        self.in_use -= 1
        if c.broken or self.closed:
            self._discard(c, c.close_why or CloseReason.BROKEN, detail)
            self._wake()
            return None
        self.idle.setdefault(c.key, deque()).append(c)
        if self._waiters:
            self._wake()
        return None

    async def _release(self, c: BackendConn, reason: str) -> None:
        self.in_use -= 1
        if c.broken or self.closed:
            self._discard(c, c.close_why or CloseReason.BROKEN, reason)
        else:
            if c.dirty or c.in_trans:
                why = c.reset_why or ResetReason.TRANSACTION
                M.BACKEND_RESETS.labels(self._label(), why.value).inc()
                try:
                    await asyncio.wait_for(c.reset(), timeout=self.cfg.connect_timeout_s)
                except (BackendError, BackendLost, TimeoutError, OSError) as e:
                    self._discard(c, CloseReason.RESET_FAILED, str(e))
                    c = None  # type: ignore[assignment]
            if c is not None:
                self.idle.setdefault(c.key, deque()).append(c)
        self._wake()

    @staticmethod
    async def apply_state(c: BackendConn, want: Wanted) -> bool:
        """Make a connection carry the session's state (state.py decides what to send).

        Variables the previous user changed and this session did not go back to the server
        default, the character set is always set explicitly: nothing leaks from one session to
        the next. False: impossible on this connection (it has a database, the session none)."""
        if (c.names == want.names and c.sysvars == want.vars
                and (want.any_db or c.schema == want.database)):
            return True
        ch = want.change_from(c.schema, c.names, c.sysvars)
        if ch.needs_fresh:
            return False
        for sql in ch.statements:
            await c.execute(sql)
        if ch.database is not None:
            await c.init_db(ch.database)
        c.names = want.names
        c.sysvars = dict(want.vars)
        if not want.any_db:
            c.schema = want.database
        return True

    def drop_cached_statements(self) -> None:
        """The server's max_prepared_stmt_count is reached: idle and soft-held connections
        close the statements they keep prepared for reuse (backend.py `prepare`)."""
        for c in [*(c for q in self.idle.values() for c in q), *self.soft]:
            if not c.broken:  # idle or soft-held: no statement runs on it now
                c.drop_cached()

    def describe(self) -> str:
        """The pool as the SIGUSR1 dump shows it: what it holds, who waits."""
        soft = ", ".join(f"{c.thread_id}:{type(o).__name__}" for c, o in self.soft.items())
        idle = ", ".join(f"{c.thread_id}:{c.schema}" for q in self.idle.values() for c in q)
        return (f"total={self.total} in_use={self.in_use} idle=[{idle}] "
                f"waiters={sum(not w.done() for w in self._waiters)} soft=[{soft}]")

    def idle_count(self) -> int:
        return sum(len(q) for q in self.idle.values())

    async def reap(self) -> None:
        """Close connections idle longer than idle_timeout_s (runs periodically)."""
        now = time.monotonic()
        for q in self.idle.values():
            keep = deque(c for c in q if now - c.last_used < self.cfg.idle_timeout_s)
            for c in q:
                if c not in keep:
                    self._discard(c, CloseReason.IDLE_TIMEOUT)
            q.clear()
            q.extend(keep)

    async def close(self) -> None:
        self.closed = True
        for q in self.idle.values():
            while q:
                self._discard(q.pop(), CloseReason.SHUTDOWN)
        while self._waiters:
            self._wake()


def _matching(q: deque[BackendConn], schema: str | None) -> BackendConn | None:
    """The most recently used idle connection already in `schema` (None: that never had a
    database). Looks at the few most recent ones only: this runs on every acquire."""
    for i in range(len(q) - 1, max(-1, len(q) - 9), -1):
        if q[i].schema == schema:
            return q[i]
    return None
