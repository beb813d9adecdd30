"""The pool's bookkeeping as a property (no server: a dial that makes stand-in connections).

Hypothesis drives random sequences of what sessions and the hot-row engine do to a pool with
a small limit: acquire (a user, capabilities, a database or none, as a service or not), give
back (clean, dirty, broken), soft-hold and let the pool take it back. After every step the
pool's counts must match the connections it really has, a session must get a connection in
the database it asked for (none: one that never had a database, MySQL cannot unselect one),
and an ordinary acquire must not fail while the sessions hold (not softly) fewer connections
than the limit. The last two found the holes fixed in stop 38 (tests/test_pool.py has each one
against MariaDB)."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.pool import SERVICE_RESERVE, Pool
from proxy.core.config import Address, PoolCfg
from proxy.core.errors import ProxyError
from proxy.core.state import LOGIN_NAMES, Wanted

LIMIT = 2


class FakeConn:
    """What the pool reads and writes of a BackendConn."""

    n = 0

    def __init__(self, user: str, caps: int) -> None:
        FakeConn.n += 1
        self.thread_id = FakeConn.n
        self.key = (user, caps)
        self.schema: str | None = None
        self.names = LOGIN_NAMES
        self.sysvars: dict[str, str] = {}
        self.broken = self.dirty = self.in_trans = self.warned = False
        self.close_why = self.reset_why = None
        self.io = SimpleNamespace(at_eof=lambda: False)
        self.pool: Any = None
        self.holder: Any = None
        self.hands = 0
        self.last_used = 0.0
        self.closed = False

    def close(self) -> None:
        self.broken = True
        self.closed = True

    async def execute(self, sql: str) -> None:
        return None

    async def init_db(self, db: str) -> None:
        self.schema = db

    async def reset(self) -> None:
        self.dirty = False


class FakeDial:
    def __init__(self) -> None:
        self.made: list[FakeConn] = []

    async def connect(self, addr: Address, user: str, password: str, timeout: float,
                      caps: int = 0) -> FakeConn:
        c = FakeConn(user, caps)
        self.made.append(c)
        return c


class Owner:
    def __init__(self, held: dict[int, tuple[Any, bool]], c: FakeConn) -> None:
        self.held, self.c = held, c

    def reclaimed(self, c: Any) -> None:
        del self.held[id(c)]  # the session's soft hold is gone: it no longer has it


step = st.one_of(
    st.tuples(st.just("acquire"), st.sampled_from(["app", "dba"]), st.sampled_from([0, 2]),
              st.sampled_from(["shop", "other", None]), st.booleans()),
    st.tuples(st.just("release"), st.integers(0, 7), st.sampled_from(["clean", "dirty", "broken"])),
    st.tuples(st.just("soft"), st.integers(0, 7)),
)


@settings(max_examples=int(os.environ.get("POOL_EXAMPLES", "300")), deadline=None)
@given(st.lists(step, max_size=30))
def test_the_pools_counts_and_promises_hold(steps: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        dial = FakeDial()
        pool = Pool(Address("127.0.0.1", 1), PoolCfg(max_connections=LIMIT,
                                                     acquire_timeout_s=0.05), "primary",
                    dial)  # type: ignore[arg-type]
        held: dict[int, tuple[Any, bool]] = {}  # the sessions' connections: (conn, soft)
        for s in steps:
            if s[0] == "acquire":
                _, user, caps, db, service = s
                hard = sum(not soft for _, soft in held.values())
                want = None if service else Wanted(db, LOGIN_NAMES, {})
                try:
                    c = await asyncio.wait_for(
                        pool.acquire(user, user, caps, want=want, service=service), 5)
                except ProxyError:
                    assert hard >= LIMIT and not service, "1040 with room in the pool"
                    continue
                assert not c.closed and c.key == (user, caps)
                if want is not None:
                    assert c.schema == db, "a connection in another database"
                held[id(c)] = (c, False)
            elif s[0] == "release" and held:
                c, soft = list(held.values())[s[1] % len(held)]
                if soft:
                    pool.unhold_soft(c)
                del held[id(c)]
                c.dirty = s[2] == "dirty"
                if s[2] == "broken":
                    c.broken = True
                await pool.release(c)
            elif s[0] == "soft" and held:
                c, soft = list(held.values())[s[1] % len(held)]
                if not soft:
                    held[id(c)] = (c, True)
                    pool.hold_soft(c, Owner(held, c))
            live = [c for c in dial.made if not c.closed]
            idle = [c for q in pool.idle.values() for c in q]
            assert pool.total == len(live), "the pool's total is not its live connections"
            assert pool.in_use == len(held), "in use is not what the sessions hold"
            assert len(idle) + len(held) == len(live)
            assert pool.total <= LIMIT + SERVICE_RESERVE
        await pool.close()

    asyncio.run(run())
