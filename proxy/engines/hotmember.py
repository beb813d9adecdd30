"""A merged member's side of the hot-row engine's merged path: it joins its key's group
(hotmerge.py), waits for the group's decision, and gets the answer MySQL would have given it
alone.

Two callers, one logic. The session path awaits `merge`. The fast lane (exec/fastlane.py)
joins from the client socket's callback (`enter`) and, once the group decided, answers from
the future's callback (`answer_now`); where the answer needs waiting (a member told to run its
own statement, "0 rows" near sell-out while units are still reserved, an error, an inventory
hint) it runs `finish` in a short task, the rest of the same path `merge` runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from proxy.core import metrics as M
from proxy.core.errors import (
    CR_SERVER_LOST,
    ER_INVENTORY_TARGET_AFFECT_ROW,
    ER_QUERY_INTERRUPTED,
    BackendError,
    BackendLost,
    ProxyError,
)
from proxy.engines.escrow import Reservation
from proxy.engines.hotalloc import MISMATCH, PLAIN, RUN_ALONE, HotStmt, Inventory, Member
from proxy.engines.hotkeys import KeyState
from proxy.engines.hotmerge import Merger
from proxy.net import protocol as P

if TYPE_CHECKING:
    from proxy.engines.ports import HotRowMember

INFO_HIT: Final = b"Rows matched: 1  Changed: 1  Warnings: 0"
INFO_MISS: Final = b"Rows matched: 0  Changed: 0  Warnings: 0"


class Answers:
    """Members joining groups, and the answers they get."""

    def __init__(self, merger: Merger) -> None:
        self.merger = merger
        self.host = merger.host
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        """The engine's loop, kept: `asyncio.get_running_loop()` makes a getpid() system call
        each time on Python 3.11 (1.5% of the proxy's CPU on the seed's order, py-spy)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def enter(self, session: HotRowMember, hs: HotStmt, ks: KeyState, floor: int | None,
              auto: bool, txn_conn: Any, inv: Inventory | None,
              deadline: float | None = None) -> Member:
        """Join the key's group now (no await); `deadline`: how long "0 rows" near sell-out
        may wait for reserved units (a member joining again keeps its first deadline)."""
        loop = self.loop()
        if auto:
            ks.mode = "auto:merge"
        now = loop.time()
        m = Member(hs.amount, hs.guard_op, hs.bound, loop.create_future(), now,
                   conn=txn_conn, target=inv.target if inv is not None else None, sub=hs.sub)
        m.deadline = (now + self.host.cfg.queue_wait_timeout_ms / 1000 if deadline is None
                      else deadline)
        self.merger.join(ks, hs, m, session.username or "", floor, auto)
        ks.waiting += 1
        return m

    async def merge(
        self, session: HotRowMember, hs: HotStmt, ks: KeyState, floor: int | None,
        forward: Callable[[], Awaitable[Any]], auto: bool = False, txn_conn: Any = None,
        inv: Inventory | None = None,
    ) -> tuple[str, str]:
        m = self.enter(session, hs, ks, floor, auto, txn_conn, inv)
        return await self.finish(session, hs, ks, m, floor, forward, auto, txn_conn, inv)

    async def finish(
        self, session: HotRowMember, hs: HotStmt, ks: KeyState, m: Member, floor: int | None,
        forward: Callable[[], Awaitable[Any]], auto: bool, txn_conn: Any,
        inv: Inventory | None,
    ) -> tuple[str, str]:
        """From a member that joined (`enter`) to its answer, sent to the client."""
        loop = self.loop()
        while True:
            try:
                decision = await self._decided(ks, m)
            except ProxyError as e:
                if inv is not None and inv.rollback_on_fail and txn_conn is not None:
                    await self._end_txn(session, txn_conn, "ROLLBACK")
                raise e  # (never a bare raise after an await in compiled code: test_speedups)
            # Near sell-out "0 rows" while reserved units may still come back would be a lie
            # in time (MySQL's member would wait on the row lock): wait (bounded), try again.
            own = _own(session, hs)
            if decision == 0 and loop.time() < m.deadline:
                if await self.host.escrow.wait_resolved(hs.key_id, m.deadline - loop.time(), own):
                    m = self.enter(session, hs, ks, floor, auto, txn_conn, inv, m.deadline)
                    continue
                if self._reserved_elsewhere(hs, m, own):
                    # Reserved by another proxy (or a dead one): no event says when; look again.
                    await asyncio.sleep(min(0.05, max(0.0, m.deadline - loop.time())))
                    m = self.enter(session, hs, ks, floor, auto, txn_conn, inv, m.deadline)
                    continue
            break
        if decision == PLAIN:
            assert m.plain_done is not None
            if txn_conn is not None:
                session.locked_hot_key(hs.key_id)
            try:
                r = await forward()
            finally:
                m.plain_done.set_result(None)
            ok = r is not None and r.err is None
            M.HOTROW_STATEMENTS.inc("auto", "plain" if ok else "error")
            return "hotrow-plain", "ok" if ok else "error"
        if m.gtid:
            session.saw_gtid(m.gtid)  # read-your-writes covers merged deductions too
        if decision == RUN_ALONE:
            M.HOTROW_STATEMENTS.inc("merge", "run_alone")
            if txn_conn is not None:
                session.locked_hot_key(hs.key_id)
            await forward()
            return "hotrow-merge", "ok"
        if decision == MISMATCH:
            # TARGET_AFFECT_ROW(n): the statement fails, changes nothing (nothing allocated)
            assert inv is not None
            if inv.rollback_on_fail and txn_conn is not None:
                await self._end_txn(session, txn_conn, "ROLLBACK")
            M.HOTROW_STATEMENTS.inc("merge", "target_mismatch")
            raise ProxyError(ER_INVENTORY_TARGET_AFFECT_ROW,
                             "The affected row number does not match that of user specified.")
        if inv is None or not inv.commit_on_success:
            await session.send(self._answer(session, m, decision))
            return "hotrow-merge", "ok"
        if m.reservation is not None:
            try:
                await self._confirm_now(session, m, m.reservation)
            except ProxyError as e:
                M.HOTROW_STATEMENTS.inc("merge", "error")
                if inv.rollback_on_fail:
                    await self._end_txn(session, txn_conn, "ROLLBACK")
                raise e  # (never a bare raise after an await in compiled code: test_speedups)
        else:
            session.answered_here(decision)
        if txn_conn is not None:
            await self._end_txn(session, txn_conn, "COMMIT")
        M.HOTROW_STATEMENTS.inc("merge", "succeeded" if decision else "sold_out")
        await session.send(session.ok_packet(decision, 0, 0, INFO_HIT if decision else INFO_MISS))
        return "hotrow-merge", "ok"

    def answer_now(self, session: HotRowMember, hs: HotStmt, ks: KeyState,
                   m: Member) -> bytes | None:
        """The fast lane's member (no inventory hints), its group's decision made: the OK
        packet the session path would send (`finish`, with the same side effects), or None
        where `finish` must run: an error, its own statement to run, or "0 rows" that may
        have to wait for reserved units."""
        fut = m.fut
        if fut.cancelled() or fut.exception() is not None:
            return None
        d = fut.result()
        if d < 0:
            return None
        if d == 0 and self.loop().time() < m.deadline:
            own = _own(session, hs)
            if (self.host.escrow.outstanding_beyond(hs.key_id, own)
                    or self._reserved_elsewhere(hs, m, own)):
                return None  # (as `finish`: `wait_resolved` would wait, or the sleep)
        ks.waiting -= 1
        if m.gtid:
            session.saw_gtid(m.gtid)
        return self._answer(session, m, d)

    def abandon(self, ks: KeyState, m: Member) -> None:
        """The fast lane's member is gone before `answer_now` (its client left): as a session
        task cancelled in `_decided`."""
        if not m.fut.done():
            m.fut.cancel()
        self._gone(m)
        ks.waiting -= 1

    def _answer(self, session: HotRowMember, m: Member, decision: int) -> bytes:
        """Decision 1 or 0, no COMMIT_ON_SUCCESS: a reservation's confirm row goes with the
        member's next command (its COMMIT's round trip: backends/confirms.py); whatever ends
        its transaction resolves the reservation (the session hands it over)."""
        r = m.reservation
        if r is not None:
            m.conn.confirms.append(self.host.escrow.confirm_sql(r))
            session.reserved(r, m.conn)  # diagnostics: that connection's; ROW_COUNT() 1
        else:
            # It ran on no connection of the session: no warnings, ROW_COUNT() answered here.
            session.answered_here(decision)
        M.HOTROW_STATEMENTS.inc("merge", "succeeded" if decision else "sold_out")
        return session.ok_packet(decision, 0, 0, INFO_HIT if decision else INFO_MISS)

    def _reserved_elsewhere(self, hs: HotStmt, m: Member, own: int) -> bool:
        """Units its batch saw reserved that this proxy does not know of (another proxy's)."""
        ke = self.host.escrow.keys.get(hs.key_id)
        return m.reserved_seen > max(own, ke.outstanding if ke else 0)

    async def _decided(self, ks: KeyState, m: Member) -> int:
        try:
            return await m.fut  # the group runs in its own task: no shield needed
        except BaseException:
            self._gone(m)
            raise
        finally:
            ks.waiting -= 1

    def _gone(self, m: Member) -> None:
        if m.plain_done is not None and not m.plain_done.done():
            m.plain_done.set_result(None)  # told to run alone, gone first: the key moves on
        if m.reservation is not None and m.fut.done() and not m.fut.cancelled():
            self.host.escrow.ended([m.reservation])  # reserved, never confirmed: give it back

    async def _confirm_now(self, session: HotRowMember, m: Member, r: Reservation) -> None:
        """COMMIT_ON_SUCCESS: the confirm row is written now, in the member's transaction."""
        try:
            ok = await _on_member(m.conn, self.host.escrow.confirm_sql(r))
            if ok.affected_rows != 1:
                # cut short without an error (a KILL QUERY): no confirm row, no UPDATE either
                raise ProxyError(ER_QUERY_INTERRUPTED, "Query execution was interrupted")
        except BaseException:
            self.host.escrow.ended([r])  # no confirm row: the units go back
            raise
        # diagnostics: that connection's (no warnings); ROW_COUNT() 1 answered here
        session.reserved(r, m.conn)

    async def _end_txn(self, session: HotRowMember, c: Any, verb: str) -> None:
        """COMMIT_ON_SUCCESS / ROLLBACK_ON_FAIL: end the member's transaction on its own
        connection; a COMMIT's OK waits for a replica under `ack: replica`, as any COMMIT."""
        ok = await _on_member(c, verb)
        gtid = ok.gtid if verb == "COMMIT" else None
        session.ended_txn_here(ok.status, gtid)
        if gtid and self.host.app.durability.wants_ack:
            await self.host.app.durability.wait_ack(gtid)


def _own(session: HotRowMember, hs: HotStmt) -> int:
    """Units of the key the session's own open transaction holds."""
    return sum(r.amount for r in session.escrow if r.key_id == hs.key_id)


async def _on_member(c: Any, sql: str) -> P.OkPacket:
    """A statement run in a member's transaction, on its own connection; errors as the client
    would get them (a lost connection ends its transaction)."""
    try:
        return await c.execute(sql)  # type: ignore[no-any-return]
    except BackendError as e:
        raise ProxyError((e.code, e.sqlstate), e.message) from None
    except BackendLost as e:
        raise ProxyError(
            CR_SERVER_LOST, f"Lost connection to MySQL server during query ({e.reason}); "
            "the transaction was rolled back or its outcome is unknown", fatal=True) from None
