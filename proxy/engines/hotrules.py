"""The hot-row rules and what the schema says of them: whether merging a table's decrements
can change an answer MySQL would give (triggers, CHECK constraints, generated columns, foreign
keys on the column, system versioning, the key's type), checked against information_schema
at start, after DDL, every few seconds and on SHOW HOTROW RULES; and tables discovered from
statements' shapes (`hotrow.discover`). The engine (hotrow.py) asks `RuleBook` before it merges."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymysql.converters import escape_string

from proxy.core.config import HotRowCfg, HotRowRule
from proxy.engines.escrow import ddl as escrow_ddl
from proxy.engines.hotalloc import HotStmt, bind, column_floor
from proxy.plan.hotshape import HotTemplate, mysql_unescape

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn

log = logging.getLogger("seckill.hotrow")

MAX_DISCOVERED = 1000  # tables hotrow.discover keeps candidate rules for
VERDICT_TRIES = 3  # a check the schema keeps changing under is left undecided (not merged)



@dataclass
class RuleState:
    ok: bool | None = None
    reason: str = "not checked yet"
    floor: int | None = None  # the column type's lowest value (0: UNSIGNED)
    key_kind: str = "int"  # the key column's: "int" or "str" (hotalloc.normal_key)
    key_ci: bool = False  # ... with a case-insensitive collation
    escrow_ok: bool = True  # no foreign key points at the table: members' inserts lock nothing there
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class RuleBook:
    """The configured and discovered rules, each one's state against the schema."""

    def __init__(self, cfg: HotRowCfg, conn: Callable[[str], Awaitable[BackendConn]],
                 users: Callable[[], list[str]]) -> None:
        self.rule_state: dict[tuple[str, str], RuleState] = {}
        self.discovered: dict[tuple[str, str], HotRowRule] = {}
        self.server_sql_mode: str | None = None  # the primary's global sql_mode
        # Bumped as each DDL seen starts and ends (`schema_changed`): a check that read the
        # schema before must not hand down its verdict (a trigger created meanwhile would be
        # bypassed), nor one that ran while a DDL did (`ddl_running`).
        self.schema_generation = 0
        self.ddl_running = 0
        self._conn = conn  # a service connection on the primary (hotrow.service_conn)
        self.users = users  # the configured users: checks run as the first
        self.apply_config(cfg)

    def apply_config(self, cfg: HotRowCfg) -> None:
        self.cfg = cfg
        self.rules = {(r.schema, r.table): r for r in cfg.rules}
        self.discovered = {}
        for k in list(self.rule_state):
            if k not in self.rules or self.rule_state[k].ok is False:
                self.rule_state.pop(k)

    def rules_table(self, mode_of: Callable[[str], str]) -> Any:
        rows = []
        for src, rules in (("config", self.rules), ("discovered", self.discovered)):
            for (s, t), r in rules.items():
                st = self.rule_state.get((s, t), RuleState())
                rows.append((f"{s}.{t}", r.key, r.column,
                             mode_of(f"{s}.{t}"),
                             "ok" if st.ok else ("invalid: " if st.ok is False else "") + st.reason,
                             src))
        return rows, ["table", "key", "column", "mode", "status", "source"]

    async def check_rules(self, timeout: float = 5.0, force: bool = True) -> None:
        """Check the rules against the schema now (at start, when a DBA asks with SHOW HOTROW
        RULES, and every few seconds: a trigger or constraint created since is seen), as the
        first configured user: a rule pointing at a missing table or a wrong key shows up
        before the first hot statement does. Without `force`, only rules not checked yet."""
        users = self.users()
        todo = [r for k, r in (*self.rules.items(), *self.discovered.items())
                if force or k not in self.rule_state or self.rule_state[k].ok is None]
        if not users or not todo:
            return
        try:
            async with asyncio.timeout(timeout):
                for rule in todo:
                    await self.check(rule, users[0], force)
        except Exception as e:  # noqa: BLE001 - checked again on first use; never fatal here
            log.info("hot-row rules not checked yet: %s", type(e).__name__)

    async def check(self, rule: HotRowRule, user: str, force: bool = False) -> RuleState:
        """Verify against the schema that merging cannot change an answer on the rule's table
        (`_verdict`, `_rule_problem`); creates the proxy's own tables. Checked once per rule, and again
        (`force`) periodically, after DDL seen through the proxy and on SHOW HOTROW RULES."""
        st = self.rule_state.setdefault((rule.schema, rule.table), RuleState())
        if (st.ok is not None and not force) or self.ddl_running:
            return st  # (while a DDL runs there is nothing to decide: the normal path)
        async with st.lock:
            if st.ok is not None and not force:
                return st
            c = await self._conn(user)
            try:
                for _ in range(VERDICT_TRIES):
                    seen = self.schema_generation
                    await self._verdict(rule, c, st)
                    if seen == self.schema_generation and not self.ddl_running:
                        break
                    st.ok, st.reason = None, "schema changing: checked again on next use"
                    if self.ddl_running:
                        break  # (until it ends, statements take the normal path)
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

    def merge_gate(self, rule: HotRowRule) -> int | None:
        """The schema generation under which the rule is known good now, or None (not checked
        since the last DDL, or a DDL running). A group's batch (hotmerge.py) runs only with
        one, and goes on only if the generation has not moved once its locking read holds the
        table's metadata lock (`schema_same`): a DDL through this proxy that ran before that
        lock was taken is then seen, so no group merges over a trigger it did not check."""
        st = self.rule_state.get((rule.schema, rule.table))
        if st is None or not st.ok or self.ddl_running:
            return None
        return self.schema_generation

    def schema_same(self, generation: int) -> bool:
        return generation == self.schema_generation and not self.ddl_running

    def ddl_started(self) -> None:
        """A statement that may change a hot table's schema (DDL, CALL, multi-statements) is
        sent through the proxy: nothing merges until it has ended (`ddl_ended`), so no group
        runs between its commit on the server and the proxy's reading of its answer."""
        self.ddl_running += 1
        self.schema_changed()

    def ddl_ended(self) -> None:
        self.ddl_running -= 1
        self.schema_changed()

    def schema_changed(self) -> None:
        """DDL went through the proxy (a trigger, a constraint, a column may have changed):
        every rule is checked against the schema again before its next merge, and a check
        under way when it happened decides nothing (`check`)."""
        self.schema_generation += 1
        for st in self.rule_state.values():
            if st.ok is not None:
                st.ok, st.reason = None, "schema changed: checked again on next use"

    def discover(self, tpl: HotTemplate, values: list[object],
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


def key_value(key_sql: str) -> int | str:
    """A key as the engine holds it, from the SQL literal kept in the proxy's tables."""
    return int(key_sql) if key_sql.lstrip("-").isdigit() else mysql_unescape(key_sql[1:-1], "'")
