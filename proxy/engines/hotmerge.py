"""The hot-row engine's merged path: decrements of one key gathered into a group, one backend
transaction for the whole group, every member told what MySQL would have told it alone
(hotmember.py: a member's side, from joining to its answer).

merge: the first decrement for a key opens a group; followers join while the previous group of that
key commits (two groups alternate), then up to `max_wait_us` or `max_batch` members. A leader with
no group ahead commits at once. One backend transaction per group: lock the row, allocate members
in arrival order with each one's amount and guard (`hotalloc.allocate`), one UPDATE by the total,
one batch record, COMMIT, each statement's affected rows checked first (by the server, in the round
trip that carries the COMMIT: `_checked_commit`), and that no DDL moved the schema since the rule
was checked (`SchemaMoved`; a DDL through the proxy waits for the batches that commit with no look
after their lock, `quiet`). No reply before COMMIT returned OK. A connection lost during COMMIT:
the batch record tells; a batch that provably did not commit is retried once. Members inside
transactions get reservations (escrow.py) confirmed in their own transactions.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, Final, Protocol

from mypy_extensions import mypyc_attr
from pymysql.converters import escape_string

from proxy.core import metrics as M
from proxy.core.aio import InFlight
from proxy.core.config import HotRowCfg
from proxy.core.errors import (
    CR_SERVER_LOST,
    ER_BAD_NULL_ERROR,
    ER_SECKILL_NOT_COMMITTED,
    BackendError,
    BackendLost,
    ProxyError,
    ResetReason,
)
from proxy.engines.escrow import (
    Escrow,
    Reservation,
    Unverified,
    reserved_on,
    row_exists,
    unexpected,
)
from proxy.engines.hotalloc import (
    PLAIN,
    RUN_ALONE,
    HotStmt,
    Member,
    all_hit_bound,
    allocate,
    sql_literal,
)
from proxy.engines.hotauto import counted, merged_lately
from proxy.engines.hotkeys import Group, KeyState
from proxy.engines.outcome import find_record

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.engines.ports import HotRowHost
    from proxy.net.protocol import OkPacket

log = logging.getLogger("seckill.hotrow")

# `KeyState.left` after a batch that found no row or NULL: no first try (it could not hold)
# until a batch reads a value again
NO_ROOM: Final = -(1 << 64)
# a batch's writes' ROW_COUNT()s, which its record's INSERT checks (`_writes`): user variables
# go to a statement-format binlog as values, where ROW_COUNT() in the INSERT would be unsafe
_UPDATED: Final = "@seckill_proxy_updated"
_RESERVED: Final = "@seckill_proxy_reserved"
_NO_PRIVILEGE: Final = frozenset({1142, 1143, 1044})  # table, column, database access denied
_TRANSIENT: Final = frozenset({1317, 1205, 1213, 1969, 3024})


class MergeHost(Protocol):
    """What the merged path uses of the engine (hotrow.HotRowEngine)."""

    cfg: HotRowCfg
    escrow: Escrow
    workers: int  # the proxy's processes (hotauto.counted)

    @property
    def app(self) -> HotRowHost: ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...  # a task awaited at stop

    def next_batch_id(self) -> int: ...

    async def service_conn(self, user: str) -> BackendConn: ...

    async def primary_answers(self, user: str) -> bool: ...

    def schema_changed(self) -> None: ...

    def merge_gate(self, hs: HotStmt) -> int | None: ...  # hotrules.RuleBook.merge_gate

    def schema_same(self, generation: int) -> bool: ...

    def may_run_plain(self, hs: HotStmt) -> bool: ...


@mypyc_attr(native_class=False)  # compiled methods, an ordinary class (compiled.py)
class NotCommitted(Exception):
    """The batch provably did not commit (error before or at COMMIT, or connection lost before
    COMMIT was sent, or the batch record is absent after an interrupted COMMIT)."""

    def __init__(self, err: ProxyError | BackendError, unverified: bool = False,
                 alone: bool = False) -> None:
        super().__init__(str(err))
        self.err = err
        self.unverified = unverified  # rolled back before COMMIT: a statement was cut short
        self.alone = alone  # the schema moved (`SchemaMoved`): members run alone, no retry


@mypyc_attr(native_class=False)  # compiled methods, an ordinary class (compiled.py)
class SchemaMoved(Unverified):
    """DDL ran or runs since the rule was checked (hotrules.RuleBook.merge_gate): asked before
    the batch and once its locking read holds the table's metadata lock; members run alone."""


@mypyc_attr(native_class=False)  # compiled methods, an ordinary class (compiled.py)
class Merger:
    """Groups per key, their batches and the members' answers."""

    def __init__(self, host: MergeHost) -> None:
        self.host = host
        self.unchecked = InFlight()  # `_checked_commit`s on the wire (`quiet`)
        self.groups: dict[Group, HotStmt] = {}  # groups not done, with their statement (`describe`)

    async def quiet(self, timeout: float) -> None:
        """A DDL is about to be sent (merges already stopped, hotrules.RuleBook.ddl_started):
        wait until no group commits with no schema look after its lock (`_checked_commit`),
        at most `timeout` seconds (one holding the table's metadata lock by then makes the
        DDL wait for it anyway)."""
        if not await self.unchecked.idle(timeout):
            log.warning("DDL sent with a hot-row batch still running after %.1f s", timeout)

    def join(self, ks: KeyState, hs: HotStmt, m: Member, user: str, floor: int | None,
             auto: bool) -> None:
        """Join (or open) the key's collecting group, now; the group decides `m.fut`
        (hotmember.py waits for it)."""
        g = ks.collecting
        if g is None or len(g.members) >= self.host.cfg.max_batch or g.user != user:
            prev = ks.tail
            if ks.plain_running and (prev is None or prev.done()):
                prev = ks.after_plain()  # gather behind the statement running as it is
            g = Group(prev=prev, user=user, auto=auto)
            ks.collecting = g
            ks.tail = g.done
            self.groups[g] = hs
            self.host.spawn(self._lead(hs, ks, g, user, floor))
        g.members.append(m)
        if len(g.members) >= self.host.cfg.max_batch:
            g.filled()

    async def _lead(self, hs: HotStmt, ks: KeyState, g: Group, user: str,
                    floor: int | None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.host.cfg.max_wait_us / 1e6
        try:
            busy = g.prev is not None and not g.prev.done()
            if busy:
                assert g.prev is not None
                g.at("after the key's previous group")
                await asyncio.shield(g.prev)
            # No earlier group in flight: the leader commits at once. One in flight: followers
            # gather while it commits, then up to max_wait_us more for the group to fill.
            left = deadline - loop.time()
            if busy and left > 0 and len(g.members) < self.host.cfg.max_batch:
                g.at("filling")
                await g.fill(left)
            if ks.collecting is g:
                ks.collecting = None
            ks.in_flight += len(g.members)
            if (g.auto and len(g.members) == 1 and self.host.may_run_plain(hs)
                    and (g.members[0].conn is None or not merged_lately(ks))):
                # Nobody came: the lone member runs its own statement; the key's next group
                # starts once it is done, as after a group. (Not past open reservations: the
                # group waits for them near sell-out, a plain UPDATE would not, _goes_plain.)
                # Inside a transaction, not on a key that merged a moment ago: its row lock
                # would be held through the member's COMMIT, the next group waiting for it.
                m = g.members[0]
                if not m.fut.done():  # (its client may be gone)
                    m.plain_done = loop.create_future()
                    m.fut.set_result(PLAIN)
                    g.at("its lone member running plain")
                    await asyncio.shield(m.plain_done)
                return
            await self._commit_group(hs, g, user, floor, ks)
        except BaseException as e:  # never leave a member waiting forever
            for m in g.members:
                if not m.fut.done():
                    m.fut.set_exception(
                        e if isinstance(e, ProxyError) else
                        ProxyError(CR_SERVER_LOST, f"seckill-proxy batch aborted: {type(e).__name__}"))
            if not isinstance(e, Exception):
                raise
        finally:
            self.groups.pop(g, None)
            ks.in_flight -= len(g.members)
            if ks.collecting is g:
                ks.collecting = None
            if not g.done.done():
                g.done.set_result(None)

    async def _commit_group(
        self, hs: HotStmt, g: Group, user: str, floor: int | None, ks: KeyState
    ) -> None:
        last: NotCommitted | None = None
        for attempt in (1, 2):
            try:
                decisions = await self._batch(hs, g, user, floor, ks)
            except NotCommitted as e:
                last = e
                if e.alone:
                    break
                log.warning("hot-row batch for %s did not commit (attempt %d): %s",
                            hs.rule.qualified, attempt, e)
                if isinstance(e.err, BackendError):
                    break  # the database refused it: no retry of the same (see below)
                if (attempt == 1 and e.err.code in (2013, 9102) and self.host.app.monitor
                        is not None and not await self.host.primary_answers(user)):
                    # The connection died and the primary does not answer: the monitor looks
                    # again (a restart, a failover) before the one retry, so it goes to a live
                    # primary. (One killed: the retry at once, the key held up no longer.)
                    g.at("the monitor's next round")
                    await self.host.app.monitor.next_round()
                continue
            ks.batches += 1
            counted(ks, len(g.members), monotonic(), self.host.workers)
            ack_err: ProxyError | None = None
            gtid = g.members[0].gtid if g.members else None
            if gtid and self.host.app.durability.wants_ack and any(
                    d == 1 and m.conn is None for m, d in zip(g.members, decisions, strict=True)):
                try:
                    g.at("a replica's ack")
                    await self.host.app.durability.wait_ack(gtid)  # one wait serves the whole batch
                except ProxyError as e:
                    ack_err = e
            for m, d in zip(g.members, decisions, strict=True):
                if not m.fut.done():
                    if ack_err is not None and d == 1:
                        m.fut.set_exception(ack_err)
                    else:
                        m.fut.set_result(d)
            return
        assert last is not None
        err = last.err
        code = err.code
        if isinstance(err, BackendError) or last.unverified or code in _NO_PRIVILEGE:
            # The database refused the group's transaction (a privilege on the proxy's tables,
            # a constraint or trigger added since the rule was checked, a lock wait, a value
            # out of range) or it did not do what was allocated: nothing committed. Each
            # member runs alone (as MySQL would answer it); the rule is checked again.
            if code in _NO_PRIVILEGE:
                log.warning("hot-row batch as user %s lacks privileges on %s (%s): statements "
                            "run unmerged; grant SELECT, INSERT, DELETE on `%s`.* to merge them",
                            g.user, self.host.cfg.batch_schema, err, self.host.cfg.batch_schema)
            elif code not in _TRANSIENT and not last.alone:
                self.host.schema_changed()
            for m in g.members:
                if not m.fut.done():
                    m.fut.set_result(RUN_ALONE)
            return
        for m in g.members:
            if not m.fut.done():
                M.HOTROW_STATEMENTS.inc("merge", "error")
                m.fut.set_exception(err if isinstance(err, ProxyError) else _as_proxy_error(err))

    async def _batch(
        self, hs: HotStmt, g: Group, user: str, floor: int | None, ks: KeyState
    ) -> list[int]:
        """One backend transaction for the whole group; returns each member's decision.
        Verified before it commits: the locked row's value (and whether it exists) is read,
        the statements after must affect exactly the rows allocated (the stock row, one
        reservation per member in a transaction, the batch record), checked by the server
        before the COMMIT that follows them in the same round trip (`_checked_commit`). A
        statement cut short (KILL QUERY, a timeout: MariaDB may answer "OK, 0 rows" without
        an error) leaves the batch not committed.
        First try, while the key's last batch left room for every member: the locking read,
        the writes for "every member gets its units" and COMMIT in one round trip, the UPDATE
        guarded by the least value at which that is the allocation (`all_hit_bound`), so it
        commits only if the value read allocates exactly that; otherwise it is rolled back and
        the group reads, allocates, then writes and commits: one round trip per group (two
        near sell-out), the same outcome."""
        r, key, t0 = hs.rule, sql_literal(hs.key_value), perf_counter()
        tbl = f"`{r.schema}`.`{r.table}`"
        members, batch_id = g.members, self.host.next_batch_id()
        if (generation := self.host.merge_gate(hs)) is None:
            raise NotCommitted(ProxyError(CR_SERVER_LOST, "schema changing"), True, True)
        g.at("a service connection for its batch", batch_id)
        try:
            c = await self.host.service_conn(user)
        except (BackendLost, BackendError) as e:
            raise NotCommitted(_as_proxy_error(e)) from None
        pool = c.pool
        commit_sent = False
        decisions: list[int] = []
        reserve: list[tuple[Reservation, Member]] = []
        lock = f"START TRANSACTION; SELECT `{r.column}` FROM {tbl} WHERE `{r.key}` = {key} FOR UPDATE"
        g.at("its batch running", batch_id, c.thread_id)
        try:
            first = all_hit_bound(members, floor)
            if first is not None and ks.left is not None and ks.left < first[0]:
                first = None  # the last batch left too little: read first
            res = None
            current: int | None = None
            if first is not None:
                if not self.host.schema_same(generation):  # the last look before it may commit
                    raise SchemaMoved(f"DDL since the rule of {tbl} was checked")
                need, total = first
                decisions = [1] * len(members)
                stmts, reserve = self._writes(hs, members, user, decisions, total, batch_id, need)
                commit_sent = True  # with its COMMIT: a reply lost is in doubt (`_in_doubt`)
                res = await self._checked_commit(c, hs, lock, 2, stmts)
                M.HOTROW_FIRST_TRY.inc("held" if res is not None else "redone")
                if res is not None:
                    rows = res[1][0]
                    current = int(rows[0][0]) if rows and rows[0][0] is not None else None
                    if current is None or allocate(current, members, floor) != (decisions, total):
                        log.error("hot-row batch for %s: first try committed at value %s, which "
                                  "its bound says it could not", r.qualified, current)
            if res is None:
                commit_sent = False
                decisions, reserve = [], []
                if first is not None:
                    await c.execute("ROLLBACK")  # the first try did not hold: as if never run
                got = await self._read_and_allocate(
                    c, hs, members, user, floor, batch_id, lock, generation)
                decisions, reserve, current, total, stmts = got
                commit_sent = True
                res = await self._checked_commit(c, hs, "", 0, stmts)
                if res is None:
                    raise Unverified("a write affected other rows than allocated")
            ok = res[-1][1]
            ks.left = current - total if current is not None else NO_ROOM
        except (BackendError, Unverified) as e:
            # An error or a failed check: MySQL runs nothing after an error in a
            # multi-statement, so the COMMIT after it did not run; the pool's reset rolls the
            # batch back.
            c.taint(ResetReason.SERVICE)
            await pool.release(c, "batch error")
            if isinstance(e, SchemaMoved):
                raise NotCommitted(ProxyError(CR_SERVER_LOST, str(e)), True, True) from None
            if isinstance(e, Unverified):
                log.warning("hot-row batch for %s rolled back: %s", r.qualified, e)
                raise NotCommitted(ProxyError(
                    CR_SERVER_LOST, f"seckill-proxy batch rolled back: {e}"), True) from None
            raise NotCommitted(e) from None
        except BackendLost as e:
            await pool.release(c, "batch connection lost")
            if not commit_sent:
                raise NotCommitted(_as_proxy_error(e)) from None
            g.at("its batch in doubt: the record looked up", batch_id)
            decisions, ok = await self._in_doubt(hs, batch_id, user, decisions, e), None
        else:
            await pool.release(c)
        for rv, m in reserve:
            m.reservation = rv
            self.host.escrow.reserved(rv)
        if ok is not None and ok.gtid:
            for m in members:
                m.gtid = ok.gtid
        M.HOTROW_BATCH_SIZE.observe(len(members))
        M.HOTROW_BATCH_COMMIT.observe(perf_counter() - t0)
        return decisions

    async def _checked_commit(
        self, c: BackendConn, hs: HotStmt, head: str, heads: int, stmts: list[tuple[str, int, str]],
    ) -> list[tuple[list[list[str | None]] | None, OkPacket | None]] | None:
        """`head` (`heads` statements: the locking read of a first try, or none), the writes
        and COMMIT in one round trip; every statement's result if it committed, None if the
        server's check stopped it before its COMMIT (the caller rolls it back). The check:
        the batch record's INSERT fails (1048, a NULL total) unless each write before it
        affected what it must (`_writes`), and MariaDB runs nothing after an error, nor after
        a statement a KILL cut short (`BackendConn.query_each`). A DDL through the proxy
        waits for it (`quiet`): a first try has no schema check after its lock."""
        parts = [head] if head else []
        parts += [sql for sql, _, _ in stmts]
        parts.append("COMMIT")
        self.unchecked.enter()
        try:
            res = await c.query_each("; ".join(parts))
        except BackendError as e:
            if e.code == ER_BAD_NULL_ERROR[0] and e.at == heads + len(stmts) - 1:
                return None
            raise
        finally:
            self.unchecked.leave()
        bad = unexpected(stmts, res[heads:-1])
        if bad:  # (cannot be: the server checked them first)
            log.error("hot-row batch for %s committed writes its own check rejects: %s",
                      hs.rule.qualified, bad)
        return res

    async def _read_and_allocate(
        self, c: BackendConn, hs: HotStmt, members: list[Member], user: str, floor: int | None,
        batch_id: int, lock: str, generation: int,
    ) -> tuple[list[int], list[tuple[Reservation, Member]], int | None, int,
               list[tuple[str, int, str]]]:
        """Lock and read the row, allocate; (decisions, reservations, value read, total, the
        writes to commit)."""
        r = hs.rule
        tbl = f"`{r.schema}`.`{r.table}`"
        key = sql_literal(hs.key_value)
        rows, _ = await c.query(lock)
        if not self.host.schema_same(generation):
            raise SchemaMoved(f"DDL since the rule of {tbl} was checked")
        exists = bool(rows)
        if not exists and await row_exists(c, tbl, r.key, key):  # a read cut short
            raise Unverified(f"locking read of {tbl} {key} returned nothing")
        current = int(rows[0][0]) if rows and rows[0][0] is not None else None
        decisions, total = allocate(current, members, floor, exists)
        if 0 in decisions:  # near sell-out: units still reserved by open transactions?
            held = await reserved_on(c, self.host.cfg.batch_schema, tbl, key)
            for m, d in zip(members, decisions, strict=True):
                if d == 0:
                    m.reserved_seen = held
        stmts, reserve = self._writes(hs, members, user, decisions, total, batch_id, None)
        return decisions, reserve, current, total, stmts

    def _writes(
        self, hs: HotStmt, members: list[Member], user: str, decisions: list[int], total: int,
        batch_id: int, need: int | None,
    ) -> tuple[list[tuple[str, int, str]], list[tuple[Reservation, Member]]]:
        """The batch's writes, each with the rows it must affect: the UPDATE by the total
        (guarded by `need` on a first try), the reservations of members inside transactions
        (escrow.py: their units are reserved, not sold), the batch record, whose total is
        NULL, an error, unless the writes before it affected what they must (their
        ROW_COUNT()s, read into user variables): the server's check before the COMMIT that
        follows (`_checked_commit`)."""
        r = hs.rule
        tbl = f"`{r.schema}`.`{r.table}`"
        key = sql_literal(hs.key_value)
        reserve = [(Reservation(tbl, r.key, r.column, key, hs.key_id, batch_id, i, m.amount,
                                user), m)
                   for i, (m, d) in enumerate(zip(members, decisions, strict=True))
                   if d == 1 and m.conn is not None]
        stmts: list[tuple[str, int, str]] = []  # (statement, rows it must affect, what)
        checks: list[str] = []  # each write's ROW_COUNT(), read into a user variable
        if total:
            guard = f" AND `{r.column}` >= {need}" if need is not None else ""
            stmts.append((f"UPDATE {tbl} SET `{r.column}` = `{r.column}` - {total} "
                          f"WHERE `{r.key}` = {key}{guard}", 1, "UPDATE"))
            stmts.append((f"SET {_UPDATED} = ROW_COUNT()", 0, "SET"))
            checks.append(f"{_UPDATED} = 1")
        if reserve:
            stmts.append((self.host.escrow.reservation_sql(
                (rv, m.conn.thread_id) for rv, m in reserve), len(reserve), "INSERT"))
            stmts.append((f"SET {_RESERVED} = ROW_COUNT()", 0, "SET"))
            checks.append(f"{_RESERVED} = {len(reserve)}")
        total_sql = f"IF({' AND '.join(checks)}, {total}, NULL)" if checks else str(total)
        stmts.append((
            f"INSERT INTO `{self.host.cfg.batch_schema}`.`hotrow_batch` "
            f"(id, table_name, key_value, members, total) VALUES ({batch_id}, "
            f"'{escape_string(r.qualified)}', {sql_literal(str(hs.key_value))}, "
            f"{len(members)}, {total_sql})", 1, "INSERT"))
        return stmts, reserve

    async def _in_doubt(
        self, hs: HotStmt, batch_id: int, user: str, decisions: list[int], e: BackendLost
    ) -> list[int]:
        """COMMIT was sent and the connection died: look the batch record up to learn the truth.

        A locking read waits for a COMMIT still in flight on the server; after a primary restart,
        crash recovery has settled the transaction before the server accepts connections.
        """
        log.warning("hot-row batch %d: connection lost during COMMIT (%s); resolving", batch_id, e)
        found = await find_record(self.host.app, f"`{self.host.cfg.batch_schema}`.`hotrow_batch`", batch_id,
                                  user, self.host.app.password_of(user) or "")
        if found is not None:
            M.HOTROW_IN_DOUBT.labels("committed" if found else "not_committed").inc()
            log.warning("hot-row batch %d %s", batch_id, "committed" if found else "did not commit")
            if found:
                return decisions
            raise NotCommitted(ProxyError(
                ER_SECKILL_NOT_COMMITTED, "Lost connection to MySQL server during COMMIT; "
                "seckill-proxy verified the statement was NOT applied"))
        M.HOTROW_IN_DOUBT.labels("unknown").inc()
        raise _Unknown(ProxyError(CR_SERVER_LOST, "Lost connection to MySQL server during COMMIT; "
                                  "outcome unknown (primary unreachable)"))


@mypyc_attr(native_class=False)  # compiled methods, an ordinary class (compiled.py)
class _Unknown(ProxyError):
    def __init__(self, err: ProxyError) -> None:
        super().__init__((err.code, err.sqlstate), err.message)


def _as_proxy_error(e: BackendError | BackendLost | ProxyError) -> ProxyError:
    if isinstance(e, ProxyError):
        return e
    if isinstance(e, BackendError):
        return ProxyError((e.code, e.sqlstate), e.message)
    return ProxyError(ER_SECKILL_NOT_COMMITTED,
                      f"Lost connection to MySQL server ({e.reason}); statement NOT applied")
