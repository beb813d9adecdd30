"""What each engine may use of the rest of the proxy: small typed interfaces (`Protocol`s).

As uvicorn hands its protocols a `Config` and a small `ServerState` rather than the `Server`,
engines here are typed against these views, never against `App` (server.py) or
`ProxySession` (session.py): an engine that wants something new has to say so here, and no
engine module imports server.py or session.py. `App` and `ProxySession` satisfy them
structurally (mypy checks it where server.py wires the engines).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from proxy.backends.backend import BackendConn
    from proxy.backends.pool import Pool
    from proxy.core.config import Config
    from proxy.core.errors import PinReason
    from proxy.core.gtid import Gtid
    from proxy.core.state import Answered, Carried, Wanted
    from proxy.engines.escrow import Reservation
    from proxy.engines.health import BackendState
    from proxy.plan.classify import Shape


class Health(Protocol):
    """The monitor as the other engines see it (monitor.Monitor)."""

    @property
    def states(self) -> Mapping[str, BackendState]: ...  # by backend key

    async def next_round(self, timeout: float = 5.0) -> None: ...


class Positions(Protocol):
    """Replica positions as durability and the monitor feed them (readsplit.ReadRouter)."""

    @property
    def known(self) -> Mapping[str, Gtid]: ...

    def note_replica(self, key: str, pos: str) -> None: ...

    def forget(self, key: str) -> None: ...  # its position can no longer be compared


class Acks(Protocol):
    """Replica acknowledgements (durability.Durability)."""

    @property
    def wants_ack(self) -> bool: ...

    async def wait_ack(self, gtid: str) -> None: ...


class Outcomes(Protocol):
    """The commit-outcome table's upkeep (outcome.OutcomeTracker)."""

    @property
    def ready(self) -> bool: ...

    async def prune(self) -> None: ...


class Topology(Protocol):
    """The servers as the proxy sees them: config, pools, which one is the primary."""

    @property
    def cfg(self) -> Config: ...

    def password_of(self, user: str) -> str | None: ...  # config password or learned credential

    @property
    def pools(self) -> dict[str, Pool]: ...

    @property
    def monitor(self) -> Health | None: ...  # None until started

    def primary_key(self) -> str: ...

    def primary_pool(self) -> Pool: ...

    async def writable_primary(self) -> Pool: ...


class FailoverHost(Topology, Protocol):
    """What the monitor changes: the write gate and the primary (monitor.py)."""

    writes_blocked: str | None

    @property
    def reads(self) -> Positions: ...

    def switch_primary(self, key: str) -> None: ...


class DurabilityHost(Topology, Protocol):
    writes_blocked: str | None

    @property
    def reads(self) -> Positions: ...


class HotRowHost(Topology, Protocol):
    @property
    def durability(self) -> Acks: ...

    @property
    def outcomes(self) -> Outcomes: ...


class Readiness(Protocol):
    """The HTTP endpoints' view (httpd.py)."""

    async def ready(self) -> tuple[bool, str]: ...


class HotRowMember(Protocol):
    """A session as the hot-row engine sees it (hotrow.py)."""

    username: str | None
    database: str | None
    status: int
    sysvars: dict[str, str]
    pin: PinReason | None
    held_slots: list[asyncio.Semaphore]
    last_gtid: str | None
    # the connection of the session's last statement, or what stands for it (state.py)
    stmt_conn: BackendConn | Answered | Carried | None
    row_count_local: int | None  # ROW_COUNT() the proxy answers (set after stmt_conn)
    escrow: list[Reservation]  # reserved for its open transaction, resolved when it ends
    # hot keys its open transaction locked itself (never merged again in it)
    txn_hot: set[tuple[str, str, int | str]]

    def escrow_conn(self) -> BackendConn | None: ...  # the connection holding its transaction

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


class Prepared(Protocol):
    """A client's prepared statement as the hot-row engine reads it."""

    sql: str
    num_params: int
    types: bytes

    @property
    def shape(self) -> Shape: ...
