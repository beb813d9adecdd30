"""Hot-row engine: hot inventory decrements recognised, then run as they are, queued per row,
or merged into groups (hotmerge.py), the path picked per key (`auto`) or by the table's mode.

The engine routes: the rule a statement binds to and its state against the schema (hotrules.py),
the key's company right now (hotkeys.py), open reservations near sell-out (escrow.py), all read
by the per-statement decision the fast lane shares (hotpick.py); then the queue (here), the
merged path (hotmerge.py) or the statement as it is.

queue: a FIFO per key with `concurrency` slots; inside a client transaction the slot is held
until the transaction ends. A full queue or a timed-out wait is a 1205 error naming the key.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from proxy.core.config import HOTROW_MODES, HotRowCfg
from proxy.core.errors import (
    BackendError,
    BackendLost,
    ProxyError,
    ResetReason,
)
from proxy.core.logctx import detached
from proxy.core.state import SERVICE, SERVICE_MARIADB
from proxy.engines.escrow import RESERVATION, Escrow, Reservation
from proxy.engines.hotalloc import HotStmt
from proxy.engines.hotauto import LEAVE_MERGE_S, PLAIN_WHYS, sold_out_lately
from proxy.engines.hotkeys import RECENT_S, KeyState
from proxy.engines.hotmember import Answers
from proxy.engines.hotmerge import Merger
from proxy.engines.hotpick import AS_IS, LEAVING, PLAIN, QUEUE, UNCHECKED, Picker, Way
from proxy.engines.hotqueue import queue
from proxy.engines.hotrules import RuleBook, key_value
from proxy.engines.outcome import prune_old
from proxy.net import protocol as P
from proxy.plan.classify import Shape, statement_values

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.engines.ports import HotRowHost, HotRowMember, Prepared
    from proxy.net.protocol import ExecuteParts

DDL_WAIT_S: Final = 5.0  # at most, for a DDL behind first tries in flight (`ddl_started`)
log = logging.getLogger("seckill.hotrow")

# ---- runtime ----------------------------------------------------------------------------------

# auto: how often the reservation table is read for keys with units reserved by other proxies
# (hotauto.AutoChoice.reserved_anywhere)
RESERVED_POLL_S = 0.5


class HotRowEngine:
    def __init__(self, app: HotRowHost) -> None:
        self.app = app
        self.cfg = app.cfg.hotrow
        self.proxy_id = random.getrandbits(31)
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bg: list[asyncio.Task[Any]] = []
        self.book = RuleBook(app.cfg.hotrow, self.service_conn,
                             lambda: [u.name for u in self.app.cfg.users])
        self.escrow = Escrow(self.cfg.batch_schema, self.service_conn, self._release,
                             self.cfg.recover_after_s)
        self.workers = max(1, app.cfg.workers)  # the proxy's processes (hotauto.py)
        # the per-statement decision (hotpick.py, compiled), shared with the fast lane
        self.pick = Picker(self.cfg, self.book, self.escrow, self.workers)
        self.keys = self.pick.keys
        self.auto = self.pick.auto
        self.lane_way = self.pick.lane_way  # (the fast lane's: compiled, no frame here)
        self.plain_end = self.pick.plain_end
        self.glance = self.pick.glance
        self.glance_end = self.pick.glance_end
        self.merger = Merger(self)
        self.answers = Answers(self.merger)  # a member's side (the fast lane's too)

    async def _release(self, c: BackendConn, broken: bool) -> None:
        if broken:
            c.taint(ResetReason.SERVICE)
        await c.pool.release(c)

    # ---- configuration and DBA control ----------------------------------------------------

    def apply_config(self, cfg: HotRowCfg) -> None:
        self.cfg = cfg
        self.book.apply_config(cfg)
        self.escrow.recover_after_s = cfg.recover_after_s
        self.pick.apply_config(cfg)

    def set_mode(self, mode: str, table: str | None) -> None:
        assert mode in HOTROW_MODES
        if table is None:
            self.pick.global_mode = mode
            self.pick.table_modes.clear()
        else:
            self.pick.table_modes[table] = mode

    def engaged(self) -> bool:
        """Whether any table's mode is not `off` (else only hinted statements come here)."""
        pk = self.pick
        return pk.global_mode != "off" or any(m != "off" for m in pk.table_modes.values())

    def rules_table(self) -> Any:
        pk = self.pick
        return self.book.rules_table(lambda t: pk.table_modes.get(t, pk.global_mode))

    async def check_rules(self, timeout: float = 5.0, force: bool = True) -> None:
        await self.book.check_rules(timeout, force)

    def schema_changed(self) -> None:
        self.book.schema_changed()

    async def ddl_started(self) -> None:
        """A statement that may change a hot table's schema is about to be sent: merges stop
        (hotrules.RuleBook.ddl_started), and it waits for the first tries in flight, which
        commit in their own round trip with no schema check after their lock (hotmerge.py)."""
        self.book.ddl_started()
        await self.merger.quiet(DDL_WAIT_S)

    def ddl_ended(self) -> None:
        self.book.ddl_ended()

    def merge_gate(self, hs: HotStmt) -> int | None:  # (hotmerge.MergeHost)
        return self.book.merge_gate(hs.rule)

    def schema_same(self, generation: int) -> bool:  # (hotmerge.MergeHost)
        return self.book.schema_same(generation)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task of the engine's (a group's leader): awaited at stop."""
        t = detached(coro)  # serves a whole group: no one client's (logctx.py)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def next_batch_id(self) -> int:
        """Unique across proxies (a random proxy id) and within this one."""
        return (self.proxy_id << 32) | (next(self._seq) & 0xFFFFFFFF)

    def describe(self) -> list[str]:
        """For the SIGUSR1 dump: each group not done (where its leader waits, how long) and
        the reservations waiting to be resolved."""
        now = time.monotonic()
        out = [f"group on {hs.rule.qualified} {hs.key_value!r}: {len(g.members)} members, "
               f"{g.phase}{f' (batch {g.batch})' if g.batch else ''}"
               f"{f' on backend connection {g.conn}' if g.conn else ''} for {now - g.since:.1f} s"
               for g, hs in list(self.merger.groups.items())]
        return [*out, self.escrow.describe()]

    def hot_keys_table(self, n: int = 20) -> Any:
        now = time.monotonic()
        rows = []
        for (s, t, k), ks in self.keys.items():
            ks.forget_old(now)
            b = len(ks.recent)
            members = sum(x for _, x in ks.recent)
            ke = self.escrow.keys.get((s, t, k))
            rows.append((f"{s}.{t}", str(k), ks.mode, ks.waiting, ks.in_flight, round(b / RECENT_S, 1),
                         round(members / b, 1) if b else 0.0, ks.batches, ks.statements,
                         ke.outstanding if ke else 0, ks.why))
        rows.sort(key=lambda r: (r[3] + r[4], r[5], r[8]), reverse=True)
        return rows[:n], ["table", "key", "mode", "waiting", "in_flight", "batches_per_s_10s",
                          "avg_batch_10s", "batches_total", "statements_total", "reserved_units",
                          "why"]

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._bg.append(asyncio.create_task(self._housekeeping()))
        self._bg.append(asyncio.create_task(self._prune_records()))
        self._bg.append(asyncio.create_task(self._watch_reservations()))
        self._bg.append(asyncio.create_task(self.check_rules(force=False)))

    async def stop(self) -> None:
        for t in self._bg:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.app.cfg.limits.shutdown_grace_s)
        await self.escrow.settled(self.app.cfg.limits.shutdown_grace_s)

    async def recover_escrow(self) -> int:
        """Resolve reservations whose member is gone without this proxy knowing (a crashed
        proxy, a failover): returned to stock unless their member's delete committed."""
        users = [u.name for u in self.app.cfg.users]
        rules = {f"`{r.schema}`.`{r.table}`": r for r in self.book.rules.values()}
        if not users or not any(st.ok for st in self.book.rule_state.values()):
            return 0
        found = await self.escrow.orphans(users[0])
        for batch_id, member, table, key_sql, amount in found:
            rule = rules.get(table)
            if rule is None:
                continue  # a rule removed since: left for when it comes back
            value = key_value(key_sql)
            rv = Reservation(table, rule.key, rule.column, key_sql, (rule.schema, rule.table, value),
                             batch_id, member, amount, users[0])
            self.escrow.reserved(rv)
            self.escrow.ended([rv])
        if found:
            log.warning("escrow: resolving %d reservations left by a lost proxy or primary",
                        len(found))
        return len(found)

    async def _watch_reservations(self) -> None:
        """auto mode's view of the reservation table, shared by every proxy instance: keys with
        units reserved by open transactions anywhere do not run plain (`_goes_plain`)."""
        while True:
            await asyncio.sleep(RESERVED_POLL_S)
            if not any(m == "auto" for m in (self.pick.global_mode, *self.pick.table_modes.values())) \
                    or not any(st.ok for st in self.book.rule_state.values()):
                self.auto.reserved_anywhere = set()
                continue
            try:
                self.auto.reserved_anywhere = await self._reserved_keys()
            except Exception as e:  # noqa: BLE001 - looked at again next round
                log.debug("reservation watch skipped: %s", type(e).__name__)

    async def _reserved_keys(self) -> set[tuple[str, str, int | str]]:
        c = await self.service_conn(self.app.cfg.users[0].name)
        try:
            rows, _ = await c.query(
                f"SELECT DISTINCT table_name, key_value FROM `{self.escrow.schema}`.`{RESERVATION}`"
                # this proxy's own are known exactly (escrow.py, `AutoChoice.reserved_here`)
                f" WHERE batch_id >> 32 <> {self.proxy_id} LIMIT 10000")
        finally:
            await c.pool.release(c)
        out: set[tuple[str, str, int | str]] = set()
        for table, key_sql in rows or []:
            parts = (table or "").strip("`").split("`.`")
            if len(parts) != 2 or not key_sql:
                continue
            out.add((parts[0].replace("``", "`"), parts[1].replace("``", "`"),
                     key_value(key_sql)))
        return out

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(5)
            try:
                await self.recover_escrow()
            except Exception as e:  # noqa: BLE001 - retried next round
                log.info("escrow recovery skipped: %s", type(e).__name__)
            if self.engaged() or self.book.rule_state:
                await self.check_rules()  # DDL not seen by this proxy: a trigger added since
            now = time.monotonic()
            for k, ks in list(self.keys.items()):
                if (not ks.waiting and not ks.in_flight and ks.collecting is None
                        and now - ks.last_seen > 60):
                    del self.keys[k]
            self.escrow.prune()

    async def _prune_records(self) -> None:
        """Old batch and outcome records, every minute (the first pass 5 s after start): a
        task of its own, since a pass after a long busy spell takes seconds
        (outcome.prune_old) and the housekeeping's escrow recovery must not wait for it."""
        await asyncio.sleep(5)
        while True:
            try:
                await self._prune()
                if self.app.outcomes.ready:
                    await self.app.outcomes.prune()
            except (BackendError, BackendLost, ProxyError) as e:
                log.info("record pruning skipped: %s", e)
            await asyncio.sleep(60)

    async def _prune(self) -> None:
        if not any(st.ok for st in self.book.rule_state.values()):
            return  # no rule checked yet: its tables may not exist
        c = await self.service_conn(self.app.cfg.users[0].name)
        try:
            gone = await prune_old(c, f"`{self.cfg.batch_schema}`.`hotrow_batch`",
                                   self.cfg.prune_after_s)
            if gone:
                log.debug("%d hot-row batch records pruned", gone)
        except BackendError as e:
            log.info("hot-row batch record pruning stopped: %s", e)
        finally:
            await c.pool.release(c)

    async def primary_answers(self, user: str) -> bool:
        """A service connection to the primary answers a statement now (a batch's connection
        died: killed, or the server gone? hotmerge.py)."""
        try:
            c = await self.service_conn(user)
        except (BackendLost, BackendError, ProxyError):
            return False
        ok = True
        try:
            await c.execute("DO 0")
        except (BackendLost, BackendError):
            ok = False
        await self._release(c, not ok)
        return ok

    async def service_conn(self, user: str) -> BackendConn:
        """A service connection on the primary: its own sql_mode (what the proxy's statements
        are written for) and, on MariaDB, no max_statement_time (a timeout must not cut a
        service transaction short; they are short by construction)."""
        pool = await self.app.writable_primary()
        c = await pool.acquire(user, self.app.password_of(user) or "", service=True)
        c.drop_cached()  # statements cached for clients: not held by a busy service connection
        try:
            await pool.apply_state(c, SERVICE_MARIADB if c.mariadb else SERVICE)
        except BaseException:
            c.taint(ResetReason.SERVICE)
            await pool.release(c, "service state failed")
            raise
        return c

    # ---- entry points from the session ------------------------------------------------------

    async def intercept(
        self, session: HotRowMember, sql: str, shape: Shape,
        forward: Callable[[], Awaitable[Any]],
    ) -> tuple[str, str] | None:
        if shape.hot is None:
            return None
        return await self._handle(session, shape, statement_values(sql), forward, sql)

    async def intercept_execute(
        self, session: HotRowMember, st: Prepared, parts: ExecuteParts,
        forward: Callable[[], Awaitable[Any]],
    ) -> tuple[str, str] | None:
        if st.shape.hot is None:
            return None
        try:
            params = P.decode_binary_params(parts, st.types, st.num_params)
        except (ValueError, IndexError):
            return None
        return await self._handle(session, st.shape, statement_values(st.sql, params), forward,
                                  st.sql)

    async def _handle(
        self, session: HotRowMember, shape: Shape, values: list[object],
        forward: Callable[[], Awaitable[Any]], raw_sql: str = "",
    ) -> tuple[str, str] | None:
        pick = self.pick
        w = pick.decide(session, shape, values, raw_sql)
        if w.kind == UNCHECKED:
            assert w.hs is not None
            await self.book.check(w.hs.rule, session.username or "")
            w = pick.decide(session, shape, values, raw_sql)  # again, with the schema known
        if w.kind == LEAVING:
            leaving = w.hs
            assert leaving is not None
            why = await self._leaves_merge(leaving)
            if not why:
                w = pick.decide(session, shape, values, raw_sql, may_leave=False)
            else:
                w = Way(PLAIN, leaving, w.mode, w.rs, w.txn, why=why)
        hs, rs = w.hs, w.rs
        if w.kind in (AS_IS, UNCHECKED) or hs is None or rs is None:
            return None
        if w.kind == PLAIN:
            return await self._plain(pick.start_plain(session, w), forward)
        ks = pick.key(hs, w.mode, w.why)
        if w.kind == QUEUE:
            if w.txn:
                session.locked_hot_key(hs.key_id)  # its transaction now holds the row lock
            return await queue(session, hs, ks, forward, self.cfg)
        return await self.answers.merge(session, hs, ks, rs.floor, forward,
                                       w.mode == "auto" and w.inv is None, w.txn_conn, w.inv)

    # ---- auto: plain while the key is idle ---------------------------------------------------

    async def _plain(self, ks: KeyState, forward: Callable[[], Awaitable[Any]]) -> tuple[str, str]:
        """Nothing runs on the key: the statement goes as it is (as mode off would); whoever
        comes meanwhile gathers into a group that starts when it is done (`after_plain`).
        Merging pays only when members would queue on the row lock; a lone member in a batch
        transaction costs three extra statements and a task switch. (Counted on the key from
        `Picker.start_plain` to `plain_end`.)"""
        ok = False
        rows = -1
        try:
            r = await forward()
            ok = r is not None and r.err is None
            rows = r.affected_rows if ok else -1
        finally:
            self.pick.plain_end(ks, ok, rows)
        return "hotrow-plain", "ok" if ok else "error"

    def may_run_plain(self, hs: HotStmt) -> bool:  # (hotmerge.MergeHost)
        return self.auto.may_run_plain(hs)

    async def _leaves_merge(self, hs: HotStmt) -> str:
        """Way LEAVING (hotpick.Picker.decide): inside a transaction, on a key that is one of
        many (`AutoChoice.spread`) but still has merged work under way (a group gathering or
        committing, units its members reserved): wait for that work (their transactions end
        within moments; at most LEAVE_MERGE_S). Returns auto's reason once it runs as it is
        (hotauto.PLAIN_WHYS), "" when it merges. A session holding units of the key itself
        stays merged on it (decided there)."""
        auto = self.auto
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEAVE_MERGE_S
        while (why := auto.why(hs, True)) not in PLAIN_WHYS:  # (in a transaction)
            ks = self.keys.get(hs.key_id)
            left = deadline - loop.time()
            if ks is None or left <= 0 or not auto.spread(hs) or sold_out_lately(ks):
                return ""  # (sold out lately: the group's way, which waits for units)
            if ks.tail is not None and not ks.tail.done():
                await asyncio.wait([ks.tail], timeout=left)
            elif auto.reserved_here(hs.key_id):
                await self.escrow.wait_resolved(hs.key_id, min(left, 0.05))
            else:  # another proxy's units (the reservation table is read every 0.5 s)
                await asyncio.sleep(min(left, 0.05))
        return why
