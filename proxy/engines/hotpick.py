"""The hot-row engine's per-statement decision, taken without I/O: the rule a decrement binds to
(configured or discovered), its key as the engine groups it, the table's mode, and the way it
goes (`decide`: as it is, auto's plain path, queued, merged).

The engine's session path (hotrow.py) and the fast lane (exec/fastlane.py) both decide here,
so their decisions cannot drift: the lane runs the ways that need no waiting before they start
(as it is, plain, merged), the session path all of them. The fast lane asks for every hot
decrement, so this module is compiled (compiled.py); it has no coroutine: mypyc compiled
`await` in a `finally` wrongly (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from typing import TYPE_CHECKING, Final

from proxy.core import metrics as M
from proxy.core.config import HOTROW_MODES, HotRowCfg
from proxy.core.errors import ER_INVENTORY_AUTOCOMMIT, ProxyError
from proxy.engines.escrow import Escrow
from proxy.engines.hotalloc import (
    HotStmt,
    Inventory,
    backslash_escapes,
    bind,
    inventory_hints,
    normal_key,
    read_only,
    rule_of,
    sql_mode_blocks,
)
from proxy.engines.hotauto import PLAIN_WHYS, SMALL_WINDOW_S, SOLD_OUT_MEMORY_S, AutoChoice
from proxy.engines.hotkeys import KeyState
from proxy.engines.hotrules import RuleBook, RuleState
from proxy.net import protocol as P
from proxy.plan.classify import Shape

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.engines.ports import HotRowMember

MAX_KEYS: Final = 100_000  # hot keys tracked at once (key values come from clients)
# While the engine is quiet (`Picker.glance`), auto decides one hot decrement in this many
# and sends the others as they are, unexamined. The engine is loud (every decrement is
# decided) for a window (LOUD_WINDOW_S) after one in which more than LOUD_SHARE of the decided
# decrements found their key crowded (merged, queued, or waiting for merged work). Measured
# in autocommit at 128 threads, every one decided: 0.03-0.14% merged on 1,000 keys, 80-87% on
# 20 keys (docs/benchmarks.md, stop 39).
GLANCE_EVERY: Final = 8
LOUD_SHARE: Final = 0.01
LOUD_WINDOW_S: Final = 0.25

KeyId = tuple[str, str, int | str]
# In a transaction's `txn_hot`: it ran a decrement glanced (`Picker.glance`), of a key not read
GLANCED: KeyId = ("", "", "")

# The ways a hot decrement goes (`Way.kind`).
AS_IS: Final = 0  # the engine leaves it alone: no rule, mode off, a rule that does not hold, ...
UNCHECKED: Final = 1  # the rule not checked against the schema yet: checked (I/O), then decided again
PLAIN: Final = 2  # auto, little company on the key: as it is, counted on the key (`take_plain`)
LEAVING: Final = 3  # auto, in a transaction, a key one of many with merged work under way: wait for
#              that work, then decide again without this way (hotrow.HotRowEngine._leaves_merge)
QUEUE: Final = 4  # queued per key (hotqueue.py), on the session's own connection
MERGE: Final = 5  # merged into the key's group (hotmerge.py)


class Way:
    """How a hot decrement goes, and what its path needs: decided once (`Picker.decide`)."""

    __slots__ = ("kind", "hs", "mode", "rs", "txn", "inv", "txn_conn", "ticket", "why")

    def __init__(self, kind: int, hs: HotStmt | None = None, mode: str = "",
                 rs: RuleState | None = None, txn: bool = False, inv: Inventory | None = None,
                 txn_conn: BackendConn | None = None, why: str = "") -> None:
        self.kind = kind
        self.why = why  # auto's reason (hotauto.AutoChoice.why), shown per key
        self.hs = hs
        self.mode = mode
        self.rs = rs
        self.txn = txn
        self.inv = inv  # AliSQL's inventory hints, honoured merged
        self.txn_conn = txn_conn  # merged in a transaction: its connection (escrow.py)
        self.ticket: KeyState | None = None  # PLAIN on the fast lane: counted on its key


_AS_IS: Final = Way(AS_IS)


class Picker:
    """The keys' runtime state and the tables' modes, read and counted per statement."""

    def __init__(self, cfg: HotRowCfg, book: RuleBook, escrow: Escrow, workers: int = 1) -> None:
        self.keys: dict[KeyId, KeyState] = {}
        self.book = book
        self.auto = AutoChoice(self.keys, escrow, workers)
        self.table_modes: dict[str, str] = {}
        self.glances = 0
        self.loud = False  # every decrement is decided (`glance`; set by `decide`)
        self.window_at = 0.0
        self.decided = 0  # decrements decided in this window
        self.crowded = 0  # ... that found their key crowded
        self.zero_at = -1e9  # a plain statement last answered "0 rows" (sold out, or no row)
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
        escapes = backslash_escapes(sql_mode)
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

    def decide(self, session: HotRowMember, shape: Shape, values: list[object],
               raw_sql: str = "", may_leave: bool = True) -> Way:
        """The way this decrement goes; `may_leave`: False once auto's wait to leave merged
        work (LEAVING) was done. Raises the inventory hints' errors (a bad TARGET_AFFECT_ROW,
        COMMIT_ON_SUCCESS in autocommit). Each way decided is tallied per window: the share
        that found their key crowded makes the engine loud or quiet (`glance`)."""
        w = self._way(session, shape, values, raw_sql, may_leave)
        now = monotonic()
        if now - self.window_at >= LOUD_WINDOW_S:
            self.loud = self.crowded > LOUD_SHARE * self.decided
            self.window_at = now
            self.decided = self.crowded = 0
        self.decided += 1
        if w.kind >= LEAVING:  # merged, queued, or waiting for merged work to leave it
            self.crowded += 1
        return w

    def _way(self, session: HotRowMember, shape: Shape, values: list[object], raw_sql: str,
             may_leave: bool) -> Way:
        target = self.target(session, shape, values)
        if target is None:
            return _AS_IS
        hs, mode, rs = target
        if rs is None:
            return Way(UNCHECKED, hs, mode)
        if not rs.ok:
            return _AS_IS
        txn = in_txn(session)
        inv = inventory_hints(shape.hints, raw_sql) if shape.hints else None
        why = ""
        if mode == "auto" and inv is None:
            why = self.auto.why(hs, txn)
            if why in PLAIN_WHYS:
                # Little or nothing on the key: as it is, whatever the session (MySQL answers).
                return Way(PLAIN, hs, mode, rs, txn, why=why)
            if may_leave and txn and self.auto.spread(hs) and not any(
                    r.key_id == hs.key_id for r in session.escrow):
                return Way(LEAVING, hs, mode, rs, txn, why=why)
        if inv is not None and (inv.commit_on_success or inv.rollback_on_fail) and not txn:
            raise ProxyError(ER_INVENTORY_AUTOCOMMIT,
                             "Inventory transactional hints didn't allowed in autocommit mode")
        txn_conn = None
        if mode in ("merge", "auto") and txn and not session.pin and rs.escrow_ok \
                and hs.key_id not in session.txn_hot and GLANCED not in session.txn_hot:
            # Inside a transaction the member's units are reserved by the group and confirmed
            # in its own transaction (escrow.py); that needs the connection holding it.
            txn_conn = session.escrow_conn()
        if mode == "queue" or (
                (txn and txn_conn is None) or session.pin or read_only(session.sysvars)):
            # Merged, the statement would run on another connection: not for a session pinned
            # to state on its own connection (a temporary table shadowing the rule's table,
            # LOCK TABLES, user variables), a read-only session, or a transaction that already
            # locked the row itself. Queued, it runs on the session's own connection and MySQL
            # answers it. (Inventory hints are honoured merged, so a hinted statement merges.)
            return Way(QUEUE, hs, "queue", rs, txn, inv, why=why)
        return Way(MERGE, hs, mode, rs, txn, inv, txn_conn, why)

    def lane_way(self, session: HotRowMember, shape: Shape, values: list[object]) -> Way:
        """The fast lane's question (its statements have no hints): `decide`, and way PLAIN
        counted on its key at once (`Way.ticket`, given back by `plain_end`)."""
        w = self.decide(session, shape, values)
        if w.kind == PLAIN:
            w.ticket = self.start_plain(session, w)
        return w

    def glance(self, session: HotRowMember, shape: Shape) -> bool:
        """True: the fast lane sends this decrement as it is without deciding it (no key read,
        nothing counted on the key; `glance_end` when it is answered). Deciding costs the lane
        about as much again as forwarding the statement, and on many cold keys auto decides
        "as it is" for nearly every one. So while the engine is quiet, only one decrement in
        GLANCE_EVERY is decided; quiet means mode auto everywhere, no open
        reservation here or on another proxy, few decided decrements found their key crowded
        in the last window (`decide`: LOUD_SHARE), and no plain statement answered "0 rows"
        lately (a sold-out key takes the group's way: hotauto.SOLD_OUT_MEMORY_S). As it is, the
        statement gets MySQL's own answer; what is missed is a chance to merge it, until the
        decided ones find their keys crowded. Inside a transaction, the row lock of the key
        is the transaction's from then on, and a later decrement of that key must not merge
        (its group would wait for that lock): the transaction is marked (GLANCED), and no
        later decrement in it merges (`decide`)."""
        if self.global_mode != "auto" or self.table_modes:
            return False
        self.glances += 1
        if self.glances >= GLANCE_EVERY:
            self.glances = 0
            return False
        if self.loud or monotonic() - self.zero_at < SOLD_OUT_MEMORY_S:
            return False
        if self.auto.escrow.outstanding > 0 or self.auto.reserved_anywhere:
            return False
        hot = shape.hot
        assert hot is not None
        db = session.database
        if rule_of(hot, db, self.book.rules) is None and not (
                self.cfg.discover and rule_of(hot, db, self.book.discovered) is not None):
            return False  # (a discovered one: found by a decided decrement, `target`)
        if in_txn(session):
            session.locked_hot_key(GLANCED)
        return True

    def glance_end(self, session: HotRowMember, shape: Shape, ok: bool, rows: int,
                   values: list[object] | None) -> None:
        """A glanced decrement was answered: counted as plain; "0 rows" ends the quiet, and
        its key (`values`, read only then) is remembered sold out, as after `plain_end`."""
        M.HOTROW_STATEMENTS.inc("auto", "plain" if ok else "error")
        if ok and rows == 0:
            self.zero_at = now = monotonic()
            t = self.target(session, shape, values) if values is not None else None
            if t is not None:
                self.key(t[0], t[1]).sold_out_at = now

    def start_plain(self, session: HotRowMember, w: Way) -> KeyState:
        """Way PLAIN: the statement is counted on its key until `plain_end`."""
        assert w.hs is not None
        ks = self.take_plain(session, w.hs, w.mode, w.txn, w.why)
        self.plain_start(ks)
        return ks

    def take_plain(self, session: HotRowMember, hs: HotStmt, mode: str, txn: bool,
                   why: str = "") -> KeyState:
        if txn:
            session.locked_hot_key(hs.key_id)  # its transaction now holds the row lock
        return self.key(hs, mode, why)

    def key(self, hs: HotStmt, mode: str, why: str = "") -> KeyState:
        """The key's state, counted for a decided decrement taking `mode` (`why`: auto's
        reason, SHOW HOT KEYS)."""
        ks = self.keys.get(hs.key_id)
        if ks is None:
            ks = self.keys[hs.key_id] = KeyState(asyncio.Semaphore(self.cfg.queue_concurrency))
        ks.last_seen = now = monotonic()
        shares = self.auto.shares
        recent = ks.recent
        shares.decided(not recent or now - recent[-1][0] >= SMALL_WINDOW_S, now)
        if ks.company():  # contended: only these make the shares (hotauto.Shares)
            shares.seen(hs.key_id, now)
        ks.statements += 1
        ks.mode = mode
        ks.why = why
        return ks

    def plain_start(self, ks: KeyState) -> None:
        ks.mode = "auto:plain"
        ks.plain_running += 1
        ks.in_flight += 1

    def plain_end(self, ks: KeyState, ok: bool, rows: int = -1) -> None:
        if ok and rows == 0:
            ks.sold_out_at = self.zero_at = monotonic()
        ks.in_flight -= 1
        ks.plain_running -= 1
        done, ks.plain_done = ks.plain_done, None
        if done is not None:
            done.set_result(None)
        M.HOTROW_STATEMENTS.inc("auto", "plain" if ok else "error")


def in_txn(session: HotRowMember) -> bool:
    return bool(session.status & P.SERVER_STATUS_IN_TRANS) or (
        session.sysvars.get("autocommit", "ON").upper() in ("OFF", "0"))
