"""hotpick.Picker.glance, pure: while the engine is quiet, auto sends most hot decrements as
they are without deciding them; what keeps it deciding every one (tables of conditions and a
hypothesis property of its loudness). The same against MariaDB: test_hotrow.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.backend import BackendConn
from proxy.core.config import HotRowCfg
from proxy.core.configmodel import HotRowRule
from proxy.engines.escrow import Escrow, Reservation
from proxy.engines.hotkeys import KeyState
from proxy.engines.hotpick import (
    GLANCE_EVERY,
    GLANCED,
    LOUD_SHARE,
    MERGE,
    PLAIN,
    QUEUE,
    Picker,
)
from proxy.engines.hotrules import RuleBook, RuleState
from proxy.net import protocol as P
from proxy.plan.classify import classify, statement_values

from .test_plan import idle_conn

SQL = "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = {} AND quantity > 0"
KEY = ("shop", "inventory", 7)


class Session:
    """The engine's view of a session (engines/ports.HotRowMember), as plain fields."""

    def __init__(self, txn: bool = False, conn: BackendConn | None = None) -> None:
        self.username = "app"
        self.database: str | None = "shop"
        self.status = P.SERVER_STATUS_AUTOCOMMIT | (P.SERVER_STATUS_IN_TRANS if txn else 0)
        self.sysvars = {"sql_mode": "STRICT_TRANS_TABLES", "autocommit": "ON"}
        self.pin = None
        self.held_slots: list[Any] = []
        self.escrow: list[Any] = []
        self.txn_hot: set[Any] = set()
        self.conn = conn  # the connection holding its transaction (escrow_conn)

    def escrow_conn(self) -> BackendConn | None:
        return self.conn

    def locked_hot_key(self, key_id: Any) -> None:
        self.txn_hot.add(key_id)



def _reservation(amount: int) -> Reservation:
    """Units of KEY reserved by a merged member (escrow.py, compiled: a real Reservation)."""
    return Reservation("`shop`.`inventory`", "sku_id", "quantity", "1", KEY, 1, 1, amount, "app")

def picker(mode: str = "auto") -> Picker:
    rule = HotRowRule("shop", "inventory", "sku_id", "quantity")
    cfg = dataclasses.replace(HotRowCfg(), mode=mode, rules=(rule,))
    book = RuleBook(cfg, None, lambda: ["app"])  # type: ignore[arg-type]
    book.rule_state[("shop", "inventory")] = RuleState(ok=True, reason="ok")
    book.server_sql_mode = "STRICT_TRANS_TABLES"
    return Picker(cfg, book, Escrow("seckill", None, None))  # type: ignore[arg-type]


def glances(pk: Picker, s: Session, sql: str = SQL.format(7), n: int = GLANCE_EVERY) -> int:
    shape = classify(sql)
    return sum(pk.glance(s, shape) for _ in range(n))


def test_quiet_glances_at_all_but_one_in_every_glance_every() -> None:
    pk, s = picker(), Session()
    assert [pk.glance(s, classify(SQL.format(7))) for _ in range(2 * GLANCE_EVERY)] == (
        [True] * (GLANCE_EVERY - 1) + [False]) * 2


def _loud(pk: Picker) -> None:
    pk.loud = True


def _sold_out_lately(pk: Picker) -> None:
    pk.zero_at = time.monotonic() - 1


def _reserved_here(pk: Picker) -> None:
    pk.auto.escrow.reserved(_reservation(1))


def _reserved_on_another_proxy(pk: Picker) -> None:
    pk.auto.reserved_anywhere.add(KEY)


def _a_table_mode(pk: Picker) -> None:
    pk.table_modes["shop.other"] = "merge"


def _mode_merge(pk: Picker) -> None:
    pk.global_mode = "merge"


@pytest.mark.parametrize("why", [_loud, _sold_out_lately, _reserved_here,
                                 _reserved_on_another_proxy, _a_table_mode, _mode_merge])
def test_what_keeps_every_decrement_decided(why: Any) -> None:
    pk = picker()
    why(pk)
    assert glances(pk, Session()) == 0


@pytest.mark.parametrize("sql, database", [
    ("UPDATE other SET quantity = quantity - 1 WHERE sku_id = 7", "shop"),  # no rule
    ("UPDATE inventory SET reserved = reserved - 1 WHERE sku_id = 7", "shop"),  # its column?
    ("UPDATE inventory SET quantity = quantity - 1 WHERE id = 7", "shop"),  # its key?
    (SQL.format(7), None),  # no database: no rule's table
    (SQL.format(7), "other"),
])
def test_only_a_rules_decrements_are_glanced(sql: str, database: str | None) -> None:
    s = Session()
    s.database = database
    assert glances(picker(), s, sql) == 0


def test_a_sold_out_answer_ends_the_quiet_and_marks_its_key() -> None:
    pk, s = picker(), Session()
    shape = classify(SQL.format(7))
    pk.glance_end(s, shape, True, 1, None)
    assert glances(pk, s) == GLANCE_EVERY - 1
    pk.glance_end(s, shape, True, 0, statement_values(SQL.format(7)))
    assert pk.keys[KEY].sold_out_at > time.monotonic() - 1
    assert glances(pk, s) == 0
    assert pk.decide(s, shape, statement_values(SQL.format(7))).kind == MERGE  # group's way


def test_a_glanced_transaction_never_merges_a_later_decrement() -> None:
    """Glanced inside a transaction, the key is not read, yet its row lock is the
    transaction's: no later decrement in it may merge (its group would wait for that lock)."""
    conn = idle_conn()

    async def run() -> None:
        pk = picker()
        shape = classify(SQL.format(7))
        crowded = pk.keys[KEY] = KeyState(asyncio.Semaphore(10))
        crowded.in_flight = crowded.plain_running = 8  # company enough for a group, in a txn too
        s = Session(txn=True, conn=conn)
        assert pk.decide(s, shape, statement_values(SQL.format(7))).kind == MERGE
        assert pk.glance(s, shape) and GLANCED in s.txn_hot
        assert pk.decide(s, shape, statement_values(SQL.format(7))).kind == QUEUE
        assert pk.decide(Session(txn=True, conn=conn), shape, statement_values(SQL.format(7))).kind == MERGE
        assert not Session(txn=False).txn_hot  # (autocommit: nothing to mark)
        s2 = Session()
        assert pk.glance(s2, shape) and not s2.txn_hot
    asyncio.run(run())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 400), st.integers(0, 12))
def test_loud_after_a_window_with_crowded_keys(plain: int, crowded: int) -> None:
    """The engine is loud for the window after one in which more than LOUD_SHARE of the
    decided decrements found their key crowded; quiet again after a window without."""
    async def run() -> None:
        pk = picker()
        s = Session()
        crowded_key = pk.keys[KEY] = KeyState(asyncio.Semaphore(10))
        crowded_key.in_flight = crowded_key.plain_running = 8
        pk.window_at = 0.0  # a new window starts with the next decision
        first = pk.decide(s, classify(SQL.format(100_000)), statement_values(SQL.format(100_000)))
        assert first.kind == PLAIN and not pk.loud
        ways = [pk.decide(s, classify(SQL.format(7)), statement_values(SQL.format(7))).kind
                for _ in range(crowded)]
        ways += [pk.decide(s, classify(SQL.format(8 + i)), statement_values(
            SQL.format(8 + i))).kind for i in range(plain)]
        assert ways.count(MERGE) == crowded and ways.count(PLAIN) == plain
        pk.window_at = 0.0  # the window ends
        pk.decide(s, classify(SQL.format(9)), statement_values(SQL.format(9)))
        assert pk.loud == (crowded > LOUD_SHARE * (1 + crowded + plain))
        assert (glances(pk, s) > 0) == (not pk.loud)
        pk.window_at = 0.0  # a window with one plain decrement: quiet
        pk.decide(s, classify(SQL.format(9)), statement_values(SQL.format(9)))
        assert not pk.loud
    asyncio.run(run())


def test_quiet_again_once_the_reserved_units_are_resolved() -> None:
    pk, s = picker(), Session()
    r = _reservation(2)
    pk.auto.escrow.reserved(r)
    assert glances(pk, s) == 0
    pk.auto.escrow._settle([r])  # (what a resolution's commit ends with)
    assert pk.auto.escrow.outstanding == 0 and KEY in pk.auto.escrow.keys  # (the key pruned later)
    assert glances(pk, s) == GLANCE_EVERY - 1


def test_with_discover_a_table_is_glanced_once_a_decided_one_found_it() -> None:
    cfg = dataclasses.replace(HotRowCfg(), mode="auto", rules=(), discover=True)
    book = RuleBook(cfg, None, lambda: ["app"])  # type: ignore[arg-type]
    book.server_sql_mode = "STRICT_TRANS_TABLES"
    pk = Picker(cfg, book, Escrow("seckill", None, None))  # type: ignore[arg-type]
    s = Session()
    assert glances(pk, s) == 0  # no rule names the table, none found yet
    pk.decide(s, classify(SQL.format(7)), statement_values(SQL.format(7)))  # found: a candidate
    assert glances(pk, s) == GLANCE_EVERY - 1


@pytest.mark.parametrize("txn", [False, True])
def test_a_key_whose_counted_statements_start_and_end_in_turn_is_not_idle(txn: bool) -> None:
    """Found in stop 42: after a run over 1,000 cold keys, a key that turned hot stayed plain
    for every order of the next run. The decided decrements (one in GLANCE_EVERY) queue on the
    row lock, so one of them ends just before the next is decided; with one flag for "a
    statement runs as it is", each end cleared it and every decision found the key idle, the
    engine never got loud. Replayed here: 16 counted statements in flight, then end one,
    decide one, in turn."""
    conn = idle_conn()

    async def run() -> None:
        pk = picker()
        shape = classify(SQL.format(7))
        values = statement_values(SQL.format(7))
        assert pk.lane_way(Session(txn=txn, conn=conn), shape, values).kind == PLAIN
        ks = pk.keys[KEY]
        pk.plain_end(ks, True, 1)
        for _ in range(16):  # the key's row lock queue: 16 counted ones running as they are
            pk.plain_start(ks)
        for _ in range(32):
            pk.plain_end(ks, True, 1)  # the first in the queue got the lock and its answer
            w = pk.lane_way(Session(txn=txn, conn=conn), shape, values)
            assert w.kind == MERGE, (w.kind, ks.in_flight)
            pk.plain_start(ks)  # (its place in the queue taken by the next one counted)
    asyncio.run(run())


def test_a_hot_key_amid_cold_traffic_keeps_its_share() -> None:
    """Found in stop 42: one SKU with 16 buyers beside 112 buyers of 1,000 others, mode auto,
    ran as it was (76 orders/s, as mode off; merged 197). Its share of all decided decrements
    was a few percent, below AUTO_TXN_SHARE, so inside transactions it counted as one of many
    and ran plain, which kept its share low. The shares count contended decrements only
    (hotauto.Shares): cold keys with nobody else on them leave it at 1.0."""
    conn = idle_conn()

    async def run() -> None:
        pk = picker()
        hot = pk.keys[KEY] = KeyState(asyncio.Semaphore(10))
        hot.in_flight = hot.plain_running = 8
        for i in range(400):  # cold keys, one decrement each, nobody else on them
            sql = SQL.format(1000 + i)
            w = pk.lane_way(Session(txn=True, conn=conn), classify(sql), statement_values(sql))
            assert w.kind == PLAIN and w.ticket is not None
            pk.plain_end(w.ticket, True, 1)
        for _ in range(3):
            w = pk.lane_way(Session(txn=True, conn=conn), classify(SQL.format(7)),
                            statement_values(SQL.format(7)))
            assert w.kind == MERGE
        pk.auto.shares._roll(time.monotonic())  # (the window closes)
        assert pk.auto.shares.share(KEY, time.monotonic()) == 1.0
        w = pk.lane_way(Session(txn=True, conn=conn), classify(SQL.format(7)),
                        statement_values(SQL.format(7)))
        assert w.kind == MERGE  # (with the cold ones counted: 3 in 403, one of many, plain)
    asyncio.run(run())


@pytest.mark.parametrize("cold", [0, 10, 30])
def test_other_traffic_is_the_share_of_decisions_on_keys_with_no_batch_lately(cold: int) -> None:
    """Shares.others as Picker.key counts it (stop 49): a decided decrement of a key with a
    recent batch is the hot keys' traffic, one of any other key other traffic. A key whose
    groups stay small runs as it is inside transactions (`AutoChoice.spread`) only with
    SMALL_OTHERS or more of other traffic: ten keys alone kept merging in small groups that
    paid, and the rule had held them plain."""
    from proxy.engines.hotauto import SMALL_AFTER, SMALL_GROUP, SMALL_OTHERS

    conn = idle_conn()

    async def run() -> None:
        pk = picker()
        hot = pk.keys[KEY] = KeyState(asyncio.Semaphore(10))
        hot.recent.append((time.monotonic(), 1))
        hot.run_batches, hot.group_avg = SMALL_AFTER, SMALL_GROUP - 0.5
        hs = None
        for sku in [7] * 30 + [1000 + i for i in range(cold)]:
            sql = SQL.format(sku)
            w = pk.lane_way(Session(conn=conn), classify(sql), statement_values(sql))
            assert w.kind == PLAIN and w.ticket is not None  # (nothing else on either)
            pk.plain_end(w.ticket, True, 1)
            hs = w.hs if sku == 7 else hs
        assert hs is not None
        pk.auto.shares._roll(time.monotonic())  # (the window closes)
        others = pk.auto.shares.others(time.monotonic())
        assert abs(others - cold / (30 + cold)) < 1e-9
        assert pk.auto.spread(hs) is (others >= SMALL_OTHERS)
    asyncio.run(run())
