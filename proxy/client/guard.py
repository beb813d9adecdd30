"""Brute-force limit on logins: after `max_failures` failed logins for one user name or from one
client address within `window_s`, further logins for it are refused for `block_s`.

As MariaDB's `max_password_errors` (per account) and `max_connect_errors` (per host), but in the
proxy, where the passwords are checked. A blocked address gets MySQL's 1129 before the handshake;
a blocked user gets 1045 like any failed login (a correct password included, so guessing stays
pointless), and nothing says whether the user exists. Pure: callers pass the time. Memory is
bounded: at most `max_tracked` names and addresses each, the oldest forgotten first.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

log = logging.getLogger("seckill.guard")

if TYPE_CHECKING:
    from proxy.core.config import Config


@dataclass
class _Track:
    failures: deque[float] = field(default_factory=deque)
    blocked_until: float = 0.0


class _Table:
    def __init__(self, max_tracked: int) -> None:
        self.max_tracked = max_tracked
        self.rows: OrderedDict[str, _Track] = OrderedDict()

    def get(self, key: str) -> _Track | None:
        return self.rows.get(key)

    def touch(self, key: str) -> _Track:
        t = self.rows.get(key)
        if t is None:
            t = self.rows[key] = _Track()
            while len(self.rows) > self.max_tracked:
                self.rows.popitem(last=False)
        else:
            self.rows.move_to_end(key)
        return t


class LoginGuard:
    def __init__(self, max_failures: int, window_s: float, block_s: float,
                 max_tracked: int = 10_000) -> None:
        self.max_failures = max_failures  # 0: no limit
        self.window_s = window_s
        self.block_s = block_s
        self.users = _Table(max_tracked)
        self.addrs = _Table(max_tracked)

    def blocked_addr(self, addr: str, now: float) -> bool:
        t = self.addrs.get(addr)
        return t is not None and t.blocked_until > now

    def blocked_user(self, user: str, now: float) -> bool:
        t = self.users.get(user)
        return t is not None and t.blocked_until > now

    def failed(self, user: str, addr: str, now: float) -> list[str]:
        """Record a failed login; returns what got blocked by it ("user", "address")."""
        if self.max_failures <= 0:
            return []
        out = []
        for kind, table, key in (("user", self.users, user), ("address", self.addrs, addr)):
            if not key:
                continue
            t = table.touch(key)
            t.failures.append(now)
            while t.failures and now - t.failures[0] > self.window_s:
                t.failures.popleft()
            if len(t.failures) >= self.max_failures and t.blocked_until <= now:
                t.blocked_until = now + self.block_s
                t.failures.clear()
                out.append(kind)
        return out

    def succeeded(self, user: str, addr: str) -> None:
        """A good login clears the user's and the address's failures (not an active block)."""
        for table, key in ((self.users, user), (self.addrs, addr)):
            t = table.get(key)
            if t is not None:
                t.failures.clear()


def login_guard(cfg: Config, old: LoginGuard | None = None) -> LoginGuard:
    """The brute-force limit from config; on RELOAD CONFIG the counts so far are kept."""
    lim = cfg.limits
    g = old or LoginGuard(lim.login_max_failures, lim.login_window_s, lim.login_block_s)
    g.max_failures, g.window_s, g.block_s = (
        lim.login_max_failures, lim.login_window_s, lim.login_block_s)
    return g


ER_HOST_IS_BLOCKED = (1129, "HY000")


class Gate:
    """A port's use of the guard (client port and admin console alike): refuse a blocked
    address before the handshake, record how each login ended, count and log blocks."""

    def __init__(self, guard: LoginGuard, port: str, clock: Callable[[], float]) -> None:
        self.guard = guard
        self.port = port  # a metric label: "client" or "admin"
        self.clock = clock

    def refusal(self, addr: str) -> bytes | None:
        """MySQL's 1129 packet payload for a blocked address, else None."""
        if not self.guard.blocked_addr(addr, self.clock()):
            return None
        from proxy.net import protocol as P

        return P.make_err(*ER_HOST_IS_BLOCKED,
                          f"Host '{addr}' is blocked because of many failed logins; try again "
                          f"in {int(self.guard.block_s)} s (seckill-proxy limits.login_block_s)")

    def user_blocked(self, user: str) -> bool:
        return self.guard.blocked_user(user, self.clock())

    def ended(self, user: str, addr: str, ok: bool) -> None:
        from proxy.core import metrics as M

        if ok:
            self.guard.succeeded(user, addr)
            return
        M.child(M.LOGIN_FAILURES, self.port).inc()
        for kind in self.guard.failed(user, addr, self.clock()):
            M.child(M.LOGIN_BLOCKS, self.port, kind).inc()
            log.warning("%s port: %s %s blocked for %d s after %d failed logins within %d s",
                        self.port, kind, user if kind == "user" else addr,
                        self.guard.block_s, self.guard.max_failures, self.guard.window_s)
