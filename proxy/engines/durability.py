""""Order successful" must mean durable.

- The audit: the monitor reads the primary's settings every second; `require: strict` refuses
  writes while any setting lets a crash lose acknowledged commits, `warn` logs and counts them.
- `ack: replica`: a write's OK is held until `replica_acks` replicas have applied its GTID
  (known from the monitor or from a bounded MASTER_GTID_WAIT / WAIT_FOR_EXECUTED_GTID_SET).
  A merged hot-row batch waits once for all its members. On timeout: `degrade` acknowledges
  and counts it, `error` answers ER_SECKILL_ACK_TIMEOUT (9101), meaning: committed on the
  primary, not yet confirmed on a replica.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Final

from proxy.core import gtid as G
from proxy.core import metrics as M
from proxy.core.configmodel import DurabilityCfg
from proxy.core.errors import BackendError, BackendLost, ProxyError
from proxy.engines.monitor import durable_problems

if TYPE_CHECKING:
    from proxy.backends.pool import Pool
    from proxy.engines.ports import DurabilityHost

log = logging.getLogger("seckill.durability")

ER_SECKILL_ACK_TIMEOUT: Final = (9101, "HY000")
ER_SECKILL_NOT_DURABLE: Final = (1290, "HY000")  # ER_OPTION_PREVENTS_STATEMENT


class Durability:
    def __init__(self, app: DurabilityHost) -> None:
        self.app = app
        self._last_warn = 0.0
        # the verdict on the monitor's last reading: it makes a new dict at each poll, so one
        # verdict per poll, not one per write
        self._seen: dict[str, str] | None = None
        self._problems: list[str] = []

    @property
    def cfg(self) -> DurabilityCfg:
        return self.app.cfg.durability

    def check_write(self) -> None:
        """Called before a write reaches the primary (also on connections a session kept)."""
        if self.app.writes_blocked is not None:
            raise ProxyError(ER_SECKILL_NOT_DURABLE,
                             f"seckill-proxy: writes stopped ({self.app.writes_blocked})")
        if self.cfg.require == "off" or self.app.monitor is None:
            return
        st = self.app.monitor.states.get(self.app.primary_key())
        if st is None or not st.up or not st.durability:
            return  # unknown yet: the connection attempt itself will tell the client
        if st.durability is not self._seen:
            self._seen, self._problems = st.durability, durable_problems(st.durability)
        problems = self._problems
        if not problems:
            return
        if self.cfg.require == "strict":
            M.DURABILITY_REFUSED.inc()
            raise ProxyError(ER_SECKILL_NOT_DURABLE,
                             "seckill-proxy refuses writes: the primary is not durable ("
                             + ", ".join(problems) + "); durability.require is strict")
        M.DURABILITY_UNSAFE_WRITES.inc()
        now = monotonic()
        if now - self._last_warn > 10:
            self._last_warn = now
            log.warning("writing to a primary that is not durable: %s", ", ".join(problems))

    @property
    def wants_ack(self) -> bool:
        return self.cfg.ack == "replica"

    async def wait_ack(self, gtid: str) -> None:
        """Hold a write's acknowledgement until enough replicas applied `gtid`."""
        t0 = perf_counter()
        need = self.cfg.replica_acks
        timeout = self.cfg.replica_ack_timeout_ms / 1000
        try:
            wm = G.parse(gtid)
        except G.GtidError:
            return
        reads = self.app.reads
        mon = self.app.monitor
        pools: list[Pool] = [self.app.pools[k] for k, st in
                             (mon.states if mon is not None else {}).items()
                             if st.role == "replica" and st.up and st.held is None]
        have = [p for p in pools if G.applied(reads.known.get(p.label), wm)]
        if len(have) < need:
            rest = [p for p in pools if p not in have]
            results = await asyncio.gather(*(self._wait_one(p, wm, timeout) for p in rest))
            have += [p for p, ok in zip(rest, results, strict=True) if ok]
        M.ACK_WAIT.observe(perf_counter() - t0)
        if len(have) >= need:
            M.ACKS.labels("replica").inc()
            return
        st = self.app.monitor.states.get(self.app.primary_key()) if self.app.monitor else None
        if st is not None and not st.up:
            # The primary is gone while the write waited: it may never reach a replica, so
            # acknowledging it (even degraded) could be a lie.
            M.ACKS.labels("unknown").inc()
            raise ProxyError((2013, "HY000"),
                             f"Lost the primary while waiting for a replica to confirm GTID {gtid}; "
                             "outcome unknown")
        if self.cfg.on_ack_timeout == "degrade":
            M.ACKS.labels("degraded").inc()
            log.warning("acknowledged GTID %s with %d of %d replica confirmations (timeout %d ms)",
                        gtid, len(have), need, self.cfg.replica_ack_timeout_ms)
            return
        M.ACKS.labels("error").inc()
        raise ProxyError(ER_SECKILL_ACK_TIMEOUT,
                         f"Committed on the primary (GTID {gtid}) but not confirmed on {need} "
                         f"replica(s) within {self.cfg.replica_ack_timeout_ms} ms")

    async def _wait_one(self, pool: Pool, wm: G.Gtid, timeout: float) -> bool:
        user = self.app.cfg.users[0]
        try:
            c = await asyncio.wait_for(pool.acquire(user.name, user.password), timeout)
        except (BackendLost, BackendError, ProxyError, TimeoutError):
            return False
        try:
            ok = await c.wait_gtid(str(wm), timeout)
        except (BackendLost, BackendError):
            ok = False
        await pool.release(c)
        if ok:
            self.app.reads.note_replica(pool.label, str(wm))
        return ok
