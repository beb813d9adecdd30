"""hotauto.Shares, pure: auto mode's view of how the hot decrements spread over keys."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from proxy.engines.hotauto import Shares


def feed(sh: Shares, keys: list[int], t0: float, dt: float) -> None:
    for i, k in enumerate(keys):
        sh.seen(k, t0 + i * dt)


@given(st.lists(st.integers(0, 20), min_size=1, max_size=400),
       st.floats(0.0001, 0.01))
def test_shares_of_a_window_are_its_fractions(keys: list[int], dt: float) -> None:
    sh = Shares(window_s=10.0)
    feed(sh, keys, 0.0, dt)  # all inside the first window (at most 4 s)
    sh.seen(-1, 10.0)  # closes it (within two windows of its start)
    for k in set(keys):
        assert abs(sh.share(k, 10.0) - keys.count(k) / len(keys)) < 1e-9
    assert sh.share(999, 10.0) == 0.0  # a key not seen while others were
    assert abs(sum(sh.last.values()) - 1.0) < 1e-9


@given(st.integers(1, 12))
def test_equally_contended_keys_each_get_one_nth(n: int) -> None:
    sh = Shares(window_s=0.25)
    feed(sh, [i % n for i in range(n * 50)], 1.0, 0.2 / (n * 50))
    sh.seen(0, 1.3)
    assert all(abs(sh.share(k, 1.3) - 1 / n) < 1e-9 for k in range(n))


@given(st.lists(st.booleans(), min_size=1, max_size=200))
def test_others_is_the_last_windows_share_of_lone_decrements(lone: list[bool]) -> None:
    """Shares.others: the last whole window's share of decided decrements on keys with no
    batch lately; 1.0 before anything was decided and after a lull of two windows."""
    sh = Shares(window_s=0.25)
    assert sh.others(0.0) == 1.0
    for i, x in enumerate(lone):
        sh.decided(x, 1.0 + i * 0.2 / len(lone))
    sh.decided(False, 1.3)  # closes the window
    assert abs(sh.others(1.3) - sum(lone) / len(lone)) < 1e-9
    assert sh.others(1.3 + 0.5) == 1.0


def test_nothing_seen_lately_means_share_one() -> None:
    sh = Shares(window_s=0.25)
    assert sh.share(1, 0.0) == 1.0  # at start
    feed(sh, [1, 2, 3, 4] * 10, 5.0, 0.001)
    sh.seen(1, 5.3)
    assert sh.share(2, 5.3) == 0.25
    assert sh.share(7, 6.0) == 1.0  # a lull of two windows: the old shares say nothing
    sh.seen(7, 9.0)  # the first statement after the lull: the stale window is dropped
    assert sh.share(7, 9.0) == 1.0 and sh.share(1, 9.0) == 1.0


def test_the_way_inside_a_transaction_by_company_spread_and_recent_merging() -> None:
    """AutoChoice.why inside a transaction (PLAIN_WHYS: as it is), as a table: an idle
    key runs as it is; a key that is one of many (share below AUTO_TXN_SHARE) runs as it is
    unless a group is on it; otherwise it merges from AUTO_TXN_COMPANY others on, or with any
    company if its last group committed less than MERGED_LATELY_S ago (a plain decrement
    would hold the row lock through its COMMIT, the next group waiting for it)."""
    import asyncio
    import time

    from proxy.core.config import HotRowRule
    from proxy.engines import hotauto as A
    from proxy.engines.escrow import Escrow
    from proxy.engines.hotalloc import HotStmt
    from proxy.engines.hotauto import AUTO_TXN_COMPANY, MERGED_LATELY_S, AutoChoice
    from proxy.engines.hotkeys import Group, KeyState

    async def run() -> None:
        rule = HotRowRule(schema="shop", table="inventory", key="sku_id", column="quantity")
        hs = HotStmt(rule, 1, 1, ">", 0)
        escrow = Escrow("seckill_proxy", None, None)  # type: ignore[arg-type]
        now = time.monotonic()
        # (company, share, merging, last group's age in s or None) -> why (as it is or not)
        table = [
            (0, 1.0, False, None, A.WHY_IDLE),
            (1, 1.0, False, None, A.WHY_LITTLE),  # little company, no group lately
            (AUTO_TXN_COMPANY, 1.0, False, None, A.WHY_CROWDED),  # enough company
            (1, 1.0, False, MERGED_LATELY_S / 4, A.WHY_LATELY),  # merged a moment ago: stays
            (1, 1.0, False, MERGED_LATELY_S * 4, A.WHY_LITTLE),  # merged long ago
            (AUTO_TXN_COMPANY, 0.01, False, None, A.WHY_MANY),  # one of many, nothing merging
            (1, 0.01, True, MERGED_LATELY_S / 4, A.WHY_LEAVING),  # one of many, a group on it
        ]
        for company, share, merging, age, why in table:
            ks = KeyState(sem=asyncio.Semaphore(1))
            ks.in_flight = company
            ks.plain_running = company if not merging else 0
            if merging:
                ks.collecting = Group()
            if age is not None:
                ks.recent.append((now - age, 3))
            ac = AutoChoice({hs.key_id: ks}, escrow)
            ac.shares.last = {hs.key_id: share, "other": 1 - share}
            ac.shares.started = now
            assert ac.why(hs, True) == why, (company, share, merging, age)
            assert ac.goes_plain(hs, True) is (why in A.PLAIN_WHYS)

    asyncio.run(run())


def test_a_key_merged_lately_leaves_only_below_the_lower_share() -> None:
    """Hysteresis on `spread` (stop 42): a key whose last group committed lately counts as one
    of many only below AUTO_TXN_SHARE_LEAVE; others below AUTO_TXN_SHARE. Ten equally hot keys
    (0.1 each) dipped under 0.08 from window to window, and each dip sent a merged key's next
    decrements to wait for its groups and run plain (old against new, 10 keys: 1.15x, UPDATE
    first 1.26x)."""
    import asyncio
    import time

    from proxy.core.config import HotRowRule
    from proxy.engines.escrow import Escrow
    from proxy.engines.hotalloc import HotStmt
    from proxy.engines.hotauto import (
        AUTO_TXN_SHARE,
        AUTO_TXN_SHARE_LEAVE,
        MERGED_LATELY_S,
        AutoChoice,
    )
    from proxy.engines.hotkeys import KeyState

    assert AUTO_TXN_SHARE_LEAVE < AUTO_TXN_SHARE

    async def run() -> None:
        rule = HotRowRule(schema="shop", table="inventory", key="sku_id", column="quantity")
        hs = HotStmt(rule, 1, 1, ">", 0)
        now = time.monotonic()
        between = (AUTO_TXN_SHARE + AUTO_TXN_SHARE_LEAVE) / 2
        # (share, last group's age in s or None) -> spread?
        table = [
            (between, None, True),
            (between, MERGED_LATELY_S / 4, False),
            (between, MERGED_LATELY_S * 4, True),
            (AUTO_TXN_SHARE_LEAVE / 2, MERGED_LATELY_S / 4, True),
            (AUTO_TXN_SHARE * 2, None, False),
        ]
        for share, age, spread in table:
            ks = KeyState(sem=asyncio.Semaphore(1))
            if age is not None:
                ks.recent.append((now - age, 3))
            ac = AutoChoice({hs.key_id: ks}, Escrow("seckill_proxy", None, None))  # type: ignore[arg-type]
            ac.shares.last = {hs.key_id: share, "other": 1 - share}
            ac.shares.started = now
            assert ac.spread(hs) is spread, (share, age)

    asyncio.run(run())


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.01, 0.3, 4.9, 5.0, 7.0, 59.9, 60.0, 90.0]),
                          st.sampled_from([1, 2, 3, 40])), min_size=1, max_size=80),
       st.sampled_from([1, 2, 4]))
@example([(0.01, 1)] * 16 + [(7.0, 1), (59.9, 1), (60.0, 3)], 2)  # kept twice, then afresh
@example([(0.01, 1)] * 16 + [(7.0, 1)], 1)
def test_a_keys_batches_are_counted_per_run_since_its_last_pause(
        gaps: list[tuple[float, int]], workers: int) -> None:
    """hotauto.counted, against a model: a batch after a pause of SMALL_WINDOW_S or more starts
    a new run (judged afresh), unless the proxy has more than one worker, the pause is shorter
    than SMALL_MEMORY_S and the run so far was judged small (SMALL_AFTER batches or more,
    average below SMALL_GROUP: each worker's look again, or a batch forced by units another
    worker reserved, started a fresh run of SMALL_AFTER batches, stop 54); within a run, the
    average lies between the run's smallest and largest group and the run's batches are
    counted; `recent` keeps only RECENT_S seconds (it grew for as long as a key stayed hot)."""
    import asyncio

    from proxy.engines.hotauto import (
        GROUP_AVG_WEIGHT,
        SMALL_AFTER,
        SMALL_GROUP,
        SMALL_MEMORY_S,
        SMALL_WINDOW_S,
        counted,
    )
    from proxy.engines.hotkeys import RECENT_S, KeyState

    ks = KeyState(sem=asyncio.Semaphore(1))
    now = 100.0
    run: list[int] = []
    avg = 0.0  # the model's own moving average of the run
    times: list[float] = []
    for gap, n in gaps:
        now += gap
        pause = now - times[-1] if times else SMALL_MEMORY_S
        small = len(run) >= SMALL_AFTER and avg < SMALL_GROUP
        if pause >= SMALL_WINDOW_S and not (workers > 1 and pause < SMALL_MEMORY_S and small):
            run = []
        avg = avg + (n - avg) * GROUP_AVG_WEIGHT if run else float(n)
        run.append(n)
        times.append(now)
        counted(ks, n, now, workers)
        assert ks.run_batches == len(run)
        assert abs(ks.group_avg - avg) < 1e-9
        assert min(run) - 1e-9 <= ks.group_avg <= max(run) + 1e-9
        assert [t for t, _ in ks.recent] == [t for t in times if now - t <= RECENT_S]


def test_a_key_whose_groups_stay_small_runs_as_it_is_inside_transactions() -> None:
    """AutoChoice.spread (True: as a key that is one of many, it runs as it is inside a
    transaction) by the key's groups, as a table: small groups (below SMALL_GROUP on average
    over SMALL_AFTER batches or more since its last pause) make it so while the last group is
    younger than SMALL_WINDOW_S and fewer than SMALL_CROWD decrements are on the key (stop 47:
    10 hot SKUs beside cold traffic merged in groups of 2.5 and cost both cores more than
    the row lock saved), and at least SMALL_OTHERS of the decided decrements are on keys with
    no batch lately (stop 49: with no other traffic, ten keys' small groups pay), or the proxy
    has more than one worker (stop 53: each worker's groups of the same keys take the row lock
    in turn, and small ones lose to plain even alone)."""
    import asyncio
    import time

    from proxy.core.config import HotRowRule
    from proxy.engines.escrow import Escrow
    from proxy.engines.hotalloc import HotStmt
    from proxy.engines.hotauto import (
        SMALL_AFTER,
        SMALL_CROWD,
        SMALL_GROUP,
        SMALL_OTHERS,
        SMALL_WINDOW_S,
        AutoChoice,
    )
    from proxy.engines.hotkeys import KeyState

    async def run() -> None:
        rule = HotRowRule(schema="shop", table="inventory", key="sku_id", column="quantity")
        hs = HotStmt(rule, 1, 1, ">", 0)
        now = time.monotonic()
        small, big = SMALL_GROUP - 0.5, SMALL_GROUP + 0.5
        alone, shared = SMALL_OTHERS / 2, SMALL_OTHERS
        # (batches in the run, their average, last group's age, company, others[, workers])
        # -> spread?
        table: list[tuple[Any, ...]] = [
            (SMALL_AFTER, small, 0.1, 0, shared, True),
            (SMALL_AFTER, small, 0.1, 0, alone, False),  # nothing else pays for small groups
            (SMALL_AFTER, small, 0.1, 0, alone, True, 2),  # other workers' groups of the key
            (SMALL_AFTER, big, 0.1, 0, alone, False, 2),
            (SMALL_AFTER - 1, small, 0.1, 0, alone, False, 2),
            (SMALL_AFTER, small, 0.1, SMALL_CROWD, alone, False, 2),
            (SMALL_AFTER, small, 0.1, 0, None, True),  # nothing decided lately: as if shared
            (SMALL_AFTER - 1, small, 0.1, 0, shared, False),  # too few to tell
            (SMALL_AFTER, big, 0.1, 0, shared, False),  # groups worth it
            (SMALL_AFTER, small, SMALL_WINDOW_S + 1, 0, shared, False),  # long ago: merge, see
            (SMALL_AFTER, small, 0.1, SMALL_CROWD, shared, False),  # a crowd now
            (SMALL_AFTER * 4, small, 0.1, SMALL_CROWD - 1, shared, True),
        ]
        for batches, avg, age, company, others, spread, *workers in table:
            ks = KeyState(sem=asyncio.Semaphore(1))
            ks.run_batches, ks.group_avg, ks.in_flight = batches, avg, company
            ks.recent.append((now - age, 2))
            ac = AutoChoice({hs.key_id: ks}, Escrow("seckill_proxy", None, None),  # type: ignore[arg-type]
                            *workers)
            ac.shares.last = {hs.key_id: 1.0}  # the only hot key: not one of many by share
            ac.shares.started = now if others is not None else now - 1.0
            ac.shares.last_lone = 1.0 if others is None else others
            assert ac.spread(hs) is spread, (batches, avg, age, company, others, workers)

    asyncio.run(run())
