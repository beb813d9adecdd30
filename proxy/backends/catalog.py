"""What the proxy reads of a backend server once at start (server.py): its collation table
and whether it sends MariaDB's extended type metadata."""

from __future__ import annotations

import re

from proxy.backends.backend import BackendConn
from proxy.core.state import Catalog, Names
from proxy.net.tracking import Tracking


def has_ext_metadata(c: BackendConn) -> bool:
    """MariaDB sends extended type metadata (JSON, UUID, INET, geometry names) since 10.5.2
    (and has had COM_STMT_BULK_EXECUTE since 10.2)."""
    m = re.search(r"(\d+)\.(\d+)\.(\d+)-MariaDB", c.conn.server_version or "")  # after 5.5.5-
    return c.mariadb and m is not None and tuple(map(int, m.groups())) >= (10, 5, 2)


async def load_catalog(c: BackendConn) -> Catalog:
    """The server's collations and the character set it gives clients it cannot match."""
    rows = await c.query_named(
        "SELECT ID, COLLATION_NAME, CHARACTER_SET_NAME, IS_DEFAULT "
        "FROM information_schema.COLLATIONS WHERE ID IS NOT NULL")
    g = await c.fetch_one(
        "SELECT @@global.character_set_client, @@global.character_set_connection, "
        "@@global.character_set_results, @@global.collation_connection, "
        "@@global.wait_timeout, @@global.interactive_timeout, @@global.session_track_schema, "
        "@@global.session_track_state_change, @@global.session_track_system_variables")
    assert g is not None
    default = Names(*(v or "" for v in g[:4]))
    cat = Catalog(((int(r["ID"] or 0), r["COLLATION_NAME"] or "", r["CHARACTER_SET_NAME"] or "",
                    r["IS_DEFAULT"] == "Yes") for r in rows), default)
    cat.wait_timeout, cat.interactive_timeout = int(g[4] or 28800), int(g[5] or 28800)
    cat.tracking = Tracking.parse(g[6], g[7], g[8])
    return cat
