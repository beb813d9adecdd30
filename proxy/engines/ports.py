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
    from proxy.backends.dial import Dial
    from proxy.backends.pool import Pool
    from proxy.core.config import Config
    from proxy.core.errors import PinReason
    from proxy.core.gtid import Gtid
    from proxy.core.state import Wanted
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

    @property
    def dial(self) -> Dial: ...  # how a connection of its own is made (TLS, catalog)

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
    """A session as the hot-row engine sees it (hotrow.py, hotmerge.py): what it reads, and
    what it tells the session (methods; the engine writes no field of the session)."""

    @property
    def username(self) -> str | None: ...

    @property
    def database(self) -> str | None: ...

    @property
    def status(self) -> int: ...

    @property
    def sysvars(self) -> dict[str, str]: ...

    @property
    def pin(self) -> PinReason | None: ...

    @property
    def held_slots(self) -> list[asyncio.Semaphore]: ...

    @property
    def escrow(self) -> list[Reservation]: ...  # reserved for its open transaction

    @property
    def txn_hot(self) -> set[tuple[str, str, int | str]]: ...  # keys its transaction locked

    def escrow_conn(self) -> BackendConn | None: ...  # the connection holding its transaction

    def release_slots(self) -> None: ...

    def hold_slot(self, sem: asyncio.Semaphore) -> None:
        """A queue slot the session keeps until its transaction ends (release_slots)."""

    def locked_hot_key(self, key_id: tuple[str, str, int | str]) -> None:
        """Its open transaction holds this key's row lock: never merged again in it."""

    def saw_gtid(self, gtid: str) -> None:
        """A write of its (a merged deduction too) committed as `gtid`: read-your-writes."""

    def answered_here(self, rows: int) -> None:
        """The statement ran on none of its connections (a merged autocommit UPDATE):
        ROW_COUNT() and an empty diagnostics area are the proxy's."""

    def reserved(self, r: Reservation, conn: BackendConn) -> None:
        """Units reserved for its open transaction, confirmed on `conn` (its transaction's
        connection): resolved when the transaction ends; ROW_COUNT() 1, the UPDATE's."""

    def ended_txn_here(self, status: int, gtid: str | None) -> None:
        """The engine ended its transaction (COMMIT_ON_SUCCESS / ROLLBACK_ON_FAIL)."""

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
