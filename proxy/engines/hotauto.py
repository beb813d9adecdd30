"""auto mode's choice per key: run a hot decrement as it is, or merge it (hotmerge.py).

Merging pays when members would queue on one row lock; it costs a batch transaction per group
and, inside a transaction, a reservation and its delete per member (escrow.py; before stop 46
also a confirm row and a resolution).
So a decrement runs as it is while its key has little company, or, inside a transaction, while
the key is one of many about equally contended (their row locks are then held side by side and
the database's group commit already serves them together), or its groups stay small (a merged
member then costs more than the row lock saves). Never past units reserved by open
transactions, nor for a while after a plain statement found the key sold out: near sell-out a
plain UPDATE answers "0 rows" at once where MySQL's buyer would wait on the row lock for those
units; a group waits for them. No I/O and no waiting here (the engine waits: hotrow.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Final

from proxy.engines.escrow import Escrow
from proxy.engines.hotalloc import HotStmt
from proxy.engines.hotkeys import KeyState

# How many other decrements must be on a key (running, or gathering into a group) before one
# merges: with less company than this it queues on the row lock in MySQL for less (measured on
# 10 SKUs at 16 threads).
AUTO_COMPANY: Final = 2
# Inside a transaction it was 4 until stop 41 (a merged member costs a reservation, a confirm row
# and a resolution); since the group's first try and the carried confirm row, 2 against 4 on
# 10 keys: 1.07x (UPDATE first 1.04x), on 20 keys 0.97-1.01x, on 1,000 1.01x (old against new).
AUTO_TXN_COMPANY: Final = 2
# Inside a transaction the key must also have at least this share of the contended hot
# decrements seen lately (`Shares`). Measured on the seed's transaction, 128 threads, since merged members are
# answered on the fast lane (docs/benchmarks.md, stop 36), merged against as it is (mode off),
# pinned / unpinned: 3 keys 1.24-1.45x, 5 keys 1.28-1.33x, 10 keys 1.05-1.18x (UPDATE first:
# 0.90-1.06x), 20 keys 0.83x (UPDATE first 0.71x); the share was 0.15 (about 6 keys).
# Since a group's first try writes in its locking round trip (hotmerge.py) and a write after
# the merged UPDATE carries its confirm row (confirms.may_carry), stop 41, pinned, 3 rounds of
# 6 s: 10 keys 1.13-1.15x (UPDATE first 1.09x), 20 keys 0.94x (1.03x), 40 keys 0.78x
# (0.99x). So up to about 12 equally hot keys merge.
# (Before stop 36: 1 key 2.2x, 2 keys 1.2x, 3 keys 1.0x, 10 keys 0.8x; the share was 0.4.)
AUTO_TXN_SHARE: Final = 0.08
# ... and a key whose last group committed lately (`merged_lately`) leaves the merged path only
# below this share: the shares of ten equally hot keys (0.1 each) move by a few hundredths from
# one quarter second to the next, and each dip under AUTO_TXN_SHARE sent a merged key's next
# decrements to wait for its groups and run plain (stop 42).
AUTO_TXN_SHARE_LEAVE: Final = 0.06
# Inside a transaction, a key whose last group committed this recently stays merged while it has
# company (`AutoChoice.why`).
MERGED_LATELY_S: Final = 0.1
# Inside a transaction a key whose groups stay small (SMALL_GROUP members on average over the
# SMALL_AFTER or more batches since it last merged after a pause) runs as it is, as a key that
# is one of many (`spread`), until its last group is SMALL_WINDOW_S old; then it merges again
# and its next groups tell (the first ones after a pause, smaller, are not judged alone). A merged
# member costs the proxy its share of a batch transaction and the database a reservation and
# its delete; in groups of 2.5 (35% of them alone) that cost both cores more than the row lock
# saved: 10 hot SKUs with 64 threads beside 64 on 1,000 cold ones, auto against off, the cold
# part 0.78, both parts together 0.89 (stop 46); with this rule 0.90 and 0.92 (UPDATE first:
# 0.72 and 0.84 before, 1.00 and 1.02 after). Ten keys at 128 threads merge in groups of 4-7
# (old against new 1.02x), one key at 16 threads beside 112 cold in groups of 7 (3.1-3.3x off).
# Judged from the first 8 batches with a faster average (0.2), the ramp-up's small groups sent
# the ten keys at 128 threads plain (1.03x off where merged gave 1.09x); probing again every
# 2 s cost the mixed load more than it saved (stop 47).
# 3.0 until stop 48: since a group commits in one round trip (hotmerge._checked_commit), ten
# keys at 128 threads merge in groups of 3-4 on a slow day and 3.0 sent most of them plain.
# Auto against off, 4 rounds of 5 s, pinned (stop 48), pure 10 keys / mixed hot / mixed cold:
# 3.0: 0.98 / 0.98 / 0.86; 2.0: 1.06 / 1.02 / 0.96; 1.5: 1.18 / 1.11 / 0.86 (never: 1.14 /
# 1.24 / 0.77 in a 3-round run where 2.0 gave 1.05 / 1.04 / 0.97).
# The rule holds only while other traffic shares the proxy and the database: at least
# SMALL_OTHERS of the decided hot decrements lately were on keys with no batch in the last
# SMALL_WINDOW_S (`Shares.others`). The small groups' cost falls on that traffic; with none,
# the row lock is what limits the hot keys, and their groups pay even when small: ten keys
# alone at 128 threads merge in groups of 2-2.5, merged 1.14-1.18x plain, and until stop 49
# this rule judged them small after about half a second of merging and held them plain 5 s at
# a time (stop 48 saw it after a pause of the load).
# With more than one worker (workers: N) the rule holds without other traffic: each worker
# gathers its own part of a key's buyers, so its groups are smaller, and they take the row
# lock in turn with the other workers' groups. Ten keys alone at 128 threads, pinned, stop 53:
# groups of 1.9-2.0 members against 3.8-4.0 with one worker, auto 0.78-0.86 of off (one
# worker: 1.02-1.26).
SMALL_GROUP: Final = 2.0
SMALL_AFTER: Final = 16
SMALL_WINDOW_S: Final = 5.0
SMALL_CROWD: Final = 32  # ... unless this many decrements are on it now (a sale starting)
SMALL_OTHERS: Final = 0.2
# With more than one worker, a key whose run was judged small keeps that judgment across a
# pause shorter than this: its next batch (the look again after SMALL_WINDOW_S, or one that
# had to merge because units of the key were reserved, here or by another worker) moves the
# average instead of starting a run of SMALL_AFTER batches judged afresh (`counted`). Each
# such run reserved units of the key, the other worker then found them reserved and had to
# merge too, starting its own run: ten keys alone, workers 2, pinned, 7-14% of the orders
# merged in groups of 2; with the memory 3-9%, auto 0.93-1.08 of off against 0.90-1.11, and
# 0.91-1.12 (median 1.05) of the build without it, proxy CPU per order lower in 6 of 9 rounds
# (stop 54; within the noise of single rounds). A crowd on the key (SMALL_CROWD) still merges
# it at once, and groups that grew move the average above SMALL_GROUP within a few batches.
SMALL_MEMORY_S: Final = 60.0
GROUP_AVG_WEIGHT: Final = 0.1  # KeyState.group_avg: a moving average over batches
# After a plain statement found a key sold out, its statements take the group's way this long.
SOLD_OUT_MEMORY_S: Final = 30.0
# How long a decrement on a key that is one of many waits for the key's merged work to finish
# before it runs as it is (hotrow.HotRowEngine._leaves_merge); past that it merges.
LEAVE_MERGE_S: Final = 0.25


# Why auto sends a decided decrement its way (`AutoChoice.why`; SHOW HOT KEYS, column `why`).
# As it is:
WHY_IDLE: Final = "idle"  # nothing else runs on the key
WHY_LITTLE: Final = "little company"  # fewer others on it than AUTO_COMPANY / AUTO_TXN_COMPANY
WHY_MANY: Final = "one of many"  # in a transaction: many keys about equally contended
WHY_SMALL: Final = "small groups"  # in a transaction: its groups stay small, others share
# the proxy or other workers merge the same keys
PLAIN_WHYS: Final = frozenset({WHY_IDLE, WHY_LITTLE, WHY_MANY, WHY_SMALL})
# Merged:
WHY_RESERVED: Final = "units reserved"  # open transactions hold units of it
WHY_SOLD_OUT: Final = "sold out lately"
WHY_CROWDED: Final = "crowded"
WHY_LATELY: Final = "merged lately"  # in a transaction: its last group committed a moment ago
WHY_LEAVING: Final = "merged work on it"  # one of many, but a group is on it: waits, or merges


@dataclass
class Shares:
    """Each key's share of the contended hot decrements (ones that found others on their key,
    hotpick.Picker.key) seen in the last whole window (`window_s`). A key with nothing seen in
    the last window (a lull, or the first statements after start) has share 1.0: nothing says
    it is one of many. Uncontended ones are not counted: with them, one hot key amid traffic
    on many cold keys had a share of a few percent, ran as it was, and kept that share (stop
    42: 16 buyers of one SKU beside 112 on 1,000 others, 76 orders/s, as in mode off)."""

    window_s: float = 0.25
    counts: dict[object, int] = field(default_factory=dict)
    total: int = 0
    started: float = 0.0
    last: dict[object, float] = field(default_factory=dict)
    # every decided hot decrement in the window, and those of them on keys with no batch lately
    # (`others`)
    decided_n: int = 0
    lone_n: int = 0
    last_lone: float = 1.0

    def seen(self, key: object, now: float) -> None:
        """A contended decrement of `key`."""
        if now - self.started >= self.window_s:
            self._roll(now)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1

    def decided(self, lone: bool, now: float) -> None:
        """A decided decrement; `lone`: its key had no batch lately (hotpick.Picker.key)."""
        if now - self.started >= self.window_s:
            self._roll(now)
        self.decided_n += 1
        if lone:
            self.lone_n += 1

    def _roll(self, now: float) -> None:
        """Close the window: its counts become the shares, unless it ended long ago (then
        nothing is known about now)."""
        lately = now - self.started < 2 * self.window_s
        recent = lately and self.total > 0
        self.last = {k: n / self.total for k, n in self.counts.items()} if recent else {}
        self.last_lone = self.lone_n / self.decided_n if lately and self.decided_n else 1.0
        self.counts = {}
        self.total = self.decided_n = self.lone_n = 0
        self.started = now

    def others(self, now: float) -> float:
        """The share of the decided decrements in the last window that were on keys with no
        batch lately; 1.0 when nothing was decided lately (nothing says the load is all hot)."""
        if now - self.started >= 2 * self.window_s:
            return 1.0
        return self.last_lone

    def share(self, key: object, now: float) -> float:
        if now - self.started >= 2 * self.window_s or not self.last:
            return 1.0  # nothing seen lately
        return self.last.get(key, 0.0)


class AutoChoice:
    """The engine's keys and escrow, read to choose; `reserved_anywhere`: keys with units
    reserved by other proxies, as last read from the reservation table (hotrow.py)."""

    def __init__(self, keys: dict[Any, KeyState], escrow: Escrow, workers: int = 1) -> None:
        self.keys = keys
        self.escrow = escrow
        self.shares = Shares()
        self.reserved_anywhere: set[Any] = set()
        self.workers = workers  # the proxy's processes (SMALL_GROUP)

    def goes_plain(self, hs: HotStmt, in_txn: bool) -> bool:
        return self.why(hs, in_txn) in PLAIN_WHYS

    def may_run_plain(self, hs: HotStmt) -> bool:
        """No units of the key are reserved by open transactions (here, or by any proxy as
        last read from the reservation table), and no plain statement found it sold out
        lately."""
        return self.why_not_plain(hs) == ""

    def why_not_plain(self, hs: HotStmt) -> str:
        if self.reserved_here(hs.key_id) or hs.key_id in self.reserved_anywhere:
            return WHY_RESERVED
        ks = self.keys.get(hs.key_id)
        return WHY_SOLD_OUT if ks is not None and sold_out_lately(ks) else ""

    def why(self, hs: HotStmt, in_txn: bool) -> str:
        """The way auto would send this decrement, as its reason (PLAIN_WHYS: as it is). As it
        is while the key has too little company for a group to pay (AUTO_COMPANY), or, inside
        a transaction, while it is one of many keys about equally contended and no group is
        on it; never while `may_run_plain` says no."""
        no = self.why_not_plain(hs)
        if no:
            return no
        ks = self.keys.get(hs.key_id)
        if ks is None or ks.idle():
            return WHY_IDLE
        if not in_txn:
            return WHY_LITTLE if ks.company() < AUTO_COMPANY else WHY_CROWDED
        spread = self._spread_why(hs, ks)
        if spread:
            return WHY_LEAVING if ks.merging() else spread
        # A key that merged a moment ago stays merged while it has any company: a plain
        # decrement in a transaction holds the row lock through its COMMIT, and the key's
        # next group would wait for it (mixing the two ways was slower than either).
        if ks.company() >= AUTO_TXN_COMPANY:
            return WHY_CROWDED
        return WHY_LATELY if merged_lately(ks) else WHY_LITTLE

    def spread(self, hs: HotStmt) -> bool:
        """Inside a transaction: the key is one of many about equally contended lately, or
        its groups stay small (`small_groups`) while other traffic shares the proxy
        (SMALL_OTHERS) or other workers merge the same keys."""
        return self._spread_why(hs, self.keys.get(hs.key_id)) != ""

    def _spread_why(self, hs: HotStmt, ks: KeyState | None) -> str:
        now = monotonic()
        if ks is not None and small_groups(ks) and (
                self.workers > 1 or self.shares.others(now) >= SMALL_OTHERS):
            return WHY_SMALL
        limit = AUTO_TXN_SHARE_LEAVE if ks is not None and merged_lately(ks) else AUTO_TXN_SHARE
        return WHY_MANY if self.shares.share(hs.key_id, now) < limit else ""

    def reserved_here(self, key_id: Any) -> bool:
        """Units of the key are reserved by transactions on this proxy not resolved yet."""
        ke = self.escrow.keys.get(key_id)
        return ke is not None and ke.outstanding > 0


def merged_lately(ks: KeyState) -> bool:
    """The key's last group committed less than MERGED_LATELY_S ago."""
    return bool(ks.recent) and monotonic() - ks.recent[-1][0] < MERGED_LATELY_S


def sold_out_lately(ks: KeyState) -> bool:
    return monotonic() - ks.sold_out_at < SOLD_OUT_MEMORY_S


def small_run(ks: KeyState) -> bool:
    """The key's run of batches since it last merged after a pause was judged small."""
    return ks.run_batches >= SMALL_AFTER and ks.group_avg < SMALL_GROUP


def small_groups(ks: KeyState) -> bool:
    """The key's groups stayed small lately (SMALL_GROUP)."""
    return (small_run(ks) and bool(ks.recent)
            and monotonic() - ks.recent[-1][0] < SMALL_WINDOW_S
            and ks.company() < SMALL_CROWD)


def counted(ks: KeyState, members: int, now: float, workers: int = 1) -> None:
    """A batch of the key committed with this many members (`small_groups`, SHOW HOT KEYS).
    After a pause of SMALL_WINDOW_S its run starts afresh, unless the proxy has more than one
    worker and the run was judged small less than SMALL_MEMORY_S ago."""
    recent = ks.recent
    gap = now - recent[-1][0] if recent else SMALL_MEMORY_S
    if gap >= SMALL_WINDOW_S and not (workers > 1 and gap < SMALL_MEMORY_S and small_run(ks)):
        ks.run_batches = 1  # merging again after a pause: judged afresh
        ks.group_avg = float(members)
    else:
        ks.run_batches += 1
        ks.group_avg += (members - ks.group_avg) * GROUP_AVG_WEIGHT
    recent.append((now, members))
    ks.forget_old(now)  # (only SHOW HOT KEYS did: `recent` grew for as long as a key was hot)
