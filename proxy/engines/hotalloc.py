"""Hot decrements, the pure parts: a statement bound to its rule and values, AliSQL's
inventory hints, and the allocation of a group's stock to its members in arrival order (each
gets what it would have got alone). No I/O: tested in tables and with hypothesis
(tests/test_classify.py); the engine (hotrow.py) runs them.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any, Final

from pymysql.converters import escape_string

from proxy.core.config import HotRowRule
from proxy.core.errors import ER_PARSE_ERROR, ProxyError
from proxy.engines.escrow import Reservation
from proxy.plan.classify import parse_hints
from proxy.plan.hotshape import Escaped, HotTemplate, Unsupported

MAX_KEY_SQL: Final = 250  # a hot key's SQL literal fits the batch and reservation records


class HotStmt:
    """A recognised hot decrement bound to its values; never changed once made (`with_key`
    makes another). A plain class, not a frozen dataclass: compiled, its constructor runs per
    hot statement, and a frozen dataclass's sets each field through object.__setattr__."""

    def __init__(self, rule: HotRowRule, key_value: int | str, amount: int,
                 guard_op: str | None, bound: int | None, sub: int | None = None) -> None:
        self.rule = rule
        self.key_value = key_value
        self.amount = amount
        self.guard_op = guard_op
        self.bound = bound
        self.sub = sub  # the guard's `c - s` form: s (MySQL computes c - s, may overflow)
        self.key_id: tuple[str, str, int | str] = (rule.schema, rule.table, key_value)

    def with_key(self, key_value: int | str) -> HotStmt:
        return HotStmt(self.rule, key_value, self.amount, self.guard_op, self.bound, self.sub)

    def __repr__(self) -> str:
        return (f"HotStmt({self.rule.qualified}, key={self.key_value!r}, amount={self.amount}, "
                f"guard={self.guard_op} {self.bound}, sub={self.sub})")


MAX_AMOUNT: Final = 1 << 62  # larger amounts (and group totals) take the normal path: BIGINT arithmetic


def rule_of(tpl: HotTemplate, database: str | None,
            rules: dict[tuple[str, str], HotRowRule]) -> HotRowRule | None:
    """The rule naming the template's table (in the session's database when the statement
    names no schema), key and column; None: no rule is about this statement."""
    schema = tpl.schema or database  # case-sensitive, as table names are in MySQL on Linux
    if schema is None:
        return None
    rule = rules.get((schema, tpl.table))
    if rule is None or rule.key != tpl.key or rule.column != tpl.column:
        return None
    return rule


def bind(
    tpl: HotTemplate, values: list[object], database: str | None,
    rules: dict[tuple[str, str], HotRowRule], backslash_escapes: bool = True,
) -> HotStmt | None:
    """Match a template and its values against the rules; None means: take the normal path.

    A string key written with a backslash escape is decoded as MySQL decodes it, unless the
    session has NO_BACKSLASH_ESCAPES (`backslash_escapes` False): then it is not merged."""
    rule = rule_of(tpl, database, rules)
    if rule is None:
        return None
    if len(values) <= tpl.need:
        return None
    amount = values[tpl.amount_pos]
    key = values[tpl.key_pos]
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < MAX_AMOUNT:
        return None
    if isinstance(key, Escaped):
        if not backslash_escapes:
            return None
        key = key.value
    if isinstance(key, Unsupported) or not isinstance(key, (int, str)) or isinstance(key, bool):
        return None
    if isinstance(key, str) and len(sql_literal(key)) > MAX_KEY_SQL:
        return None  # a key this long is no inventory key; batch records keep 255 characters
    bound = sub = None
    if tpl.guard_pos is not None:
        b = values[tpl.guard_pos]
        if not isinstance(b, int) or isinstance(b, bool):
            return None
        bound = b
        if tpl.guard_sub_pos is not None:
            s = values[tpl.guard_sub_pos]
            if not isinstance(s, int) or isinstance(s, bool) or s <= 0:
                return None
            if s >= MAX_AMOUNT:
                return None
            sub = s
            bound += s  # c - s >= b  <=>  c >= b + s
    return HotStmt(rule, key, amount, tpl.guard_op, bound, sub)


def read_only(sysvars: dict[str, str]) -> bool:
    v = sysvars.get("transaction_read_only", sysvars.get("tx_read_only", "OFF"))
    return v.upper() in ("ON", "1")


@dataclass(init=False, eq=False)
class Member:
    """One merged statement waiting for its group's decision. Its `__init__` is written out:
    mypyc compiles it, where a dataclass's generated one runs interpreted (once per merged
    statement). Each member is its own (identity equality)."""

    amount: int
    guard_op: str | None
    bound: int | None
    fut: asyncio.Future[int] = field(repr=False)
    arrived: float
    gtid: str | None
    # auto mode: a member alone in its group runs its own statement (decision PLAIN) and sets
    # this when done, so the key's next group waits for it as for a group.
    plain_done: asyncio.Future[None] | None = field(repr=False)
    # inside a transaction: the member's own connection (its confirm row goes there) and,
    # once the batch committed, its reservation
    conn: Any = field(repr=False)
    reservation: Reservation | None
    # told 0 rows: units reserved on the key (by any proxy) when its batch allocated
    reserved_seen: int
    target: int | None  # TARGET_AFFECT_ROW(n): the rows it must have, or it fails
    sub: int | None  # its guard is `c - sub OP b` (HotStmt.sub)
    deadline: float  # loop time until which "0 rows" may wait for reserved units

    def __init__(self, amount: int, guard_op: str | None, bound: int | None,
                 fut: asyncio.Future[int] | None = None, arrived: float = 0.0,
                 conn: Any = None, target: int | None = None, sub: int | None = None) -> None:
        self.amount = amount
        self.guard_op = guard_op
        self.bound = bound
        self.fut = fut  # type: ignore[assignment]  # (None only in allocation's tests)
        self.arrived = arrived
        self.gtid = None
        self.plain_done = None
        self.conn = conn
        self.reservation = None
        self.reserved_seen = 0
        self.target = target
        self.sub = sub
        self.deadline = 0.0


RUN_ALONE: Final = -1  # decision: the member runs its own statement after the group (MySQL answers it)
PLAIN: Final = -2  # decision for a member of a group of one in auto mode: run your own statement
MISMATCH: Final = -3  # TARGET_AFFECT_ROW(n) differs from the member's rows: it fails, changes nothing


def allocate(current: int | None, members: list[Member], floor: int | None,
             exists: bool = True) -> tuple[list[int], int]:
    """Decide each member in arrival order, as if each ran alone: 1 hit, 0 miss, RUN_ALONE,
    MISMATCH. Returns (decisions, total deducted).

    `current` is the locked row's value (None: no row if not `exists`, else NULL), `floor` the
    column type's lowest value (0 for UNSIGNED; None: unbounded). A member whose own result
    would leave the type's range gets RUN_ALONE: MySQL answers it alone with an error (strict
    mode, UNSIGNED) or a clipped value and a warning, which the group does not imitate; the
    others are not failed with it. A member with TARGET_AFFECT_ROW(n) whose rows would not be
    n gets MISMATCH and deducts nothing.
    """
    out: list[int] = []
    if current is None:
        for m in members:
            # NULL - n is NULL: a guard is not true (0 rows); unguarded it matches, changes
            # nothing, and CLIENT_FOUND_ROWS would count it: MySQL answers that one alone
            d = 0 if not exists or m.guard_op is not None else RUN_ALONE
            out.append(MISMATCH if d >= 0 and m.target is not None and m.target != d else d)
        return out, 0
    cur = current
    for m in members:
        if m.sub is not None and floor == 0 and cur - m.sub < 0:
            # UNSIGNED: MySQL's `c - s` in the guard is out of range (1690) before any compare
            out.append(RUN_ALONE)
            continue
        if m.guard_op == ">":
            ok = cur > (m.bound or 0)
        elif m.guard_op == ">=":
            ok = cur >= (m.bound or 0)
        else:
            ok = True
        if ok and ((floor is not None and cur - m.amount < floor)
                   or current - cur + m.amount >= MAX_AMOUNT):
            out.append(RUN_ALONE)
            continue
        d = 1 if ok else 0
        if m.target is not None and m.target != d:
            out.append(MISMATCH)
            continue
        if ok:
            cur -= m.amount
        out.append(d)
    return out, current - cur


def all_hit_bound(members: list[Member], floor: int | None) -> tuple[int, int] | None:
    """The least value of the locked row for which `allocate` gives every member 1, and the
    total it then deducts; None where no such bound is known (a TARGET_AFFECT_ROW other than 1,
    nothing that bounds the value from below, a total past MAX_AMOUNT). A group's first try
    (hotmerge.py) guards its UPDATE with it: at or above it the UPDATE is the one the
    allocation would run, below it the UPDATE matches nothing (and so raises no range error)."""
    need: int | None = None
    prefix = 0  # what the members before this one deduct
    for m in members:
        if m.target is not None and m.target != 1:
            return None
        lows = []
        if m.sub is not None and floor == 0:
            lows.append(m.sub)  # `c - sub` stays in UNSIGNED range
        if m.guard_op == ">":
            lows.append((m.bound or 0) + 1)
        elif m.guard_op == ">=":
            lows.append(m.bound or 0)
        if floor is not None:
            lows.append(floor + m.amount)  # its own result stays in the type's range
        for lo in lows:
            need = lo + prefix if need is None else max(need, lo + prefix)
        prefix += m.amount
    if need is None or prefix >= MAX_AMOUNT:
        return None
    return need, prefix


INT_FLOORS: Final = {"tinyint": -(1 << 7), "smallint": -(1 << 15), "mediumint": -(1 << 23),
              "int": -(1 << 31), "bigint": -(1 << 63)}


def column_floor(data_type: str, column_type: str) -> int | None:
    """The lowest value of an integer column (information_schema's DATA_TYPE, COLUMN_TYPE)."""
    if "unsigned" in column_type.lower() or "zerofill" in column_type.lower():
        return 0
    return INT_FLOORS.get(data_type.lower())


_INT_TEXT: Final = re.compile(r"-?(?:0|[1-9][0-9]{0,14})")


def normal_key(key: int | str, kind: str, ci: bool) -> int | str | None:
    """The key as the engine groups it, or None where the proxy cannot tell which row MySQL
    would match (then it is not merged). `kind` is the key column's: "int" or "str"; `ci` a
    case-insensitive collation. On an integer key '195' is 195 (MySQL compares them as
    numbers); on a string key a number would be compared as a double (many strings match it),
    and only printable ASCII without trailing spaces is grouped (folded for a _ci collation):
    other characters may be equal under a collation in ways not modelled here."""
    if kind == "int":
        if isinstance(key, int):
            return key
        return int(key) if _INT_TEXT.fullmatch(key) else None
    if kind == "str" and isinstance(key, str):
        if not all(" " <= ch <= "~" for ch in key) or key.endswith(" "):
            return None
        return key.lower() if ci else key
    return None


# sql_mode flags under which a merged decrement answers as the statement would alone; any
# other flag (ANSI_QUOTES, NO_UNSIGNED_SUBTRACTION, EMPTY_STRING_IS_NULL, PIPES_AS_CONCAT,
# IGNORE_SPACE, HIGH_NOT_PRECEDENCE, ORACLE, ...) changes how the statement parses or computes:
# such a session takes the normal path. Range errors, clipping and NO_BACKSLASH_ESCAPES are
# handled per member (allocate, bind).
MERGE_SQL_MODES: Final = frozenset({
    "STRICT_TRANS_TABLES", "STRICT_ALL_TABLES", "ERROR_FOR_DIVISION_BY_ZERO",
    "NO_AUTO_CREATE_USER", "NO_ENGINE_SUBSTITUTION", "NO_ZERO_DATE", "NO_ZERO_IN_DATE",
    "ONLY_FULL_GROUP_BY", "NO_AUTO_VALUE_ON_ZERO", "NO_DIR_IN_CREATE", "PAD_CHAR_TO_FULL_LENGTH",
    "NO_BACKSLASH_ESCAPES", "ALLOW_INVALID_DATES", "IGNORE_BAD_TABLE_OPTIONS", "NO_FIELD_OPTIONS",
    "NO_KEY_OPTIONS", "NO_TABLE_OPTIONS", "REAL_AS_FLOAT", "SIMULTANEOUS_ASSIGNMENT",
    "TIME_ROUND_FRACTIONAL",
})


_MODES: dict[str, tuple[bool, str | None]] = {}  # _mode_facts per sql_mode text (a handful)


def _mode_facts(sql_mode: str) -> tuple[bool, str | None]:
    """What the hot-row engine asks of a session's sql_mode, per hot statement: whether
    backslashes escape in string literals, and the first flag that keeps its decrements from
    merging (or None). Remembered per text (bounded: the texts come from clients)."""
    got = _MODES.get(sql_mode)
    if got is None:
        up = sql_mode.upper()
        blocks = None
        for flag in up.split(","):
            f = flag.strip()
            if f and f not in MERGE_SQL_MODES:
                blocks = f
                break
        if len(_MODES) >= 256:
            _MODES.clear()
        got = _MODES[sql_mode] = ("NO_BACKSLASH_ESCAPES" not in up, blocks)
    return got


def backslash_escapes(sql_mode: str | None) -> bool:
    """Backslashes escape in string literals: no NO_BACKSLASH_ESCAPES (an unknown sql_mode,
    None, is the server default's)."""
    return True if sql_mode is None else _mode_facts(sql_mode)[0]


def sql_mode_blocks(sql_mode: str) -> str | None:
    """The first sql_mode flag that keeps a session's hot decrements from merging, or None."""
    return _mode_facts(sql_mode)[1]


def sql_literal(v: int | str) -> str:
    if isinstance(v, int):
        return str(v)
    return "'" + escape_string(v) + "'"


@dataclass(frozen=True)
class Inventory:
    """AliSQL's inventory hints on a hot decrement (honoured on the merged path)."""

    commit_on_success: bool
    rollback_on_fail: bool
    target: int | None  # TARGET_AFFECT_ROW(n)


def inventory_hints(hints: dict[str, str], raw_sql: str) -> Inventory | None:
    if not ("COMMIT_ON_SUCCESS" in hints or "ROLLBACK_ON_FAIL" in hints
            or "TARGET_AFFECT_ROW" in hints):
        return None
    target = None
    if "TARGET_AFFECT_ROW" in hints:  # the digest hides the number: read it from the text
        raw = parse_hints(raw_sql).get("TARGET_AFFECT_ROW", "")
        if not raw.isdigit():
            raise ProxyError(ER_PARSE_ERROR, "TARGET_AFFECT_ROW needs a number of rows")
        target = int(raw)
    return Inventory("COMMIT_ON_SUCCESS" in hints, "ROLLBACK_ON_FAIL" in hints, target)
