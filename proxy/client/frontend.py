"""The client side: mysql-mimic does the handshake and authentication, the proxy the rest.

`ProxyConnection` extends mysql-mimic's Connection (not a fork): it keeps mimic's connection
phase, turns any failed login (unknown user included) into 1045 followed by a close, and
replaces the command loop so each command goes to the session as raw bytes, with replies that
carry the backend's affected rows, insert id, warnings, info and status flags.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from mysql_mimic.auth import IdentityProvider, NativePasswordAuthPlugin, User
from mysql_mimic.connection import Connection
from mysql_mimic.stream import ConnectionClosed, MysqlStream
from mysql_mimic.types import Capabilities, ServerStatus

from proxy.client import sha2
from proxy.client.sha2 import CachingSha2Plugin
from proxy.core.errors import (
    ER_NET_PACKET_TOO_LARGE,
    ER_UNKNOWN_COM_ERROR,
    BackendError,
    BackendLost,
    ProxyError,
    client_side,
)
from proxy.core.state import Catalog
from proxy.net import protocol as P
from proxy.net import tracking
from proxy.net.checks import check_change_user, check_handshake_response
from proxy.net.tls import TLSTransport
from proxy.net.wire import ClientIO

log = logging.getLogger("seckill.frontend")

# What the proxy offers clients. Deliberately without CLIENT_DEPRECATE_EOF (result sets are
# forwarded as the backend framed them, with EOF packets) and CLIENT_QUERY_ATTRIBUTES. With
# CLIENT_SESSION_TRACK: OK packets carry what the client's own session_track_* settings ask
# for, filtered from the backends' full tracking (tracking.py).
SERVER_CAPABILITIES = (
    Capabilities.CLIENT_LONG_PASSWORD
    | Capabilities.CLIENT_FOUND_ROWS
    | Capabilities.CLIENT_LONG_FLAG
    | Capabilities.CLIENT_CONNECT_WITH_DB
    | Capabilities.CLIENT_PROTOCOL_41
    | Capabilities.CLIENT_TRANSACTIONS
    | Capabilities.CLIENT_SECURE_CONNECTION
    | Capabilities.CLIENT_MULTI_STATEMENTS
    | Capabilities.CLIENT_MULTI_RESULTS
    | Capabilities.CLIENT_PS_MULTI_RESULTS
    | Capabilities.CLIENT_PLUGIN_AUTH
    | Capabilities.CLIENT_CONNECT_ATTRS
    | Capabilities.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capabilities.CLIENT_IGNORE_SPACE
    | Capabilities.CLIENT_INTERACTIVE
    | Capabilities.CLIENT_LOCAL_FILES
    | Capabilities.CLIENT_SESSION_TRACK
    | Capabilities.CLIENT_COMPRESS  # compress.py
)


class PacketTooLarge(Exception):
    pass


class ProxyStream:
    """mysql-mimic's stream (compiled, so wrapped rather than subclassed) with a read that
    cannot be fooled by short reads and refuses packets above max_allowed_packet."""

    def __init__(self, reader: Any, writer: Any, limit: int) -> None:
        self.inner = MysqlStream(reader, writer)
        self.reader = reader
        self.writer = writer
        self.limit = limit
        self.seq = self.inner.seq
        self.write_many = self.inner.write_many
        self.drain = self.inner.drain
        self.reset_seq = self.inner.reset_seq

        self.write_text_rows = self.inner.write_text_rows
        self.check_next: Callable[[bytes], bytes] | None = None
        self.rewrite_next: Callable[[bytes], bytes] | None = None  # the next packet written
        # Runs before mysql-mimic's "login OK" goes out; an ERR packet it returns is sent instead.
        self.ok_gate: Callable[[], Awaitable[bytes | None]] | None = None
        self.gate_refused = False

    async def start_tls(self, ctx: ssl.SSLContext) -> None:
        if isinstance(self.writer, ClientIO):
            await self.writer.start_tls(ctx)
        else:
            await self.inner.start_tls(ctx)

    async def write(self, data: bytes, drain: bool = True) -> None:
        gate = self.ok_gate
        if gate is not None and data[:1] == b"\x00":
            self.ok_gate = None
            refusal = await gate()
            if refusal is not None:
                self.gate_refused = True
                data = refusal
        if self.rewrite_next is not None:
            rewrite, self.rewrite_next = self.rewrite_next, None
            data = rewrite(data)
        await self.inner.write(data, drain)

    async def read(self) -> bytes:
        data = await self._read()
        if self.check_next is not None:
            check, self.check_next = self.check_next, None
            try:
                data = check(data)
            except ValueError as e:
                raise ProxyError((1835, "08S01"), f"Malformed communication packet ({e})",
                                 fatal=True) from None
        return data

    async def read_command(self) -> bytes:
        """The next command; while the task waits for it, the fast lane may answer commands
        without waking it (ClientIO.armed)."""
        reader = self.reader
        if isinstance(reader, ClientIO):
            reader.armed = True
            try:
                header = await reader.readexactly(4)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                raise ConnectionClosed() from e
            finally:
                reader.armed = False
            return await self._read(header)
        return await self._read()

    async def _read(self, first: bytes | None = None) -> bytes:
        data = b""
        while True:
            try:
                header = first or await self.reader.readexactly(4)
                first = None
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                raise ConnectionClosed() from e
            n = header[0] | (header[1] << 8) | (header[2] << 16)
            sequence_id = header[3]
            expected = next(self.seq)
            if sequence_id != expected:
                raise ProxyError((1835, "08S01"), "Malformed communication packet (sequence)",
                                 fatal=True)
            if len(data) + n > self.limit:
                raise PacketTooLarge()
            if n:
                try:
                    data += await self.reader.readexactly(n)
                except (asyncio.IncompleteReadError, ConnectionError) as e:
                    raise ConnectionClosed() from e
            if n < P.MAX_PACKET:
                return data


class ConfigIdentityProvider(IdentityProvider):
    """Users from the config file, each with its plugin: mysql_native_password (the default) or
    caching_sha2_password (sha2.py). One per client connection (the sha2 plugin learns the
    connection's TLS state and writes to it).

    An unknown user gets a user record no password can match, so it fails exactly like a wrong
    password (1045) and does not reveal which user names exist.
    """

    def __init__(self, users: Callable[[], dict[str, str]],
                 blocked: Callable[[str], bool] = lambda _: False,
                 plugins: Callable[[], dict[str, str]] = dict) -> None:
        self._users = users
        self._blocked = blocked  # guard.py: a blocked user fails like a wrong password
        self._plugins = plugins  # user -> plugin name; absent: mysql_native_password
        self.sha2 = CachingSha2Plugin()

    def get_plugins(self) -> list[Any]:
        return [NativePasswordAuthPlugin(), self.sha2]

    async def get_user(self, username: str) -> User | None:
        pw = None if self._blocked(username) else self._users().get(username)
        if self._plugins().get(username) == sha2.NAME:
            auth = sha2.auth_string(pw) if pw is not None else "00" * 32
            return User(name=username, auth_string=auth, auth_plugin=sha2.NAME)
        auth = NativePasswordAuthPlugin.create_auth_string(pw) if pw is not None else "00" * 20
        if pw == "":
            auth = ""
        return User(name=username, auth_string=auth, auth_plugin="mysql_native_password")


class BackendIdentityProvider(IdentityProvider):
    """Accounts from MySQL (accounts.py, `auth: backend`), for one client connection: native
    password accounts and caching_sha2 ones (sha2.py, checked against MySQL's stored string)."""

    def __init__(self, store: Any, addr: str, blocked: Callable[[str], bool]) -> None:
        from proxy.client.accounts import NativeCapture

        self.store = store
        self.addr = addr
        self._blocked = blocked
        self.plugin = NativeCapture(store.credentials)
        self.plugin.recheck = self._recheck
        self.sha2 = CachingSha2Plugin(on_full=store.learn)
        self.sha2.recheck = lambda name: store.stored_now(name, addr)

    def get_plugins(self) -> list[Any]:
        return [self.plugin, self.sha2]

    async def get_user(self, username: str) -> User | None:
        if self._blocked(username):
            return User(name=username, auth_string="00" * 20, auth_plugin="mysql_native_password")
        await self.store.look_up(username, self.addr)
        return self.store.user_for(username, self.addr, self.plugin)  # type: ignore[no-any-return]

    async def _recheck(self, username: str) -> User | None:
        """After a wrong password: the account as MySQL has it now (its password may have
        changed since the last refresh)."""
        if self._blocked(username):
            return None
        await self.store.look_up(username, self.addr, always=True)
        return self.store.user_for(username, self.addr, self.plugin)  # type: ignore[no-any-return]


class ProxyConnection(Connection):
    """A client connection; `dispatch` maps each command to the session (or admin console)."""

    session: Any

    def __init__(self, *a: Any, catalog: Catalog, **kw: Any) -> None:
        super().__init__(*a, **kw)
        # the servers' collations (backends/dial.py): what a handshake's collation id means
        self.catalog = catalog
        # Drivers read the initial autocommit mode from the handshake (PyMySQL sends
        # SET AUTOCOMMIT only when it differs), so announce the server's default: on.
        self.status_flags = ServerStatus.SERVER_STATUS_AUTOCOMMIT
        self.authenticated = False
        self.attempted_user = ""
        self.close_reason = "client quit"
        self._idle_timer: asyncio.TimerHandle | None = None
        self.client_names = catalog.server_default
        # MariaDB's extended capabilities: offered when the backends are MariaDB (set by the
        # server before the handshake) and those the client took.
        self.ext_offer = 0
        self.client_ext = 0

    def _handshake(self, data: bytes) -> bytes:
        """Validate the handshake response and take its collation id out of mysql-mimic's hands:
        mimic decodes names with a Python codec of that charset (none exists for `binary`, ids
        above its table fail) and keeps only the charset. The proxy keeps the exact collation
        (state.py) and lets mimic read the packet as utf8mb4."""
        data = check_handshake_response(data, int(self.server_capabilities))
        if len(data) == 32:  # SSLRequest: the real response follows over TLS
            self.stream.check_next = self._handshake
        if len(data) > 32:
            if self.ext_offer:
                self.client_ext = P.client_ext_caps(data) & self.ext_offer
            self.client_names = self.catalog.handshake_names(
                data[8], self.catalog.server_default)
            data = data[:8] + b"\xff" + data[9:]
        return data

    async def connection_phase(self) -> None:
        self.stream.check_next = self._handshake
        if self.ext_offer:
            offer = self.ext_offer
            self.stream.rewrite_next = lambda greeting: P.greeting_ext(greeting, offer)
        await super().connection_phase()
        io = self.stream.writer
        if (self.authenticated and isinstance(io, ClientIO)
                and int(self.capabilities) & int(self.server_capabilities) & P.CLIENT_COMPRESS):
            io.start_compression()  # the login OK went out plain; what follows is framed

    async def authenticate(self, username: str, *a: Any, **kw: Any) -> None:
        self.attempted_user = username  # for the brute-force guard, whatever the outcome
        self.session.username = None
        self.stream.ok_gate = self._login_gate
        self.stream.gate_refused = False
        if (kw.get("client_plugin_name") == sha2.NAME and kw.get("auth_response") in (b"", b"\x00")
                and self.handshake_auth_plugin != sha2.NAME):
            # The client chose caching_sha2_password but the greeting offered another plugin,
            # so it sent nothing computed (libmariadb with --default-auth): MySQL answers with
            # an auth switch to the account's plugin and a nonce; mysql-mimic would take the
            # empty reply as an empty password.
            kw["client_plugin_name"] = None
        try:
            await super().authenticate(username, *a, **kw)
        finally:
            self.stream.ok_gate = None
        self.authenticated = bool(self.session.username) and not self.stream.gate_refused

    @property
    def tls(self) -> TLSTransport | None:
        """The client connection's TLS layer (tls.py), or None."""
        io = self.stream.writer
        return io.tls if isinstance(io, ClientIO) else None

    async def _login_gate(self) -> bytes | None:
        """Before the login OK: what MySQL checks at login (REQUIRE SSL, the default database
        exists)."""
        needs_tls = getattr(self.session, "tls_required", None)
        if needs_tls is not None and needs_tls(self.attempted_user) and self.tls is None:
            host = self.stream.writer.transport.get_extra_info("peername") or ("?",)
            return P.make_err(1045, "28000", f"Access denied for user '{self.attempted_user}'"
                                             f"@'{host[0]}' (using password: YES)")
        check = getattr(self.session, "check_login", None)
        if check is None:
            return None  # the admin console's sessions have no backend
        await self.session.init(self)
        refusal: bytes | None = await check()
        if refusal is None:
            s = self.session  # its session-state block
            self.stream.rewrite_next = lambda ok: tracking.login_ok(ok, s.track, s.database)
        return refusal

    def arm_idle_timer(self) -> None:
        """MySQL's wait_timeout (interactive_timeout for CLIENT_INTERACTIVE clients): a client
        idle that long is disconnected. One timer per connection, re-armed when it fires or
        when the session changes wait_timeout; no cost per command."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        io = self.stream.reader
        if not isinstance(io, ClientIO):
            return
        loop = asyncio.get_running_loop()
        if io.last_activity == 0.0:
            io.last_activity = loop.time()
        timeout = self.session.idle_timeout()
        due = io.last_activity + timeout - loop.time()
        self._idle_timer = loop.call_later(max(due, 0.0), self._idle_check)

    def close_idle(self, reason: str) -> bool:
        """Close the client now if it is between statements (shutdown); False if it is not."""
        io = self.stream.reader
        if self.session.busy or not isinstance(io, ClientIO) or io.held:
            return False
        self.close_reason = reason
        io.transport.abort()
        return True

    def _idle_check(self) -> None:
        self._idle_timer = None
        io = self.stream.reader
        loop = asyncio.get_running_loop()
        if (not self.session.busy and isinstance(io, ClientIO) and not io.held
                and loop.time() - io.last_activity >= self.session.idle_timeout()):
            self.close_reason = "idle timeout (wait_timeout)"
            io.transport.abort()
            return
        if isinstance(io, ClientIO) and self.session.busy:
            io.last_activity = loop.time()  # a running statement is not idleness
        self.arm_idle_timer()

    async def command_phase(self) -> None:
        self.arm_idle_timer()
        try:
            await self._command_loop()
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()

    async def _command_loop(self) -> None:
        while True:
            self.stream.reset_seq()
            try:
                data = await self.stream.read_command()
            except ConnectionClosed:
                if not self.close_reason.startswith("idle timeout"):
                    self.close_reason = self.session.end_reason or "client closed connection"
                return
            except PacketTooLarge:
                await self.stream.write(
                    P.make_err(*ER_NET_PACKET_TOO_LARGE, "Got a packet bigger than 'max_allowed_packet' bytes")
                )
                self.close_reason = "packet too large"
                return
            if not data:
                await self.stream.write(P.make_err(*ER_UNKNOWN_COM_ERROR, "Unknown command"))
                continue
            if data[0] == P.COM_QUIT:
                self.close_reason = "client quit"
                return
            self.session.busy = True
            try:
                await self.dispatch(data)
            except ProxyError as e:
                if client_side(e.code):  # errors.client_side: told as MySQL's death is told
                    self.close_reason = f"backend lost ({e.code}): {e.message}"
                    return
                await self._error(e.packet())
                if e.fatal:
                    self.close_reason = f"fatal error {e.code}: {e.message}"
                    return
            except BackendError as e:
                await self._error(e.raw)
            except BackendLost as e:
                # Reaching the backend failed (e.g. connect refused): as MySQL's own death,
                # the connection closes (errors.client_side).
                self.close_reason = f"backend unreachable: {e.reason}"
                return
            except (ConnectionError, ConnectionClosed):
                self.close_reason = "client connection lost"
                return
            finally:
                self.session.busy = False
            if not self.authenticated:  # a failed COM_CHANGE_USER ends the connection
                self.close_reason = "authentication failed"
                return

    async def _error(self, packet: bytes) -> None:
        try:
            await self.stream.write(packet)
        except ConnectionError:
            pass

    async def dispatch(self, data: bytes) -> None:
        s = self.session
        cmd = data[0]
        if cmd == P.COM_QUERY:
            await s.com_query(data)
        elif cmd in P.STMT_COMMANDS and (cmd != P.COM_STMT_BULK_EXECUTE or
                                         self.client_ext & P.MARIADB_CLIENT_STMT_BULK_OPERATIONS):
            await s.com_stmt(cmd, data)
        elif cmd == P.COM_PING:
            await s.com_ping()
        elif cmd == P.COM_INIT_DB:
            await s.com_init_db(data)
        elif cmd == P.COM_FIELD_LIST:
            await s.com_field_list(data)
        elif cmd == P.COM_RESET_CONNECTION:
            await s.com_reset_connection()
        elif cmd == P.COM_CHANGE_USER:
            try:
                check_change_user(data[1:], int(self.capabilities))
            except ValueError as e:
                raise ProxyError((1835, "08S01"), f"Malformed communication packet ({e})",
                                 fatal=True) from None
            await s.reset()
            await self.handle_change_user(data[1:])
        elif cmd == P.COM_STATISTICS:
            await s.com_statistics(data)
        elif cmd == P.COM_PROCESS_KILL:
            await s.com_process_kill(data)
        elif cmd == P.COM_SET_OPTION:
            await s.com_set_option(data)
        else:
            raise ProxyError(ER_UNKNOWN_COM_ERROR, f"Unknown command 0x{cmd:02x}")

