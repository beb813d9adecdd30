"""A hot key's runtime state: who runs on it now (plain statements, the queue's slots, a group
gathering, the group committing) and what SHOW HOT KEYS shows of it. Shared by the hot-row
engine's paths (hotrow.py routes, hotmerge.py merges); no I/O."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from proxy.engines.hotalloc import Member


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
class Shares:
    """Each key's share of the hot decrements seen in the last whole window (`window_s`).

    auto mode asks it for a transaction's decrement: when several keys are about equally
    contended, their row locks are held side by side and the database's group commit already
    serves them together, so merging each key's few members costs more (a group transaction
    per handful, a reservation, a confirm row, a resolution) than the lock waits it saves.
    Measured on the seed's transaction, pinned, 128 threads: merging gained 1.2x-2.2x over
    running as it is on 1 and 2 keys, tied on 3 and lost on 5 and 10 (docs/benchmarks.md). A key
    with nothing seen in the last window (a lull, or the first statements after start) has
    share 1.0: nothing says it is one of many."""

    window_s: float = 0.25
    counts: dict[object, int] = field(default_factory=dict)
    total: int = 0
    started: float = 0.0
    last: dict[object, float] = field(default_factory=dict)

    def seen(self, key: object, now: float) -> None:
        if now - self.started >= self.window_s:
            self._roll(now)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.total += 1

    def _roll(self, now: float) -> None:
        """Close the window: its counts become the shares, unless it ended long ago (then
        nothing is known about now)."""
        recent = now - self.started < 2 * self.window_s and self.total > 0
        self.last = {k: n / self.total for k, n in self.counts.items()} if recent else {}
        self.counts = {}
        self.total = 0
        self.started = now

    def share(self, key: object, now: float) -> float:
        if now - self.started >= 2 * self.window_s or not self.last:
            return 1.0  # nothing seen lately
        return self.last.get(key, 0.0)
