"""What each engine may use of the rest of the proxy: small typed interfaces (`Protocol`s).

As uvicorn hands its protocols a `Config` and a small `ServerState` rather than the `Server`,
engines here are typed against these views, never against `App` (server.py) or
`ProxySession` (session.py): an engine that wants something new has to say so here, and no
engine module imports server.py or session.py. `App` and `ProxySession` satisfy them
structurally (mypy checks it where server.py wires the engines).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from proxy.backends.pool import Pool
    from proxy.core.config import Config
    from proxy.core.state import Wanted


class Topology(Protocol):
    """The servers as the proxy sees them: config, pools, which one is the primary."""

    @property
    def cfg(self) -> Config: ...

    def password_of(self, user: str) -> str | None: ...  # config password or learned credential

    @property
    def pools(self) -> dict[str, Pool]: ...

    @property
    def monitor(self) -> Any: ...  # monitor.Monitor: states by backend key

    def primary_key(self) -> str: ...

    def primary_pool(self) -> Pool: ...

    async def writable_primary(self) -> Pool: ...


class FailoverHost(Topology, Protocol):
    """What the monitor changes: the write gate and the primary (monitor.py)."""

    writes_blocked: str | None

    @property
    def reads(self) -> Any: ...  # readsplit.ReadRouter: replica positions

    def switch_primary(self, key: str) -> None: ...


class DurabilityHost(Topology, Protocol):
    writes_blocked: str | None

    @property
    def reads(self) -> Any: ...


class HotRowHost(Topology, Protocol):
    @property
    def durability(self) -> Any: ...  # durability.Durability: ack waits

    @property
    def outcomes(self) -> Any: ...  # outcome.OutcomeTracker: pruning


class Readiness(Protocol):
    """The HTTP endpoints' view (httpd.py)."""

    async def ready(self) -> tuple[bool, str]: ...


class HotRowMember(Protocol):
    """A session as the hot-row engine sees it (hotrow.py)."""

    username: str | None
    database: str | None
    status: int
    sysvars: dict[str, str]
    pin: str | None
    held_slots: list[asyncio.Semaphore]
    last_gtid: str | None
    stmt_conn: Any  # the connection of the session's last statement, or state.Answered
    escrow: list[Any]  # escrow.Reservation of its open transaction, resolved when it ends
    txn_hot: set[Any]  # hot keys its open transaction locked itself (never merged again in it)

    def escrow_conn(self) -> Any: ...  # the primary connection holding its transaction, or None

    def release_slots(self) -> None: ...

    async def send(self, payload: bytes) -> None: ...

    def ok_packet(self, affected: int = 0, insert_id: int = 0, warnings: int = 0,
                  info: bytes = b"") -> bytes: ...


class Reader(Protocol):
    """A session as the read router sees it (readsplit.py)."""

    username: str | None
    backend_caps: int  # CLIENT_FOUND_ROWS and MariaDB extended caps the client negotiated
    last_gtid: str | None

    @property
    def password(self) -> str: ...

    def wanted(self) -> Wanted: ...


class AdminHost(Topology, Protocol):
    """The admin console's view: what it shows and what a DBA may change (admin.py)."""

    read_consistency: str
    server_version: str

    @property
    def reads(self) -> Any: ...

    @property
    def hotrow(self) -> Any: ...  # hotrow.HotRowEngine: rules, hot keys, mode

    @property
    def digest(self) -> Any: ...  # digest.QueryDigest

    @property
    def control(self) -> Any: ...  # mysql-mimic's connection registry

    def apply_config(self, cfg: Config) -> list[str]: ...

    def reload(self) -> list[str]: ...  # re-read the config file (raises ConfigError)

    def refresh_policy(self) -> None: ...


class Prepared(Protocol):
    """A client's prepared statement as the hot-row engine reads it."""

    sql: str
    num_params: int
    types: bytes

    @property
    def shape(self) -> Any: ...  # classify.Shape
