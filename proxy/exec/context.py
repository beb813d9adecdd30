"""What execution may use: the statement context (the session as a statement sees it), the
shared services, and the client connection, as typed Protocols.

Vitess's vtgate plans, then executes against a narrow cursor; here the executors (general,
local, prepared, tracked, the fast lane) are typed against `Statement`, never the session
class, and reach the process's shared parts through `Services`, never `App`. So execution
imports neither the session nor the server (import-linter checks it, pyproject.toml), and a
member an executor starts to use has to be named here first. `ProxySession` and `App`
satisfy these structurally; mypy checks it where the session hands itself to an executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from proxy.engines.ports import HotRowMember, Reader
from proxy.plan.classify import Shape
from proxy.plan.plan import SessionView

if TYPE_CHECKING:
    import asyncio

    from mysql_mimic.stream import MysqlStream
    from mysql_mimic.types import Capabilities

    from proxy.backends.backend import BackendConn, Relayed
    from proxy.backends.dial import Dial
    from proxy.backends.lease import Lease, LeaseReason
    from proxy.backends.pool import Pool
    from proxy.core.config import Config
    from proxy.core.errors import PinReason
    from proxy.core.state import Answered, Carried, Names
    from proxy.engines.durability import Durability
    from proxy.engines.escrow import Reservation
    from proxy.engines.hotrow import HotRowEngine
    from proxy.engines.monitor import Monitor
    from proxy.engines.outcome import OutcomeTracker
    from proxy.engines.readsplit import ReadRouter
    from proxy.net import protocol as P
    from proxy.net.tls import TLSTransport
    from proxy.net.tracking import Tracking
    from proxy.net.wire import ClientIO
    from proxy.plan.digest import QueryDigest
    from proxy.plan.plan import Policy


@dataclass
class ClientStmt:
    """A statement the client prepared; re-prepared on whichever backend connection runs it."""

    sql: str
    shape: Shape
    num_params: int
    num_columns: int
    types: bytes = b""
    bulk_types: bytes = b""  # the parameter types of its last COM_STMT_BULK_EXECUTE


class Services(Protocol):
    """The process's shared parts as a statement uses them (server.App)."""

    cfg: Config
    policy: Policy
    slow_ms: int
    server_version: str
    read_consistency: str
    digest: QueryDigest
    hotrow: HotRowEngine
    reads: ReadRouter
    durability: Durability
    outcomes: OutcomeTracker
    monitor: Monitor | None
    dial: Dial  # how backend connections are made; `.catalog`: the servers' collations
    @property
    def peers(self) -> PeerLink | None: ...  # the proxy's other worker processes (or None)

    def primary_pool(self) -> Pool: ...

    def primary_key(self) -> str: ...

    async def writable_primary(self) -> Pool: ...

    def password_of(self, user: str) -> str | None: ...

    def find_client(self, connection_id: int) -> ClientLink | None: ...

    def client_ids_by_thread(self, pool: Pool | None) -> dict[int, int]: ...


class PeerLink(Protocol):
    """The proxy's other workers, as KILL and the process list need them (ops/peers.py)."""

    def owner(self, connection_id: int) -> int | None: ...  # another worker's client id

    async def who(self, worker: int, connection_id: int) -> str | None: ...  # its user

    async def kill(self, worker: int, connection_id: int, query_only: bool) -> bytes | None: ...

    async def client_ids_by_thread(self, pool_key: str) -> dict[int, int]: ...


class ClientLink(Protocol):
    """A client connection as a statement sees it: its own, or another a KILL names."""

    connection_id: int
    close_reason: str | None

    @property
    def stream(self) -> MysqlStream: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def session(self) -> Statement: ...

    @property
    def tls(self) -> TLSTransport | None: ...

    def arm_idle_timer(self) -> None: ...


class Statement(SessionView, HotRowMember, Reader, Protocol):
    """The session as a statement sees it: what the statement may read and change of the
    client's state, and the lease (with what the planner, the hot-row engine and the read
    router read of it: a statement hands itself to them)."""

    lease: Lease
    # read-only to the hot-row engine (HotRowMember), written by execution
    username: str | None
    status: int
    sysvars: dict[str, str]
    last_gtid: str | None
    escrow: list[Reservation]
    txn_hot: set[tuple[str, str, int | str]]
    held_slots: list[asyncio.Semaphore]
    pin: PinReason | None
    names: Names
    multi: bool
    busy: bool
    keeps_diag: bool
    state_stale: bool
    last_insert_id: int
    read_consistency: str | None
    read_after_gtid: str | None
    row_count_local: int | None
    # a plain BEGIN may be answered here and sent with the transaction's first statement
    # (fastlane.py): learned from the session's first real BEGIN
    lazy_begin: bool
    replica_vars: set[str]
    track: Tracking | None
    end_reason: str | None
    stmts: dict[int, ClientStmt]
    stmt_bytes: int
    next_stmt_id: int
    last_stmt: int | None

    @property
    def app(self) -> Services: ...

    @property
    def connection(self) -> ClientLink | None: ...

    @property
    def stmt_conn(self) -> BackendConn | Answered | Carried | None: ...

    @stmt_conn.setter
    def stmt_conn(self, c: BackendConn | Answered | Carried | None) -> None: ...

    @property
    def conn(self) -> BackendConn | None: ...

    @property
    def out(self) -> ClientIO: ...

    async def primary_conn(self) -> BackendConn: ...

    def foreign_diag(self, c: BackendConn) -> bool: ...

    async def clear_foreign_diag(self, c: BackendConn) -> None: ...

    def holds_conn(self) -> bool: ...

    def settle(self) -> None: ...

    async def leave(self, reason: LeaseReason) -> None: ...

    async def drop_conn(self, reason: LeaseReason) -> None: ...

    def ok_packet(self, affected: int = 0, insert_id: int = 0, warnings: int = 0,
                  info: bytes = b"", state: bytes = b"") -> bytes: ...

    def client_ok(self, ok: P.OkPacket) -> bytes: ...

    async def retrack(self, c: BackendConn) -> None: ...

    async def drain_client(self) -> None: ...

    def absorb_reply(self, c: BackendConn, r: Relayed, row_count: bool = False) -> None: ...

    async def com_query(self, payload: bytes) -> None: ...
