"""The result sets the proxy builds itself, as packet payloads: compiled (compiled.py), as the
fast lane answers `SELECT ROW_COUNT()` of every seed order with them (`local_answer`). Writing
them, and everything else the proxy answers itself, is local.py's.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from proxy.net import protocol as P
from proxy.plan.classify import Shape
from proxy.plan.plan import Plan, Route, conn_id_alias

if TYPE_CHECKING:
    from proxy.exec.context import Statement


def coldefs(s: Statement, coldef: bytes) -> bytes:
    """A column definition the proxy built, as this client's backend connections would send it
    (with MariaDB's extended metadata field when the client negotiated it)."""
    if s.backend_caps & P.MARIADB_CLIENT_EXTENDED_METADATA:
        return _with_ext(coldef)
    return coldef


# The proxy's own column definitions repeat (SELECT ROW_COUNT() is in every seed order): each
# is built once per name. Bounded, as an alias of CONNECTION_ID() is the client's text.
_with_ext = lru_cache(maxsize=256)(P.coldef_ext)


@lru_cache(maxsize=256)
def _local_coldef(route: Route, name: str, mariadb: bool) -> bytes:
    """The column definition of a local answer (`local_answer`), as MariaDB (or MySQL, for
    CONNECTION_ID()) gives it."""
    if route is Route.LOCAL_GTID:
        return P.column_def(name)
    if route is Route.LOCAL_CONN_ID:
        return P.column_def_uint(name, mariadb)
    return P.column_def_int(name)


def local_answer(s: Statement, p: Plan, shape: Shape, binary: bool = False) -> list[bytes]:
    """The result set of a SELECT the proxy answers itself (plan.LOCAL_ANSWERS), as packet
    payloads, and its effect on the session. The session task (`answer_local`) and the fast
    lane (fastlane.py) each only write them, so the answer is made in one place."""
    mariadb = False
    if p.route is Route.LOCAL_GTID:
        name, value = "@@last_gtid", s.last_gtid or ""
    elif p.route is Route.LOCAL_CONN_ID:
        assert s.connection is not None
        mariadb = "MariaDB" in s.app.server_version
        name, value = conn_id_alias(shape), str(s.connection.connection_id)
    else:
        name, value = "ROW_COUNT()", str(s.answered_rows)
    # A SELECT the proxy answered: as after any SELECT, ROW_COUNT() is now -1; the warnings
    # stay the previous statement's (a SELECT without tables keeps them).
    out = result_packets(s, [_local_coldef(p.route, name, mariadb)], [[value]], binary)
    s.row_count_local = -1
    return out


def result_packets(s: Statement, defs: list[bytes], rows: list[list[str | None]],
                   binary: bool) -> list[bytes]:
    return packets(s, [coldefs(s, d) for d in defs],
                   [P.binary_row(defs, r) if binary else P.text_row(r) for r in rows])


def packets(s: Statement, defs: list[bytes], rows: list[bytes]) -> list[bytes]:
    return [P.enc_lenenc_int(len(defs)), *defs, P.make_eof(s.status), *rows,
            P.make_eof(s.status)]
