"""The backend pool at its limit, against a real MariaDB: an acquire that cannot use the idle
connections makes room rather than waiting out acquire_timeout_s beside them (1040); a
cancelled or failed acquire leaves the counts as they were, so the limit keeps holding.

Found under load in test_session_tracking_as_direct (max_connections: 1): the hot-row engine's
service acquire may go above the limit, its connection came back idle in a database, and a
client without a default database (it needs a connection that never had one) waited 20 s
next to two idle connections it could not use. The others were found while testing that."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.backends.pool import Pool
from proxy.core.config import Address, PoolCfg
from proxy.core.state import LOGIN_NAMES, Wanted
from proxy.net import protocol as P
from proxy.tools.sandbox import Sandbox

IN_SHOP = Wanted("shop", LOGIN_NAMES, {})
NO_DB = Wanted(None, LOGIN_NAMES, {})


def _pool(sb: Sandbox, acquire_timeout_s: float, dial: Any = None) -> Pool:
    """The primary's pool with room for one connection (the hot-row engine's may go above)."""
    cfg = PoolCfg(max_connections=1, connect_timeout_s=5, acquire_timeout_s=acquire_timeout_s)
    return Pool(Address("127.0.0.1", sb.primary_port), cfg, "primary", dial)


async def _two_in_shop(pool: Pool) -> tuple[Any, Any]:
    """A session's connection and a service one above the limit, both in `shop`."""
    a = await pool.acquire("app", "app", want=IN_SHOP)
    b = await pool.acquire("app", "app", service=True)
    await pool.apply_state(b, IN_SHOP)
    return a, b


@pytest.mark.parametrize("then", ["no database", "other capabilities"])
def test_an_acquire_at_the_limit_evicts_idle_connections_it_cannot_use(
        sandbox: Sandbox, then: str) -> None:
    async def run() -> tuple[int, str | None, int]:
        pool = _pool(sandbox, 3)
        try:
            a, b = await _two_in_shop(pool)
            await pool.release(a)
            await pool.release(b)
            assert (pool.total, pool.idle_count()) == (2, 2)
            if then == "no database":
                c = await pool.acquire("app", "app", want=NO_DB)
            else:
                c = await pool.acquire("app", "app", P.CLIENT_FOUND_ROWS, want=IN_SHOP)
            row = await c.fetch_one("SELECT DATABASE()")
            await pool.release(c)
            return pool.total, row[0] if row else "?", pool.idle_count()
        finally:
            await pool.close()

    total, db, idle = asyncio.run(run())
    assert total <= 2 and idle == total
    assert db == (None if then == "no database" else "shop")


def test_a_waiter_cancelled_after_its_wake_up_loses_nothing(sandbox: Sandbox) -> None:
    """Two sessions wait for the only connection; it comes back and wakes the first, whose
    client leaves (its task is cancelled) before it runs. Either the cancel wins (the wake-up
    goes on to the next waiter) or, as asyncio.wait_for does on 3.11, the connection was
    already its own and is given back by its caller: the second gets it at once."""
    async def run() -> str | None:
        pool = _pool(sandbox, 60)
        try:
            a = await pool.acquire("app", "app", want=IN_SHOP)
            first = asyncio.ensure_future(pool.acquire("app", "app", want=IN_SHOP))
            second = asyncio.ensure_future(pool.acquire("app", "app", want=IN_SHOP))
            await asyncio.sleep(0.05)
            assert sum(not w.done() for w in pool._waiters) == 2
            await pool.release(a)  # wakes `first`...
            first.cancel()  # ... which is cancelled before it runs
            got = (await asyncio.gather(first, return_exceptions=True))[0]
            if not isinstance(got, BaseException):
                await pool.release(got)
            c = await asyncio.wait_for(second, 10)
            row = await c.fetch_one("SELECT DATABASE()")
            await pool.release(c)
            return row[0] if row else "?"
        finally:
            await pool.close()

    assert asyncio.run(run()) == "shop"


def test_an_acquire_cancelled_during_the_state_replay_closes_the_connection(
        sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that leaves while its connection's state is being replayed (SET ...): the
    connection may have a statement on the wire, so it is closed and its place freed (before,
    it stayed counted in use for good: with max_connections 1 the pool was done)."""
    async def slow_replay(c: object, want: Wanted) -> bool:
        await asyncio.sleep(30)
        return True

    async def run() -> tuple[int, int, str | None]:
        pool = _pool(sandbox, 5)
        try:
            with monkeypatch.context() as m:
                m.setattr(Pool, "apply_state", staticmethod(slow_replay))
                t = asyncio.ensure_future(pool.acquire("app", "app", want=IN_SHOP))
                await asyncio.sleep(0.5)
                t.cancel()
                await asyncio.gather(t, return_exceptions=True)
            left = (pool.total, pool.in_use)
            c = await pool.acquire("app", "app", want=IN_SHOP)
            row = await c.fetch_one("SELECT DATABASE()")
            await pool.release(c)
            return left[0], left[1], row[0] if row else "?"
        finally:
            await pool.close()

    assert asyncio.run(run()) == (0, 0, "shop")


def test_a_failed_replacement_is_counted_once(sandbox: Sandbox) -> None:
    """A session without a database takes an idle connection in one, closes it, and the new
    connection it opens instead fails (the server is unreachable now): the closed one is not
    given back a second time (before, the pool counted it out twice: total and in_use went
    negative, and the limit stopped holding)."""
    from proxy.backends.dial import Dial
    from proxy.core.errors import BackendLost

    class Flaky(Dial):
        fail = False

        async def connect(self, *a: Any, **k: Any) -> Any:
            if self.fail:
                raise BackendLost("refused (test)", sent=False)
            return await super().connect(*a, **k)

    async def run() -> tuple[int, int]:
        dial = Flaky()
        pool = _pool(sandbox, 5, dial)
        try:
            await pool.release(await pool.acquire("app", "app", want=IN_SHOP))
            dial.fail = True
            with pytest.raises(BackendLost):
                await pool.acquire("app", "app", want=NO_DB)
            return pool.total, pool.in_use
        finally:
            await pool.close()

    assert asyncio.run(run()) == (0, 0)


def test_a_session_without_a_database_never_gets_one_in_a_database(sandbox: Sandbox) -> None:
    """At the limit, with idle sessions soft-holding connections that are in a database: a
    session without one takes one back, closes it (it cannot be used), and must not be handed
    the next soft-held one in a database either (before, the second replay's "impossible" was
    not looked at: the session ran in a database it never chose, `SELECT DATABASE()` 'shop'
    where MySQL says NULL)."""
    class Owner:
        def reclaimed(self, c: object) -> None:
            pass

    async def run() -> tuple[str | None, int]:
        pool = _pool(sandbox, 60)
        try:
            a, b = await _two_in_shop(pool)
            pool.hold_soft(a, Owner())
            pool.hold_soft(b, Owner())
            # (taking back a soft-held one it cannot use makes room: no waiting after that)
            c = await asyncio.wait_for(pool.acquire("app", "app", want=NO_DB), 10)
            row = await c.fetch_one("SELECT DATABASE()")
            await pool.release(c)
            return (row[0] if row else "?"), pool.total
        finally:
            await pool.close()

    db, total = asyncio.run(run())
    assert db is None and total <= 2
