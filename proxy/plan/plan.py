"""One plan per statement: a pure decision, taken once, run by the fast lane or the general path.

As in Vitess (plan, then execute against a narrow cursor) and PgCat's query router (which
imports no pool or client): `plan()` is a function of the statement's shape, a read-only view
of the session and the policy in force (config and admin), with no I/O and no side effects.
It says where the statement goes (answered by the proxy, offered to the hot-row engine, a
replica, a read-only transaction on a replica, the primary), whether its commit is tracked,
whether its OK waits for a replica acknowledgement, whether it passes the durability gate,
which pin it takes, and whether it only forwards — which is exactly when the fast lane may run
it. Execution (session.py, fastlane.py) does what the plan says, and every side effect
(durability gate and its counter, metrics, digest) happens there, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Protocol

from proxy.core.config import CONSISTENCY
from proxy.core.errors import Label, PinReason
from proxy.plan.classify import LAST_GTID, READ_ONLY_TXN, Shape, classify


class Route(Label):
    LOCAL_SET = "local_set"  # a setting the proxy keeps (read_after_gtid, read_consistency, NAMES)
    LOCAL_GTID = "local_gtid"  # SELECT @@last_gtid: the proxy knows it, a replica may not
    LOCAL_CONN_ID = "local_conn_id"  # SELECT CONNECTION_ID(): the id from the client's handshake
    LOCAL_ROW_COUNT = "local_row_count"  # SELECT ROW_COUNT() after a statement the proxy answered
    # SHOW STATUS LIKE about the client's own connection (its TLS, its compression): the
    # proxy's, not the backend connection's; other patterns: MySQL's (as DIAG)
    CLIENT_STATUS = "client_status"
    KILL = "kill"  # KILL [QUERY|CONNECTION] id: a proxy id means a proxy client
    DIAG = "diag"  # SHOW WARNINGS and the like: on the connection that ran the last statement
    PROCESSLIST = "processlist"  # SHOW PROCESSLIST, I_S.PROCESSLIST: with proxy clients' ids
    HOTROW = "hotrow"  # offered to the hot-row engine; the primary if it declines
    REPLICA = "replica"  # a replica that has the watermark; the primary if none has it in time
    REPLICA_TXN = "replica_txn"  # START TRANSACTION READ ONLY on one replica
    PRIMARY = "primary"


# SELECTs the proxy answers itself, in either protocol (local.answered)
LOCAL_ANSWERS: Final = frozenset({Route.LOCAL_GTID, Route.LOCAL_CONN_ID, Route.LOCAL_ROW_COUNT})


class Track(Label):
    NONE = "none"
    AUTOCOMMIT = "autocommit"  # START TRANSACTION, the statement, an outcome record, COMMIT
    COMMIT = "commit"  # an outcome record written just before the client's COMMIT


# Everything a plan reads of a session, in SessionView's order (in_txn ... made_rows)
PlanInputs = tuple[bool, bool, PinReason | None, str, str | None, bool, int | None, int | None]


class SessionView(Protocol):
    """What a plan may read of a session (ProxySession implements it)."""

    def plan_inputs(self) -> PlanInputs: ...  # the eight below, in their order, in one call

    @property
    def in_txn(self) -> bool: ...  # an explicit transaction is open

    @property
    def autocommit_off(self) -> bool: ...

    @property
    def pin(self) -> PinReason | None: ...

    @property
    def consistency(self) -> str: ...

    @property
    def read_after_gtid(self) -> str | None: ...

    @property
    def replica_txn(self) -> bool: ...  # a read-only transaction runs on a replica

    @property
    def answered_rows(self) -> int | None: ...  # ROW_COUNT(), where the proxy knows it

    @property
    def made_rows(self) -> int | None: ...  # ROW_COUNT() the proxy made (its connection differs)


@dataclass(frozen=True, eq=False)
class Policy:
    """What config and admin decide for every session (rebuilt on RELOAD CONFIG). Compared
    by identity: a plan memo keyed by it (plan()) never outlives a reload's new policy."""

    has_replicas: bool = False
    wants_ack: bool = False  # durability.ack: replica
    track_all: bool = False  # durability.track_commits: all
    hotrow: bool = False  # a hot-row engine runs
    hotrow_engaged: bool = True  # some mode is not `off`: unhinted hot decrements go to it


@dataclass(frozen=True)
class Plan:
    route: Route
    read: ReadPlan | None = None
    track: Track = Track.NONE
    hold_ack: bool = False  # the OK goes out only once replicas confirmed the write
    gate_write: bool = False  # the durability gate (require: strict/warn) runs first
    pin: PinReason | None = None  # the statement leaves state only its connection has
    lane: bool = False  # it only forwards: the fast lane may run it
    # it sets session_track_*: the client's own tracking settings change (tracking.py) and
    # the connection gets the proxy's back
    retrack: bool = False
    # a write whose reply may end without an OK packet (INSERT/DELETE/REPLACE ... RETURNING,
    # CALL, a multi-statement): if no OK carried its GTID and it committed, the GTID is read
    # on its connection before the reply goes out (general.gtid_after)
    gtid_after: bool = False
    # a single INSERT/UPDATE/DELETE/REPLACE: an OK's affected rows are what ROW_COUNT() says
    # next (MariaDB sets both from one my_ok), so the proxy answers that without a round trip
    row_count: bool = False
    # a DIAG statement with ROW_COUNT() in another form where the session's ROW_COUNT() is one
    # the proxy made (-1 after a SELECT ROW_COUNT() it answered, 0 after a COM_STMT_RESET it
    # answered, 1 or 0 after a merged UPDATE; the connection never ran those): the value the
    # connection is made to say first (general.diagnostics runs a statement that leaves it)
    row_count_sync: int | None = None


# Settings the proxy keeps itself (the value is read from the statement text at execution).
_PROXY_VAR: Final = re.compile(
    r"SET\s+(?:SESSION\s+|@@SESSION\.|@@)?(?:read_after_gtid|read_consistency)\s*=\s*\?", re.I)
_NAMES: Final = re.compile(r"SET\s+NAMES\s+('?\w+'?|`\w+`)(?:\s+COLLATE\s+('?\w+'?|`\w+`))?", re.I)
_TRACK_VAR: Final = re.compile(r"\bsession_track_", re.I)
# SELECT CONNECTION_ID() [[AS] alias]: the column is named as MySQL would name it
_CONN_ID: Final = re.compile(
    r"SELECT\s+(?P<item>CONNECTION_ID\s*\(\s*\))"
    r"(?:\s+(?:AS\s+)?(?P<alias>`(?:[^`]|``)+`|[A-Za-z_$][\w$]*))??(?:\s+FROM\s+DUAL)?",
    re.I)
_KEYWORDS_AFTER: Final = frozenset({"FROM", "LIMIT", "FOR", "INTO", "WHERE", "UNION", "ORDER",
                             "GROUP", "HAVING", "LOCK", "PROCEDURE", "WINDOW"})


def conn_id_alias(shape: Shape) -> str:
    """The column name of a `SELECT CONNECTION_ID() [[AS] alias]` the proxy answers."""
    m = _CONN_ID.fullmatch(shape.digest)
    if m is None:
        return "CONNECTION_ID()"
    a = m.group("alias")
    if not a:
        return m.group("item")  # as the client wrote it (MySQL names the column so)
    return a[1:-1].replace("``", "`") if a.startswith("`") else a
_ROW_COUNT: Final = re.compile(r"SELECT\s+ROW_COUNT\s*\(\s*\)", re.I)
_ROW_COUNT_ANY: Final = re.compile(r"\bROW_COUNT\s*\(", re.I)
# the values of ROW_COUNT() a statement can leave on a connection while keeping its
# diagnostics area (general.row_count_setter has the statement for each)
ROW_COUNT_SYNCABLE: Final = frozenset({-1, 0, 1})
_STATUS_LIKE: Final = re.compile(r"SHOW\s+(?:SESSION\s+|LOCAL\s+)?STATUS\s+LIKE\s+\?", re.I)
KILL = re.compile(r"KILL\s+(?:(CONNECTION|QUERY)\s+)?(\d+)", re.I)  # on the raw text
_PROCESSLIST: Final = re.compile(r"SHOW\s+(?:FULL\s+)?PROCESSLIST", re.I)
_IS_PROCESSLIST: Final = re.compile(r"\bINFORMATION_SCHEMA`?\s*\.\s*`?PROCESSLIST\b", re.I)
_KILL: Final = re.compile(r"KILL\s+(?:(?:CONNECTION|QUERY)\s+)?\?", re.I)
# Character sets whose SET NAMES the proxy records instead of sending (what drivers send on
# every connect); others go to MySQL, which answers them, errors included.
NAMES_CHARSETS: Final = frozenset(
    {"utf8mb4", "utf8", "utf8mb3", "latin1", "ascii", "binary", "gbk", "gb2312", "big5", "ujis",
     "sjis", "cp1250", "cp1251", "cp1252", "latin2", "euckr", "koi8r"})
# Autocommit writes whose commit can be tracked: one statement, no result set, not DDL.
_UNTRACKED_VERBS: Final = frozenset(
    {"CALL", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME", "GRANT", "REVOKE", "LOAD"})


def names_of(shape: Shape) -> tuple[str, str | None] | None:
    """`SET NAMES cs [COLLATE coll]` the proxy records: (charset, collation or None)."""
    m = _NAMES.fullmatch(shape.digest)
    if m is None:
        return None
    cs = m.group(1).strip("'\"`").lower()
    if cs not in NAMES_CHARSETS:
        return None
    return cs, (m.group(2) or "").strip("'\"`").lower() or None


def _sync_value(answered: int | None) -> int | None:
    return answered if answered in ROW_COUNT_SYNCABLE else None


def plan(shape: Shape, s: SessionView, policy: Policy, cursor: bool = False,
         bulk: bool = False) -> Plan:
    """The plan for one statement (COM_QUERY, or COM_STMT_EXECUTE with `cursor` = the cursor
    flag, or MariaDB's COM_STMT_BULK_EXECUTE with `bulk`: many rows of parameters in one
    command, which runs as it is on the primary). Pure: the same inputs give the same plan,
    so it is made once per shape and view of the session and then looked up (`Shape.memo`;
    the key is everything `_plan` reads; a shape keeps at most 64)."""
    i = s.plan_inputs()  # (one call: eight property reads cost 2 µs a statement)
    key = (i[0], i[1], i[2], i[3], i[4], i[5], i[6] is not None, _sync_value(i[7]), cursor, bulk,
           policy)
    memo = shape.memo
    got = memo.get(key)
    if got is None:
        if len(memo) >= 64:
            memo.clear()
        got = memo[key] = _plan(shape, s, policy, cursor, bulk)
    return got


def _plan(shape: Shape, s: SessionView, policy: Policy, cursor: bool, bulk: bool) -> Plan:
    held = s.in_txn or bool(s.pin)
    verb = shape.verb
    if bulk:
        return _primary(shape, s, policy, held, shape.pin, lane=False)
    if verb == "SET" and not shape.multi:
        if _PROXY_VAR.fullmatch(shape.digest):
            return Plan(Route.LOCAL_SET)
        if not held and names_of(shape) is not None:
            return Plan(Route.LOCAL_SET)
    if verb == "SELECT" and LAST_GTID.fullmatch(shape.digest):
        return Plan(Route.LOCAL_GTID)
    if verb == "SELECT" and (m := _CONN_ID.fullmatch(shape.digest)) is not None and (
            (m.group("alias") or "").upper() not in _KEYWORDS_AFTER):
        return Plan(Route.LOCAL_CONN_ID)
    if verb == "SELECT" and s.answered_rows is not None and _ROW_COUNT.fullmatch(shape.digest):
        return Plan(Route.LOCAL_ROW_COUNT)
    if verb == "SHOW" and _STATUS_LIKE.fullmatch(shape.digest):
        return Plan(Route.CLIENT_STATUS)
    if verb == "KILL" and _KILL.fullmatch(shape.digest):
        return Plan(Route.KILL)
    if verb == "SHOW" and _PROCESSLIST.fullmatch(shape.digest):
        return Plan(Route.PROCESSLIST)
    if (verb == "SELECT" and not shape.multi and not cursor and shape.pin is None
            and _IS_PROCESSLIST.search(shape.digest)):
        return Plan(Route.PROCESSLIST)  # the ID column with proxy clients' ids too
    pin = shape.pin or (PinReason.SERVER_CURSOR if cursor else None)
    if shape.diag and pin is None and not cursor and not shape.multi:
        # The lane runs it when the lease still holds the previous statement's connection.
        sync = None
        if _ROW_COUNT_ANY.search(shape.digest) is not None:
            sync = _sync_value(s.made_rows)
        return Plan(Route.DIAG, lane=bool(shape.lane) and sync is None, row_count_sync=sync)
    if verb == "START" and READ_ONLY_TXN.match(shape.digest) and not held and policy.has_replicas:
        rp = read_plan(_SELECT_1, s.consistency, s.read_after_gtid, False, None, True)
        if rp.replica:
            return Plan(Route.REPLICA_TXN, read=rp)
    if verb == "SELECT" and not cursor:
        rp = read_plan(shape, s.consistency, s.read_after_gtid, s.in_txn or s.autocommit_off,
                       s.pin, policy.has_replicas)
        if rp.replica:
            # The lane reads from a replica only where no position must be fetched first.
            lane = (shape.lane == "read" and rp.consistency in ("session", "eventual")
                    and "READ_AFTER_GTID" not in shape.hints)
            return Plan(Route.REPLICA, read=rp, lane=lane)
    return _primary(shape, s, policy, held, pin,
                    lane=bool(shape.lane) and pin is None,
                    hot=shape.hot is not None and policy.hotrow
                    and (policy.hotrow_engaged or bool(shape.hints)))


def _primary(shape: Shape, s: SessionView, policy: Policy, held: bool, pin: PinReason | None,
             lane: bool, hot: bool = False) -> Plan:
    """A statement for the primary (or the hot-row engine): tracking, ack, gate, lane."""
    verb = shape.verb
    is_write = shape.is_write
    track = Track.NONE
    if policy.track_all and not s.replica_txn:
        if verb == "COMMIT" and s.in_txn:
            track = Track.COMMIT
        elif (is_write and verb not in _UNTRACKED_VERBS and not shape.multi and not held
              and not s.autocommit_off and "RETURNING" not in shape.digest.upper()):
            track = Track.AUTOCOMMIT
    hold = policy.wants_ack and (is_write or verb in ("COMMIT", "END"))
    gtid_after = (is_write and (verb == "CALL" or shape.multi
                                or _RETURNING.search(shape.digest) is not None)) or (
        # a stored function may write (`SELECT f(x)`, `DO f()`, `SET @v = f()`)
        verb in ("SELECT", "DO", "SET") and shape.calls_stored)
    # (reading @@last_gtid after it would reset FOUND_ROWS() for an SQL_CALC_FOUND_ROWS query)
    gtid_after = gtid_after and "FOUND_ROWS" not in shape.digest.upper()
    lane = lane and track is Track.NONE and not hold and not gtid_after
    row_count = verb in _ROW_COUNT_VERBS and not shape.multi
    if hot:
        # The engine takes it or declines; declined, it runs as this plan's primary path. The
        # lane runs it where the engine's way for it starts at once (as it is, auto's plain
        # path on an idle key, merged into its key's group): `hotpick.Picker.decide`.
        return Plan(Route.HOTROW, track=track, hold_ack=hold, gate_write=True, pin=pin,
                    lane=lane, gtid_after=gtid_after, row_count=row_count)
    retrack = verb == "SET" and _TRACK_VAR.search(shape.digest) is not None
    return Plan(Route.PRIMARY, track=track, hold_ack=hold, gate_write=is_write, pin=pin,
                lane=lane and not retrack, retrack=retrack, gtid_after=gtid_after,
                row_count=row_count)


_SELECT_1: Final = classify("SELECT 1")
_RETURNING: Final = re.compile(r"\bRETURNING\b", re.I)
_ROW_COUNT_VERBS: Final = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})


@dataclass(frozen=True)
class ReadPlan:
    """Where a SELECT may read."""

    replica: bool
    consistency: str
    token: str | None = None
    reason: str = ""


def read_plan(shape: Shape, consistency: str, token: str | None, in_txn: bool,
              pinned: PinReason | None, has_replicas: bool) -> ReadPlan:
    """Routing of a read: hints first, then eligibility, then the consistency level."""
    h = shape.hints
    c = h.get("CONSISTENCY", consistency).lower()
    if c not in CONSISTENCY:
        c = consistency
    tok = token  # the caller resolves READ_AFTER_GTID from the raw text (digests hide literals)
    route = h.get("ROUTE", "").lower()
    if route == "primary":
        return ReadPlan(False, c, tok, "hint ROUTE(primary)")
    if shape.replica_ok is not None:
        return ReadPlan(False, c, tok, shape.replica_ok)
    if in_txn:
        return ReadPlan(False, c, tok, "inside a read-write transaction")
    if pinned:
        return ReadPlan(False, c, tok, f"session pinned ({pinned.value})")
    if not has_replicas:
        return ReadPlan(False, c, tok, "no replicas configured")
    if c == "primary" and route != "replica":
        return ReadPlan(False, c, tok, "consistency primary")
    if c == "primary":
        c = "global"  # ROUTE(replica) under 'primary': the strongest replica-served level
    return ReadPlan(True, c, tok)
