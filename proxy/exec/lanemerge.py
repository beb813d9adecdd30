"""The fast lane's merged member: a hot decrement the engine merges (hotpick.Way MERGE) joins
its key's group from the client socket's callback and is answered from the group's decision
callback, with no wake-up of the session task (for the seed's order, that task's trip was the
largest piece of the proxy's CPU that was not a write).

The answer is the engine's (hotmember.Answers.answer_now, the session path's own); what needs
waiting (a member told to run its own statement, "0 rows" near sell-out with units reserved,
an error) runs in a short task as the session path would (`Answers.finish`), the client held
meanwhile. A member whose client leaves first is given up as a cancelled session task's is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from proxy.exec import general, prepared
from proxy.net import protocol as P

if TYPE_CHECKING:
    from proxy.backends.reply import Relayed
    from proxy.engines.hotalloc import Member
    from proxy.engines.hotkeys import KeyState
    from proxy.engines.hotpick import Way
    from proxy.exec.context import Statement
    from proxy.net.wire import ClientIO
    from proxy.plan.classify import Shape
    from proxy.plan.plan import Plan

log = logging.getLogger("seckill.fastlane")


class Lane(Protocol):
    """What a merged member uses of its fast lane (fastlane.FastLane)."""

    s: Statement
    client: ClientIO
    command: bytes  # the client's command (its first byte: the protocol's)
    shape: Shape | None
    plan: Plan | None

    def done(self, outcome: str, rows: int, route: str = "primary") -> None: ...

    async def run_task(self, work: Callable[[], Awaitable[tuple[str, str] | None]], what: str
                       ) -> None: ...


class LaneMember:
    """One per fast lane; at most one member at a time (the lane runs one command)."""

    def __init__(self, lane: Lane) -> None:
        self.lane = lane
        self.way: Way | None = None  # decided by the lane (`FastLane._hot`), joined by `start`
        self.member: tuple[Member, KeyState] | None = None  # joined, not answered yet
        self.task: asyncio.Task[None] | None = None  # `_rest`, when the answer needs waiting
        # handed to `_rest`, which has not run yet: a task cancelled before its first step
        # runs none of its code, so `abandon` gives such a member up itself
        self.handed: tuple[Member, KeyState] | None = None
        self._cb = self._decided

    def start(self) -> None:
        """Join the key's group now; the lane's command is in flight until `_decided`."""
        w = self.way
        assert w is not None and w.hs is not None and w.rs is not None
        s = self.lane.s
        eng = s.app.hotrow
        ks = eng.pick.key(w.hs, w.mode, w.why)
        m = eng.answers.enter(s, w.hs, ks, w.rs.floor, w.mode == "auto", w.txn_conn, None)
        self.member = (m, ks)
        m.fut.add_done_callback(self._cb)

    def _decided(self, _fut: asyncio.Future[int]) -> None:
        got, self.member = self.member, None
        w = self.way
        if got is None or w is None or w.hs is None:
            return  # abandoned meanwhile
        m, ks = got
        lane = self.lane
        try:
            ok = lane.s.app.hotrow.answers.answer_now(lane.s, w.hs, ks, m)
        except Exception:  # noqa: BLE001 - never leave the client held
            log.exception("fast lane: a merged member's answer failed")
            self.way = None
            lane.client.transport.abort()
            lane.done("error", 0, "hotrow-merge")
            return
        if ok is None:
            self.handed = (m, ks)
            self.task = asyncio.ensure_future(self._rest(m, ks, w))
            return
        self.way = None
        lane.client.write(P.packet(ok, 1))
        lane.done("ok", 0, "hotrow-merge")

    async def _rest(self, m: Member, ks: KeyState, w: Way) -> None:
        try:
            await self.lane.run_task(lambda: self._finish(m, ks, w), "a merged member's answer")
        finally:
            self.way = None
            self.task = None

    async def _finish(self, m: Member, ks: KeyState, w: Way) -> tuple[str, str]:
        self.handed = None  # from here `finish` gives the member up if it is cancelled
        s = self.lane.s
        assert w.hs is not None and w.rs is not None
        return await s.app.hotrow.answers.finish(
            s, w.hs, ks, m, w.rs.floor, self._forward, w.mode == "auto", w.txn_conn, None)

    async def _forward(self) -> Relayed | None:
        """The member runs its own statement: the primary path of its protocol, as the
        session path's `forward` for the same command."""
        lane = self.lane
        cmd, p = lane.command, lane.plan
        if cmd[0] == P.COM_QUERY:
            return await general.forward(lane.s, cmd, lane.shape, p)
        assert p is not None
        return await prepared.forward_execute(lane.s, cmd, p)

    def abandon(self) -> None:
        """The session ends with the member in flight."""
        got, self.member = self.member, None
        handed, self.handed = self.handed, None
        self.way = None
        if got is not None:
            m, ks = got
            m.fut.remove_done_callback(self._cb)
            self.lane.s.app.hotrow.answers.abandon(ks, m)
        elif handed is not None:  # (its group decided; told to run alone, it must say done)
            m, ks = handed
            self.lane.s.app.hotrow.answers.abandon(ks, m)
        t, self.task = self.task, None
        if t is not None and not t.done():
            t.cancel()
