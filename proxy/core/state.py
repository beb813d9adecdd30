"""Session state as a value: what a client has set, and the statements that make a pooled
backend connection carry exactly that (pure, no I/O).

A client's session is (default database or none, the four character-set variables, every other
session variable it changed). A backend connection carries such a value too: the one MariaDB's
session tracking reported on it, starting from the proxy's login state. `transition()` computes
what to send so that the connection's value becomes the session's, and which changes cannot be
made at all (a connection that has a default database cannot lose it: a fresh one is needed).

Why the character set is explicit rather than tracked like other variables: MariaDB does not
report `collation_connection` after `SET NAMES`, and `SET character_set_client = DEFAULT` goes
back to the server's global default, not to what the client asked for in its handshake. Both
silently corrupted 4-byte UTF-8 text when a connection moved from a latin1 client to a utf8mb4
one. So each side keeps its four values and the lease sets them whenever they differ.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy.net.tracking import Tracking

NAMES_VARS = ("character_set_client", "character_set_connection", "character_set_results",
              "collation_connection")

# Variables that only describe the last statement or the connection: never state to carry.
NOT_STATE = frozenset({
    "last_gtid", "warning_count", "error_count", "in_transaction", "last_insert_id", "identity",
    "session_track_system_variables", "session_track_schema", "session_track_state_change",
    "session_track_gtids", "session_track_transaction_info",
})

# Session variables MySQL lets a client set that the proxy cannot faithfully re-create on another
# connection (their meaning depends on when or where they were set: `timestamp` freezes NOW() at
# the moment of the SET, `insert_id` is consumed by the next insert, the seeds advance with each
# RAND()). Setting one pins the session to its connection, which is reset when released.
UNREPLAYABLE = frozenset({
    "timestamp", "insert_id", "rand_seed1", "rand_seed2", "pseudo_thread_id", "gtid_seq_no",
    "pseudo_slave_mode", "gtid_domain_id", "server_id", "sql_log_bin", "skip_replication",
})


@dataclass(frozen=True)
class Names:
    """The four character-set variables of a connection (`results` may be '' = NULL)."""

    client: str
    connection: str
    results: str
    collation: str

    @classmethod
    def uniform(cls, charset: str, collation: str) -> Names:
        return cls(charset, charset, charset, collation)

    def sql(self) -> str:
        """The SET clause that gives a connection these values (order matters: setting a
        character_set_connection resets the collation, so the collation comes last)."""
        if self.client == self.connection == self.results:
            return f"NAMES {self.client} COLLATE {self.collation}"
        res = self.results or "NULL"
        return (f"character_set_client={self.client}, character_set_results={res}, "
                f"collation_connection={self.collation}")


# What every backend connection has after the proxy's login (aiomysql, utf8mb4) and after
# COM_RESET_CONNECTION (checked against MariaDB 10.11: utf8mb4 / utf8mb4_general_ci).
LOGIN_NAMES = Names.uniform("utf8mb4", "utf8mb4_general_ci")


class Catalog:
    """Collation ids and default collations, as the server knows them (information_schema
    COLLATIONS), so a handshake's collation id means what it means to MariaDB."""

    def __init__(self, rows: Iterable[tuple[int, str, str, bool]],
                 server_default: Names = LOGIN_NAMES) -> None:
        self.server_default = server_default  # what the server gives an unknown handshake id
        self.wait_timeout = 28800  # the server's globals (set at startup)
        self.interactive_timeout = 28800
        self.tracking = Tracking()  # what a new session tracks (session_track_* globals)
        self.by_id: dict[int, tuple[str, str]] = {}
        self.default: dict[str, str] = {}
        self.charset: dict[str, str] = {}  # collation -> its character set
        for cid, coll, cs, is_default in rows:
            self.by_id[cid] = (cs, coll)
            self.charset[coll] = cs
            if is_default:
                self.default[cs] = coll

    @classmethod
    @functools.cache
    def builtin(cls) -> Catalog:
        """Without a server to ask (primary down at start): mysql-mimic's table, made once and
        shared until (or unless) the primary's own is read."""
        from mysql_mimic.charset import DEFAULT_COLLATIONS, Collation

        defaults = {coll for coll in DEFAULT_COLLATIONS.values()}
        rows = []
        for c in Collation:
            cs = c.charset.name
            rows.append((int(c), c.name, "utf8mb3" if cs == "utf8" else cs, c in defaults))
        return cls(rows)

    def handshake_names(self, collation_id: int, fallback: Names) -> Names:
        """What MariaDB sets for a client that announced `collation_id` in its handshake: that
        collation and its charset, or the server default for an id it does not know or a
        charset that cannot be a client charset."""
        got = self.by_id.get(collation_id)
        if got is None or got[0] in ("ucs2", "utf16", "utf16le", "utf32"):
            return fallback
        return Names.uniform(got[0], got[1])

    def default_collation(self, charset: str) -> str | None:
        return self.default.get(_canon(charset))


def _canon(charset: str) -> str:
    cs = charset.lower()
    return "utf8mb3" if cs == "utf8" else cs


def absorb(names: Names, reported: Mapping[str, str], catalog: Catalog) -> Names:
    """The names after a statement whose OK packet reported `reported` (session tracking).

    A changed character_set_connection without a reported collation means that charset's
    default collation (MariaDB reports no collation_connection after SET NAMES)."""
    if not any(k in reported for k in NAMES_VARS):
        return names
    client = reported.get("character_set_client", names.client)
    conn = reported.get("character_set_connection", names.connection)
    results = reported.get("character_set_results", names.results)
    coll = reported.get("collation_connection")
    if coll is None:
        coll = names.collation if conn == names.connection else (
            catalog.default_collation(conn) or names.collation)
    return Names(client, conn, results, coll)


def split_reported(reported: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """Reported variables that are replayable state, and the first unreplayable one (a pin)."""
    keep: dict[str, str] = {}
    pin = None
    for k, v in reported.items():
        if k in NOT_STATE or k in NAMES_VARS:
            continue
        if k in UNREPLAYABLE:
            pin = pin or k
            continue
        keep[k] = v
    return keep, pin


@dataclass(frozen=True)
class Change:
    """What to send to a connection so it carries a session's state."""

    statements: tuple[str, ...]
    needs_fresh: bool = False  # the connection has a default database and the session has none
    # The database to select after the statements, by COM_INIT_DB as the client selected it
    # (handshake or COM_INIT_DB): MariaDB converts that name from the client's character set
    # and names that set in its errors, where `USE` in a query reports the system charset.
    database: str | None = None


def sql_value(v: str) -> str:
    if v and all(c in "0123456789-." for c in v) and any(c.isdigit() for c in v):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "''") + "'"


def transition(have_db: str | None, have_names: Names, have_vars: Mapping[str, str],
               want_db: str | None, want_names: Names, want_vars: Mapping[str, str]) -> Change:
    """The statements that turn a connection's state into the session's.

    Variables the connection has and the session does not go back to the server default
    (`= DEFAULT` is what a fresh connection has for every variable except the character set,
    which the names clause sets explicitly)."""
    if want_db is None and have_db is not None:
        return Change((), needs_fresh=True)
    parts = [f"{k}=DEFAULT" for k in have_vars if k not in want_vars]
    parts += [f"{k}={sql_value(v)}" for k, v in want_vars.items() if have_vars.get(k) != v]
    if want_names != have_names:
        parts.insert(0, want_names.sql())
    out = []
    if parts:
        out.append("SET " + ", ".join(parts))  # unqualified: session scope
    db = want_db if want_db is not None and want_db != have_db else None
    return Change(tuple(out), database=db)


@dataclass(frozen=True)
class Wanted:
    """The state a session needs on the connection it is about to use."""

    database: str | None
    names: Names
    vars: Mapping[str, str]
    any_db: bool = False  # the proxy's own service queries name their schema explicitly

    def change_from(self, have_db: str | None, have_names: Names,
                    have_vars: Mapping[str, str]) -> Change:
        db = have_db if self.any_db else self.database
        return transition(have_db, have_names, have_vars, db, self.names, self.vars)


# The hot-row engine's service connections: the sql_mode its statements are written for (its
# string literals use backslash escapes; strict, so nothing is clipped), and on MariaDB no
# max_statement_time, which could cut a service transaction short.
SERVICE_SQL_MODE = "STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION"
SERVICE = Wanted(None, LOGIN_NAMES, {"sql_mode": SERVICE_SQL_MODE}, any_db=True)
SERVICE_MARIADB = Wanted(None, LOGIN_NAMES, {"sql_mode": SERVICE_SQL_MODE,
                                             "max_statement_time": "0"}, any_db=True)


@dataclass(frozen=True)
class Carried:
    """The session's diagnostics area, taken from a connection it left: its last statement
    there left conditions, and the statement that moved the session elsewhere opened no table
    (MySQL keeps the area across such statements). The rows of SHOW WARNINGS as the client's
    connection sent them: column definitions, rows, and the levels of the rows."""

    coldefs: tuple[bytes, ...]
    rows: tuple[bytes, ...]
    levels: tuple[str, ...]


@dataclass(frozen=True)
class Answered:
    """The session's last statement was answered by the proxy (a merged hot-row UPDATE), not
    run on one of its connections: its diagnostics are these rows and no warnings."""

    rows: int
