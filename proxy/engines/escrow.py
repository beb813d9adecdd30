"""Escrow for hot decrements merged inside transactions: reserve in the group, consume the
reservation in the member's own transaction, return on rollback.

A merged batch can commit only its own short transaction; a member's transaction commits or
rolls back later, on its own connection. So the batch deducts the member's units and records a
**reservation** (batch id, member number, amount, the member's server and backend connection
id) in the same commit. The member's transaction **deletes** its reservation row (with its next
command there, its COMMIT's round trip for the seed's order: backends/confirms.py): the delete
commits exactly when the member's transaction does (with its order rows), and is undone by a
rollback or a dead connection. So a reservation row still there once its member's transaction
is over means "not sold": its units go back.

When the member's transaction ends with an OK to a COMMIT that carried its delete
(`BackendConn.sold`), the sale is final and nothing is left in the database: the proxy only
forgets the units (`sold`). Whatever else ends it (ROLLBACK, an error that rolled it back, a
lost connection, a client gone, a COMMIT whose delete went earlier) has its reservations
**resolved** in one short transaction (all that is pending for a user, every key; one at a time
per user and proxy: `_drain`): a locking read of the reservations still there (it waits for a
transaction still holding an uncommitted delete, so it sees the truth; locked, so each is
resolved exactly once, whoever resolves), then those are deleted and their units added back to
stock. After a proxy crash or a failover, reservations whose member connection no longer exists
on the server (or that were made on another server) are resolved the same way.

Before stop 46 the member inserted a **confirm** row instead (a reservation row stayed until a
resolution deleted both). The confirm table is still created and read: a reservation with a
confirm row, left by an older proxy, is sold (deleted with its confirm row, not returned).

No XA: MariaDB's replicated XA PREPARE is fragile (MDEV-32020, MDEV-31949). What observers see:
reserved units leave `quantity` when the group commits and come back if the buyer rolls back
(stock is briefly under-counted, never over-counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from mypy_extensions import mypyc_attr
from pymysql.converters import escape_string

from proxy.core import metrics as M
from proxy.core.errors import BackendError, BackendLost, ProxyError

log = logging.getLogger("seckill.escrow")

RESERVATION: Final = "hotrow_reservation"
CONFIRM: Final = "hotrow_confirm"


def ddl(schema: str) -> list[str]:
    """Both tables (the confirm table for reservations an older proxy left: see above)."""
    s = schema.replace("`", "``")
    return [
        f"CREATE TABLE IF NOT EXISTS `{s}`.`{RESERVATION}` ("
        "batch_id BIGINT UNSIGNED NOT NULL, member INT NOT NULL, "
        "table_name VARCHAR(192) NOT NULL, key_value VARCHAR(255) NOT NULL, "
        "amount BIGINT NOT NULL, server_id BIGINT UNSIGNED NOT NULL, conn_id BIGINT UNSIGNED NOT NULL, "
        "created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
        "PRIMARY KEY (batch_id, member), KEY (created_at)) ENGINE=InnoDB",
        f"CREATE TABLE IF NOT EXISTS `{s}`.`{CONFIRM}` ("
        "batch_id BIGINT UNSIGNED NOT NULL, member INT NOT NULL, "
        "PRIMARY KEY (batch_id, member)) ENGINE=InnoDB",
    ]


@dataclass(init=False, eq=False)
class Reservation:
    """Units a batch deducted for a member inside a transaction, not final yet. A record: its
    fields are Final (mypy keeps them unchanged), each reservation its own (identity equality).

    Its `__init__` is written out: mypyc compiles it, where a dataclass's generated one runs
    interpreted (a frozen one's 2.1 µs, once per merged member in a transaction)."""

    table: Final[str]  # `schema`.`table`, quoted
    key_col: Final[str]
    column: Final[str]
    key_sql: Final[str]  # the key as an SQL literal
    key_id: Final[Any]  # the hot-row engine's key (schema, table, value)
    batch_id: Final[int]
    member: Final[int]
    amount: Final[int]
    user: Final[str]

    def __init__(self, table: str, key_col: str, column: str, key_sql: str, key_id: Any,
                 batch_id: int, member: int, amount: int, user: str) -> None:
        self.table = table
        self.key_col = key_col
        self.column = column
        self.key_sql = key_sql
        self.key_id = key_id
        self.batch_id = batch_id
        self.member = member
        self.amount = amount
        self.user = user


@dataclass
class KeyEscrow:
    """Per key: units reserved and not yet resolved (by this proxy), and who waits for them."""

    outstanding: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


Connect = Callable[[str], Awaitable[Any]]  # user -> a service BackendConn on the primary
Release = Callable[[Any, bool], Awaitable[None]]  # (conn, broken) -> back to its pool


_RETURNED: Final = "stock returned"  # the one statement allowed 0 rows: when the stock row is gone
MAX_RESOLVE: Final = 500  # reservations resolved in one transaction


def by_key(rs: list[Reservation]) -> list[list[Reservation]]:
    out: dict[Any, list[Reservation]] = {}
    for r in rs:
        out.setdefault(r.key_id, []).append(r)
    return list(out.values())


def _pairs(rs: Iterable[Reservation]) -> str:
    """Reservations' keys as an SQL row list, for `(batch_id, member) IN (...)`."""
    return ", ".join(f"({r.batch_id}, {r.member})" for r in rs)


@mypyc_attr(native_class=False)  # an ordinary class: hotmerge.SchemaMoved extends it
class Unverified(Exception):
    """A service transaction's statement did not do what was checked for (affected rows, rows
    left): it is rolled back, never committed, and retried from what the database holds."""


async def row_exists(c: Any, table: str, key_col: str, key_sql: str) -> bool:
    """Whether the stock row is there, read again in the same transaction (a locking read that
    returned nothing may have been cut short; a count that returns nothing says "there")."""
    rows, _ = await c.query(f"SELECT COUNT(*) FROM {table} WHERE `{key_col}` = {key_sql}")
    return rows != [["0"]]


async def reserved_on(c: Any, schema: str, tbl: str, key: str) -> int:
    """Units reserved on a key by any proxy's members whose transactions are still open (their
    connection is on this server; a crashed proxy's reservations wait for recovery and are not
    waited for), not resolved yet. Read inside a group's batch near sell-out (hotmerge.py)."""
    bs = schema.replace("`", "``")
    try:
        rows, _ = await c.query(
            f"SELECT COALESCE(SUM(amount), 0) FROM `{bs}`.`{RESERVATION}` WHERE "
            f"table_name = '{escape_string(tbl)}' AND key_value = '{escape_string(key)}' "
            "AND server_id = @@server_id AND conn_id IN "
            "(SELECT ID FROM information_schema.PROCESSLIST)")
    except BackendError:
        return 0  # the statement failed alone; the batch's transaction goes on
    return int(rows[0][0] or 0) if rows else 0


async def run_checked(c: Any, stmts: list[tuple[str, int, str]]
                      ) -> tuple[list[tuple[str, int, int]], list[tuple[Any, Any]]]:
    """Run a service transaction's statements in one round trip (COMMIT never among them);
    return those whose affected rows are not what was expected, (what, expected, got), and
    every statement's result (`BackendConn.query_each`'s). The resolution below commits only
    when the first is empty (a hot-row batch has the server check its writes before the COMMIT
    in the same round trip instead: hotmerge._checked_commit)."""
    res = await c.query_each("; ".join(sql for sql, _, _ in stmts))
    return unexpected(stmts, res), res


def unexpected(stmts: list[tuple[str, int, str]], res: list[tuple[Any, Any]]
               ) -> list[tuple[str, int, int]]:
    """The statements whose results (`BackendConn.query_each`'s, in order) did not affect the
    rows expected: (what, expected, got; -1 for a result set)."""
    out = []
    for (_sql, want, what), (_, ok) in zip(stmts, res, strict=True):
        got = ok.affected_rows if ok is not None else -1
        if got != want:
            out.append((what, want, got))
    return out


class Escrow:
    def __init__(self, schema: str, connect: Connect, release: Release,
                 recover_after_s: int = 30) -> None:
        self.schema = schema.replace("`", "``")
        self.recover_after_s = recover_after_s
        self.connect = connect
        self.release = release
        self.keys: dict[Any, KeyEscrow] = {}
        self.outstanding = 0  # units reserved and not yet resolved, all keys (`KeyEscrow`)
        # Reservations whose member's transaction is over, per user (service connections are
        # the user's own): one drain per user resolves them, every key at once (drain).
        self.pending: dict[str, list[Reservation]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # A key whose resolution failed is tried again after its own backoff (the drain goes
        # on with the other keys meanwhile): its reservations wait here, the delay per key.
        self.later: dict[Any, list[Reservation]] = {}
        self._backoff: dict[Any, float] = {}

    def key(self, key_id: Any) -> KeyEscrow:
        ke = self.keys.get(key_id)
        if ke is None:
            ke = self.keys[key_id] = KeyEscrow()
        return ke

    def prune(self) -> None:
        """Forget keys with nothing reserved or pending (keys come from client input)."""
        busy = {r.key_id for rs in self.pending.values() for r in rs} | set(self.later)
        for k, ke in list(self.keys.items()):
            if ke.outstanding <= 0 and k not in busy:
                del self.keys[k]

    def reserved(self, r: Reservation) -> None:
        self.key(r.key_id).outstanding += r.amount
        self.outstanding += r.amount

    def confirm_sql(self, r: Reservation) -> str:
        """The member's own statement that makes its reservation a sale when its transaction
        commits (one row, or the reservation is not there: confirms.py rolls the order back)."""
        return (f"DELETE FROM `{self.schema}`.`{RESERVATION}` "
                f"WHERE batch_id = {r.batch_id} AND member = {r.member}")

    def reservation_sql(self, rs: Iterable[tuple[Reservation, int]]) -> str:
        """The batch's INSERT of its reservations: (reservation, member's connection id)."""
        vals = ", ".join(
            f"({r.batch_id}, {r.member}, '{escape_string(r.table)}', '{escape_string(r.key_sql)}', "
            f"{r.amount}, @@server_id, {cid})" for r, cid in rs)
        return (f"INSERT INTO `{self.schema}`.`{RESERVATION}` (batch_id, member, table_name, "
                f"key_value, amount, server_id, conn_id) VALUES {vals}")

    def ended(self, rs: list[Reservation]) -> None:
        """The members' transactions are over: resolve their reservations (in the background,
        `_drain`)."""
        for r in rs:
            self.pending.setdefault(r.user, []).append(r)
            if r.user not in self._tasks:
                self._tasks[r.user] = asyncio.create_task(self._drain(r.user))

    def sold(self, rs: list[Reservation]) -> None:
        """The members' transactions committed with their reservations deleted (a COMMIT's OK
        that carried the deletes, `BackendConn.sold`): nothing is left to resolve."""
        M.HOTROW_RESERVATIONS.add(sum(r.amount for r in rs), "sold_at_commit")
        self._settle(rs)

    async def settled(self, timeout: float) -> None:
        """At shutdown: let the drains resolve what is pending (a reservation left behind
        keeps its key off the plain path on every proxy until it is recovered)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=timeout)

    def describe(self) -> str:
        """The escrow as the SIGUSR1 dump shows it."""
        return (f"escrow: {self.outstanding} units outstanding, "
                f"{sum(map(len, self.pending.values()))} reservations pending, "
                f"{sum(map(len, self.later.values()))} to retry")

    def outstanding_beyond(self, key_id: Any, own: int) -> bool:
        """Units of the key reserved here by open transactions other than the asker's own
        (`own`): what `wait_resolved` waits for."""
        ke = self.keys.get(key_id)
        return ke is not None and ke.outstanding > own

    async def wait_resolved(self, key_id: Any, timeout: float, own: int = 0) -> bool:
        """Wait until something outstanding on the key is resolved; False on timeout or when
        nothing is outstanding but the waiter's own (its own transaction's units come back
        only when it ends: MySQL would not make it wait for itself either)."""
        if not self.outstanding_beyond(key_id, own):
            return False
        ke = self.keys[key_id]
        ke.changed.clear()
        try:
            await asyncio.wait_for(ke.changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _drain(self, user: str) -> None:
        """Resolve everything pending for the user, every key in one transaction, one
        transaction at a time: side by side, resolutions of different keys deadlocked each
        other (1213, seen on 10 hot SKUs: on small tables MariaDB reads these by full scans,
        which lock every row met), and one commit serves them all. A batch that fails is tried
        again key by key, and a key that fails waits for its own retry (`_retry_later`), so
        one key's trouble (its table dropped) holds up no other key."""
        try:
            await self._resolve_pending(user)
        finally:
            if not self.pending.get(user):
                self.pending.pop(user, None)
            self._tasks.pop(user, None)  # (no await since the loop found nothing pending)

    async def _resolve_pending(self, user: str) -> None:
        while rs := self.pending.get(user):
            batch, rs[:] = rs[:MAX_RESOLVE], rs[MAX_RESOLVE:]
            parts = [batch]
            while parts:
                part = parts.pop()
                try:
                    sold, returned = await self.resolve(part)
                except Exception as e:  # noqa: BLE001 - any failure: tried again, never dropped
                    if not isinstance(e, (BackendError, BackendLost, ProxyError, OSError,
                                          Unverified)):
                        log.error("escrow: resolving %d reservations raised %r", len(part), e)
                    keys = by_key(part)
                    if len(keys) > 1:
                        parts += keys
                    else:
                        self._retry_later(part, e)
                    continue
                M.HOTROW_RESERVATIONS.add(sold, "sold")
                M.HOTROW_RESERVATIONS.add(returned, "returned")
                self._settle(part)

    def _retry_later(self, rs: list[Reservation], e: Exception) -> None:
        """One key's reservations, after its resolution failed: again after the key's own
        backoff (0.05 s doubling to 5 s), by way of `ended`."""
        k = rs[0].key_id
        delay = self._backoff[k] = min(self._backoff.get(k, 0.025) * 2, 5.0)
        log.warning("escrow: %d reservations on %s not resolved yet (%s); retrying in %.2f s",
                    len(rs), rs[0].table, e, delay)
        self.later.setdefault(k, []).extend(rs)
        asyncio.get_running_loop().call_later(delay, self._again, k)

    def _again(self, k: Any) -> None:
        rs = self.later.pop(k, [])
        if rs:
            self.ended(rs)

    def _settle(self, rs: list[Reservation]) -> None:
        """Resolved: their units are no longer outstanding; whoever waits on the keys wakes."""
        for r in rs:
            self._backoff.pop(r.key_id, None)
            ke = self.key(r.key_id)
            ke.outstanding -= r.amount
            self.outstanding -= r.amount
            ke.changed.set()

    async def resolve(self, rs: list[Reservation]) -> tuple[int, int]:
        """One transaction for reservations of one user, any keys; returns (units sold, units
        returned).

        Idempotent, and verified before it commits. First round trip: a locking read of the
        reservations still there (it waits for a member's transaction still holding its delete
        uncommitted, so it sees the truth; locked, so each is resolved once, whoever resolves),
        each with whether an older proxy's confirm row sold it. Usually none is there (their
        members committed): then a count that none is there indeed, and a ROLLBACK, in one
        round trip (nothing was written). Else: delete them (and the confirm rows), return the
        unconfirmed units (last: a stock row is locked for the shortest time), each statement's
        affected rows checked, then a count that nothing of `rs` is left. Only then COMMIT, in
        its own round trip: a statement a KILL or a timeout cut short ("OK, 0 rows" without an
        error happens on MariaDB 10.11) rolls the whole transaction back, and the retry starts
        again from what the database holds, so no unit is ever returned twice."""
        return await self._on_service(rs[0].user, lambda c: self._resolve_on(c, rs))

    async def _on_service(self, user: str, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """`work` on a service connection of `user`'s, which goes back after it (reset when
        `work` raised: a transaction may be open)."""
        c = await self.connect(user)
        try:
            out = await work(c)
        except BaseException as e:  # (named; no `async with`, no `finally`: core/aio.py)
            await self.release(c, True)
            raise e
        await self.release(c, False)
        return out

    async def _resolve_on(self, c: Any, rs: list[Reservation]) -> tuple[int, int]:
        """`resolve`'s transaction on `c`: returns once it committed or rolled back; raises
        with it perhaps still open (the connection is reset as it goes back)."""
        pairs = _pairs(rs)
        of = {(r.batch_id, r.member): r for r in rs}
        res_t = f"`{self.schema}`.`{RESERVATION}`"
        conf_t = f"`{self.schema}`.`{CONFIRM}`"
        left = (f"SELECT COUNT(*) FROM {res_t} WHERE (batch_id, member) IN ({pairs})", -1,
                "rows left")
        got = await c.query_each(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; "
            f"SELECT r.batch_id, r.member, r.amount, k.member IS NOT NULL "
            f"FROM {res_t} r FORCE INDEX (PRIMARY) LEFT JOIN {conf_t} k "
            "ON k.batch_id = r.batch_id AND k.member = r.member "
            f"WHERE (r.batch_id, r.member) IN ({pairs}) FOR UPDATE")
        there: list[tuple[Reservation, int, bool]] = []
        for a, b, n, confirmed in got[2][0] or []:
            r = of.get((int(a or 0), int(b or 0)))
            if r is None:
                raise Unverified(f"reservation ({a}, {b}) not asked for")
            there.append((r, int(n or 0), confirmed == "1"))
        sold_units = sum(r.amount for r in rs) - sum(n for _, n, _ in there)
        if not there:
            bad, done = await run_checked(c, [left, ("ROLLBACK", 0, "rollback")])
            if bad or done[0][0] != [["0"]]:
                raise Unverified(f"reservations left unread: {done[0][0]}")
            return sold_units, 0
        back: dict[Any, tuple[Reservation, int]] = {}
        for r, n, confirmed in there:
            if confirmed:
                sold_units += n
            elif n:
                back[r.key_id] = (r, back.get(r.key_id, (r, 0))[1] + n)
        stmts: list[tuple[str, int, str]] = [(  # (sql, rows it must affect, what)
            f"DELETE FROM {res_t} WHERE (batch_id, member) IN "
            f"({_pairs(r for r, _, _ in there)})",
            len(there), "reservations deleted")]
        conf = [r for r, _, confirmed in there if confirmed]
        if conf:
            stmts.append((f"DELETE FROM {conf_t} WHERE (batch_id, member) IN "
                          f"({_pairs(conf)})",
                          len(conf), "confirm rows deleted"))
        returns = {}
        for r, n in back.values():
            what = f"{_RETURNED} to {r.table} {r.key_sql}"
            returns[what] = r
            stmts.append((f"UPDATE {r.table} SET `{r.column}` = `{r.column}` + {n} "
                          f"WHERE `{r.key_col}` = {r.key_sql}", 1, what))
        # A locking read cut short would have left rows out of the list above: nothing
        # of `rs` may be left when this transaction commits.
        stmts.append(left)
        bad, done = await run_checked(c, stmts)
        for what, want, n in bad:
            gone_row = returns.get(what)
            if not (gone_row is not None and n == 0 and not await row_exists(
                    c, gone_row.table, gone_row.key_col, gone_row.key_sql)):
                raise Unverified(f"{what}: {n} rows, expected {want}")
        if done[-1][0] != [["0"]]:
            raise Unverified(f"rows left after resolving: {done[-1][0]}")
        await c.execute("COMMIT")
        returned = sum(n for _, n in back.values())
        for r, n in back.values():
            log.info("escrow: %d units returned to %s %s (buyers rolled back)", n,
                     r.table, r.key_sql)
        return sold_units, returned

    async def orphans(self, user: str) -> list[tuple[int, int, str, str, int]]:
        """Reservations left by a crashed proxy or made on a former primary: older than
        `recover_after_s`, whose member connection is not on this server, not pending here.
        (batch id, member, table, key literal, amount)."""
        sql = ("SELECT batch_id, member, table_name, key_value, amount FROM "
               f"`{self.schema}`.`{RESERVATION}` WHERE created_at < NOW(6) - INTERVAL "
               f"{self.recover_after_s} SECOND AND (server_id <> @@server_id OR conn_id NOT IN "
               "(SELECT ID FROM information_schema.PROCESSLIST)) LIMIT 1000")
        rows, _ = await self._on_service(user, lambda c: c.query(sql))
        mine = {(r.batch_id, r.member)
                for rs in (*self.pending.values(), *self.later.values()) for r in rs}
        out = []
        for row in rows or []:
            b, m = int(row[0] or 0), int(row[1] or 0)
            if (b, m) not in mine:
                out.append((b, m, str(row[2]), str(row[3]), int(row[4] or 0)))
        return out
