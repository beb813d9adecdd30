"""`async with after(fn)`: what `try: ... finally: await fn()` says, in a form mypyc compiles
correctly; `InFlight`: operations under way that others may wait out.

The modules in compiled.HOT are compiled with mypyc. mypyc (2.4.1) gets one thing wrong: after
an `await` inside a `finally` block, it re-raises an exception that another task was handling
while this one was suspended (mypyc/mypyc#1114 is the same defect seen from the other side).
Seen here as the escrow's recovery failing every round with a NotCommitted raised in a merge
batch elsewhere, and reproduced with a ten-line module. An async context manager's exit is
compiled correctly (return, raise and fall-through all checked), so a compiled module awaits
its clean-up through `after`; tests/test_architecture.py keeps `await` out of `finally` blocks
in the compiled modules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class after:  # noqa: N801 - reads as the statement it stands for: `async with after(...)`
    """Awaits `fn()` when the block is left, however it is left (the exception, if any, goes
    on). `fn` is called then, so a lambda reads the block's variables as they are at the end."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Awaitable[Any]]) -> None:
        self.fn = fn

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        await self.fn()


class InFlight:
    """A count of operations under way that others may wait out (`idle`): a DDL through the
    proxy waits for the hot-row groups that commit with no schema look after their lock
    (hotmerge.Merger._checked_commit)."""

    __slots__ = ("n", "waiters")

    def __init__(self) -> None:
        self.n = 0
        self.waiters: list[asyncio.Future[None]] = []

    def enter(self) -> None:
        self.n += 1

    def leave(self) -> None:
        self.n -= 1
        if not self.n:
            for w in self.waiters:
                if not w.done():
                    w.set_result(None)
            self.waiters.clear()

    async def idle(self, timeout: float) -> bool:
        """Until none is under way, at most `timeout` seconds: False if some still were."""
        if not self.n:
            return True
        w: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(w)
        try:
            await asyncio.wait_for(asyncio.shield(w), timeout)
        except TimeoutError:
            return False
        return True
