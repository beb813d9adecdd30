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

from .errors import BackendError, BackendLost

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
            lenient: bool = False) -> str:
    """The SQL literal that gives a user variable this value, type and collation again.
    `lenient`: for bytes the charset rejects in an introducer (a client can put them into a
    variable through a plain literal), convert them as MariaDB converts (`?` for each)."""
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
    if collation is None or collation == "binary":
        return f"X'{h}'"
    if not re.fullmatch(r"\w+", collation):
        return f"X'{h}'"
    charset = collation.split("_", 1)[0]
    if lenient:
        return f"CONVERT(X'{h}' USING {charset}) COLLATE {collation}"
    return f"_{charset} X'{h}' COLLATE {collation}"


def assignments(vs: list[str], types: list[int], row: list[str | None],
                lenient: bool = False) -> list[str]:
    """`@a = ...` for each variable, from `read_sql`'s row and its column types."""
    return [f"{quote(v)} = " + literal(types[3 * i], row[3 * i], row[3 * i + 1], row[3 * i + 2],
                                       lenient) for i, v in enumerate(vs)]


class Carry(NamedTuple):
    """The variables' assignments: exact, and converted as MariaDB converts (`lenient`)."""

    exact: list[str]
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
        c.broken = True
        log.warning("user variables set in a replica read-only transaction were lost (%s)",
                    type(e).__name__)
        return None
    if not rows or len(types) != 3 * len(vs):
        return None
    return Carry(assignments(vs, types, rows[0]), assignments(vs, types, rows[0], lenient=True))


async def restore(c: Any, carry: Carry) -> None:
    """Set them on the primary's connection `c`: all in one statement; if the server refuses
    it (bytes a charset's introducer rejects), one by one, each exactly or else converted.
    A lost connection raises BackendLost for the session to handle."""
    try:
        await c.execute("SET " + ", ".join(carry.exact))
        return
    except BackendError:
        pass
    for a, b in zip(carry.exact, carry.lenient, strict=True):
        for sql in (a, b):
            try:
                await c.execute("SET " + sql)
                break
            except BackendError as e:
                if sql is b:
                    log.warning("a user variable from a replica read-only transaction was not "
                                "restored: %s", e.message)
