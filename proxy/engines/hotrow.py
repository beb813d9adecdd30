"""Hot-row engine: queue or merge hot inventory decrements, leader/follower style.

merge: the first decrement for a key opens a group; followers join while the previous group of
that key is still committing (two groups alternate), then for up to `max_wait_us` or until
`max_batch` members. A leader with no group ahead of it commits at once. One backend transaction serves the group: lock the row, allocate members in arrival
order with each one's own amount and guard (pure `allocate`), one UPDATE by the total, one batch
record, COMMIT. Every member then gets the reply MySQL would have given it alone, and nobody gets
a reply before COMMIT returned OK. If the connection dies during COMMIT, the batch record tells
whether it committed; a batch that provably did not commit is retried once.

queue: a FIFO per key with `concurrency` slots; inside a client transaction the slot is held
until the transaction ends. A full queue or a timed-out wait is a 1205 error naming the key.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pymysql.converters import escape_string

from proxy.core import metrics as M
from proxy.core.config import HOTROW_MODES, HotRowCfg, HotRowRule
from proxy.core.errors import (
    CR_SERVER_LOST,
    ER_INVENTORY_AUTOCOMMIT,
    ER_INVENTORY_TARGET_AFFECT_ROW,
    ER_LOCK_WAIT_TIMEOUT,
    ER_QUERY_INTERRUPTED,
    ER_SECKILL_NOT_COMMITTED,
    BackendError,
    BackendLost,
    ProxyError,
)
from proxy.core.state import SERVICE, SERVICE_MARIADB, Answered
from proxy.engines.escrow import (
    RESERVATION,
    Escrow,
    Reservation,
    Unverified,
    row_exists,
    run_checked,
)
from proxy.engines.escrow import ddl as escrow_ddl
from proxy.engines.hotalloc import (
    MISMATCH,
    PLAIN,
    RUN_ALONE,
    HotStmt,
    Inventory,
    Member,
    allocate,
    bind,
    column_floor,
    inventory_hints,
    normal_key,
    read_only,
    sql_literal,
    sql_mode_blocks,
)
from proxy.engines.outcome import find_record
from proxy.net import protocol as P
from proxy.plan.classify import HotTemplate, Shape, mysql_unescape, statement_values

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.engines.ports import HotRowHost, HotRowMember, Prepared
    from proxy.net.protocol import ExecuteParts

log = logging.getLogger("seckill.hotrow")

MAX_DISCOVERED = 1000  # tables hotrow.discover keeps candidate rules for
_NO_PRIVILEGE = frozenset({1142, 1143, 1044})  # table, column, database access denied
# a batch's errors that say nothing about the schema: interrupted, lock wait, deadlock, timeout
_TRANSIENT = frozenset({1317, 1205, 1213, 1969, 3024})
MAX_KEYS = 100_000  # hot keys tracked at once (key values come from clients)
INFO_HIT = b"Rows matched: 1  Changed: 1  Warnings: 0"
INFO_MISS = b"Rows matched: 0  Changed: 0  Warnings: 0"


# ---- runtime ----------------------------------------------------------------------------------

# auto: how many other decrements must be on a key (running, or gathering into a group) before
# one merges. Inside a transaction a merged member costs a reservation, a confirm row and a
# resolution; in autocommit a batch transaction of four statements: with less company than
# this, it queues on the row lock in MySQL for less (measured on 10 SKUs at 16 threads).
AUTO_COMPANY = 2
AUTO_TXN_COMPANY = 4
# auto: after a plain statement found a key sold out, its statements take the group's way for
# this long: a group waits for units reserved by open transactions (of any proxy) to come back
# or be confirmed, as MySQL's row lock would make a buyer wait, where a plain UPDATE answers
# "0 rows" at once. RESERVED_POLL_S: how often the reservation table is read for keys with
# units reserved by any proxy (`reserved_anywhere`).
SOLD_OUT_MEMORY_S = 30.0
RESERVED_POLL_S = 0.5


@dataclass
class Group:
    members: list[Member] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    prev: asyncio.Future[None] | None = None
    user: str = ""  # the batch runs as its members' user: MySQL checks their privileges
    auto: bool = False  # auto mode: a group that ends up with one member runs it plain


@dataclass
class KeyState:
    sem: asyncio.Semaphore
    waiting: int = 0
    collecting: Group | None = None
    tail: asyncio.Future[None] | None = None
    in_flight: int = 0
    batches: int = 0
    statements: int = 0
    recent: deque[tuple[float, int]] = field(default_factory=deque)
    last_seen: float = 0.0
    mode: str = ""  # the path the key's last statement took (SHOW HOT KEYS)
    plain_busy: bool = False  # auto: a statement runs as it is on the key
    plain_done: asyncio.Future[None] | None = None  # made only when a group must wait for it
    sold_out_at: float = -1e9  # auto: when a plain statement last found no stock (monotonic)

    def idle(self) -> bool:
        return (not self.plain_busy and self.collecting is None
                and (self.tail is None or self.tail.done()))

    def company(self) -> int:
        """Other decrements on the key right now: running as they are (perhaps waiting on the
        row lock in MySQL) or gathering into the next group."""
        return self.in_flight + (len(self.collecting.members) if self.collecting else 0)

    def after_plain(self) -> asyncio.Future[None]:
        """What the next group waits for while a plain statement runs."""
        if self.plain_done is None:
            self.plain_done = asyncio.get_running_loop().create_future()
        return self.plain_done


@dataclass
class RuleState:
    ok: bool | None = None
    reason: str = "not checked yet"
    floor: int | None = None  # the column type's lowest value (0: UNSIGNED)
    key_kind: str = "int"  # the key column's: "int" or "str" (hotalloc.normal_key)
    key_ci: bool = False  # ... with a case-insensitive collation
    escrow_ok: bool = True  # no foreign key points at the table: members' inserts lock nothing there
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class NotCommitted(Exception):
    """The batch provably did not commit (error before or at COMMIT, or connection lost before
    COMMIT was sent, or the batch record is absent after an interrupted COMMIT)."""

    def __init__(self, err: ProxyError | BackendError, unverified: bool = False) -> None:
        super().__init__(str(err))
        self.err = err
        self.unverified = unverified  # rolled back before COMMIT: a statement was cut short


class HotRowEngine:
    def __init__(self, app: HotRowHost) -> None:
        self.app = app
        self.keys: dict[tuple[str, str, int | str], KeyState] = {}
        self.rule_state: dict[tuple[str, str], RuleState] = {}
        self.discovered: dict[tuple[str, str], HotRowRule] = {}  # hotrow.discover
        self.table_modes: dict[str, str] = {}
        self.proxy_id = random.getrandbits(31)
        self.server_sql_mode: str | None = None  # the primary's global sql_mode (rule checks)
        self.reserved_anywhere: set[tuple[str, str, int | str]] = set()  # _watch_reservations
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bg: list[asyncio.Task[Any]] = []
        self.apply_config(app.cfg.hotrow)
        self.escrow = Escrow(self.cfg.batch_schema, self._conn, self._release,
                             self.cfg.recover_after_s)

    async def _release(self, c: BackendConn, broken: bool) -> None:
        if broken:
            c.dirty = True
        await c.pool.release(c)

    # ---- configuration and DBA control ----------------------------------------------------

    def apply_config(self, cfg: HotRowCfg) -> None:
        self.cfg = cfg
        self.rules = {(r.schema, r.table): r for r in cfg.rules}
        self.discovered = {}
        if hasattr(self, "escrow"):
            self.escrow.recover_after_s = cfg.recover_after_s
        self.global_mode = cfg.mode
        self.table_modes = {}
        for k in list(self.rule_state):
            if k not in self.rules or self.rule_state[k].ok is False:
                self.rule_state.pop(k)

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
        rows = []
        for src, rules in (("config", self.rules), ("discovered", self.discovered)):
            for (s, t), r in rules.items():
                st = self.rule_state.get((s, t), RuleState())
                rows.append((f"{s}.{t}", r.key, r.column,
                             self.table_modes.get(f"{s}.{t}", self.global_mode),
                             "ok" if st.ok else ("invalid: " if st.ok is False else "") + st.reason,
                             src))
        return rows, ["table", "key", "column", "mode", "status", "source"]

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

    async def check_rules(self, timeout: float = 5.0, force: bool = True) -> None:
        """Check the rules against the schema now (at start, when a DBA asks with SHOW HOTROW
        RULES, and every few seconds: a trigger or constraint created since is seen), as the
        first configured user: a rule pointing at a missing table or a wrong key shows up
        before the first hot statement does. Without `force`, only rules not checked yet."""
        users = [u.name for u in self.app.cfg.users]
        todo = [r for k, r in (*self.rules.items(), *self.discovered.items())
                if force or k not in self.rule_state or self.rule_state[k].ok is None]
        if not users or not todo:
            return
        try:
            async with asyncio.timeout(timeout):
                for rule in todo:
                    await self._check_rule(rule, users[0], force)
        except Exception as e:  # noqa: BLE001 - checked again on first use; never fatal here
            log.info("hot-row rules not checked yet: %s", type(e).__name__)

    async def stop(self) -> None:
        for t in self._bg:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.app.cfg.limits.shutdown_grace_s)

    async def recover_escrow(self) -> int:
        """Resolve reservations whose member is gone without this proxy knowing (a crashed
        proxy, a failover): returned to stock unless their confirm row committed."""
        users = [u.name for u in self.app.cfg.users]
        rules = {f"`{r.schema}`.`{r.table}`": r for r in self.rules.values()}
        if not users or not any(st.ok for st in self.rule_state.values()):
            return 0
        found = await self.escrow.orphans(users[0])
        for batch_id, member, table, key_sql, amount in found:
            rule = rules.get(table)
            if rule is None:
                continue  # a rule removed since: left for when it comes back
            value = _key_value(key_sql)
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
                    or not any(st.ok for st in self.rule_state.values()):
                self.reserved_anywhere = set()
                continue
            try:
                self.reserved_anywhere = await self._reserved_keys()
            except Exception as e:  # noqa: BLE001 - looked at again next round
                log.debug("reservation watch skipped: %s", type(e).__name__)

    async def _reserved_keys(self) -> set[tuple[str, str, int | str]]:
        c = await self._conn(self.app.cfg.users[0].name)
        try:
            rows, _ = await c.query(
                f"SELECT DISTINCT table_name, key_value FROM `{self.escrow.schema}`.`{RESERVATION}`"
                " LIMIT 10000")
        finally:
            await c.pool.release(c)
        out: set[tuple[str, str, int | str]] = set()
        for table, key_sql in rows or []:
            parts = (table or "").strip("`").split("`.`")
            if len(parts) != 2 or not key_sql:
                continue
            out.add((parts[0].replace("``", "`"), parts[1].replace("``", "`"),
                     _key_value(key_sql)))
        return out

    async def _housekeeping(self) -> None:
        last_prune = 0.0
        while True:
            await asyncio.sleep(5)
            try:
                await self.recover_escrow()
            except Exception as e:  # noqa: BLE001 - retried next round
                log.info("escrow recovery skipped: %s", type(e).__name__)
            if self.engaged() or self.rule_state:
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
                    if self.app.outcomes is not None and self.app.outcomes._ready:
                        await self.app.outcomes.prune()
                except (BackendError, BackendLost, ProxyError) as e:
                    log.info("outcome record pruning skipped: %s", e)

    async def _prune(self) -> None:
        if not self.rules:
            return
        c = await self._conn(self.app.cfg.users[0].name)
        try:
            await c.execute(
                f"DELETE FROM `{self.cfg.batch_schema}`.`hotrow_batch` WHERE created_at < "
                f"NOW(6) - INTERVAL {self.cfg.prune_after_s} SECOND LIMIT 10000"
            )
        except BackendError:
            pass
        finally:
            await c.pool.release(c)

    async def _conn(self, user: str) -> BackendConn:
        """A service connection on the primary: its own sql_mode (what the proxy's statements
        are written for) and, on MariaDB, no max_statement_time (a timeout must not cut a
        service transaction short; they are short by construction)."""
        pool = await self.app.writable_primary()
        c = await pool.acquire(user, self.app.password_of(user) or "", service=True)
        c.drop_cached()  # statements cached for clients: not held by a busy service connection
        try:
            await pool.apply_state(c, SERVICE_MARIADB if c.mariadb else SERVICE)
        except BaseException:
            c.dirty = True
            await pool.release(c, "service state failed")
            raise
        return c

    async def _check_rule(self, rule: HotRowRule, user: str, force: bool = False) -> RuleState:
        """Verify against the schema that merging cannot change an answer on the rule's table
        (`_verdict`, `_rule_problem`); creates the proxy's own tables. Checked once per rule, and again
        (`force`) periodically, after DDL seen through the proxy and on SHOW HOTROW RULES."""
        st = self.rule_state.setdefault((rule.schema, rule.table), RuleState())
        if st.ok is not None and not force:
            return st
        async with st.lock:
            if st.ok is not None and not force:
                return st
            c = await self._conn(user)
            try:
                await self._verdict(rule, c, st)
            finally:
                await c.pool.release(c)
        return st

    async def _verdict(self, rule: HotRowRule, c: BackendConn, st: RuleState) -> None:
        s, t = escape_string(rule.schema), escape_string(rule.table)
        col = escape_string(rule.column)
        where = f"TABLE_SCHEMA='{s}' AND TABLE_NAME='{t}'"
        res = await c.query_each(
            f"SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE {where} "
            "AND INDEX_NAME='PRIMARY' ORDER BY SEQ_IN_INDEX; "
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COALESCE(COLLATION_NAME, ''), "
            "COALESCE(GENERATION_EXPRESSION, '') FROM information_schema.COLUMNS "
            f"WHERE {where}; "
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE "
            f"EVENT_OBJECT_SCHEMA='{s}' AND EVENT_OBJECT_TABLE='{t}' "
            "AND EVENT_MANIPULATION='UPDATE'; "
            f"SELECT ENGINE, TABLE_TYPE FROM information_schema.TABLES WHERE {where}; "
            "SELECT COUNT(*) FROM information_schema.TABLE_CONSTRAINTS WHERE "
            f"CONSTRAINT_SCHEMA='{s}' AND TABLE_NAME='{t}' AND CONSTRAINT_TYPE='CHECK'; "
            "SELECT COUNT(*) FROM information_schema.KEY_COLUMN_USAGE WHERE "
            f"REFERENCED_TABLE_NAME IS NOT NULL AND (({where} AND COLUMN_NAME='{col}') OR "
            f"(REFERENCED_TABLE_SCHEMA='{s}' AND REFERENCED_TABLE_NAME='{t}' AND "
            f"REFERENCED_COLUMN_NAME='{col}')); "
            "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE "
            f"UNIQUE_CONSTRAINT_SCHEMA='{s}' AND REFERENCED_TABLE_NAME='{t}'; "
            "SELECT @@GLOBAL.sql_mode")
        pk, cols, trg, eng, chk, fkcol, fk, mode = (r or [] for r, _ in res)
        keys = [r[0].lower() for r in pk if r[0]]
        by_name = {(r[0] or "").lower(): r for r in cols}
        colrow = by_name.get(rule.column.lower())
        keyrow = by_name.get(rule.key.lower())
        self.server_sql_mode = str(mode[0][0] or "") if mode else ""
        if not pk and not cols:
            if (rule.schema, rule.table) in self.discovered:
                st.ok, st.reason = False, "table not found"  # forgotten at reload
            else:
                st.ok, st.reason = None, "table not found (checked again on next use)"
            return
        key_type = (keyrow[1] or "").lower() if keyrow else ""
        reason = _rule_problem(
            engine=(eng[0][0] or "") if eng else "", table_type=(eng[0][1] or "") if eng else "",
            keys=keys, key=rule.key, column=rule.column,
            column_type=(colrow[1] or "").lower() if colrow else "", key_type=key_type,
            generated=sum(1 for r in cols if r[4]),
            triggers=_count(trg), checks=_count(chk), fk_on_column=_count(fkcol))
        was = st.ok
        if reason is not None:
            st.ok, st.reason = False, reason
            if was is not False:
                log.warning("hot-row rule %s disabled: %s", rule.qualified, reason)
            return
        if was is not True:
            bs = self.cfg.batch_schema.replace("`", "``")
            await c.execute(f"CREATE DATABASE IF NOT EXISTS `{bs}`")
            await c.execute(
                f"CREATE TABLE IF NOT EXISTS `{bs}`.`hotrow_batch` ("
                "id BIGINT UNSIGNED NOT NULL PRIMARY KEY, "
                "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
                "table_name VARCHAR(192) NOT NULL, key_value VARCHAR(255) NOT NULL, "
                "members INT NOT NULL, total BIGINT NOT NULL, KEY (created_at)) ENGINE=InnoDB")
            for sql in escrow_ddl(self.cfg.batch_schema):
                await c.execute(sql)
            if was is False:
                log.warning("hot-row rule %s enabled again: the schema allows it", rule.qualified)
        assert colrow is not None and keyrow is not None
        st.escrow_ok = _count(fk) == 0
        st.floor = column_floor(colrow[1] or "", colrow[2] or "")
        st.key_kind = "int" if key_type in _INT_TYPES else "str"
        st.key_ci = (keyrow[3] or "").lower().endswith("_ci")
        st.ok, st.reason = True, "ok"

    def schema_changed(self) -> None:
        """DDL went through the proxy (a trigger, a constraint, a column may have changed):
        every rule is checked against the schema again before its next merge."""
        for st in self.rule_state.values():
            if st.ok is not None:
                st.ok, st.reason = None, "schema changed: checked again on next use"

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
            await self._check_rule(hs.rule, session.username or "")
            target = self._target(session, shape, values)  # again, with the schema known
            if target is None:
                return None
            hs, mode, rs = target
        if rs is None or not rs.ok:
            return None
        in_txn = _in_txn(session)
        inv = inventory_hints(shape.hints, raw_sql) if shape.hints else None
        if mode == "auto" and inv is None and self._goes_plain(hs, in_txn):
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
                session.txn_hot.add(hs.key_id)  # its transaction now holds the row lock
            return await self._queue(session, hs, ks, forward)
        # Inventory hints are honoured on the merged path, so a hinted statement merges.
        return await self._merge(session, hs, ks, rs.floor, forward,
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
        if mode != "auto" or not self._goes_plain(hs, in_txn):
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
        sql_mode = session.sysvars.get("sql_mode", self.server_sql_mode)
        escapes = sql_mode is None or "NO_BACKSLASH_ESCAPES" not in sql_mode.upper()
        hs = bind(shape.hot, values, session.database, self.rules, escapes)
        if hs is None and self.cfg.discover:
            hs = self._discover(shape.hot, values, session.database, escapes)
        if hs is None:
            return None
        mode = self.mode_for(shape, hs.rule.qualified)
        if mode == "off":
            return None
        rs = self.rule_state.get((hs.rule.schema, hs.rule.table))
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

    def _goes_plain(self, hs: HotStmt, in_txn: bool) -> bool:
        return self._may_run_plain(hs) and self._little_company(hs, in_txn)

    def _may_run_plain(self, hs: HotStmt) -> bool:
        """No units of the key are reserved by open transactions (here, or by any proxy as
        last read from the reservation table), and no plain statement found it sold out
        lately: near sell-out a plain UPDATE answers "0 rows" at once where MySQL's buyer
        would wait on the row lock for those units; a group waits for them."""
        if self._reserved_here(hs.key_id) or hs.key_id in self.reserved_anywhere:
            return False
        ks = self.keys.get(hs.key_id)
        return ks is None or time.monotonic() - ks.sold_out_at >= SOLD_OUT_MEMORY_S

    def _little_company(self, hs: HotStmt, in_txn: bool) -> bool:
        """auto: the key has too little company for a group to pay (AUTO_COMPANY)."""
        ks = self.keys.get(hs.key_id)
        return ks is None or ks.idle() or ks.company() < (
            AUTO_TXN_COMPANY if in_txn else AUTO_COMPANY)

    def _reserved_here(self, key_id: Any) -> bool:
        """Units of the key are reserved by transactions on this proxy not resolved yet."""
        ke = self.escrow.keys.get(key_id)
        return ke is not None and ke.outstanding > 0

    def _take_plain(self, session: HotRowMember, hs: HotStmt, mode: str,
                    in_txn: bool) -> KeyState:
        if in_txn:
            session.txn_hot.add(hs.key_id)  # its transaction now holds the row lock
        return self._key(hs, mode)

    def _discover(self, tpl: HotTemplate, values: list[object],
                  database: str | None, escapes: bool) -> HotStmt | None:
        """No rule names the table: with `discover`, the statement's own shape is a candidate
        rule, checked against the schema once per table like a configured one."""
        schema = tpl.schema or database
        if schema is None:
            return None
        k = (schema, tpl.table)
        if f"{schema}.{tpl.table}" in self.cfg.exclude or f"{schema}.*" in self.cfg.exclude:
            return None
        rule = self.discovered.get(k)
        if rule is None:
            if len(self.discovered) >= MAX_DISCOVERED:
                return None  # table names come from clients: bounded
            rule = self.discovered[k] = HotRowRule(schema, tpl.table, tpl.key, tpl.column)
        return bind(tpl, values, database, {k: rule}, escapes)

    def _key(self, hs: HotStmt, mode: str) -> KeyState:
        ks = self.keys.get(hs.key_id)
        if ks is None:
            ks = self.keys[hs.key_id] = KeyState(asyncio.Semaphore(self.cfg.queue_concurrency))
        ks.last_seen = time.monotonic()
        ks.statements += 1
        ks.mode = mode
        return ks

    # ---- queue -----------------------------------------------------------------------------

    async def _queue(
        self, session: HotRowMember, hs: HotStmt, ks: KeyState, forward: Callable[[], Awaitable[Any]]
    ) -> tuple[str, str]:
        name = f"{hs.rule.qualified} {hs.rule.key}={hs.key_value}"
        if ks.waiting >= self.cfg.queue_max_waiting:
            M.HOTROW_STATEMENTS.inc("queue", "rejected")
            raise ProxyError(ER_LOCK_WAIT_TIMEOUT,
                             f"Lock wait timeout exceeded; seckill-proxy hot-row queue for {name} is "
                             f"full ({self.cfg.queue_max_waiting} waiting)")
        if ks.sem not in session.held_slots:
            ks.waiting += 1
            M.HOTROW_QUEUE_DEPTH.inc()
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(ks.sem.acquire(), self.cfg.queue_wait_timeout_ms / 1000)
            except TimeoutError:
                M.HOTROW_STATEMENTS.inc("queue", "timeout")
                raise ProxyError(ER_LOCK_WAIT_TIMEOUT,
                                 f"Lock wait timeout exceeded; waited {self.cfg.queue_wait_timeout_ms} ms "
                                 f"in seckill-proxy hot-row queue for {name}") from None
            finally:
                ks.waiting -= 1
                M.HOTROW_QUEUE_DEPTH.dec()
                M.HOTROW_QUEUE_WAIT.observe(time.perf_counter() - t0)
            session.held_slots.append(ks.sem)
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

    # ---- merge -----------------------------------------------------------------------------

    async def _merge(
        self, session: HotRowMember, hs: HotStmt, ks: KeyState, floor: int | None,
        forward: Callable[[], Awaitable[Any]], auto: bool = False, txn_conn: Any = None,
        inv: Inventory | None = None,
    ) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        user = session.username or ""
        if auto:
            ks.mode = "auto:merge"
        deadline = loop.time() + self.cfg.queue_wait_timeout_ms / 1000
        while True:
            m = Member(hs.amount, hs.guard_op, hs.bound, loop.create_future(), loop.time(),
                       conn=txn_conn, target=inv.target if inv is not None else None,
                       sub=hs.sub)
            try:
                decision = await self._join(ks, hs, m, user, floor, auto)
            except ProxyError:
                if inv is not None and inv.rollback_on_fail and txn_conn is not None:
                    await self._end_txn(session, txn_conn, "ROLLBACK")
                raise
            # Near sell-out: "0 rows" while units reserved by open transactions may still come
            # back would be a lie in time; MySQL's member would wait on the row lock. Wait for
            # them to resolve (bounded like a queue wait), then try again.
            own = sum(r.amount for r in session.escrow if r.key_id == hs.key_id)
            if decision == 0 and loop.time() < deadline:
                if await self.escrow.wait_resolved(hs.key_id, deadline - loop.time(), own):
                    continue
                ke = self.escrow.keys.get(hs.key_id)
                if m.reserved_seen > max(own, ke.outstanding if ke else 0):
                    # Reserved by another proxy (or one that crashed, until recovery): no
                    # event tells when they resolve; look again shortly, as a lock waiter.
                    await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                    continue
            break
        if decision == PLAIN:
            assert m.plain_done is not None
            if txn_conn is not None:
                session.txn_hot.add(hs.key_id)
            try:
                r = await forward()
            finally:
                m.plain_done.set_result(None)
            ok = r is not None and r.err is None
            M.HOTROW_STATEMENTS.inc("auto", "plain" if ok else "error")
            return "hotrow-plain", "ok" if ok else "error"
        if m.gtid:
            session.last_gtid = m.gtid  # read-your-writes covers merged deductions too
        if decision == RUN_ALONE:
            M.HOTROW_STATEMENTS.inc("merge", "run_alone")
            if txn_conn is not None:
                session.txn_hot.add(hs.key_id)
            await forward()
            return "hotrow-merge", "ok"
        if decision == MISMATCH:
            # TARGET_AFFECT_ROW(n): the statement fails and changes nothing (allocate deducted
            # nothing for it, in autocommit as in a transaction)
            assert inv is not None
            if inv.rollback_on_fail and txn_conn is not None:
                await self._end_txn(session, txn_conn, "ROLLBACK")
            M.HOTROW_STATEMENTS.inc("merge", "target_mismatch")
            raise ProxyError(ER_INVENTORY_TARGET_AFFECT_ROW,
                             "The affected row number does not match that of user specified.")
        if m.reservation is not None:
            try:
                await self._confirm(session, m, m.reservation)
            except ProxyError:
                M.HOTROW_STATEMENTS.inc("merge", "error")
                if inv is not None and inv.rollback_on_fail:
                    await self._end_txn(session, txn_conn, "ROLLBACK")
                raise
        else:
            # It ran on no connection of the session: no warnings, ROW_COUNT() answered here.
            session.stmt_conn = Answered(decision)
        if inv is not None and inv.commit_on_success and txn_conn is not None:
            await self._end_txn(session, txn_conn, "COMMIT")
        M.HOTROW_STATEMENTS.inc("merge", "succeeded" if decision else "sold_out")
        await session.send(session.ok_packet(decision, 0, 0, INFO_HIT if decision else INFO_MISS))
        return "hotrow-merge", "ok"

    async def _join(self, ks: KeyState, hs: HotStmt, m: Member, user: str, floor: int | None,
                    auto: bool) -> int:
        """Join (or open) the key's collecting group; the member's decision."""
        g = ks.collecting
        if g is None or len(g.members) >= self.cfg.max_batch or g.user != user:
            prev = ks.tail
            if ks.plain_busy and (prev is None or prev.done()):
                prev = ks.after_plain()  # gather behind the statement running as it is
            g = Group(prev=prev, user=user, auto=auto)
            ks.collecting = g
            ks.tail = g.done
            t = asyncio.create_task(self._lead(hs, ks, g, user, floor))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)
        g.members.append(m)
        if len(g.members) >= self.cfg.max_batch:
            g.full.set()
        ks.waiting += 1
        try:
            return await m.fut  # the group runs in its own task: no shield needed
        except BaseException:
            if m.plain_done is not None and not m.plain_done.done():
                m.plain_done.set_result(None)  # told to run alone, gone first: the key moves on
            if m.reservation is not None and m.fut.done() and not m.fut.cancelled():
                self.escrow.ended([m.reservation])  # reserved, never confirmed: give it back
            raise
        finally:
            ks.waiting -= 1

    async def _confirm(self, session: HotRowMember, m: Member, r: Reservation) -> None:
        """The group reserved the member's units: its confirm row goes into its own
        transaction before it is told "1 row". Whatever ends that transaction resolves the
        reservation (the session hands it over)."""
        try:
            ok = await _on_member(m.conn, self.escrow.confirm_sql(r))
            if ok.affected_rows != 1:
                # cut short without an error (a KILL QUERY on the client's connection): no
                # confirm row, so the UPDATE did not happen for this client either
                raise ProxyError(ER_QUERY_INTERRUPTED, "Query execution was interrupted")
        except BaseException:
            self.escrow.ended([r])  # no confirm row: the units go back
            raise
        session.escrow.append(r)
        session.stmt_conn = m.conn  # ROW_COUNT() 1 and no warnings, as the UPDATE's own

    async def _end_txn(self, session: HotRowMember, c: Any, verb: str) -> None:
        """COMMIT_ON_SUCCESS / ROLLBACK_ON_FAIL: end the member's transaction on its own
        connection; a COMMIT's OK waits for a replica under `ack: replica`, as any COMMIT."""
        ok = await _on_member(c, verb)
        session.status = ok.status
        if verb == "COMMIT" and ok.gtid:
            session.last_gtid = ok.gtid
            if self.app.durability.wants_ack:
                await self.app.durability.wait_ack(ok.gtid)

    async def _lead(self, hs: HotStmt, ks: KeyState, g: Group, user: str,
                    floor: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.max_wait_us / 1e6
        try:
            busy = g.prev is not None and not g.prev.done()
            if busy:
                assert g.prev is not None
                await asyncio.shield(g.prev)
            # With no earlier group in flight the leader commits at once (waiting would only add
            # latency); when one is in flight, followers gather while it commits, and after it
            # the leader may still wait up to max_wait_us for the group to fill.
            left = deadline - loop.time()
            if busy and left > 0 and not g.full.is_set():
                try:
                    await asyncio.wait_for(g.full.wait(), left)
                except TimeoutError:
                    pass
            if ks.collecting is g:
                ks.collecting = None
            ks.in_flight += len(g.members)
            if g.auto and len(g.members) == 1 and self._may_run_plain(hs):
                # Nobody came: the lone member runs its own statement; the key's next group
                # starts once it is done, as after a group. (Not past open reservations: the
                # group waits for them near sell-out, a plain UPDATE would not, _goes_plain.)
                m = g.members[0]
                if not m.fut.done():  # (its client may be gone)
                    m.plain_done = loop.create_future()
                    m.fut.set_result(PLAIN)
                    await asyncio.shield(m.plain_done)
                return
            await self._commit_group(hs, g, user, floor, ks)
        except BaseException as e:  # never leave a member waiting forever
            for m in g.members:
                if not m.fut.done():
                    m.fut.set_exception(
                        e if isinstance(e, ProxyError) else
                        ProxyError(CR_SERVER_LOST, f"seckill-proxy batch aborted: {type(e).__name__}"))
            if not isinstance(e, Exception):
                raise
        finally:
            ks.in_flight -= len(g.members)
            if ks.collecting is g:
                ks.collecting = None
            if not g.done.done():
                g.done.set_result(None)

    async def _commit_group(
        self, hs: HotStmt, g: Group, user: str, floor: int | None, ks: KeyState
    ) -> None:
        last: NotCommitted | None = None
        for attempt in (1, 2):
            try:
                decisions = await self._batch(hs, g.members, user, floor)
            except NotCommitted as e:
                last = e
                log.warning("hot-row batch for %s did not commit (attempt %d): %s",
                            hs.rule.qualified, attempt, e)
                if isinstance(e.err, BackendError):
                    break  # the database refused it: no retry of the same (see below)
                if attempt == 1 and e.err.code in (2013, 9102) and self.app.monitor is not None:
                    # The connection died: let the monitor see the servers again (a restart or
                    # a failover) before the one retry, so it goes to a live primary.
                    await self.app.monitor.next_round()
                continue
            ks.batches += 1
            ks.recent.append((time.monotonic(), len(g.members)))
            ack_err: ProxyError | None = None
            gtid = g.members[0].gtid if g.members else None
            if gtid and self.app.durability.wants_ack and any(
                    d == 1 and m.conn is None for m, d in zip(g.members, decisions, strict=True)):
                try:
                    await self.app.durability.wait_ack(gtid)  # one wait serves the whole batch
                except ProxyError as e:
                    ack_err = e
            for m, d in zip(g.members, decisions, strict=True):
                if not m.fut.done():
                    if ack_err is not None and d == 1:
                        m.fut.set_exception(ack_err)
                    else:
                        m.fut.set_result(d)
            return
        assert last is not None
        err = last.err
        code = err.code
        if isinstance(err, BackendError) or last.unverified or code in _NO_PRIVILEGE:
            # The database refused the group's transaction (a privilege on the proxy's own
            # tables, a constraint or trigger added since the rule was checked, a lock wait,
            # a value out of range) or it did not do what was allocated: nothing committed.
            # MySQL would have answered each statement alone, so each runs alone, and the rule
            # is checked against the schema again before the next merge.
            if code in _NO_PRIVILEGE:
                log.warning("hot-row batch as user %s lacks privileges on %s (%s): statements "
                            "run unmerged; grant SELECT, INSERT, DELETE on `%s`.* to merge them",
                            g.user, self.cfg.batch_schema, err, self.cfg.batch_schema)
            elif code not in _TRANSIENT:
                self.schema_changed()
            for m in g.members:
                if not m.fut.done():
                    m.fut.set_result(RUN_ALONE)
            return
        for m in g.members:
            if not m.fut.done():
                M.HOTROW_STATEMENTS.inc("merge", "error")
                m.fut.set_exception(err if isinstance(err, ProxyError) else _as_proxy_error(err))

    async def _batch(
        self, hs: HotStmt, members: list[Member], user: str, floor: int | None
    ) -> list[int]:
        """One backend transaction for the whole group; returns each member's decision.

        Verified before it commits: the locked row's value (and whether the row exists) is
        read, the statements that follow must affect exactly the rows allocated (one stock row,
        one reservation per member inside a transaction, one batch record), and COMMIT goes in
        a round trip of its own. A statement cut short (KILL QUERY, a timeout: MariaDB may
        answer "OK, 0 rows" without an error) rolls the batch back as not committed."""
        r = hs.rule
        tbl = f"`{r.schema}`.`{r.table}`"
        key = sql_literal(hs.key_value)
        batch_id = (self.proxy_id << 32) | (next(self._seq) & 0xFFFFFFFF)
        t0 = time.perf_counter()
        try:
            c = await self._conn(user)
        except (BackendLost, BackendError) as e:
            raise NotCommitted(_as_proxy_error(e)) from None
        pool = c.pool
        commit_sent = False
        decisions: list[int] = []
        reserve: list[tuple[Reservation, Member]] = []
        try:
            rows, _ = await c.query(
                f"START TRANSACTION; SELECT `{r.column}` FROM {tbl} WHERE `{r.key}` = {key} FOR UPDATE")
            exists = bool(rows)
            if not exists and await row_exists(c, tbl, r.key, key):  # a read cut short
                raise Unverified(f"locking read of {tbl} {key} returned nothing")
            current = int(rows[0][0]) if rows and rows[0][0] is not None else None
            decisions, total = allocate(current, members, floor, exists)
            if 0 in decisions:  # near sell-out: units still reserved by open transactions?
                held = await self._reserved_on(c, tbl, key)
                for m, d in zip(members, decisions, strict=True):
                    if d == 0:
                        m.reserved_seen = held
            # Members inside transactions: their units are reserved, not sold (escrow.py).
            reserve = [(Reservation(tbl, r.key, r.column, key, hs.key_id, batch_id, i, m.amount,
                                    user), m)
                       for i, (m, d) in enumerate(zip(members, decisions, strict=True))
                       if d == 1 and m.conn is not None]
            stmts: list[tuple[str, int, str]] = []  # (statement, rows it must affect, what)
            if total:
                stmts.append((f"UPDATE {tbl} SET `{r.column}` = `{r.column}` - {total} "
                              f"WHERE `{r.key}` = {key}", 1, "UPDATE"))
            if reserve:
                stmts.append((self.escrow.reservation_sql(
                    (rv, m.conn.thread_id) for rv, m in reserve), len(reserve), "INSERT"))
            stmts.append((
                f"INSERT INTO `{self.cfg.batch_schema}`.`hotrow_batch` "
                f"(id, table_name, key_value, members, total) VALUES ({batch_id}, "
                f"'{escape_string(r.qualified)}', {sql_literal(str(hs.key_value))}, "
                f"{len(members)}, {total})", 1, "INSERT"))
            bad = await run_checked(c, stmts)
            if bad:
                what, want, got = bad[0]
                raise Unverified(f"{what} affected {got} rows, expected {want}")
            commit_sent = True
            ok = await c.execute("COMMIT")
        except (BackendError, Unverified) as e:
            # An error or an unverified statement: COMMIT was not sent (MySQL also stops a
            # multi-statement at its first error); the pool's reset rolls the batch back.
            c.dirty = True
            await pool.release(c, "batch error")
            if isinstance(e, Unverified):
                log.warning("hot-row batch for %s rolled back: %s", r.qualified, e)
                raise NotCommitted(ProxyError(
                    CR_SERVER_LOST, f"seckill-proxy batch rolled back: {e}"), True) from None
            raise NotCommitted(e) from None
        except BackendLost as e:
            await pool.release(c, "batch connection lost")
            if not commit_sent:
                raise NotCommitted(_as_proxy_error(e)) from None
            decisions = await self._in_doubt(hs, batch_id, user, decisions, e)
            ok = None
        else:
            await pool.release(c)
        for rv, m in reserve:
            m.reservation = rv
            self.escrow.reserved(rv)
        if ok is not None and ok.gtid:
            for m in members:
                m.gtid = ok.gtid
        M.HOTROW_BATCH_SIZE.observe(len(members))
        M.HOTROW_BATCH_COMMIT.observe(time.perf_counter() - t0)
        return decisions

    async def _reserved_on(self, c: BackendConn, tbl: str, key: str) -> int:
        """Units reserved on a key by any proxy's members whose transactions are still open
        (their connection is on this server; a crashed proxy's reservations wait for
        recovery and are not waited for), not resolved yet (escrow.py)."""
        bs = self.cfg.batch_schema.replace("`", "``")
        try:
            rows, _ = await c.query(
                f"SELECT COALESCE(SUM(amount), 0) FROM `{bs}`.`{RESERVATION}` WHERE "
                f"table_name = '{escape_string(tbl)}' AND key_value = '{escape_string(key)}' "
                "AND server_id = @@server_id AND conn_id IN "
                "(SELECT ID FROM information_schema.PROCESSLIST)")
        except BackendError:
            return 0  # the statement failed alone; the batch's transaction goes on
        return int(rows[0][0] or 0) if rows else 0

    async def _in_doubt(
        self, hs: HotStmt, batch_id: int, user: str, decisions: list[int], e: BackendLost
    ) -> list[int]:
        """COMMIT was sent and the connection died: look the batch record up to learn the truth.

        A locking read waits for a COMMIT still in flight on the server; after a primary restart,
        crash recovery has settled the transaction before the server accepts connections.
        """
        log.warning("hot-row batch %d: connection lost during COMMIT (%s); resolving", batch_id, e)
        found = await find_record(self.app, f"`{self.cfg.batch_schema}`.`hotrow_batch`", batch_id,
                                  user, self.app.password_of(user) or "")
        if found:
            M.HOTROW_IN_DOUBT.labels("committed").inc()
            log.warning("hot-row batch %d committed", batch_id)
            return decisions
        if found is False:
            M.HOTROW_IN_DOUBT.labels("not_committed").inc()
            log.warning("hot-row batch %d did not commit", batch_id)
            raise NotCommitted(ProxyError(
                ER_SECKILL_NOT_COMMITTED, "Lost connection to MySQL server during COMMIT; "
                "seckill-proxy verified the statement was NOT applied"))
        M.HOTROW_IN_DOUBT.labels("unknown").inc()
        raise _Unknown(ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during COMMIT; "
                                  "outcome unknown (primary unreachable)"))


class _Unknown(ProxyError):
    def __init__(self, err: ProxyError) -> None:
        super().__init__((err.code, err.sqlstate), err.message)


def _in_txn(session: HotRowMember) -> bool:
    return bool(session.status & P.SERVER_STATUS_IN_TRANS) or (
        session.sysvars.get("autocommit", "ON").upper() in ("OFF", "0"))


def _as_proxy_error(e: BackendError | BackendLost | ProxyError) -> ProxyError:
    if isinstance(e, ProxyError):
        return e
    if isinstance(e, BackendError):
        return ProxyError((e.code, e.sqlstate), e.message)
    return ProxyError(ER_SECKILL_NOT_COMMITTED,
                      f"Lost connection to MySQL server ({e.reason}); statement NOT applied")


async def _on_member(c: Any, sql: str) -> P.OkPacket:
    """A statement the engine runs inside a member's transaction, on its own connection;
    errors as the client would get them (a lost connection ends its transaction)."""
    try:
        return await c.execute(sql)  # type: ignore[no-any-return]
    except BackendError as e:
        raise ProxyError((e.code, e.sqlstate), e.message) from None
    except BackendLost as e:
        raise ProxyError(
            CR_SERVER_LOST, f"Lost connection to MySQL server during query ({e.reason}); "
            "the transaction was rolled back or its outcome is unknown", fatal=True) from None


_INT_TYPES = frozenset({"tinyint", "smallint", "mediumint", "int", "bigint"})
_STR_TYPES = frozenset({"char", "varchar", "binary", "varbinary"})


def _count(rows: list[list[str | None]]) -> int:
    return int(rows[0][0] or 0) if rows else 0


def _rule_problem(*, engine: str, table_type: str, keys: list[str], key: str, column: str,
                  column_type: str, key_type: str, generated: int, triggers: int, checks: int,
                  fk_on_column: int) -> str | None:
    """Why a table's decrements must not be merged, or None. A merged group runs one UPDATE
    by the total where MySQL would run one per member: anything that acts per statement or
    per row change (triggers, CHECK constraints, generated columns, foreign keys on the
    column, system versioning) or a key MySQL may match loosely would tell them apart."""
    if engine.lower() != "innodb":
        return f"{engine or 'unknown'} table, not InnoDB (no row locks)"
    if keys != [key]:
        return f"primary key is ({', '.join(keys) or 'none'}), not ({key})"
    if column_type not in _INT_TYPES:
        return f"column {column} is not an integer column"
    if key_type not in _INT_TYPES and key_type not in _STR_TYPES:
        return f"key {key} is {key_type or 'unknown'}, not an integer or string column"
    if triggers:
        return "table has UPDATE triggers"
    if checks:
        return "table has CHECK constraints"
    if generated:
        return "table has generated columns"
    if fk_on_column:
        return f"column {column} is in a foreign key"
    if "versioned" in table_type.lower():
        return "table is system-versioned"
    return None


def _key_value(key_sql: str) -> int | str:
    """A key as the engine holds it, from the SQL literal kept in the proxy's tables."""
    return int(key_sql) if key_sql.lstrip("-").isdigit() else mysql_unescape(key_sql[1:-1], "'")
