"""Backend monitor: every second, what each server is (reachable, writable, replicating, lag,
GTID position) and how durable the primary is. Results go to metrics and SHOW BACKENDS; the
routing and durability work builds on the same state.

One dedicated connection per server, outside the pools, so a full pool cannot blind the monitor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from proxy.backends.backend import BackendConn
from proxy.core import gtid as G
from proxy.core import metrics as M
from proxy.core.errors import BackendError, BackendLost
from proxy.engines.health import BackendState

if TYPE_CHECKING:
    from proxy.engines.ports import FailoverHost

log = logging.getLogger("seckill.monitor")
INTERVAL_S = 1.0
# access denied: to a statement's privilege (1227), a table (1142), a database (1044), a login
_NO_PRIVILEGE = frozenset({1227, 1142, 1044, 1045})


def durable_problems(d: dict[str, str]) -> list[str]:
    """Settings under which an acknowledged commit can be lost on a crash (pure)."""
    out = []
    if d.get("innodb_flush_log_at_trx_commit") not in (None, "1"):
        out.append(f"innodb_flush_log_at_trx_commit={d['innodb_flush_log_at_trx_commit']}")
    if d.get("sync_binlog") not in (None, "1"):
        out.append(f"sync_binlog={d['sync_binlog']}")
    if d.get("log_bin") in ("0", "OFF"):
        out.append("log_bin=OFF")
    return out


def gtid_domains(pos: str) -> dict[str, int]:
    """MariaDB `domain-server-seq` list → {domain: seq} (pure; MySQL sets are left to routing)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in pos.split(","))):
        bits = part.split("-")
        if len(bits) == 3 and all(b.isdigit() for b in bits):
            out[bits[0]] = max(out.get(bits[0], 0), int(bits[2]))
    return out


class Monitor:
    def __init__(self, app: FailoverHost) -> None:
        self.app = app
        self.states: dict[str, BackendState] = {}
        self._conns: dict[str, BackendConn] = {}
        self._task: asyncio.Task[None] | None = None
        self._round: asyncio.Future[None] | None = None
        # last round's replica positions and primary (key, position): histories are compared
        # across rounds, so a replica's position is always older than the primary's it meets
        self._last: dict[str, str] = {}
        self._primary_seen: tuple[str, str] | None = None
        self.sync()

    def sync(self) -> None:
        """Follow the configured backends (after RELOAD CONFIG)."""
        b = self.app.cfg.backends
        want = {str(b.primary): ("primary", b.primary)}
        for r in b.replicas:
            want.setdefault(str(r), ("replica", r))
        for k, (role, addr) in want.items():
            st = self.states.setdefault(k, BackendState(addr, role))
            if st.role != "fenced" and self.app.primary_key() == str(b.primary):
                st.role = role
        for k in list(self.states):
            if k not in want:
                del self.states[k]
                c = self._conns.pop(k, None)
                if c:
                    c.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        for c in self._conns.values():
            c.close()

    async def _run(self) -> None:
        while True:
            await asyncio.gather(*(self._check(k, st) for k, st in list(self.states.items())))
            self._follow_primary()
            self._compare_histories()
            if self._round is not None and not self._round.done():
                self._round.set_result(None)
            self._round = None
            await asyncio.sleep(INTERVAL_S)

    async def next_round(self, timeout: float = 5.0) -> None:
        """Wait until the monitor has checked every server again (after a lost connection)."""
        if self._round is None:
            self._round = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._round), timeout)
        except TimeoutError:
            pass

    def _follow_primary(self) -> None:
        """Roles follow the servers: the writable server is the primary.

        - two writable servers at once: writes stop (split brain), never split;
        - the primary down or read-only and exactly one other server writable and not
          replicating (a promoted replica): writes move there;
        - a failed primary that comes back is not taken back on its own (it stays fenced, and if
          it is writable, that is two writable servers: writes stop until a DBA sets it read-only).
        """
        writable = [k for k, st in self.states.items() if st.up and st.read_only is False]
        if len(writable) > 1:
            reason = "two writable servers: " + ", ".join(sorted(writable))
            if self.app.writes_blocked != reason:
                log.error("split brain, writes stopped: %s", reason)
            self.app.writes_blocked = reason
            M.SPLIT_BRAIN.set(1)
            return
        M.SPLIT_BRAIN.set(0)
        self.app.writes_blocked = None
        cur = self.app.primary_key()
        if writable == [cur]:
            return
        if not writable:
            return  # no writable server: writes wait (failover_wait_s), reads go on
        new = writable[0]
        st = self.states[new]
        if st.replicating or st.role == "fenced":
            return
        log.warning("primary moved: %s -> %s (old primary %s)", cur, new,
                    "down" if not self.states[cur].up else "read-only")
        self.states[cur].role = "fenced"
        self.states[cur].reason = "former primary (failed over); not taken back automatically"
        st.role = "primary"
        self.app.switch_primary(new)

    def _compare_histories(self) -> None:
        """Hold out of every GTID test a replica whose position is no longer the primary's
        history: one that has what the primary lacks (its position of the last round is
        beyond the primary's of this round; positions only grow, so in a healthy topology it
        never is), or every replica when the primary's own position went back (RESET MASTER:
        numbering starts again at 1, and a replica at 0-1-500 would look as if it had applied
        the primary's new 0-1-5, which it never will: MariaDB's replication stalls there with
        no error). Without this, read-your-writes reads would be sent there and be stale, and
        replica acknowledgements would be given for writes no replica has."""
        pk = self.app.primary_key()
        pst = self.states.get(pk)
        if pst is None or not pst.up or pst.role != "primary":
            self._last, self._primary_seen = {}, None
            return
        try:
            now = G.parse(pst.gtid)
            went_back = (self._primary_seen is not None and self._primary_seen[0] == pk
                         and not G.contains(now, self._primary_seen[1]))
        except G.GtidError:
            return
        for k, st in self.states.items():
            if st.role != "replica" or not st.up or st.held is not None:
                continue
            prev = self._last.get(k)
            try:
                ahead = prev is not None and G.beyond(G.parse(prev), now)
            except G.GtidError:
                ahead = False
            if (went_back and st.gtid) or ahead:
                self._hold(k, st, f"the primary's GTID position went back to '{pst.gtid}' "
                           "(RESET MASTER?)" if went_back else
                           f"its GTID position '{prev}' has transactions the primary's "
                           f"'{pst.gtid}' lacks (RESET MASTER on the primary, or writes on the "
                           "replica)")
        self._last = {k: st.gtid for k, st in self.states.items()
                      if st.role == "replica" and st.up and st.held is None}
        self._primary_seen = (pk, pst.gtid)

    def _hold(self, key: str, st: BackendState, why: str) -> None:
        st.held = st.gtid
        st.state, st.reason = "diverged", (
            f"{why}: no reads or replica acks by GTID until its replication is re-pointed "
            f"and its position drops below '{st.held}'")[:400]
        log.warning("backend %s (replica): diverged (%s)", key, st.reason,
                    extra={"event": "backend_state", "backend": key, "role": "replica",
                           "state": "diverged", "reason": st.reason})
        self.app.reads.forget(key)

    def _still_held(self, key: str, st: BackendState) -> bool:
        """A held replica stays out until its position no longer contains the one it had when
        held (its replication was re-pointed: RESET SLAVE, a new gtid_slave_pos)."""
        assert st.held is not None
        try:
            still = G.contains(st.gtid, st.held)
        except G.GtidError:
            still = False
        if still:
            return True
        log.info("backend %s (replica): position '%s' is below '%s', where it diverged: "
                 "comparable again", key, st.gtid, st.held)
        st.held = None
        self.app.reads.forget(key)
        return False

    async def _check(self, key: str, st: BackendState) -> None:
        cfg = self.app.cfg
        user = cfg.users[0]
        was = (st.state, st.reason)  # a change is logged (not every round's)
        try:
            c = self._conns.get(key)
            if c is None or c.broken or c.io.at_eof():
                c = await self.app.dial.connect(st.addr, user.name, user.password,
                                              cfg.backends.pool.connect_timeout_s)
                self._conns[key] = c
            row = await asyncio.wait_for(c.fetch_one(
                "SELECT @@read_only, @@innodb_flush_log_at_trx_commit, @@sync_binlog, "
                "@@binlog_format, @@log_bin, @@gtid_binlog_pos, @@gtid_current_pos"
                if c.mariadb else
                "SELECT @@read_only, @@innodb_flush_log_at_trx_commit, @@sync_binlog, "
                "@@binlog_format, @@log_bin, @@gtid_executed, @@gtid_executed"), 5)
            assert row is not None
            st.read_only = row[0] == "1"
            st.durability = {"innodb_flush_log_at_trx_commit": row[1] or "", "sync_binlog": row[2] or "",
                             "binlog_format": row[3] or "", "log_bin": row[4] or ""}
            st.gtid = (row[6] or row[5] or "") if st.role == "replica" else (row[5] or "")
            st.lag_s = None
            st.up, st.state, st.reason = True, "up", ""
            if st.role == "primary" and c.mariadb:
                semi = await asyncio.wait_for(c.query_named(
                    "SELECT VARIABLE_NAME AS n, VARIABLE_VALUE AS v FROM information_schema.GLOBAL_VARIABLES "
                    "WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_ENABLED' UNION ALL "
                    "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                    "WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS'"), 5)
                for r in semi:
                    st.durability[(r["n"] or "").lower()] = r["v"] or ""
            rows = await asyncio.wait_for(c.query_named(
                "SHOW ALL SLAVES STATUS" if c.mariadb else "SHOW REPLICA STATUS"), 5)
            st.replicating = any(
                r.get("Slave_IO_Running", r.get("Replica_IO_Running")) == "Yes"
                or r.get("Slave_SQL_Running", r.get("Replica_SQL_Running")) == "Yes" for r in rows)
            if st.role == "replica":
                self._replica_state(st, rows)
                if st.held is not None and self._still_held(key, st):
                    st.state, st.reason = "diverged", was[1] if was[0] == "diverged" else (
                        f"diverged at '{st.held}'")
            elif st.role == "fenced":
                st.state = "fenced"
        except (BackendError, BackendLost, TimeoutError, OSError, AssertionError) as e:
            st.up, st.state, st.reason = False, "down", str(e)[:200]
            if isinstance(e, BackendError) and e.code in _NO_PRIVILEGE:
                st.reason = (f"{st.reason}; the monitor account '{user.name}' needs REPLICATION "
                             "CLIENT and, on MariaDB, SLAVE MONITOR (GRANT REPLICATION CLIENT, "
                             f"SLAVE MONITOR ON *.* TO '{user.name}')")[:400]
            c = self._conns.pop(key, None)
            if c:
                c.close()
        if st.state != was[0] or (st.state == "down" and st.reason != was[1]):
            (log.warning if st.state in ("down", "broken") else log.info)(
                "backend %s (%s): %s%s", key, st.role, st.state,
                f" ({st.reason})" if st.reason else "",
                extra={"event": "backend_state", "backend": key, "role": st.role,
                       "state": st.state, "reason": st.reason})
        st.checked_at = time.time()
        if st.up and st.role == "replica" and st.held is None and self.app.reads is not None:
            self.app.reads.note_replica(key, st.gtid)
        self._publish(key, st)

    def _replica_state(self, st: BackendState, rows: list[dict[str, str | None]]) -> None:
        if not rows:
            st.state, st.reason = "broken", "not replicating (no replication configured)"
            return
        r = rows[0]
        io = r.get("Slave_IO_Running", r.get("Replica_IO_Running"))
        sql = r.get("Slave_SQL_Running", r.get("Replica_SQL_Running"))
        lag = r.get("Seconds_Behind_Master", r.get("Seconds_Behind_Source"))
        st.lag_s = float(lag) if lag not in (None, "") else None
        max_lag = self.app.cfg.routing.max_replica_lag_s
        if io != "Yes" or sql != "Yes":
            st.state, st.reason = "broken", f"replication threads io={io} sql={sql}"
        elif st.lag_s is not None and st.lag_s > max_lag:
            st.state, st.reason = "lagging", f"{st.lag_s:g}s behind the primary (max_replica_lag_s {max_lag:g})"

    def _publish(self, key: str, st: BackendState) -> None:
        M.BACKEND_UP.labels(key, st.role).set(1 if st.up else 0)
        if st.lag_s is not None:
            M.REPLICA_LAG.labels(key).set(st.lag_s)
        for domain, seq in gtid_domains(st.gtid).items():
            M.BACKEND_GTID_SEQ.labels(key, domain).set(seq)
        if st.role == "primary" and st.up:
            d = st.durability
            for name in ("innodb_flush_log_at_trx_commit", "sync_binlog"):
                try:
                    M.PRIMARY_SETTING.labels(name).set(float(d.get(name) or 0))
                except ValueError:
                    pass
            M.PRIMARY_DURABLE.set(0 if durable_problems(d) else 1)
            M.PRIMARY_SEMI_SYNC.labels("enabled").set(
                1 if d.get("rpl_semi_sync_master_enabled") == "ON" else 0)
            M.PRIMARY_SEMI_SYNC.labels("active").set(
                1 if d.get("rpl_semi_sync_master_status") == "ON" else 0)
