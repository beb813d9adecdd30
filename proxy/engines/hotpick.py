"""The hot-row engine's per-statement decision, taken without I/O: the rule a decrement binds to
(configured or discovered), its key as the engine groups it, the table's mode, and in auto
mode whether it runs as it is on a key with little company (`ticket`, the fast lane's question).

The engine's session path (hotrow.py) and the fast lane (exec/fastlane.py) both decide here,
so their decisions cannot drift. The fast lane asks for every hot decrement, so this module is
compiled (compiled.py); it has no coroutine: mypyc compiled `await` in a `finally` wrongly
(docs/benchmarks.md), and the engine's waiting stays in interpreted hotrow.py.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from proxy.core import metrics as M
from proxy.core.config import HOTROW_MODES, HotRowCfg
from proxy.engines.escrow import Escrow
from proxy.engines.hotalloc import HotStmt, bind, normal_key, sql_mode_blocks
from proxy.engines.hotauto import AutoChoice
from proxy.engines.hotkeys import KeyState
from proxy.engines.hotrules import RuleBook, RuleState
from proxy.net import protocol as P
from proxy.plan.classify import Shape

if TYPE_CHECKING:
    from proxy.engines.ports import HotRowMember

MAX_KEYS = 100_000  # hot keys tracked at once (key values come from clients)

KeyId = tuple[str, str, int | str]


class Picker:
    """The keys' runtime state and the tables' modes, read and counted per statement."""

    def __init__(self, cfg: HotRowCfg, book: RuleBook, escrow: Escrow) -> None:
        self.keys: dict[KeyId, KeyState] = {}
        self.book = book
        self.auto = AutoChoice(self.keys, escrow)
        self.table_modes: dict[str, str] = {}
        self.apply_config(cfg)

    def apply_config(self, cfg: HotRowCfg) -> None:
        self.cfg = cfg
        self.global_mode = cfg.mode
        self.table_modes = {}

    def mode_for(self, shape: Shape, table: str) -> str:
        h = shape.hints
        if h:
            if "HOTROW" in h and h["HOTROW"].lower() in HOTROW_MODES:
                return h["HOTROW"].lower()
            if "QUEUE_ON_PK" in h:
                return "queue"
        return self.table_modes.get(table, self.global_mode)

    def target(self, session: HotRowMember, shape: Shape, values: list[object]
               ) -> tuple[HotStmt, str, RuleState | None] | None:
        """The rule the statement binds to, the bound on keys, the table's mode. None: the
        engine leaves the statement alone. The rule's state is None while the rule has not
        been checked against the schema (the session path checks it; the lane declines)."""
        assert shape.hot is not None
        book = self.book
        sql_mode = session.sysvars.get("sql_mode", book.server_sql_mode)
        escapes = sql_mode is None or "NO_BACKSLASH_ESCAPES" not in sql_mode.upper()
        hs = bind(shape.hot, values, session.database, book.rules, escapes)
        if hs is None and self.cfg.discover:
            hs = book.discover(shape.hot, values, session.database, escapes)
        if hs is None:
            return None
        mode = self.mode_for(shape, hs.rule.qualified)
        if mode == "off":
            return None
        rs = book.rule_state.get((hs.rule.schema, hs.rule.table))
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
                hs = hs.with_key(key)
        if hs.key_id not in self.keys and len(self.keys) >= MAX_KEYS:
            return None  # bounded: a new key past the limit takes the normal path
        return hs, mode, rs

    def ticket(self, session: HotRowMember, shape: Shape,
               values: list[object]) -> tuple[bool, KeyState | None]:
        """The fast lane's question, answered at once: may this hot decrement run as it is?
        (True, None): the engine would not touch it (no rule, mode off, rule invalid);
        (True, ticket): auto mode's plain path, counted on its key until `plain_end(ticket)`;
        (False, None): the session task decides (a group, a queue, a rule not checked yet).
        The same decisions as the engine's `_handle`, taken before any of its side effects."""
        target = self.target(session, shape, values)
        if target is None:
            return True, None
        hs, mode, rs = target
        if rs is None:
            return False, None  # the rule's check needs the database: the task runs it
        if not rs.ok:
            return True, None
        txn = in_txn(session)
        if mode != "auto" or not self.auto.goes_plain(hs, txn):
            return False, None
        ks = self.take_plain(session, hs, mode, txn)
        self.plain_start(ks)
        return True, ks

    def take_plain(self, session: HotRowMember, hs: HotStmt, mode: str, txn: bool) -> KeyState:
        if txn:
            session.locked_hot_key(hs.key_id)  # its transaction now holds the row lock
        return self.key(hs, mode)

    def key(self, hs: HotStmt, mode: str) -> KeyState:
        ks = self.keys.get(hs.key_id)
        if ks is None:
            ks = self.keys[hs.key_id] = KeyState(asyncio.Semaphore(self.cfg.queue_concurrency))
        ks.last_seen = now = time.monotonic()
        self.auto.shares.seen(hs.key_id, now)
        ks.statements += 1
        ks.mode = mode
        return ks

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


def in_txn(session: HotRowMember) -> bool:
    return bool(session.status & P.SERVER_STATUS_IN_TRANS) or (
        session.sysvars.get("autocommit", "ON").upper() in ("OFF", "0"))
