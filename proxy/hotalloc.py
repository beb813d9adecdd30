"""Hot decrements, the pure parts: a statement bound to its rule and values, AliSQL's
inventory hints, and the allocation of a group's stock to its members in arrival order (each
gets what it would have got alone). No I/O: tested in tables and with hypothesis
(tests/test_classify.py); the engine (hotrow.py) runs them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from pymysql.converters import escape_string

from .classify import HotTemplate, Unsupported, parse_hints
from .config import HotRowRule
from .errors import ER_PARSE_ERROR, ProxyError
from .escrow import Reservation

MAX_KEY_SQL = 250  # a hot key's SQL literal fits the batch and reservation records


@dataclass(frozen=True)
class HotStmt:
    """A recognised hot decrement bound to its values."""

    rule: HotRowRule
    key_value: int | str
    amount: int
    guard_op: str | None
    bound: int | None

    @property
    def key_id(self) -> tuple[str, str, int | str]:
        return (self.rule.schema, self.rule.table, self.key_value)


def bind(
    tpl: HotTemplate, values: list[object], database: str | None,
    rules: dict[tuple[str, str], HotRowRule],
) -> HotStmt | None:
    """Match a template and its values against the rules; None means: take the normal path."""
    schema = tpl.schema or database  # case-sensitive, as table names are in MySQL on Linux
    if schema is None:
        return None
    rule = rules.get((schema, tpl.table))
    if rule is None or rule.key != tpl.key or rule.column != tpl.column:
        return None
    need = max(p for p in (tpl.amount_pos, tpl.key_pos, tpl.guard_pos, tpl.guard_sub_pos)
               if p is not None)
    if len(values) <= need:
        return None
    amount = values[tpl.amount_pos]
    key = values[tpl.key_pos]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return None
    if isinstance(key, Unsupported) or not isinstance(key, int | str) or isinstance(key, bool):
        return None
    if isinstance(key, str) and len(sql_literal(key)) > MAX_KEY_SQL:
        return None  # a key this long is no inventory key; batch records keep 255 characters
    bound = None
    if tpl.guard_pos is not None:
        b = values[tpl.guard_pos]
        if not isinstance(b, int) or isinstance(b, bool):
            return None
        bound = b
        if tpl.guard_sub_pos is not None:
            s = values[tpl.guard_sub_pos]
            if not isinstance(s, int) or isinstance(s, bool) or s <= 0:
                return None
            bound += s  # c - s >= b  <=>  c >= b + s
    return HotStmt(rule, key, amount, tpl.guard_op, bound)


def read_only(sysvars: dict[str, str]) -> bool:
    v = sysvars.get("transaction_read_only", sysvars.get("tx_read_only", "OFF"))
    return v.upper() in ("ON", "1")


@dataclass
class Member:
    amount: int
    guard_op: str | None
    bound: int | None
    fut: asyncio.Future[int] = field(repr=False, default=None)  # type: ignore[arg-type]
    arrived: float = 0.0
    gtid: str | None = None
    # auto mode: a member alone in its group runs its own statement (decision PLAIN) and sets
    # this when done, so the key's next group waits for it as for a group.
    plain_done: asyncio.Future[None] | None = field(repr=False, default=None)
    # inside a transaction: the member's own connection (its confirm row goes there) and,
    # once the batch committed, its reservation
    conn: Any = field(repr=False, default=None)
    reservation: Reservation | None = None
    # told 0 rows: units reserved on the key (by any proxy) when its batch allocated
    reserved_seen: int = 0


PLAIN = -2  # decision for a member of a group of one in auto mode: run your own statement


def allocate(current: int | None, members: list[Member], unsigned: bool) -> tuple[list[int], int]:
    """Decide each member in arrival order, as if each ran alone: 1 hit, 0 miss, -1 run alone.

    A member without a guard on an UNSIGNED column that would go below zero gets -1: MySQL would
    answer it with an out-of-range error, which the proxy does not imitate; it runs alone instead.
    Returns (decisions, total deducted).
    """
    if current is None:
        return [0] * len(members), 0
    out = []
    cur = current
    for m in members:
        if m.guard_op == ">":
            ok = cur > (m.bound or 0)
        elif m.guard_op == ">=":
            ok = cur >= (m.bound or 0)
        else:
            ok = True
        if ok and m.guard_op is None and unsigned and cur - m.amount < 0:
            out.append(-1)
            continue
        if ok:
            cur -= m.amount
        out.append(1 if ok else 0)
    return out, current - cur


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
