"""The DBA console: MySQL protocol on its own port and accounts, SQL-like commands.

    mysql -h127.0.0.1 -P6032 -uadmin -padmin
    SHOW HELP; SHOW BACKENDS; SHOW HOTROW RULES; SHOW HOT KEYS;
    SET hotrow.mode = 'merge' [FOR TABLE shop.inventory]; RELOAD CONFIG;
    SHOW QUERY DIGEST [n]; RESET QUERY DIGEST; SET log_level = 'debug';
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from mysql_mimic.connection import Connection
from mysql_mimic.errors import ErrorCode, MysqlError
from mysql_mimic.session import BaseSession
from mysql_mimic.variables import GlobalVariables, SessionVariables

from proxy.client.frontend import ConfigIdentityProvider, ProxyConnection, ProxyStream
from proxy.client.guard import Gate, login_guard
from proxy.core import config as C
from proxy.core import metrics as M
from proxy.core.errors import ER_CON_COUNT_ERROR
from proxy.engines.ports import Topology
from proxy.net import protocol as P
from proxy.net.checks import check_change_user
from proxy.ops import fanout

if TYPE_CHECKING:
    from mysql_mimic.control import LocalControl

    from proxy.core.config import Config
    from proxy.engines.hotrow import HotRowEngine
    from proxy.engines.monitor import Monitor
    from proxy.engines.readsplit import ReadRouter
    from proxy.plan.digest import QueryDigest


class PeerCalls(Protocol):
    """The other workers, as the console asks them (peers.Peers)."""

    async def ask_all(self, req: dict[str, Any]) -> list[dict[str, Any]]: ...


class AdminHost(Topology, Protocol):
    """The admin console's view: what it shows and what a DBA may change."""

    read_consistency: str
    server_version: str

    @property
    def monitor(self) -> Monitor | None: ...

    @property
    def reads(self) -> ReadRouter: ...

    @property
    def hotrow(self) -> HotRowEngine: ...  # rules, hot keys, mode

    @property
    def digest(self) -> QueryDigest: ...

    @property
    def control(self) -> LocalControl: ...  # mysql-mimic's connection registry

    @property
    def peers(self) -> PeerCalls | None: ...  # the other workers (None: one process)

    def apply_config(self, cfg: Config) -> list[str]: ...

    def reload(self) -> list[str]: ...  # re-read the config file (raises ConfigError)

    def refresh_policy(self) -> None: ...


log = logging.getLogger("seckill.admin")
audit = logging.getLogger("seckill.admin.audit")

HELP = [
    ("SHOW BACKENDS", "servers, role, state and reason, pool connections"),
    ("SHOW HOTROW RULES", "configured hot-row rules, mode per table, primary-key check"),
    ("SHOW HOT KEYS", "top hot keys now: path and why, waiting, in flight, batches/s, average batch"),
    ("SET hotrow.mode = 'off|queue|merge' [FOR TABLE db.tbl]", "change hot-row mode at once"),
    ("RELOAD CONFIG", "re-read the config file (users, hot-row rules and mode, routing, log level)"),
    ("SET routing.read_consistency = 'eventual|session|global|primary'", "default read consistency"),
    ("SHOW QUERY DIGEST [n]", "top statement shapes by total time"),
    ("SHOW METRICS [LIKE 'pattern']", "current value of every exported metric (what top reads)"),
    ("RESET QUERY DIGEST", "clear the digest table"),
    ("SET log_level = 'debug|info|warning|error'", "change the log level"),
    ("SHOW HELP", "this list"),
]


class AdminSession(BaseSession):
    def __init__(self, app: AdminHost) -> None:
        self.app = app
        self.variables = SessionVariables(GlobalVariables())
        self.variables.set("version", app.server_version, force=True)
        self.username: str | None = None
        self.database: str | None = None
        self.peer = ""
        self.fanout = True  # False when a peer worker asked (the asker adds the parts up)
        self.commands: list[tuple[re.Pattern[str], Callable[..., Any]]] = [
            (re.compile(r"select\s+@@version_comment(\s+limit\s+1)?", re.I), self._version_comment),
            (re.compile(r"show\s+help", re.I), self._help),
            (re.compile(r"show\s+backends", re.I), self._backends),
            (re.compile(r"show\s+hotrow\s+rules", re.I), self._rules),
            (re.compile(r"show\s+hot\s+keys", re.I), self._hot_keys),
            (re.compile(r"set\s+hotrow\.mode\s*=\s*'?(\w+)'?(?:\s+for\s+table\s+`?(\w+)`?\.`?(\w+)`?)?", re.I),
             self._set_mode),
            (re.compile(r"reload\s+config", re.I), self._reload),
            (re.compile(r"set\s+routing\.read_consistency\s*=\s*'?(\w+)'?", re.I), self._set_consistency),
            (re.compile(r"show\s+query\s+digest(?:\s+(\d+))?", re.I), self._digest),
            (re.compile(r"reset\s+query\s+digest", re.I), self._reset_digest),
            (re.compile(r"show\s+metrics(?:\s+like\s+'([^']*)')?", re.I), self._metrics),
            (re.compile(r"set\s+log_level\s*=\s*'?(\w+)'?", re.I), self._log_level),
            (re.compile(r"select\s+1", re.I), self._one),
            # What drivers send on connect (SET NAMES, SET autocommit=1...) is accepted as a no-op.
            (re.compile(r"set\s+(?:names|character\s+set|autocommit|session|sql_mode|@@)\b.*", re.I | re.S),
             self._noop),
            (re.compile(r"(?:commit|rollback|begin)", re.I), self._noop),
        ]
        # polled every second by `seckill-proxy top`: not worth an audit line each
        self._quiet = {self._metrics, self._backends, self._hot_keys, self._version_comment,
                       self._noop, self._one}

    async def handle_query(self, sql: str, attrs: dict[str, str]) -> Any:
        if not self.username:
            raise MysqlError("Access denied", ErrorCode.ACCESS_DENIED_ERROR)
        text = sql.strip().rstrip(";").strip()
        for rx, fn in self.commands:
            m = rx.fullmatch(text)
            if m:
                # audit: who ran what (reads that top polls excepted; once, by the asked worker)
                if fn not in self._quiet and self.fanout:
                    audit.info("admin %s from %s: %s", self.username, self.peer, text[:500])
                name = getattr(fn, "__name__", "")
                peers = self.app.peers if self.fanout else None
                if peers is not None and fn is self._metrics:  # every worker's counts, now
                    await peers.ask_all({"op": "flush"})
                    M.flush()
                res = fn(*m.groups())
                if asyncio.iscoroutine(res):
                    res = await res
                if peers is not None and name in fanout.GATHER | fanout.BROADCAST:
                    answers = await peers.ask_all({"op": "admin", "sql": text})
                    if name in fanout.GATHER:
                        rows, cols = res
                        parts = [list(rows)] + [a["rows"] for a in answers if "rows" in a]
                        res = fanout.merge(name, parts, m.groups()[0] if m.groups() else None), cols
                return res
        if not text:
            return None
        raise MysqlError(
            f"Unknown admin command near '{text[:40]}'; try SHOW HELP", ErrorCode.PARSE_ERROR
        )

    def _noop(self) -> None:
        """What drivers send on connect: accepted, changes nothing."""

    def _one(self) -> Any:
        return [(1,)], ["1"]

    def _version_comment(self, *_: Any) -> Any:
        return [("seckill-proxy admin console",)], ["@@version_comment"]

    def _help(self) -> Any:
        return HELP, ["command", "description"]

    def _backends(self) -> Any:
        from proxy.engines.monitor import durable_problems

        rows = []
        for key, p in self.app.pools.items():
            st = self.app.monitor.states.get(key) if self.app.monitor else None
            d = st.durability if st else {}
            dur = ", ".join(durable_problems(d)) or ("durable" if d else "")
            rows.append((key, p.role, st.state if st else "unknown", st.reason if st else "",
                         None if not st or st.read_only is None else int(st.read_only),
                         st.lag_s if st else None, st.gtid if st else "", dur,
                         p.in_use, p.idle_count(), p.total,
                         self.app.reads.reads.get(key, 0) if self.app.reads else 0))
        return rows, ["backend", "role", "state", "reason", "read_only", "lag_s", "gtid_position",
                      "durability", "conn_in_use", "conn_idle", "conn_total", "reads_served"]

    async def _rules(self) -> Any:
        await self.app.hotrow.check_rules()
        return self.app.hotrow.rules_table()

    def _hot_keys(self) -> Any:
        return self.app.hotrow.hot_keys_table()

    def _set_mode(self, mode: str, schema: str | None, table: str | None) -> Any:
        mode = mode.lower()
        if mode not in C.HOTROW_MODES:
            raise MysqlError(
                f"Variable 'hotrow.mode' can't be set to the value of '{mode}'",
                ErrorCode.WRONG_VALUE_FOR_VAR,
            )
        target = f"{schema}.{table}".lower() if schema and table else None
        self.app.hotrow.set_mode(mode, target)
        self.app.refresh_policy()
        log.info("hotrow.mode set to %s for %s by admin %s", mode, target or "all tables", self.username)
        return None

    def _set_consistency(self, value: str) -> Any:
        if value.lower() not in C.CONSISTENCY:
            raise MysqlError(
                f"Variable 'routing.read_consistency' can't be set to the value of '{value}'",
                ErrorCode.WRONG_VALUE_FOR_VAR,
            )
        self.app.read_consistency = value.lower()
        return None

    async def _reload(self) -> Any:
        try:
            notes = self.app.reload()
        except C.ConfigError as e:
            raise MysqlError(f"RELOAD CONFIG failed: {e}", ErrorCode.WRONG_VALUE_FOR_VAR) from None
        return [(n,) for n in notes] or [("reloaded",)], ["result"]

    def _digest(self, n: str | None) -> Any:
        return self.app.digest.top(int(n) if n else 50), [
            "digest", "count", "sum_time_us", "avg_time_us", "max_time_us", "rows", "route", "hotrow_mode"
        ]

    def _metrics(self, pattern: str | None) -> Any:
        rows = M.samples()
        if pattern:
            rx = re.compile(
                "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern),
                re.I,
            )
            rows = [r for r in rows if rx.fullmatch(r[0])]
        return rows, ["metric", "labels", "value"]

    def _reset_digest(self) -> Any:
        self.app.digest.reset()
        return None

    def _log_level(self, level: str) -> Any:
        level = level.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise MysqlError(
                f"Variable 'log_level' can't be set to the value of '{level}'",
                ErrorCode.WRONG_VALUE_FOR_VAR,
            )
        logging.getLogger().setLevel(level)
        return None


async def peer_command(app: AdminHost, sql: str) -> dict[str, Any]:
    """An admin command another worker's console passed on: this worker's own part."""
    session = AdminSession(app)
    session.username, session.peer, session.fanout = "peer", "worker", False
    try:
        res = await session.handle_query(sql, {})
    except MysqlError as e:
        return {"error": str(e)}
    if not res:
        return {"ok": True}
    rows, cols = res
    return {"rows": [list(r) for r in rows], "cols": list(cols)}


class AdminConnection(ProxyConnection):
    """Admin clients use mysql-mimic's own command loop (results are small Python tables)."""

    async def command_phase(self) -> None:
        await Connection.command_phase(self)

    async def handle_change_user(self, data: bytes) -> None:
        """mysql-mimic's parser loops forever on some malformed COM_CHANGE_USER packets (found
        by tests/test_fuzz.py: it froze the whole proxy): validated first, as on the client
        port."""
        try:
            check_change_user(data, int(self.capabilities))
        except ValueError as e:
            raise MysqlError(f"Malformed communication packet ({e})", 1835) from None
        await super().handle_change_user(data)


class AdminConsole:
    def __init__(self, app: AdminHost) -> None:
        self.app = app
        self.active = 0
        self.gate = Gate(login_guard(app.cfg), "admin", time.monotonic)

    def users(self) -> dict[str, str]:
        return {u.name: u.password for u in self.app.cfg.admin.users}

    async def start(self) -> asyncio.Server:
        a = self.app.cfg.admin.listen
        return await asyncio.start_server(self._client, a.host, a.port, reuse_address=True,
                                          reuse_port=self.app.peers is not None)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if peer else "local"
        refusal = self.gate.refusal(host)
        if refusal is not None:
            audit.warning("admin connection from %s refused: blocked after failed logins", peer)
            writer.write(P.packet(refusal, 0))
            writer.close()
            return
        if self.active >= self.app.cfg.admin.max_connections:
            audit.warning("admin connection from %s refused: %d open (admin.max_connections)",
                          peer, self.active)
            err = P.make_err(*ER_CON_COUNT_ERROR, "Too many connections")
            writer.write(P.packet(err, 0))
            writer.close()
            return
        self.active += 1
        try:
            await self._serve(reader, writer, host, f"{host}:{peer[1]}" if peer else "?")
        finally:
            self.active -= 1

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     host: str, peer: str) -> None:
        session = AdminSession(self.app)
        session.peer = peer
        conn = AdminConnection(
            stream=ProxyStream(reader, writer, 1 << 20),
            catalog=self.app.dial.catalog,
            session=session,
            control=self.app.control,
            identity_provider=ConfigIdentityProvider(self.users, self.gate.user_blocked),
        )
        try:
            await asyncio.wait_for(conn.connection_phase(), self.app.cfg.limits.handshake_timeout_s)
            if conn.attempted_user:
                self.gate.ended(conn.attempted_user, host, conn.authenticated)
            if not conn.authenticated:
                audit.warning("admin login failed from %s", peer)
            else:
                audit.info("admin %s logged in from %s", session.username, peer)
                await session.init(conn)
                await conn.command_phase()
        except Exception as e:  # noqa: BLE001 - a broken admin client must not hurt the proxy
            log.info("admin client ended: %s", type(e).__name__)
        finally:
            writer.close()
