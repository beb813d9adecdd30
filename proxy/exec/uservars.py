"""User variables set inside a read-only transaction on a replica, carried to the primary.

`START TRANSACTION READ ONLY` runs on a replica (plan.py, Route.REPLICA_TXN). User variables
are not transactional: in MySQL `SET @x = ...` inside that transaction is still there after
COMMIT. The replica's connection goes back to its pool when the transaction ends, so at its
end the proxy reads the variables the transaction named (their type from the result's column
definition; strings as bytes with their own collation) and sets them, with the same type and
collation, on a primary connection that the session then keeps (pinned, as any session with
user variables). Other state that would pin there (named locks, temporary tables, LOCK TABLES)
cannot move between servers and is still dropped at the transaction's end, with a warning.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NamedTuple

from pymysql.converters import escape_string

from proxy.core.errors import BackendError, BackendLost, CloseReason

log = logging.getLogger("seckill.session")

# `@name`, `@'name'`, `@"name"`, `` @`name` `` (not `@@system`); what the digest keeps of them.
_VAR = re.compile(r"(?<![@\w$])@(?:([\w$.]+)|`((?:[^`]|``)+)`|'((?:[^']|'')+)'|\"((?:[^\"]|\"\")+)\")")

MAX_VARS = 256  # a transaction naming more keeps only these (bounded work at its end)

_INTS = frozenset({1, 2, 3, 8, 9, 13})  # TINY SHORT LONG LONGLONG INT24 YEAR
_DECIMALS = frozenset({0, 246})
_FLOATS = frozenset({4, 5})


def names(digest: str) -> set[str]:
    """User variables a statement names (read or assigned: reading one that was never set
    gives NULL, and setting NULL is the same as never setting it)."""
    out = set()
    for m in _VAR.finditer(digest):
        if m.group(1) is not None:
            out.add(m.group(1).lower())
        elif m.group(2) is not None:
            out.add(m.group(2).replace("``", "`").lower())
        elif m.group(3) is not None:
            out.add(m.group(3).replace("''", "'").lower())
        else:
            out.add(m.group(4).replace('""', '"').lower())
    return out


def quote(name: str) -> str:
    return "@`" + name.replace("`", "``") + "`"


def read_sql(vs: list[str]) -> str:
    """One row: per variable its value, its bytes in hex and its collation."""
    return "SELECT " + ", ".join(f"{quote(v)}, HEX({quote(v)}), COLLATION({quote(v)})" for v in vs)


def literal(col_type: int, value: str | None, hex_bytes: str | None, collation: str | None,
            form: str = "exact") -> str:
    """The SQL literal that gives a user variable this value, type and collation again.

    Strings, by `form`: "exact" is the bytes under their charset's introducer; "text" is a
    plain quoted literal (how a client put bytes into a variable that the introducer rejects,
    e.g. 4-byte UTF-8 in a utf8mb3 variable: MariaDB keeps them from a plain literal on a
    connection of that charset, and refuses it with COLLATE otherwise); "lenient" converts
    as MariaDB converts (`?` for what the charset cannot hold)."""
    if value is None:
        return "NULL"
    if col_type in _INTS or col_type in _DECIMALS:
        if re.fullmatch(r"-?\d+(?:\.\d+)?", value):
            return value
    if col_type in _FLOATS and re.fullmatch(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", value, re.I):
        return value if "e" in value.lower() else value + "e0"
    h = hex_bytes or ""
    if not re.fullmatch(r"[0-9A-Fa-f]*", h):
        h = value.encode().hex()
    # a collation is <charset>_<rest> of word characters; anything else (not from MariaDB)
    # gets plain bytes
    if collation is None or collation == "binary" or not re.fullmatch(r"[A-Za-z0-9]+_\w+",
                                                                        collation):
        return f"X'{h}'"
    charset = collation.split("_", 1)[0]
    if form == "text":
        try:
            text = bytes.fromhex(h).decode("utf-8")
        except ValueError:
            text = None
        if text is not None and charset.startswith("utf8"):
            return f"'{escape_string(text)}' COLLATE {collation}"
    if form != "exact":
        return f"CONVERT(X'{h}' USING {charset}) COLLATE {collation}"
    return f"_{charset} X'{h}' COLLATE {collation}"


def assignments(vs: list[str], types: list[int], row: list[str | None],
                form: str = "exact") -> list[str]:
    """`@a = ...` for each variable, from `read_sql`'s row and its column types."""
    return [f"{quote(v)} = " + literal(types[3 * i], row[3 * i], row[3 * i + 1], row[3 * i + 2],
                                       form) for i, v in enumerate(vs)]


class Carry(NamedTuple):
    """The variables' assignments in each form `literal` makes, tried in this order."""

    exact: list[str]
    text: list[str]
    lenient: list[str]


async def read(c: Any, vs: list[str]) -> Carry | None:
    """Read the variables on the replica's connection `c` (a backend.BackendConn)."""
    vs = vs[:MAX_VARS]
    if not vs:
        return None
    types: list[int] = []
    try:
        rows, _ = await c.query(read_sql(vs), None, types)
    except (BackendError, BackendLost) as e:
        c.retire(CloseReason.STATE_UNKNOWN)
        log.warning("user variables set in a replica read-only transaction were lost (%s)",
                    type(e).__name__)
        return None
    if not rows or len(types) != 3 * len(vs):
        return None
    row = rows[0]
    return Carry(assignments(vs, types, row), assignments(vs, types, row, "text"),
                 assignments(vs, types, row, "lenient"))


async def restore(c: Any, carry: Carry) -> None:
    """Set them on the primary's connection `c`: all in one statement; if the server refuses
    it (bytes a charset's introducer rejects), one by one, each in the first form it takes.
    A lost connection raises BackendLost for the session to handle."""
    try:
        await c.execute("SET " + ", ".join(carry.exact))
        return
    except BackendError:
        pass
    for forms in zip(carry.exact, carry.text, carry.lenient, strict=True):
        tries = list(dict.fromkeys(forms))  # non-strings are the same in every form
        for i, sql in enumerate(tries):
            try:
                await c.execute("SET " + sql)
                break
            except BackendError as e:
                if i == len(tries) - 1:
                    log.warning("a user variable from a replica read-only transaction was not "
                                "restored: %s", e.message)
