"""Hot-row engine: hot inventory decrements recognised, then run as they are, queued per row,
or merged into groups (hotmerge.py), the path picked per key (`auto`) or by the table's mode.

The engine routes: the rule a statement binds to and its state against the schema (hotrules.py),
the key's company right now (hotkeys.py), open reservations near sell-out (escrow.py); then
the queue (here), the merged path (hotmerge.py) or the statement as it is.

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
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.core import metrics as M
from proxy.core.config import HOTROW_MODES, HotRowCfg
from proxy.core.errors import (
    ER_INVENTORY_AUTOCOMMIT,
    BackendError,
    BackendLost,
    ProxyError,
    ResetReason,
)
from proxy.core.logctx import detached
from proxy.core.state import SERVICE, SERVICE_MARIADB
from proxy.engines.escrow import RESERVATION, Escrow, Reservation
from proxy.engines.hotalloc import (
    HotStmt,
    bind,
    inventory_hints,
    normal_key,
    read_only,
    sql_mode_blocks,
)
from proxy.engines.hotauto import AutoChoice
from proxy.engines.hotkeys import KeyState
from proxy.engines.hotmerge import Merger
from proxy.engines.hotqueue import queue
from proxy.engines.hotrules import RuleBook, RuleState, key_value
from proxy.net import protocol as P
from proxy.plan.classify import Shape, statement_values

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.engines.ports import HotRowHost, HotRowMember, Prepared
    from proxy.net.protocol import ExecuteParts

log = logging.getLogger("seckill.hotrow")

MAX_KEYS = 100_000  # hot keys tracked at once (key values come from clients)


# ---- runtime ----------------------------------------------------------------------------------

# auto: how often the reservation table is read for keys with units reserved by other proxies
# (hotauto.AutoChoice.reserved_anywhere)
RESERVED_POLL_S = 0.5


class HotRowEngine:
    def __init__(self, app: HotRowHost) -> None:
        self.app = app
        self.keys: dict[tuple[str, str, int | str], KeyState] = {}
        self.table_modes: dict[str, str] = {}
        self.proxy_id = random.getrandbits(31)
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bg: list[asyncio.Task[Any]] = []
        self.book = RuleBook(app.cfg.hotrow, self.service_conn,
                             lambda: [u.name for u in self.app.cfg.users])
        self.apply_config(app.cfg.hotrow)
        self.escrow = Escrow(self.cfg.batch_schema, self.service_conn, self._release,
                             self.cfg.recover_after_s)
        self.merger = Merger(self)
        self.auto = AutoChoice(self.keys, self.escrow)

    async def _release(self, c: BackendConn, broken: bool) -> None:
        if broken:
            c.taint(ResetReason.SERVICE)
        await c.pool.release(c)

    # ---- configuration and DBA control ----------------------------------------------------

    def apply_config(self, cfg: HotRowCfg) -> None:
        self.cfg = cfg
        self.book.apply_config(cfg)
        if hasattr(self, "escrow"):
            self.escrow.recover_after_s = cfg.recover_after_s
        self.global_mode = cfg.mode
        self.table_modes = {}

    def set_mode(self, mode: str, table: str | None) -> None:
        assert mode in HOTROW_MODES
        if table is None:
            self.global_mode = mode
            self.table_modes.clear()
        else:
            self.table_modes[table] = mode

    def engaged(self) -> bool:
        """Whether any table's mode is not `off` (else only hinted statements come here)."""
        return self.global_mode != "off" or any(m != "off" for m in self.table_modes.values())

    def mode_for(self, shape: Shape, table: str) -> str:
        h = shape.hints
        if "HOTROW" in h and h["HOTROW"].lower() in HOTROW_MODES:
            return h["HOTROW"].lower()
        if "QUEUE_ON_PK" in h:
            return "queue"
        return self.table_modes.get(table, self.global_mode)

    def rules_table(self) -> Any:
        return self.book.rules_table(lambda t: self.table_modes.get(t, self.global_mode))

    async def check_rules(self, timeout: float = 5.0, force: bool = True) -> None:
        await self.book.check_rules(timeout, force)

    def schema_changed(self) -> None:
        self.book.schema_changed()

    def ddl_started(self) -> None:
        self.book.ddl_started()

    def ddl_ended(self) -> None:
        self.book.ddl_ended()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task of the engine's (a group's leader): awaited at stop."""
        t = detached(coro)  # serves a whole group: no one client's (logctx.py)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def next_batch_id(self) -> int:
        """Unique across proxies (a random proxy id) and within this one."""
        return (self.proxy_id << 32) | (next(self._seq) & 0xFFFFFFFF)

    def hot_keys_table(self, n: int = 20) -> Any:
        now = time.monotonic()
        rows = []
        for (s, t, k), ks in self.keys.items():
            while ks.recent and now - ks.recent[0][0] > 10:
                ks.recent.popleft()
            b = len(ks.recent)
            members = sum(x for _, x in ks.recent)
            ke = self.escrow.keys.get((s, t, k))
            rows.append((f"{s}.{t}", str(k), ks.mode, ks.waiting, ks.in_flight, round(b / 10, 1),
                         round(members / b, 1) if b else 0.0, ks.batches, ks.statements,
                         ke.outstanding if ke else 0))
        rows.sort(key=lambda r: (r[3] + r[4], r[5], r[8]), reverse=True)
        return rows[:n], ["table", "key", "mode", "waiting", "in_flight", "batches_per_s_10s",
                          "avg_batch_10s", "batches_total", "statements_total", "reserved_units"]

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._bg.append(asyncio.create_task(self._housekeeping()))
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
        proxy, a failover): returned to stock unless their confirm row committed."""
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
            if not any(m == "auto" for m in (self.global_mode, *self.table_modes.values())) \
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
        last_prune = 0.0
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
            if now - last_prune > 60:
                last_prune = now
                try:
                    await self._prune()
                    if self.app.outcomes.ready:
                        await self.app.outcomes.prune()
                except (BackendError, BackendLost, ProxyError) as e:
                    log.info("outcome record pruning skipped: %s", e)

    async def _prune(self) -> None:
        if not self.book.rules:
            return
        c = await self.service_conn(self.app.cfg.users[0].name)
        try:
            await c.execute(
                f"DELETE FROM `{self.cfg.batch_schema}`.`hotrow_batch` WHERE created_at < "
                f"NOW(6) - INTERVAL {self.cfg.prune_after_s} SECOND LIMIT 10000"
            )
        except BackendError:
            pass
        finally:
            await c.pool.release(c)

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
        target = self._target(session, shape, values)
        if target is None:
            return None
        hs, mode, rs = target
        if rs is None:
            await self.book.check(hs.rule, session.username or "")
            target = self._target(session, shape, values)  # again, with the schema known
            if target is None:
                return None
            hs, mode, rs = target
        if rs is None or not rs.ok:
            return None
        in_txn = _in_txn(session)
        inv = inventory_hints(shape.hints, raw_sql) if shape.hints else None
        if mode == "auto" and inv is None and (
                self.auto.goes_plain(hs, in_txn) or await self.auto.leaves_merge(session, hs, in_txn)):
            # Little or nothing on the key: as it is, whatever the session (MySQL answers it).
            return await self._plain(self._take_plain(session, hs, mode, in_txn), forward)
        if inv is not None and (inv.commit_on_success or inv.rollback_on_fail) and not in_txn:
            raise ProxyError(ER_INVENTORY_AUTOCOMMIT,
                             "Inventory transactional hints didn't allowed in autocommit mode")
        txn_conn = None
        if mode in ("merge", "auto") and in_txn and not session.pin and rs.escrow_ok \
                and hs.key_id not in session.txn_hot:
            # Inside a transaction the member's units are reserved by the group and confirmed
            # in its own transaction (escrow.py); that needs the connection holding it.
            txn_conn = session.escrow_conn()
        if mode in ("merge", "auto") and (
                (in_txn and txn_conn is None) or session.pin or read_only(session.sysvars)):
            # Merged, the statement would run on another connection: not for a session pinned
            # to state on its own connection (a temporary table shadowing the rule's table,
            # LOCK TABLES, user variables), a read-only session, or a transaction that already
            # locked the row itself. Queued, it runs on the session's own connection and MySQL
            # answers it.
            mode = "queue"
        ks = self._key(hs, mode)
        if mode == "queue":
            if in_txn:
                session.locked_hot_key(hs.key_id)  # its transaction now holds the row lock
            return await queue(session, hs, ks, forward, self.cfg)
        # Inventory hints are honoured on the merged path, so a hinted statement merges.
        return await self.merger.merge(session, hs, ks, rs.floor, forward,
                                 mode == "auto" and inv is None, txn_conn, inv)

    # ---- auto: plain while the key is idle ---------------------------------------------------

    async def _plain(self, ks: KeyState, forward: Callable[[], Awaitable[Any]]) -> tuple[str, str]:
        """Nothing runs on the key: the statement goes as it is (as mode off would); whoever
        comes meanwhile gathers into a group that starts when it is done (`after_plain`).
        Merging pays only when members would queue on the row lock; a lone member in a batch
        transaction costs three extra statements and a task switch."""
        self.plain_start(ks)
        ok = False
        rows = -1
        try:
            r = await forward()
            ok = r is not None and r.err is None
            rows = r.affected_rows if ok else -1
        finally:
            self.plain_end(ks, ok, rows)
        return "hotrow-plain", "ok" if ok else "error"

    def plain_start(self, ks: KeyState) -> None:
        ks.mode = "auto:plain"
        ks.plain_busy = True
        ks.in_flight += 1

    def plain_end(self, ks: KeyState, ok: bool, rows: int = -1) -> None:
        if ok and rows == 0:
            ks.sold_out_at = time.monotonic()
        ks.in_flight -= 1
        ks.plain_busy = False
        done, ks.plain_done = ks.plain_done, None
        if done is not None:
            done.set_result(None)
        M.HOTROW_STATEMENTS.inc("auto", "plain" if ok else "error")

    def lane_ticket(self, session: HotRowMember, shape: Shape,
                    values: list[object]) -> tuple[bool, KeyState | None]:
        """The fast lane's question, answered at once: may this hot decrement run as it is?
        (True, None): the engine would not touch it (no rule, mode off, rule invalid);
        (True, ticket): auto mode's plain path, counted on its key until `plain_end(ticket)`;
        (False, None): the session task decides (a group, a queue, a rule not checked yet).
        The same decisions as `_handle`, taken before any of its side effects."""
        target = self._target(session, shape, values)
        if target is None:
            return True, None
        hs, mode, rs = target
        if rs is None:
            return False, None  # the rule's check needs the database: the task runs it
        if not rs.ok:
            return True, None
        in_txn = _in_txn(session)
        if mode != "auto" or not self.auto.goes_plain(hs, in_txn):
            return False, None
        ks = self._take_plain(session, hs, mode, in_txn)
        self.plain_start(ks)
        return True, ks

    def _target(self, session: HotRowMember, shape: Shape, values: list[object]
                ) -> tuple[HotStmt, str, RuleState | None] | None:
        """The decisions that need no I/O, shared by `_handle` and `lane_ticket`: the rule the
        statement binds to (configured or discovered), the bound on keys, the table's mode.
        None: the engine leaves the statement alone. The rule's state is None while the rule
        has not been checked against the schema."""
        assert shape.hot is not None
        sql_mode = session.sysvars.get("sql_mode", self.book.server_sql_mode)
        escapes = sql_mode is None or "NO_BACKSLASH_ESCAPES" not in sql_mode.upper()
        hs = bind(shape.hot, values, session.database, self.book.rules, escapes)
        if hs is None and self.cfg.discover:
            hs = self.book.discover(shape.hot, values, session.database, escapes)
        if hs is None:
            return None
        mode = self.mode_for(shape, hs.rule.qualified)
        if mode == "off":
            return None
        rs = self.book.rule_state.get((hs.rule.schema, hs.rule.table))
        if rs is None or rs.ok is None or sql_mode is None:
            return hs, mode, None  # the schema (and the server's sql_mode) not known yet
        if rs.ok:
            # Merged, the statement's answer must be the one MySQL would give it alone: not
            # under an sql_mode that changes how it parses or computes, nor for a key whose
            # row the proxy cannot tell (hotalloc.normal_key).
            if sql_mode_blocks(sql_mode) is not None:
                return None
            key = normal_key(hs.key_value, rs.key_kind, rs.key_ci)
            if key is None:
                return None
            if key != hs.key_value or type(key) is not type(hs.key_value):
                hs = replace(hs, key_value=key)
        if hs.key_id not in self.keys and len(self.keys) >= MAX_KEYS:
            return None  # bounded: a new key past the limit takes the normal path
        return hs, mode, rs

    def may_run_plain(self, hs: HotStmt) -> bool:  # (hotmerge.MergeHost)
        return self.auto.may_run_plain(hs)

    def _take_plain(self, session: HotRowMember, hs: HotStmt, mode: str,
                    in_txn: bool) -> KeyState:
        if in_txn:
            session.locked_hot_key(hs.key_id)  # its transaction now holds the row lock
        return self._key(hs, mode)

    def _key(self, hs: HotStmt, mode: str) -> KeyState:
        ks = self.keys.get(hs.key_id)
        if ks is None:
            ks = self.keys[hs.key_id] = KeyState(asyncio.Semaphore(self.cfg.queue_concurrency))
        ks.last_seen = now = time.monotonic()
        self.auto.shares.seen(hs.key_id, now)
        ks.statements += 1
        ks.mode = mode
        return ks


def _in_txn(session: HotRowMember) -> bool:
    return bool(session.status & P.SERVER_STATUS_IN_TRANS) or (
        session.sysvars.get("autocommit", "ON").upper() in ("OFF", "0"))

