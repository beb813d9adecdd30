"""A hot key's runtime state: who runs on it now (plain statements, the queue's slots, a group
gathering, the group committing) and what SHOW HOT KEYS shows of it. Shared by the hot-row
engine's paths (hotrow.py routes, hotmerge.py merges); no I/O."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from time import monotonic
from typing import Final

from proxy.engines.hotalloc import Member


@dataclass(init=False, eq=False)
class Group:
    """Members gathering for one batch. Its `__init__` is written out: mypyc compiles it,
    where a dataclass's generated one runs interpreted (once per batch)."""

    members: list[Member]
    full: asyncio.Future[None] | None  # the leader waits on it for the group to fill (`fill`)
    done: asyncio.Future[None]
    prev: asyncio.Future[None] | None
    user: str  # the batch runs as its members' user: MySQL checks their privileges
    auto: bool  # auto mode: a group that ends up with one member runs it plain
    # where its leader is (hotmerge.py sets it at each wait): the SIGUSR1 dump shows it, a
    # compiled coroutine showing no more than its name
    phase: str
    since: float  # time.monotonic() when the phase began
    batch: int  # the batch its leader runs (with `phase`: formatted only when dumped)
    conn: int  # the batch's backend connection (thread id)

    def __init__(self, prev: asyncio.Future[None] | None = None, user: str = "",
                 auto: bool = False) -> None:
        self.members = []
        self.full = None
        self.done = asyncio.get_running_loop().create_future()
        self.prev = prev
        self.user = user
        self.auto = auto
        self.phase = "gathering"
        self.since = monotonic()
        self.batch = self.conn = 0

    def at(self, phase: str, batch: int = 0, conn: int = 0) -> None:
        self.phase = phase
        self.since = monotonic()
        self.batch, self.conn = batch, conn

    async def fill(self, timeout: float) -> None:
        """Until `filled` or `timeout` seconds pass: a future and a timer, where
        `asyncio.wait_for` would make a task (once per batch)."""
        loop = asyncio.get_running_loop()
        w = self.full = loop.create_future()
        h = loop.call_later(timeout, _wake, w)
        try:
            await w
        finally:
            h.cancel()
            self.full = None

    def filled(self) -> None:
        """The group has its most members: its leader waits no longer."""
        if self.full is not None and not self.full.done():
            self.full.set_result(None)


def _wake(w: asyncio.Future[None]) -> None:
    if not w.done():
        w.set_result(None)


RECENT_S: Final = 10.0  # KeyState.recent: the key's batches this many seconds back (SHOW HOT KEYS)


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
    why: str = ""  # auto's reason for it (hotauto.AutoChoice.why; SHOW HOT KEYS)
    # auto: how many statements run as they are on the key now (counted ones: `hotpick`). A
    # count, not a flag: with one flag, the end of one of many cleared it, and a key whose
    # counted statements started and ended in turn looked idle to every decision (stop 42)
    plain_running: int = 0
    plain_done: asyncio.Future[None] | None = None  # made only when a group must wait for it
    sold_out_at: float = -1e9  # auto: when a plain statement last found no stock (monotonic)
    # the row's value after the key's last batch (None: none yet): a group tries the one-round-
    # trip form first only while this leaves room for all its members (hotmerge.py)
    left: int | None = None
    # members per batch, a moving average over the key's batches since it last merged again
    # after a pause (`run_batches` of them; hotauto.small_groups)
    group_avg: float = 0.0
    run_batches: int = 0

    def forget_old(self, now: float) -> None:
        """Drop the batches older than RECENT_S from `recent`."""
        recent = self.recent
        while recent and now - recent[0][0] > RECENT_S:
            recent.popleft()

    def idle(self) -> bool:
        return not self.plain_running and not self.merging()

    def merging(self) -> bool:
        """A group is gathering or committing on the key."""
        return self.collecting is not None or (self.tail is not None and not self.tail.done())

    def company(self) -> int:
        """Other decrements on the key right now: running as they are (perhaps waiting on the
        row lock in MySQL) or gathering into the next group."""
        return self.in_flight + (len(self.collecting.members) if self.collecting else 0)

    def after_plain(self) -> asyncio.Future[None]:
        """What the next group waits for while a plain statement runs."""
        if self.plain_done is None:
            self.plain_done = asyncio.get_running_loop().create_future()
        return self.plain_done
