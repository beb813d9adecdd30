"""Errors the proxy itself reports, with the MySQL codes and SQLSTATEs clients already handle.

Errors that come from MySQL are never rebuilt: their ERR packets are forwarded byte for byte.
"""

from __future__ import annotations

from enum import Enum

from proxy.net.protocol import make_err

ER_CON_COUNT_ERROR = (1040, "08004")
ER_ACCESS_DENIED = (1045, "28000")
ER_UNKNOWN_COM_ERROR = (1047, "08S01")
ER_NET_PACKET_TOO_LARGE = (1153, "08S01")
ER_LOCK_WAIT_TIMEOUT = (1205, "HY000")
ER_PARSE_ERROR = (1064, "42000")
ER_BAD_NULL_ERROR = (1048, "23000")  # how a service transaction's own check stops it (hotmerge.py)
ER_UNKNOWN_SYSTEM_VARIABLE = (1193, "HY000")
ER_UNKNOWN_STMT_HANDLER = (1243, "HY000")
ER_WRONG_VALUE_FOR_VAR = (1231, "42000")
ER_NOT_SUPPORTED_YET = (1235, "42000")
ER_QUERY_INTERRUPTED = (1317, "70100")
ER_SERVER_SHUTDOWN = (1053, "08S01")
ER_OPTION_PREVENTS_STATEMENT = (1290, "HY000")
CR_SERVER_LOST = (2013, "HY000")
# AliSQL's inventory hints (documented number for autocommit; the mismatch's is not published)
ER_INVENTORY_AUTOCOMMIT = (7531, "HY000")
ER_INVENTORY_TARGET_AFFECT_ROW = (7532, "HY000")
CR_CONN_HOST_ERROR = (2003, "HY000")
# The proxy's own: a write that provably did not happen (outcome.py, hotrow.py, tracked.py)
ER_SECKILL_NOT_COMMITTED = (9102, "40000")


def client_side(code: int) -> bool:
    """A client library's own error number (CR_*, 2000-2999): no MySQL server sends one in an
    ERR packet, and libmariadb reports such a packet as 2027 "Received malformed packet". The
    proxy says what MySQL's death says instead: it closes the client connection, whose library
    then reports 2013 (lost during the query) or 2006 (gone away) itself; the detail goes to
    the log (frontend.py, fastlane.py)."""
    return 2000 <= code < 3000


class ProxyError(Exception):
    """An error answered to the client as an ERR packet."""

    def __init__(self, err: tuple[int, str], message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.sqlstate = err
        self.message = message
        # fatal: the client connection is closed after the error (e.g. its transaction is gone).
        self.fatal = fatal

    def packet(self) -> bytes:
        return make_err(self.code, self.sqlstate, self.message)


class BackendError(Exception):
    """An ERR packet from MySQL on an internal query (kept raw for forwarding)."""

    def __init__(self, code: int, sqlstate: str, message: str, raw: bytes = b"") -> None:
        super().__init__(f"({code}) {message}")
        self.code = code
        self.sqlstate = sqlstate
        self.message = message
        self.raw = raw or make_err(code, sqlstate, message)
        self.at = -1  # a multi-statement's: the statement that failed (results.read_results)


class CutShort(BackendError):
    """A multi-statement MariaDB stopped without a reply (backend.BackendConn.query_each)."""

    def __init__(self) -> None:
        super().__init__(*ER_QUERY_INTERRUPTED, "Query execution was interrupted")


class BackendLost(Exception):
    """The backend connection broke; `sent` tells whether the command may have reached MySQL."""

    def __init__(self, reason: str, sent: bool = True, delivered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent
        # delivered: part of the answer already reached the client (no transparent retry)
        self.delivered = delivered


class Label(Enum):
    """An enum whose members are dict keys or metric labels on every statement: members are
    singletons, so they hash by identity (C speed) instead of Enum's Python-level hash of
    the name (a dozen of those per statement were a tenth of the fast lane's Python time)."""

    __hash__ = object.__hash__


class PinReason(Label):
    """Why a session keeps its backend connection between statements: the connection holds
    state the proxy cannot replay on another (the lease stays `pinned` until the session
    resets, or the state is carried: user variables out of a replica's read-only
    transaction). Shown in the log; a bounded set."""

    USER_VARIABLE = "user variable"
    TEMPORARY_TABLE = "temporary table"
    NAMED_LOCK = "named lock"
    TABLE_LOCK = "table lock"
    CONNECTION_LOCAL = "connection-local statement"  # SQL PREPARE/EXECUTE, HANDLER, XA
    FOUND_ROWS = "found_rows"
    LAST_INSERT_ID_EXPR = "last_insert_id(expr)"
    NEXT_TRANSACTION = "next-transaction setting"
    SEQUENCE = "sequence"
    SERVER_CURSOR = "server-side cursor"
    LONG_DATA = "long data pending"  # COM_STMT_SEND_LONG_DATA before its EXECUTE
    SESSION_VARIABLE = "session variable"  # one that cannot be replayed (timestamp, ...)
    SESSION_STATE = "session state changed"  # reported by MariaDB without saying what


class LeaseReason(Label):
    """Why a session's hold on a backend connection changed (lease.py); a metric label."""

    ACQUIRED = "acquired"
    STATEMENT_DONE = "statement_done"
    TRANSACTION = "transaction"
    PINNED = "pinned"
    READ_ONLY_TXN = "read_only_txn"
    ROUTE_CHANGE = "route_change"  # the next statement needs another server's connection
    POOL_RECLAIMED = "pool_reclaimed"  # the pool took back a soft-held connection
    STALE_WHILE_IDLE = "stale_while_idle"
    PRIMARY_MOVED = "primary_moved"
    NEEDS_NO_DATABASE = "needs_no_database"
    BACKEND_LOST = "backend_lost"
    CLIENT_GONE = "client_gone"
    SESSION_RESET = "session_reset"


class CloseReason(Label):
    """Why the proxy closed a backend connection (pool.py); a metric label, details go to
    the log."""

    BROKEN = "broken"  # retired with no more precise reason
    LOST = "lost"  # the socket failed or the server closed it
    REPLY_ABANDONED = "reply_abandoned"  # left mid-reply: the rest is still on the wire
    PROTOCOL_DESYNC = "protocol_desync"  # bytes after a complete reply
    FORMER_PRIMARY = "former_primary"  # fenced after a failover: never written to again
    STATE_UNKNOWN = "state_unknown"  # a check of its state failed: not trusted again
    STALE = "stale"
    RESET_FAILED = "reset_failed"
    IDLE_TIMEOUT = "idle_timeout"
    EVICTED = "evicted_for_another_user"
    NEEDS_NO_DATABASE = "needs_no_database"
    SHUTDOWN = "shutdown"
    CLIENT_GONE = "client_gone"
    STATE_REPLAY_FAILED = "state_replay_failed"


class ResetReason(Label):
    """Why a backend connection is reset (COM_RESET_CONNECTION) before it is lent again
    (pool.py); a metric label."""

    TRANSACTION = "transaction"  # given back with a transaction open (rolled back)
    SESSION_STATE = "session_state"  # a pinned session's (user variables, temp tables...)
    UNREPLAYABLE_VARIABLE = "unreplayable_variable"  # SET timestamp and the like
    REPLICA_TXN_STATE = "replica_txn_state"  # state taken inside a replica's read-only txn
    SERVICE = "service"  # the proxy's own statements (their session state, a failed batch)


class DisconnectReason(Label):
    """Why a client connection ended (server.py); a metric label, details go to the log."""

    CLIENT_QUIT = "client quit"
    CLIENT_CLOSED = "client closed connection"
    CLIENT_LOST = "client connection lost"
    HANDSHAKE_TIMEOUT = "handshake timeout"
    BAD_HANDSHAKE = "bad handshake"
    AUTH_FAILED = "authentication failed"
    PACKET_TOO_LARGE = "packet too large"
    FATAL_ERROR = "fatal error"
    IDLE_TIMEOUT = "idle timeout"
    KILLED = "killed"
    PROXY_SHUTDOWN = "proxy shutdown"
    INTERNAL_ERROR = "internal error"
