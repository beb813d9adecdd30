"""`InFlight`: operations under way that others may wait out; and the one rule for a clean-up
awaited on the way out of a block in a compiled module.

The modules in compiled.HOT are compiled with mypyc, and mypyc (2.4.1) gets one thing wrong:
where it re-raises the exception being handled after an `await` (a bare `raise` in an except
block, the end of a `finally` block, and the exit of an `async with`), it raises whatever
exception the thread handles by then: after a suspension, another task's, or a freed object
("TypeError: invalid exception object" from the task's step, the task never finished).
mypyc/mypyc#1114 is the same defect seen from the other side. Seen here: the escrow's recovery
failing every round with a NotCommitted raised in a merge batch elsewhere (through a
`finally`, commit bb222e5), then (stop 52, through `async with`, which that commit took for
safe) its drain task ending with such a NotCommitted or broken by the TypeError: reservations
no longer resolved, and the logging of the TypeError itself raised out of the event loop and
stopped the proxy. Reproduced with a twenty-line module: `async with` over an interpreted
context manager, its body raising after an await, another compiled task handling an exception
across an await meanwhile: in two of eight interleavings the body's exception came out as the
other task's, and one run left the loop waiting forever.

So a compiled module names the exception and re-raises it itself:

    c = await acquire()
    try:
        out = await work(c)
    except BaseException as e:
        await release(c, broken=True)
        raise e
    await release(c, broken=False)

tests/test_architecture.py keeps `await` out of `finally` blocks and `async with` out of the
compiled modules; tests/test_speedups.py keeps bare `raise` after an `await` out of their
except blocks.
"""

from __future__ import annotations

import asyncio


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
