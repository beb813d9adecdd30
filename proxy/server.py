"""The proxy process: listeners, shared state, and a clean startup / drain / shutdown.

As in uvicorn: the config is loaded and validated before anything listens; SIGTERM stops
accepting, lets in-flight statements finish within `limits.shutdown_grace_s`, then closes the
remaining client connections (their backend connections are reset, which rolls back open
transactions) and the pools.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from mysql_mimic.control import LocalControl
from mysql_mimic.packets import make_auth_more_data

from proxy.backends.catalog import has_ext_metadata, load_catalog
from proxy.backends.dial import Dial
from proxy.backends.pool import Pool
from proxy.client.accounts import Account, AccountStore, load_mariadb
from proxy.client.frontend import (
    SERVER_CAPABILITIES,
    BackendIdentityProvider,
    ConfigIdentityProvider,
    ProxyConnection,
    ProxyStream,
)
from proxy.client.guard import Gate, login_guard
from proxy.core import metrics as M
from proxy.core.config import Config, ConfigError
from proxy.core.config import load as load_config
from proxy.core.errors import (
    ER_CON_COUNT_ERROR,
    ER_OPTION_PREVENTS_STATEMENT,
    BackendError,
    BackendLost,
    CloseReason,
    DisconnectReason,
    ProxyError,
)
from proxy.core.logctx import CONN_ID
from proxy.net import protocol as P
from proxy.net.tls import client_context, server_context
from proxy.net.wire import ClientIO
from proxy.ops import peers
from proxy.ops.peers import Peers, WorkerSlot
from proxy.plan.digest import QueryDigest
from proxy.plan.plan import Policy
from proxy.session.session import ProxySession

if TYPE_CHECKING:
    from proxy.engines.durability import Durability
    from proxy.engines.hotrow import HotRowEngine
    from proxy.engines.monitor import Monitor
    from proxy.engines.outcome import OutcomeTracker
    from proxy.engines.readsplit import ReadRouter
    from proxy.ops.admin import AdminConsole

log = logging.getLogger("seckill.server")
DEFAULT_VERSION = "10.11.0-MariaDB-seckill-proxy"


class App:
    """Everything shared by sessions: config, pools, digest, hot-row engine, admin state."""

    _primary: Pool
    # The engines, built by start() (they need the running loop and the primary's answers);
    # the monitor comes last and is None before it.
    hotrow: HotRowEngine
    reads: ReadRouter
    durability: Durability
    outcomes: OutcomeTracker
    monitor: Monitor | None = None
    admin: AdminConsole | None = None

    def __init__(self, cfg: Config) -> None:
        self.slot = WorkerSlot.from_env()  # one of several workers (workers.py), or None
        self.peers = Peers(self.slot) if self.slot is not None else None
        cfg = cfg.worker_share(self.slot.count) if self.slot is not None else cfg
        self.cfg = cfg
        self.slow_ms = cfg.slow_query_ms
        self.read_consistency = cfg.routing.read_consistency
        self.pools: dict[str, Pool] = {}
        self.server_version = DEFAULT_VERSION
        # MariaDB's extended capabilities offered to clients (what the primary has and the
        # proxy relays: extended type metadata, forwarded from backend connections that have it)
        self.ext_offer = 0
        self.digest = QueryDigest()
        # client ids: (server id << 16) | sequence; a worker's server id tells KILL its owner
        self.control = LocalControl(self.slot.server_id if self.slot is not None else None)
        self.gate = Gate(login_guard(cfg), "client", time.monotonic)
        self.accounts = (AccountStore(self._load_accounts, cfg.auth.refresh_s)
                         if cfg.auth.mode == "backend" else None)
        self.ssl_ctx = server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca) if cfg.tls else None
        bt = cfg.backends.tls
        # how the proxy reaches MySQL (dial.py): TLS, and the catalog read at start
        self.dial = Dial(client_context(bt.ca, bt.verify) if bt else None)
        self.connections: set[ProxyConnection] = set()
        self.servers: list[asyncio.Server] = []
        self.started_at = time.time()
        self.writes_blocked: str | None = None
        self.primary_generation = 0
        self._primary_waiters: list[asyncio.Future[None]] = []
        self.draining = False
        self.stopping = False  # SIGTERM seen: not ready, still serving (limits.shutdown_delay_s)
        self._tasks: list[asyncio.Task[Any]] = []
        self._build_pools()
        self.policy = self._policy()

    def _policy(self) -> Policy:
        """What the planner (plan.py) needs of config and engines; rebuilt on RELOAD CONFIG."""
        d = self.cfg.durability
        return Policy(has_replicas=bool(self.cfg.backends.replicas), wants_ack=d.ack == "replica",
                      track_all=d.track_commits == "all", hotrow=hasattr(self, "hotrow"),
                      hotrow_engaged=not hasattr(self, "hotrow") or self.hotrow.engaged())

    def refresh_policy(self) -> None:
        """After an admin change the planner reads (hot-row modes)."""
        self.policy = self._policy()

    def _build_pools(self) -> None:
        b = self.cfg.backends
        if getattr(self, "_primary", None) is not None and self._primary.role == "primary" \
                and self._primary.label != str(b.primary):
            return  # after a failover the config's primary is stale: keep following the servers
        want = {str(b.primary): ("primary", b.primary)}
        for r in b.replicas:
            want.setdefault(str(r), ("replica", r))
        for key, (role, addr) in want.items():
            if key not in self.pools:
                self.pools[key] = Pool(addr, b.pool, role, self.dial)
            self.pools[key].role = role
        self._primary = self.pools[str(b.primary)]

    def primary_pool(self) -> Pool:
        return self._primary

    def primary_key(self) -> str:
        return self._primary.label

    def switch_primary(self, key: str) -> None:
        """Failover: writes go to `key` from now on (sessions drop old-primary connections)."""
        old = self._primary
        self._primary = self.pools[key]
        self._primary.role = "primary"
        old.role = "fenced"
        self.primary_generation += 1
        M.FAILOVERS.inc()
        for w in list(self._primary_waiters):
            if not w.done():
                w.set_result(None)

    async def writable_primary(self) -> Pool:
        """The primary pool; while there is none (failover in progress, split brain), wait up to
        backends.failover_wait_s, then fail with a clear error."""
        if self.writes_blocked is None and self.monitor is not None:
            st = self.monitor.states.get(self._primary.label) if self.monitor else None
            if st is None or st.up or st.checked_at == 0:
                return self._primary
        elif self.writes_blocked is None:
            return self._primary
        deadline = time.monotonic() + self.cfg.backends.failover_wait_s
        while time.monotonic() < deadline:
            st = self.monitor.states.get(self._primary.label) if self.monitor else None
            if self.writes_blocked is None and st is not None and st.up:
                return self._primary
            await asyncio.sleep(0.1)
        why = self.writes_blocked or f"primary {self._primary.label} is down and no replica was promoted"
        raise ProxyError(ER_OPTION_PREVENTS_STATEMENT,
                         f"seckill-proxy: no writable primary ({why}); waited "
                         f"{self.cfg.backends.failover_wait_s:g} s")

    def client_ids_by_thread(self, pool: Pool | None) -> dict[int, int]:
        """Backend thread id -> proxy client id, for the connections clients hold on `pool`."""
        out = {}
        for c in self.connections:
            lease = c.session.lease
            if lease.conn is not None and lease.pool is pool:
                out[lease.conn.thread_id] = c.connection_id
        return out

    def find_client(self, connection_id: int) -> ProxyConnection | None:
        for c in self.connections:
            if c.connection_id == connection_id:
                return c
        return None

    def password_of(self, user: str) -> str | None:
        """What the proxy logs in to MySQL with as `user`: the config's password, or under
        `auth: backend` the SHA1(password) learned from the user's own login (accounts.py)."""
        if self.accounts is not None:
            cred = self.accounts.credentials.get(user)
            if cred is not None:
                return cred
        return self.cfg.password_of(user)

    def accounts_login(self, user: str, ident: Any, ok: bool) -> None:
        assert self.accounts is not None
        if not ok:  # maybe a new account or a new password: look again (at most 1/s)
            t = asyncio.get_running_loop().create_task(self.accounts.refresh(min_age=1.0))
            self._tasks.append(t)
            t.add_done_callback(self._tasks.remove)

    async def _load_accounts(self) -> list[Account]:
        a = self.cfg.auth
        pool = self.primary_pool()
        c = await pool.acquire(a.user, a.password)
        try:
            async def query(sql: str) -> list[list[str | None]]:
                rows, _ = await c.query(sql)
                return rows or []

            return await load_mariadb(query)
        finally:
            await pool.release(c)

    def users(self) -> dict[str, str]:
        return {u.name: u.password for u in self.cfg.users}

    def user_plugins(self) -> dict[str, str]:
        return {u.name: u.plugin for u in self.cfg.users}

    async def ready(self) -> tuple[bool, str]:
        """Ready when the config is loaded and the primary accepts a login (a pooled connection
        answers a ping). Never a bare TCP connect: MariaDB counts a connection that sends no
        handshake towards max_connect_errors and would end up blocking the proxy's host."""
        if self.draining or self.stopping:
            return False, "draining"
        user = self.cfg.users[0]
        pool = self._primary
        try:
            c = await asyncio.wait_for(pool.acquire(user.name, user.password), 2)
        except (BackendError, BackendLost, ProxyError, TimeoutError) as e:
            return False, f"primary {pool.label} unreachable: {e}"
        try:
            await asyncio.wait_for(c.execute("DO 1"), 2)
        except (BackendError, BackendLost, TimeoutError) as e:
            c.retire(CloseReason.STATE_UNKNOWN)
            return False, f"primary {pool.label} does not answer: {e}"
        finally:
            await pool.release(c)
        return True, "ready"

    def reload(self) -> list[str]:
        """RELOAD CONFIG (admin) and SIGHUP: re-read the file the proxy started with, validate
        it, apply it; a file that does not validate changes nothing (ConfigError)."""
        try:
            cfg = load_config(self.cfg.source)
        except ConfigError:
            M.CONFIG_RELOADS.labels("error").inc()
            raise
        notes = self.apply_config(cfg)
        M.CONFIG_RELOADS.labels("ok").inc()
        return notes

    def apply_config(self, cfg: Config) -> list[str]:
        """RELOAD CONFIG: users, pools, hot-row rules and mode, log level change at once."""
        old = self.cfg
        if self.slot is not None:
            cfg = cfg.worker_share(self.slot.count)
        notes = []
        self.gate.guard = login_guard(cfg, self.gate.guard)
        bt = cfg.backends.tls
        self.dial.ssl = client_context(bt.ca, bt.verify) if bt else None  # new connections
        if cfg.tls != old.tls or cfg.tls is not None:
            # certificates re-read: new connections use them, open ones keep theirs
            try:
                self.ssl_ctx = (server_context(cfg.tls.cert, cfg.tls.key, cfg.tls.ca)
                                if cfg.tls else None)
                notes.append("tls: certificates reloaded" if cfg.tls else "tls: off")
            except OSError as e:
                notes.append(f"tls: kept the previous certificates ({e})")
        if (cfg.listen, cfg.admin.listen, cfg.metrics_listen) != (
            old.listen, old.admin.listen, old.metrics_listen
        ):
            notes.append("listen addresses change only on restart")
        self.cfg = replace(
            cfg, listen=old.listen, admin=replace(cfg.admin, listen=old.admin.listen),
            metrics_listen=old.metrics_listen, source=old.source,
        )
        self._build_pools()
        if self.monitor is not None:
            self.monitor.sync()
        if hasattr(self, "hotrow"):  # (built by start)
            self.hotrow.apply_config(cfg.hotrow)
        logging.getLogger().setLevel(cfg.log_level)
        self.slow_ms = cfg.slow_query_ms
        self.read_consistency = cfg.routing.read_consistency
        self.policy = self._policy()
        return notes

    # ---- lifecycle ------------------------------------------------------------------------

    async def probe_primary(self) -> None:
        """Learn the server version to announce; the proxy starts even if the primary is down."""
        cfg = self.cfg
        user = cfg.users[0]
        try:
            c = await self.dial.connect(
                cfg.backends.primary, user.name, user.password, cfg.backends.pool.connect_timeout_s
            )
        except (BackendError, BackendLost) as e:
            log.warning("primary %s not reachable at start: %s", cfg.backends.primary, e)
            M.BACKEND_UP.labels(str(cfg.backends.primary), "primary").set(0)
            return
        self.server_version = c.conn.server_version
        self.ext_offer = (P.MARIADB_CLIENT_EXTENDED_METADATA | P.MARIADB_CLIENT_STMT_BULK_OPERATIONS
                          if has_ext_metadata(c) else 0)
        M.BACKEND_UP.labels(str(cfg.backends.primary), "primary").set(1)
        try:
            self.dial.catalog = await load_catalog(c)
        except (BackendError, BackendLost) as e:
            log.warning("collation table not read (%s); using mysql-mimic's", e)
        c.close()

    async def start(self) -> None:
        from proxy.engines.durability import Durability
        from proxy.engines.hotrow import HotRowEngine
        from proxy.engines.monitor import Monitor
        from proxy.engines.outcome import OutcomeTracker
        from proxy.engines.readsplit import ReadRouter
        from proxy.ops.admin import AdminConsole
        from proxy.ops.httpd import start_http

        M.BUILD.labels("0.1.0").set(1)
        await self.probe_primary()
        self.hotrow = HotRowEngine(self)
        await self.hotrow.start()
        self.policy = self._policy()
        self.reads = ReadRouter(self)
        self.durability = Durability(self)
        self.outcomes = OutcomeTracker(self)
        if self.outcomes.wants():
            try:
                await self.outcomes.ensure_table()
            except (BackendError, BackendLost) as e:
                log.warning("outcome table not created yet (%s); retried on first COMMIT", e)
        self.monitor = Monitor(self)
        self.monitor.start()
        if self.accounts is not None:
            await self.accounts.refresh()
            self._tasks.append(asyncio.create_task(self.accounts.run()))
        self.admin = AdminConsole(self)
        c = self.cfg
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            lambda: ClientIO(self._client), c.listen.host, c.listen.port, reuse_address=True,
            reuse_port=self.slot is not None, backlog=1024,  # workers share the port
        )
        self.servers.append(srv)
        self.servers.append(await self.admin.start())
        if self.slot is not None:  # the supervisor serves /metrics; peers and it ask here
            self.servers.append(await peers.serve(self.slot.sock(self.slot.index),
                                                  peers.handlers(self)))
        elif c.metrics_listen is not None:
            self.servers.append(await start_http(self, c.metrics_listen))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        log.info("listening on %s (admin %s, metrics %s), primary %s",
                 c.listen, c.admin.listen, c.metrics_listen, c.backends.primary)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(5)
            M.flush()  # (workers: counters reach the files even if no scrape asks)
            for p in self.pools.values():
                await p.reap()
                M.POOL_IDLE.labels(str(p.addr)).set(p.idle_count())

    async def _client(self, io: ClientIO) -> None:
        limits = self.cfg.limits
        stream = ProxyStream(io, io, limits.max_allowed_packet)
        if self.draining or len(self.connections) >= limits.max_client_connections:
            reason = "shutting down" if self.draining else "too many connections"
            M.CLIENT_REJECTED.labels(reason).inc()
            await _say_and_close(io, P.make_err(*ER_CON_COUNT_ERROR, "Too many connections"))
            return
        addr = _peer_host(io.transport)
        refusal = self.gate.refusal(addr)
        if refusal is not None:
            M.CLIENT_REJECTED.labels("blocked").inc()
            await _say_and_close(io, refusal)
            return
        session = ProxySession(self)
        ident: BackendIdentityProvider | ConfigIdentityProvider
        if self.accounts is not None:
            ident = BackendIdentityProvider(self.accounts, addr, self.gate.user_blocked)
        else:
            ident = ConfigIdentityProvider(self.users, self.gate.user_blocked, self.user_plugins)
        conn = ProxyConnection(
            catalog=self.dial.catalog,
            stream=stream,
            session=session,
            control=self.control,
            identity_provider=ident,
            server_capabilities=SERVER_CAPABILITIES,
            ssl=self.ssl_ctx,
        )
        conn.ext_offer = self.ext_offer
        ident.sha2.secure = lambda: io.tls is not None  # caching_sha2: TLS now? fast-path reply
        ident.sha2.more = lambda data: conn.stream.write(make_auth_more_data(data))
        conn.connection_id = await self.control.add(conn)
        CONN_ID.set(conn.connection_id)  # every line logged for this client names it
        self.connections.add(conn)
        M.CLIENT_ACCEPTED.inc()
        M.CLIENT_CONNECTIONS.inc()
        reason = "closed"
        try:
            try:
                await asyncio.wait_for(conn.connection_phase(), limits.handshake_timeout_s)
            except TimeoutError:
                reason = "handshake timeout"
                return
            except Exception as e:  # noqa: BLE001 - any garbage in the handshake ends it
                reason = f"bad handshake: {type(e).__name__}"
                return
            if conn.attempted_user and not conn.stream.gate_refused:
                self.gate.ended(conn.attempted_user, addr, conn.authenticated)
            if self.accounts is not None and conn.attempted_user:
                self.accounts_login(conn.attempted_user, ident, conn.authenticated)
            if not conn.authenticated:
                reason = "authentication failed"
                return
            await session.init(conn)
            await conn.command_phase()
            reason = conn.close_reason
        except asyncio.CancelledError:
            reason = "proxy shutdown"
        except Exception as e:
            reason = f"internal error: {type(e).__name__}: {e}"
            log.exception("client %s: internal error", conn.connection_id)
        finally:
            try:
                await session.close()
            except Exception as e:  # noqa: BLE001
                log.warning("client %s: cleanup failed: %s", conn.connection_id, e)
            self.connections.discard(conn)
            await self.control.remove(conn.connection_id)
            M.CLIENT_CONNECTIONS.dec()
            M.CLIENT_DISCONNECTS.labels(_reason_label(reason)).inc()
            log.info("client %s disconnected: %s", conn.connection_id, reason,
                     extra={"conn_id": conn.connection_id, "event": "disconnect",
                            "reason": _reason_label(reason), "detail": reason})
            io.close()

    async def shutdown(self) -> None:
        self.draining = True
        for s in self.servers:
            s.close()
        # PgBouncer's safe shutdown: no new clients; a client between statements and outside a
        # transaction is closed now; one running a statement or inside a transaction may finish
        # it (its COMMIT included) within the grace, and is closed as soon as it has.
        grace = self.cfg.limits.shutdown_grace_s
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            open_work = False
            for c in list(self.connections):
                if c.session.in_txn or not c.close_idle("shutdown"):  # (busy: not idle)
                    open_work = True
            if not open_work:
                break
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        if hasattr(self, "hotrow"):  # (built by start)
            await self.hotrow.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        for c in list(self.connections):
            c.kill()
        for _ in range(100):
            if not self.connections:
                break
            await asyncio.sleep(0.02)
        for p in self.pools.values():
            await p.close()


def _reason_label(reason: str) -> str:
    """The bounded metric label (errors.DisconnectReason) of a log line's reason."""
    for known in DisconnectReason:
        if reason.startswith(known.value):
            return known.value
    return "other"


def _peer_host(transport: Any) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, tuple) and peer else "local"


async def _say_and_close(writer: ClientIO, payload: bytes) -> None:
    try:
        writer.write(P.packet(payload, 0))
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
