"""The configuration as the proxy reads it at run time: frozen dataclasses, built only by
`config.validate` (config.py), read on every statement (an `Address` keys the per-read
look-ups, so its hash is cached). Defaults here are those of a config that leaves a key out.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    unix: str | None = None  # a backend's unix socket path (`unix:/run/mysqld/mysqld.sock`)

    def __hash__(self) -> int:
        """Cached: addresses key the per-read weight and state look-ups (a generated frozen
        hash builds a tuple each time)."""
        h: int | None = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.host, self.port, self.unix))
            object.__setattr__(self, "_hash", h)
        return h

    def __str__(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UserCfg:
    name: str
    password: str
    require_tls: bool = False  # as MySQL's REQUIRE SSL: without TLS the login gets 1045
    # the account's authentication plugin, as MySQL's IDENTIFIED WITH (client/sha2.py)
    plugin: str = "mysql_native_password"


@dataclass(frozen=True)
class BackendTLSCfg:
    ca: str | None = None  # None: the system's CAs
    verify: bool = True  # the server certificate's chain and host name are checked


@dataclass(frozen=True)
class TLSCfg:
    """Client-side TLS (tls.py); files are read when the proxy starts."""

    cert: str
    key: str
    ca: str | None = None
    require: bool = False  # every client must use TLS


@dataclass(frozen=True)
class AdminCfg:
    listen: Address
    users: tuple[UserCfg, ...]
    max_connections: int = 16  # admin sessions at once; more get 1040


@dataclass(frozen=True)
class PoolCfg:
    max_connections: int = 200
    connect_timeout_s: float = 5.0
    acquire_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0


@dataclass(frozen=True)
class BackendsCfg:
    primary: Address
    replicas: tuple[Address, ...]
    pool: PoolCfg
    weights: tuple[int, ...] = ()  # one per replica (load-balancing weight)
    failover_wait_s: float = 10.0
    tls: BackendTLSCfg | None = None  # TLS from the proxy to MySQL (TCP backends)

    def weight(self, addr: Address) -> int:
        return self._weights.get(addr, 1)

    @cached_property
    def _weights(self) -> dict[Address, int]:
        """Asked on every replica read: a lookup, not a scan."""
        return dict(zip(self.replicas, self.weights, strict=False))


CONSISTENCY = ("eventual", "session", "global", "primary")


@dataclass(frozen=True)
class DurabilityCfg:
    require: str = "warn"  # strict | warn | off
    ack: str = "commit"  # commit | replica
    replica_acks: int = 1
    replica_ack_timeout_ms: int = 1000
    on_ack_timeout: str = "degrade"  # degrade | error
    track_commits: str = "hotrow"  # hotrow | all | off


@dataclass(frozen=True)
class AuthCfg:
    """`config`: users and passwords from `users:`. `backend`: accounts read from the primary
    by the monitor account (accounts.py); `users:` may then be empty."""

    mode: str = "config"
    user: str = ""
    password: str = ""
    refresh_s: float = 30.0


@dataclass(frozen=True)
class RoutingCfg:
    read_consistency: str = "session"
    max_replica_lag_s: float = 5.0
    max_wait_ms: int = 50


@dataclass(frozen=True)
class HotRowRule:
    schema: str
    table: str
    key: str
    column: str

    @cached_property
    def qualified(self) -> str:  # (asked per hot statement: built once)
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class HotRowCfg:
    mode: str = "off"
    rules: tuple[HotRowRule, ...] = ()
    max_batch: int = 256
    max_wait_us: int = 200
    queue_concurrency: int = 1
    queue_max_waiting: int = 10000
    queue_wait_timeout_ms: int = 5000
    batch_schema: str = "seckill_proxy"
    prune_after_s: int = 3600
    # a reservation (escrow.py) this old whose member's connection is gone is resolved
    recover_after_s: int = 30
    # no rules needed: any hot decrement on a table whose key is its whole primary key and
    # whose column is an integer (checked once per table) is a candidate; `exclude` keeps
    # tables (`schema.table` or `schema.*`) out
    discover: bool = False
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class LimitsCfg:
    max_client_connections: int = 10000
    handshake_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    max_allowed_packet: int = 64 * 1024 * 1024
    local_infile: bool = True  # false: LOAD DATA LOCAL INFILE is refused (4166), as MySQL's own
    # brute force (guard.py): this many failed logins for a user or from an address within
    # the window block it for block_s; 0 turns it off
    login_max_failures: int = 10
    login_window_s: float = 60.0
    login_block_s: float = 300.0
    # SIGTERM: /readyz says "draining" at once, but clients are still served and accepted for
    # this long (load balancers and Kubernetes endpoints stop sending), then the safe shutdown
    shutdown_delay_s: float = 0.0


@dataclass(frozen=True)
class Config:
    listen: Address
    admin: AdminCfg
    metrics_listen: Address | None
    users: tuple[UserCfg, ...]
    backends: BackendsCfg
    hotrow: HotRowCfg = field(default_factory=HotRowCfg)
    limits: LimitsCfg = field(default_factory=LimitsCfg)
    routing: RoutingCfg = field(default_factory=RoutingCfg)
    durability: DurabilityCfg = field(default_factory=DurabilityCfg)
    log_level: str = "INFO"
    slow_query_ms: int = 1000
    source: str = ""
    tls: TLSCfg | None = None
    auth: AuthCfg = field(default_factory=AuthCfg)
    log_format: str = "auto"  # text | json | auto (text on a terminal, else JSON lines)
    # processes sharing the listening port (SO_REUSEPORT), each with its own loop and pools;
    # `auto` (0 in the file) is the host's cores. Pool and client limits are the whole proxy's,
    # shared out between them (workers.py).
    workers: int = 0

    def worker_share(self, n: int) -> Config:
        """One of `n` workers' part of the whole proxy's limits: each has its own pools, so
        `pool.max_connections` and `limits.max_client_connections` are divided (rounded up)
        and MySQL sees no more connections than the config says."""
        if n <= 1:
            return self
        b, lim = self.backends, self.limits
        return replace(
            self, backends=replace(b, pool=replace(
                b.pool, max_connections=-(-b.pool.max_connections // n))),
            limits=replace(lim, max_client_connections=-(-lim.max_client_connections // n)))

    def password_of(self, user: str) -> str | None:
        for u in self.users:
            if u.name == user:
                return u.password
        return None
