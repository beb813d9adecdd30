"""One door: every client statement the session task runs, text or binary protocol, goes
through `execute` (the fast lane runs the same plan for the statements it takes, and those
it declines come here).

The protocols differ only in how a statement is sent to MySQL and what it looks like: a
`Command` carries that (`run`: one execution on a connection; `forward`: the primary path;
`hot`: the hot-row engine's entry for this protocol). Everything else is decided once, here,
in this order: what the proxy answers itself (local.answered), the text protocol's own
commands (SET of the proxy's settings, KILL of a proxy client id, the process list), then
the plan's route (general.run_plan: replica, read-only transaction, diagnostics, primary,
hot row) with one accounting per statement.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.exec import general, local
from proxy.plan.classify import Shape
from proxy.plan.plan import Plan, Route

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.backends.reply import Relayed
    from proxy.exec.context import Statement

Run = Callable[["BackendConn", Any], Awaitable["Relayed"]]
Forward = Callable[[Plan], Awaitable["Relayed | None"]]
Hot = Callable[[Callable[[], Awaitable[Any]]], Awaitable["tuple[str, str] | None"]]


@dataclass(frozen=True, slots=True)
class Command:
    """One client statement, as its protocol brought it."""

    sql: str  # the text MySQL runs (after the proxy's rewrites: CONNECTION_ID(), KILL ids)
    shape: Shape
    plan: Plan
    run: Run
    forward: Forward
    hot: Hot
    # the text protocol's packet (COM_QUERY): the proxy's own SET/KILL/process list read it;
    # None for the binary protocol (COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE)
    payload: bytes | None = None

    @property
    def binary(self) -> bool:
        return self.payload is None


async def execute(s: Statement, cmd: Command) -> None:
    p, shape, sql = cmd.plan, cmd.shape, cmd.sql
    if cmd.payload is not None and p.route is Route.LOCAL_SET:
        await local.local_set(s, shape, sql, cmd.payload)
        return
    got = await local.answered(s, p, shape, sql, binary=cmd.binary)
    if got is None:  # the proxy answered it (CONNECTION_ID(), LAST_GTID(), diagnostics...)
        return
    p = got
    if cmd.payload is not None:
        if p.route is Route.KILL and await local.kill(s, sql):
            return
        if p.route is Route.PROCESSLIST:
            await local.processlist(s, cmd.payload)
            return
    await general.run_plan(s, p, shape, cmd.run, cmd.forward, cmd.hot, sql)
