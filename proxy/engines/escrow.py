"""Escrow for hot decrements merged inside transactions: reserve in the group, confirm in the
member's own transaction, return on rollback.

A merged batch can commit only its own short transaction; a member's transaction commits or
rolls back later, on its own connection. So the batch deducts the member's units and records a
**reservation** (batch id, member number, amount, the member's server and backend connection
id) in the same commit. A **confirm** row (batch id, member number) is inserted inside the
member's transaction (with its next command there, its COMMIT's round trip for the seed's
order: backends/confirms.py): it commits exactly when the member's transaction does (with its
order rows), and vanishes with a rollback or a dead connection.

When the member's transaction is over (COMMIT, ROLLBACK, an error that rolled it back, a lost
connection, a client gone), its reservations are **resolved** in one short transaction per key:
a locking read of the confirm rows (it would wait for a transaction still holding an
uncommitted confirm row, so it always sees the truth), then for each reservation still present
(locked, so each is resolved exactly once, whoever resolves): confirmed ones are deleted with
their confirm row (the sale is final); unconfirmed ones are deleted and their units added back
to stock. After a proxy crash or a failover, reservations whose member connection no longer
exists on the server (or that were made on another server) are resolved the same way.

No XA: MariaDB's replicated XA PREPARE is fragile (MDEV-32020, MDEV-31949). What observers see:
reserved units leave `quantity` when the group commits and come back if the buyer rolls back
(stock is briefly under-counted, never over-counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pymysql.converters import escape_string

from proxy.core.errors import BackendError, BackendLost, ProxyError

log = logging.getLogger("seckill.escrow")

RESERVATION = "hotrow_reservation"
CONFIRM = "hotrow_confirm"


def ddl(schema: str) -> list[str]:
    """Both tables; the confirm table has no AUTO_INCREMENT column, so the member's
    LAST_INSERT_ID() is not changed by its confirm row."""
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


@dataclass(frozen=True)
class Reservation:
    """Units a batch deducted for a member inside a transaction, not final yet."""

    table: str  # `schema`.`table`, quoted
    key_col: str
    column: str
    key_sql: str  # the key as an SQL literal
    key_id: Any  # the hot-row engine's key (schema, table, value)
    batch_id: int
    member: int
    amount: int
    user: str


@dataclass
class KeyEscrow:
    """Per key: units reserved and not yet resolved (by this proxy), and who waits for them."""

    outstanding: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: list[Reservation] = field(default_factory=list)
    draining: bool = False


Connect = Callable[[str], Awaitable[Any]]  # user -> a service BackendConn on the primary
Release = Callable[[Any, bool], Awaitable[None]]  # (conn, broken) -> back to its pool


_RETURNED = "stock returned"  # the one statement allowed 0 rows: when the stock row is gone


class Unverified(Exception):
    """A service transaction's statement did not do what was checked for (affected rows, rows
    left): it is rolled back, never committed, and retried from what the database holds."""


async def row_exists(c: Any, table: str, key_col: str, key_sql: str) -> bool:
    """Whether the stock row is there, read again in the same transaction (a locking read that
    returned nothing may have been cut short; a count that returns nothing says "there")."""
    rows, _ = await c.query(f"SELECT COUNT(*) FROM {table} WHERE `{key_col}` = {key_sql}")
    return rows != [["0"]]


async def run_checked(c: Any, stmts: list[tuple[str, int, str]]) -> list[tuple[str, int, int]]:
    """Run a service transaction's statements in one round trip (COMMIT never among them) and
    return those whose affected rows are not what was expected: (what, expected, got). The
    batch (hotrow.py) and the resolution below commit only when this is empty."""
    res = await c.query_each("; ".join(sql for sql, _, _ in stmts))
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
        self._tasks: set[asyncio.Task[None]] = set()

    def key(self, key_id: Any) -> KeyEscrow:
        ke = self.keys.get(key_id)
        if ke is None:
            ke = self.keys[key_id] = KeyEscrow()
        return ke

    def prune(self) -> None:
        """Forget keys with nothing reserved or pending (keys come from client input)."""
        for k, ke in list(self.keys.items()):
            if ke.outstanding <= 0 and not ke.pending and not ke.draining:
                del self.keys[k]

    def reserved(self, r: Reservation) -> None:
        self.key(r.key_id).outstanding += r.amount

    def confirm_sql(self, r: Reservation) -> str:
        return f"INSERT INTO `{self.schema}`.`{CONFIRM}` VALUES ({r.batch_id}, {r.member})"

    def reservation_sql(self, rs: Iterable[tuple[Reservation, int]]) -> str:
        """The batch's INSERT of its reservations: (reservation, member's connection id)."""
        vals = ", ".join(
            f"({r.batch_id}, {r.member}, '{escape_string(r.table)}', '{escape_string(r.key_sql)}', "
            f"{r.amount}, @@server_id, {cid})" for r, cid in rs)
        return (f"INSERT INTO `{self.schema}`.`{RESERVATION}` (batch_id, member, table_name, "
                f"key_value, amount, server_id, conn_id) VALUES {vals}")

    def ended(self, rs: list[Reservation]) -> None:
        """The members' transactions are over: resolve their reservations (in the background,
        one transaction per key for everything pending on it)."""
        for r in rs:
            ke = self.key(r.key_id)
            ke.pending.append(r)
            if not ke.draining:
                ke.draining = True
                t = asyncio.create_task(self._drain(r.key_id, ke))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    async def wait_resolved(self, key_id: Any, timeout: float, own: int = 0) -> bool:
        """Wait until something outstanding on the key is resolved; False on timeout or when
        nothing is outstanding but the waiter's own (its own transaction's units come back
        only when it ends: MySQL would not make it wait for itself either)."""
        ke = self.keys.get(key_id)
        if ke is None or ke.outstanding <= own:
            return False
        ke.changed.clear()
        try:
            await asyncio.wait_for(ke.changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _drain(self, key_id: Any, ke: KeyEscrow) -> None:
        delay = 0.05
        try:
            while ke.pending:
                batch, ke.pending = ke.pending, []
                try:
                    await self.resolve(batch)
                    delay = 0.05
                except (BackendError, BackendLost, ProxyError, OSError, Unverified) as e:
                    log.warning("escrow: %d reservations on %s not resolved yet (%s); retrying",
                                len(batch), batch[0].table, e)
                    ke.pending = batch + ke.pending
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                ke.outstanding -= sum(r.amount for r in batch)
                ke.changed.set()
        finally:
            ke.draining = False

    async def resolve(self, rs: list[Reservation]) -> tuple[int, int]:
        """One transaction for reservations of one key; returns (confirmed, units returned).

        Idempotent, and verified before it commits: it reads what is still reserved (locked,
        so each reservation is resolved once, whoever resolves), returns the unconfirmed units
        and deletes those reservation rows, then checks every statement's affected rows and
        that nothing of `rs` is left in either table. Only then COMMIT, in its own round trip:
        a statement a KILL or a timeout cut short ("OK, 0 rows" without an error happens on
        MariaDB 10.11) rolls the whole transaction back, and the retry starts again from what
        the database holds, so no unit is ever returned twice."""
        r0 = rs[0]
        pairs = ", ".join(f"({r.batch_id}, {r.member})" for r in rs)
        c = await self.connect(r0.user)
        broken = True
        try:
            rows, _ = await c.query(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION; "
                f"SELECT batch_id, member FROM `{self.schema}`.`{CONFIRM}` "
                f"WHERE (batch_id, member) IN ({pairs}) LOCK IN SHARE MODE")
            confirmed = {(int(a or 0), int(b or 0)) for a, b in rows or []}
            present, _ = await c.query(
                f"SELECT batch_id, member, amount FROM `{self.schema}`.`{RESERVATION}` "
                f"WHERE (batch_id, member) IN ({pairs}) FOR UPDATE")
            still = {(int(a or 0), int(b or 0)): int(n or 0) for a, b, n in present or []}
            back = sum(n for k, n in still.items() if k not in confirmed)
            stmts: list[tuple[str, int, str]] = []  # (sql, rows it must affect, what)
            if back:
                stmts.append((f"UPDATE {r0.table} SET `{r0.column}` = `{r0.column}` + {back} "
                              f"WHERE `{r0.key_col}` = {r0.key_sql}", 1, _RETURNED))
            if still:
                gone = ", ".join(f"({a}, {b})" for a, b in still)
                stmts.append((f"DELETE FROM `{self.schema}`.`{RESERVATION}` "
                              f"WHERE (batch_id, member) IN ({gone})", len(still),
                              "reservations deleted"))
            if confirmed:
                done = ", ".join(f"({a}, {b})" for a, b in confirmed)
                stmts.append((f"DELETE FROM `{self.schema}`.`{CONFIRM}` "
                              f"WHERE (batch_id, member) IN ({done})", len(confirmed),
                              "confirm rows deleted"))
            for what, want, got in await run_checked(c, stmts) if stmts else []:
                if not (what == _RETURNED and got == 0
                        and not await row_exists(c, r0.table, r0.key_col, r0.key_sql)):
                    raise Unverified(f"{what}: {got} rows, expected {want}")
            # A locking read cut short would have left rows out of both lists above: nothing
            # of `rs` may be left in either table when this transaction commits.
            left, _ = await c.query(
                f"SELECT (SELECT COUNT(*) FROM `{self.schema}`.`{RESERVATION}` WHERE "
                f"(batch_id, member) IN ({pairs})), (SELECT COUNT(*) FROM "
                f"`{self.schema}`.`{CONFIRM}` WHERE (batch_id, member) IN ({pairs}))")
            if left != [["0", "0"]]:
                raise Unverified(f"rows left after resolving: {left}")
            await c.execute("COMMIT")
            broken = False
            if back:
                log.info("escrow: %d units returned to %s %s (buyers rolled back)", back,
                         r0.table, r0.key_sql)
            return len(confirmed), back
        finally:
            await self.release(c, broken)

    async def orphans(self, user: str) -> list[tuple[int, int, str, str, int]]:
        """Reservations left by a crashed proxy or made on a former primary: older than
        `recover_after_s`, whose member connection is not on this server, not pending here.
        (batch id, member, table, key literal, amount)."""
        c = await self.connect(user)
        broken = True
        try:
            rows, _ = await c.query(
                "SELECT batch_id, member, table_name, key_value, amount FROM "
                f"`{self.schema}`.`{RESERVATION}` WHERE created_at < NOW(6) - INTERVAL "
                f"{self.recover_after_s} SECOND AND (server_id <> @@server_id OR conn_id NOT IN "
                "(SELECT ID FROM information_schema.PROCESSLIST)) LIMIT 1000")
            broken = False
        finally:
            await self.release(c, broken)
        mine = {(r.batch_id, r.member) for ke in self.keys.values() for r in ke.pending}
        out = []
        for row in rows or []:
            b, m = int(row[0] or 0), int(row[1] or 0)
            if (b, m) not in mine:
                out.append((b, m, str(row[2]), str(row[3]), int(row[4] or 0)))
        return out
