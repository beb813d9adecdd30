"""Statement classification: pure functions, no I/O, cached by statement shape (digest).

Split as in PgCat: `digest()` normalises the text (literals become `?`), `shape_of()` infers
everything that depends only on the shape (verb, pinning reason, hints, hot-decrement template)
and is cached, so a statement the proxy has seen before costs two regex passes, not a parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Final

from proxy.core.errors import PinReason
from proxy.plan.builtins import BUILTIN
from proxy.plan.hotshape import (  # noqa: F401 - read through this module too
    _STR,
    CACHE_MAX_TEXT,
    Escaped,
    HotTemplate,
    Unsupported,
    hot_template,
    mysql_unescape,
    statement_values,
)

# Literal-aware tokenisation for digests: strings, quoted identifiers, numbers, comments.
_TOKEN: Final = re.compile(
    rf"(?P<s>{_STR})|(?P<q>`(?:[^`]|``)*`)|(?P<c>/\*(?!\+).*?\*/|--[ \t][^\n]*|#[^\n]*)"
    r"|(?P<n>(?<![\w$.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+))",
    re.S,
)
_IN_LIST: Final = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")


def _digest_sub(m: re.Match[str]) -> str:
    if m.group("s") is not None or m.group("n") is not None:
        return "?"
    if m.group("c") is not None:
        return " "
    return m.group(0)


# Strings and numbers only: for statements without comments or backticks, a plain C-level
# substitution (no Python callback per literal) gives the same digest. Written to start with
# one character class (the first character of a string or a number: what `_STR` and the
# number form of `_TOKEN` match, each branch re-checking it behind), so the regex engine skips
# every other position without trying a branch: half the time of the plain alternation
# `_STR|(?<![\w$.])(?:0x..|\d+..|\.\d+)` it equals (tests/test_classify.py).
_LITERAL: Final = re.compile(
    r"['\"\d.](?:(?<=')[^'\\]*(?:(?:\\.|'')[^'\\]*)*'"
    r"|(?<=\")[^\"\\]*(?:(?:\\.|\"\")[^\"\\]*)*\""
    r"|(?<![\w$.][\d.])(?:(?<=0)x[0-9a-fA-F]+|(?<=\d)\d*(?:\.\d*)?(?:[eE][+-]?\d+)?"
    r"|(?<=\.)\d+))", re.S)


# Executable comments: MySQL and MariaDB run what is inside `/*! ... */`, `/*!50000 ... */`
# and `/*M!100100 ... */`, so for deciding a statement they are text, not comments.
_EXECUTABLE: Final = re.compile(r"/\*M?!\d{0,6}(.*?)\*/", re.S)


def digest(sql: str) -> str:
    """Normalised statement shape: literals → ?, comments dropped (hints and executable
    comments kept as text), spaces folded."""
    if "/*!" in sql or "/*M!" in sql:
        sql = _EXECUTABLE.sub(r" \1 ", sql)
    if "`" in sql or "/*" in sql or "--" in sql or "#" in sql:
        d = _TOKEN.sub(_digest_sub, sql)
    else:
        d = _LITERAL.sub("?", sql)
    d = " ".join(d.split()).rstrip(";").strip()  # str.split: the same whitespace as \s, 6x faster
    return _IN_LIST.sub("(?,...)", d) if "," in d else d


def literals(sql: str) -> list[str]:
    """The literal values in order, as the digest replaced them (strings keep their quotes)."""
    return [
        m.group(0)
        for m in _TOKEN.finditer(sql)
        if m.group("s") is not None or m.group("n") is not None
    ]


# ---- hints -----------------------------------------------------------------------------

_HINT_BLOCK: Final = re.compile(r"/\*\+(.*?)\*/", re.S)
_HINT: Final = re.compile(r"([A-Za-z_]+)(?:\s*\(([^)]*)\))?")  # NAME(arg) or a bare NAME


def parse_hints(sql: str) -> dict[str, str]:
    """Optimizer-hint style comments: `/*+ HOTROW(merge) ROUTE(primary) */` → {HOTROW: merge}."""
    out: dict[str, str] = {}
    for block in _HINT_BLOCK.findall(sql):
        for name, arg in _HINT.findall(block):
            out[name.upper()] = arg.strip().strip("'\"")
    return out


# ---- hot decrements -------------------------------------------------------------------------

# ---- shape inference -----------------------------------------------------------------------

_LEADING: Final = re.compile(r"^(?:\s|/\*.*?\*/|\(|--[ \t][^\n]*\n|#[^\n]*\n)*", re.S)
_WORD: Final = re.compile(r"[A-Za-z_]+")

# Statements that leave state on the backend connection that the proxy cannot replay on another
# one: the session then keeps its backend connection until it disconnects or resets.
_PIN_RULES: list[tuple[re.Pattern[str], PinReason]] = [
    (re.compile(r"(?<![@\w$])@(?!@)[\w$.]|(?<![@\w$])@[`'\"]"), PinReason.USER_VARIABLE),
    (re.compile(r"\bTEMPORARY\b", re.I), PinReason.TEMPORARY_TABLE),
    (re.compile(r"\b(?:GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS)\s*\(", re.I), PinReason.NAMED_LOCK),
    (re.compile(r"\bLOCK\s+TABLES?\b|\bWITH\s+READ\s+LOCK\b", re.I), PinReason.TABLE_LOCK),
    (re.compile(r"^\s*(?:PREPARE|EXECUTE|DEALLOCATE|HANDLER|XA)\b", re.I), PinReason.CONNECTION_LOCAL),
    (re.compile(r"\bSQL_CALC_FOUND_ROWS\b|\bFOUND_ROWS\s*\(", re.I), PinReason.FOUND_ROWS),
    (re.compile(r"\bLAST_INSERT_ID\s*\(\s*[^)\s]", re.I), PinReason.LAST_INSERT_ID_EXPR),
    # only the next transaction's form: SET SESSION/LOCAL TRANSACTION changes tx_isolation or
    # tx_read_only for the session, reported by session tracking and replayed as any variable
    (re.compile(r"^\s*SET\s+TRANSACTION\b", re.I), PinReason.NEXT_TRANSACTION),
    (re.compile(r"\bNEXTVAL\s*\(|\bNEXT\s+VALUE\s+FOR\b|\bLASTVAL\s*\(", re.I), PinReason.SEQUENCE),
]

# A SELECT may run on a replica only if it cannot write or lock and reads no connection-local
# state; the first matching reason keeps it on the primary.
_NOT_FOR_REPLICA: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\bFOR\s+UPDATE\b|\bLOCK\s+IN\s+SHARE\s+MODE\b|\bFOR\s+SHARE\b", re.I), "locking read"),
    (re.compile(r"\bINTO\b", re.I), "SELECT ... INTO"),
    (re.compile(r"\b(?:GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS|IS_USED_LOCK|IS_FREE_LOCK|LAST_INSERT_ID|"
                r"FOUND_ROWS|ROW_COUNT|CONNECTION_ID|NEXTVAL|LASTVAL|SETVAL|MASTER_POS_WAIT|"
                r"MASTER_GTID_WAIT|WAIT_FOR_EXECUTED_GTID_SET|GTID_SUBSET)\s*\(|\bNEXT\s+VALUE\s+FOR\b",
                re.I), "connection-local or side-effecting function"),
    (re.compile(r"@"), "variable"),
    (re.compile(r";"), "multi-statement"),
    (re.compile(r"(?<![\w$])`?(?:information_schema|performance_schema|mysql|sys)`?\s*\.", re.I),
     "server-local table"),
]

# An identifier (optionally qualified or quoted) directly followed by `(`: a function call, or
# a keyword such as IN ( / USING ( / VALUES (.
_CALL: Final = re.compile(
    r"(?<![\w$.`])((?:`(?:[^`]|``)+`|[A-Za-z_$][\w$]*)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[A-Za-z_$][\w$]*))?)"
    r"\s*\(")


def stored_call(dg: str) -> str | None:
    """The first call of something that is not a MariaDB built-in (function or keyword): a
    stored function, which may write. None if every call is built in."""
    for m in _CALL.finditer(dg):
        name = m.group(1)
        if "." in name or "`" in name:
            return name
        up = name.upper()
        if up not in BUILTIN and not up.startswith(("ST_", "MBR")):
            return name
    return None

_WRITE_VERBS: Final = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME",
     "GRANT", "REVOKE", "CALL", "LOAD", "OPTIMIZE", "ANALYZE", "REPAIR"}
)


@dataclass(frozen=True)
class Shape:
    """Everything the proxy needs to know about a statement that depends only on its shape."""

    digest: str
    verb: str
    pin: PinReason | None
    hints: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    uses_last_insert_id: bool = False
    multi: bool = False
    hot: HotTemplate | None = None
    replica_ok: str | None = None  # None: may read from a replica; else why not
    lane: str = ""  # what the fast lane (fastlane.py) may run: read, write, begin, commit, rollback
    diag: bool = False  # reads the diagnostics of the session's previous statement
    # opens no table: MySQL leaves the previous statement's diagnostics area as it is unless
    # this statement raises a condition itself (COMMIT, SET, DO 1, SELECT 1)
    keeps_diag: bool = False
    conn_id: bool = False  # a write or SET that calls CONNECTION_ID(): with_conn_id() first
    # calls something that is not a built-in (hints aside): a stored function, which may write
    calls_stored: bool = False
    # what pure functions of the shape computed (plan.plan's plans by session view); not
    # copied by dataclasses.replace, so a changed shape starts empty
    memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, hash=False,
                                 compare=False)

    @property
    def is_write(self) -> bool:
        return self.verb in _WRITE_VERBS


def first_word(sql: str) -> str:
    m = _WORD.match(sql, _LEADING.match(sql).end())  # type: ignore[union-attr]
    return m.group(0).upper() if m else ""


def shape_of(dg: str) -> Shape:
    return _shape_of_cached(dg) if len(dg) <= CACHE_MAX_TEXT else _shape_of(dg)


def _shape_of(dg: str) -> Shape:
    """Infer a statement's shape from its digest (cached: pure function of the digest)."""
    verb = first_word(dg)
    pin: PinReason | None = None
    for rx, reason in _PIN_RULES:
        if rx.search(dg):
            pin = reason
            break
    hints = parse_hints(dg)
    multi = ";" in dg
    conn_id = verb in _CONN_ID_VERBS and "CONNECTION_ID" in dg.upper()
    calls_stored = "(" in dg and stored_call(
        _HINT_BLOCK.sub(" ", dg) if "/*+" in dg else dg) is not None
    return Shape(
        digest=dg, verb=verb, pin=pin, hints=hints,
        uses_last_insert_id="LAST_INSERT_ID" in dg.upper(),
        multi=multi,
        hot=hot_template(dg) if verb == "UPDATE" else None,
        # a statement that pins must run where the session's state is: never on a replica
        replica_ok=_replica_reason(verb, dg, calls_stored) or (pin.value if pin else None),
        diag=bool(_DIAG.search(dg)),
        keeps_diag=_keeps_diag(verb, dg),
        lane=_lane(verb, dg) if pin is None and not hints and not multi and not conn_id else "",
        conn_id=conn_id,
        calls_stored=calls_stored,
    )


# CONNECTION_ID() in statements that return no result set is the client's id (the one of its
# handshake, SHOW PROCESSLIST and KILL through the proxy), not the backend thread's: an audit
# row or a SET gets it as a literal. (In a SELECT's column list the literal would rename the
# column, so SELECTs keep the backend's, except the forms the plan answers itself.)
_CONN_ID_VERBS: Final = frozenset({"INSERT", "REPLACE", "UPDATE", "DELETE", "SET", "DO"})
# Text where a keyword is not a keyword: strings, quoted names, comments (executable comments
# are text). with_conn_id and local.kills_in_multi look past these.
SKIP_TEXT: Final = rf"{_STR}|`(?:[^`]|``)*`|/\*(?!!|M!).*?\*/|--[ \t][^\n]*|#[^\n]*"
_CONN_ID_TEXT: Final = re.compile(
    rf"(?P<skip>{SKIP_TEXT})"
    r"|(?<![\w$.`])(?P<call>CONNECTION_ID\s*\(\s*\))", re.S | re.I)


def with_conn_id(sql: str, conn_id: int) -> str:
    """`sql` with each CONNECTION_ID() call outside strings, quoted identifiers and comments
    (executable comments are text) replaced by `conn_id`."""
    return _CONN_ID_TEXT.sub(lambda m: str(conn_id) if m.group("call") else m.group(0), sql)


_SESSION_TXN: Final = re.compile(
    r"^\s*SET\s+(?:SESSION|LOCAL)\s+TRANSACTION\s+((?:ISOLATION\s+LEVEL\s+(?:READ\s+UNCOMMITTED|"
    r"READ\s+COMMITTED|REPEATABLE\s+READ|SERIALIZABLE)|READ\s+ONLY|READ\s+WRITE)"
    r"(?:\s*,\s*(?:ISOLATION\s+LEVEL\s+(?:READ\s+UNCOMMITTED|READ\s+COMMITTED|REPEATABLE\s+READ|"
    r"SERIALIZABLE)|READ\s+ONLY|READ\s+WRITE))?)\s*;?\s*$", re.I)


def session_txn_as_vars(sql: str, mariadb: bool) -> str | None:
    """`SET SESSION TRANSACTION ISOLATION LEVEL ... [, READ ONLY|READ WRITE]` as the equivalent
    SET of the session variables (tx_isolation/tx_read_only on MariaDB, transaction_* on MySQL
    8): session tracking reports those, so the setting is replayed on whatever connection
    serves the session (replica reads included) instead of pinning it. None: another form."""
    m = _SESSION_TXN.match(sql)
    if m is None:
        return None
    words = " ".join(m.group(1).upper().split())
    iso, ro = "tx_isolation", "tx_read_only"
    if not mariadb:
        iso, ro = "transaction_isolation", "transaction_read_only"
    parts = []
    for item in (p.strip() for p in words.split(",")):
        if item.startswith("ISOLATION LEVEL "):
            parts.append(f"{iso} = '{item[len('ISOLATION LEVEL '):].replace(' ', '-')}'")
        else:
            parts.append(f"{ro} = {1 if item == 'READ ONLY' else 0}")
    return "SET SESSION " + ", ".join(parts)


# Statements about the previous statement (its warnings, errors, counters): they belong on the
# connection that ran it.
_DIAG: Final = re.compile(
    r"^SHOW\s+(?:COUNT\s*\(\s*\*\s*\)\s+)?(?:WARNINGS|ERRORS)\b|^SHOW\s+(?:SESSION\s+|LOCAL\s+)?STATUS\b"
    r"|^SHOW\s+PROFILES?\b|@@(?:SESSION\.|LOCAL\.)?(?:warning_count|error_count)\b|\bROW_COUNT\s*\(",
    re.I)
_KEEPING_SHOW: Final = re.compile(
    r"SHOW\s+(?:COUNT\s*\(\s*\*\s*\)\s+)?(?:WARNINGS|ERRORS)\b|SHOW\s+PROFILES\b", re.I)
_LANE_WRITES: Final = frozenset({"INSERT", "UPDATE", "DELETE", "REPLACE"})
# Statements that open no table unless their text names one (a subquery, SELECT ... INTO) or
# calls a stored function (its tables are opened with the statement's): MariaDB clears the
# diagnostics area at the start of a statement only when it opens tables (sql_parse.cc).
_TABLELESS_VERBS: Final = frozenset({"SET", "DO", "SELECT", "COMMIT", "ROLLBACK", "BEGIN", "START",
                              "SAVEPOINT", "RELEASE", "XA"})
_NAMES_TABLE: Final = re.compile(r"\b(?:FROM|INTO|JOIN|TABLE|UPDATE)\b", re.I)


def _keeps_diag(verb: str, dg: str) -> bool:
    # SHOW WARNINGS and a SELECT of ROW_COUNT() or @@warning_count read the area and keep it
    # (SHOW STATUS clears it: MariaDB fills a temporary table)
    if verb == "SHOW":
        return _KEEPING_SHOW.match(dg) is not None
    if verb not in _TABLELESS_VERBS or _NAMES_TABLE.search(dg):
        return False
    return "(" not in dg or stored_call(dg) is None


_BEGIN: Final = re.compile(r"^(?:BEGIN(?:\s+WORK)?|START\s+TRANSACTION(?:\s+READ\s+WRITE)?)$", re.I)


def _lane(verb: str, dg: str) -> str:
    """Statements whose general path is "send it on the session's primary connection and relay
    the reply": the fast lane may run them (with its run-time checks on top)."""
    if verb == "SELECT":
        return "" if LAST_GTID.fullmatch(dg) else "read"
    if verb in _LANE_WRITES:
        return "write"
    if _BEGIN.match(dg):
        return "begin"
    if verb in ("COMMIT", "ROLLBACK"):
        return verb.lower()
    return ""


def _replica_reason(verb: str, dg: str, calls_stored: bool) -> str | None:
    if verb != "SELECT":
        return "not a SELECT"
    for rx, reason in _NOT_FOR_REPLICA:
        if rx.search(dg):
            return reason
    if calls_stored:
        return "stored function"
    return None


# Answered by the proxy itself: it knows the session's last GTID, the backend may not.
LAST_GTID: Final = re.compile(r"SELECT\s+@@(?:SESSION\.)?last_gtid", re.I)
READ_ONLY_TXN: Final = re.compile(r"^START\s+TRANSACTION\s+READ\s+ONLY$", re.I)


_shape_of_cached = lru_cache(maxsize=8192)(_shape_of)


def classify(sql: str) -> Shape:
    """The statement's shape. Short texts repeat exactly (BEGIN, COMMIT, SELECT ROW_COUNT()):
    they are looked up by their text first, without the digest's regex pass."""
    got = _BY_TEXT.get(sql)
    if got is not None:
        return got
    shape = shape_of(digest(sql))
    if shape.hot is not None and ("/*!" in sql or "/*M!" in sql):
        # the hot path binds values from the raw text, which an executable comment can shift
        shape = replace(shape, hot=None)
    if len(sql) <= TEXT_CACHE_MAX_TEXT:
        if len(_BY_TEXT) >= TEXT_CACHE_SIZE:
            _BY_TEXT.clear()  # bounded: texts with literals in them are all different
        _BY_TEXT[sql] = shape
    return shape


TEXT_CACHE_MAX_TEXT: Final = 64
TEXT_CACHE_SIZE: Final = 4096
_BY_TEXT: dict[str, Shape] = {}
