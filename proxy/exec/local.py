"""Statements the proxy answers itself (plan routes LOCAL_SET, LOCAL_GTID, LOCAL_CONN_ID, KILL):
settings it keeps for the session, values only it knows, and KILL of its own client ids."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from proxy.core.config import CONSISTENCY
from proxy.core.errors import BackendError, BackendLost, ProxyError
from proxy.core.gtid import GtidError
from proxy.core.gtid import parse as gtid_parse
from proxy.core.state import NAMES_VARS, Carried, Names
from proxy.exec import general, reply
from proxy.exec.answers import local_answer, packets, result_packets
from proxy.net import protocol as P
from proxy.plan.classify import SKIP_TEXT, Shape
from proxy.plan.plan import KILL, LOCAL_ANSWERS, Plan, Route, names_of

if TYPE_CHECKING:
    from proxy.exec.context import Statement

_SET_PROXY_VAR = re.compile(
    r"SET\s+(?:SESSION\s+|@@SESSION\.|@@)?(read_after_gtid|read_consistency)\s*=\s*'([^']*)'", re.I)
_PRIVILEGED = (
    "SELECT COUNT(*) FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE IN "
    "('SUPER', 'CONNECTION ADMIN') AND GRANTEE = CONCAT('''', "
    "SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), "
    "'''')")


async def kill(s: Statement, sql: str) -> bool:
    """KILL of a proxy client id (the one its handshake and CONNECTION_ID() gave): QUERY
    interrupts what its backend connection runs (MySQL checks the killer's privilege);
    CONNECTION also closes the client. An id the proxy does not know goes to MySQL as it
    is (a DBA killing a backend thread). False: not handled here."""
    m = KILL.match(sql.strip().rstrip(";").strip())
    if m is None:
        return False
    target = s.app.find_client(int(m.group(2)))
    query_only = (m.group(1) or "").upper() == "QUERY"
    if target is None:
        err = await _kill_elsewhere(s, int(m.group(2)), query_only)
        if err is False:
            return False
    else:
        err = await _kill_client(s, target, m.group(2), query_only)
    if err is not None:
        await s.send(err)
        return True
    if not query_only and target is s.connection:
        raise ProxyError((1927, "70100"), "Connection was killed", fatal=True)
    await s.send(s.ok_packet())
    return True


async def _kill_elsewhere(s: Statement, tid: int, query_only: bool
                         ) -> bytes | None | Literal[False]:
    """KILL of a client another worker holds (peers.py): the owner check here, the stopping
    there. False: no worker's client (the id is MySQL's)."""
    peers = s.app.peers
    worker = peers.owner(tid) if peers is not None else None
    if peers is None or worker is None:
        return False
    user = await peers.who(worker, tid)
    if user is None:
        return False
    if user != s.username and not await _may_kill_others(s):
        return ProxyError((1095, "HY000"), f"You are not owner of thread {tid}").packet()
    return await peers.kill(worker, tid, query_only)


async def _kill_client(s: Statement, target: Any, tid: str, query_only: bool) -> bytes | None:
    """Interrupt (and, for CONNECTION, close) another proxy client; an ERR packet if MySQL
    or the owner check refuses it."""
    ts = target.session
    if ts.username != s.username and not await _may_kill_others(s):
        return ProxyError((1095, "HY000"), f"You are not owner of thread {tid}").packet()
    own = target is s.connection  # our own statement is this one
    return await stop_client(target, query_only, s.username or "", s.password, own)


async def stop_client(target: Any, query_only: bool, user: str, password: str,
                      own: bool = False) -> bytes | None:
    """What KILL does to a client whose killing was allowed: its backend statement killed
    (as `user`, on the server that runs it), and for CONNECTION the client closed. An ERR
    packet if MySQL refused."""
    ts = target.session
    c, pool = (ts.lease.conn, ts.lease.pool) if ts.busy and not own else (None, None)
    if c is not None and pool is not None and not c.broken:
        # Beyond the pool's limit if need be (a service connection): a KILL is what a DBA
        # sends when a stuck statement holds the connections (MySQL keeps one for it too).
        kc = await pool.acquire(user, password, service=True)
        try:
            await kc.execute(f"KILL {'QUERY ' if query_only else ''}{c.thread_id}")
        except BackendError as e:
            if e.code != 1094:  # the statement ended meanwhile: nothing to interrupt
                return e.raw
        finally:
            await pool.release(kc)
    if not query_only and not own:
        target.close_reason = "killed"
        target.stream.reader.transport.abort()
    return None


_KILL_IN_TEXT = re.compile(
    rf"(?P<skip>{SKIP_TEXT})"
    r"|(?<![\w$.`])KILL\s+(?:(?P<kind>CONNECTION|QUERY)\s+)?(?P<id>\d+)(?=\s*(?:;|$))",
    re.S | re.I)


async def kills_in_multi(s: Statement, sql: str) -> str:
    """A multi-statement's `KILL [QUERY|CONNECTION] <proxy client id>` (another client's):
    done by the proxy, as when KILL comes alone, and replaced by `DO 0` (an OK, as KILL's)
    so the rest runs as sent. Other ids are MySQL's, left as they are."""
    out: list[str] = []
    pos = 0
    for m in _KILL_IN_TEXT.finditer(sql):
        if m.group("id") is None:
            continue
        target = s.app.find_client(int(m.group("id")))
        if target is s.connection:
            continue
        query_only = (m.group("kind") or "").upper() == "QUERY"
        if target is None:
            if await _kill_elsewhere(s, int(m.group("id")), query_only) is not None:
                continue  # MySQL's id, or refused: MySQL refuses it too
        elif await _kill_client(s, target, m.group("id"), query_only) is not None:
            continue  # refused: MySQL refuses it too (an unknown thread for it)
        out.append(sql[pos:m.start()])
        out.append("DO 0")
        pos = m.end()
    if not out:
        return sql
    out.append(sql[pos:])
    return "".join(out)


async def _may_kill_others(s: Statement) -> bool:
    """MySQL lets a user kill other users' connections with SUPER or CONNECTION ADMIN: ask it,
    as this user, on a service connection (beyond the pool's limit if need be, as the KILL
    itself: the DBA's session may have no connection while a stuck statement holds them)."""
    pool = await s.app.writable_primary()
    c = await pool.acquire(s.username or "", s.password, service=True)
    try:
        row = await c.fetch_one(_PRIVILEGED)
    finally:
        await pool.release(c)
    return row is not None and row[0] not in (None, "0")


async def answered(s: Statement, p: Plan, shape: Shape, sql: str,
                   binary: bool = False) -> Plan | None:
    """What the proxy answers itself of a plan, in the text protocol or, for a prepared
    statement (`binary`), the binary one: None when it did, else the plan to run (a SHOW
    STATUS pattern about anything but the client's own connection: MySQL's, as DIAG)."""
    if p.route in LOCAL_ANSWERS:
        await answer_local(s, p, shape, binary)
        return None
    if p.route is Route.DIAG and not binary and await carried(s, sql):
        return None
    if p.route is Route.CLIENT_STATUS:
        if await client_status(s, sql, binary):
            return None
        return Plan(Route.DIAG)
    return p


async def answer_local(s: Statement, p: Plan, shape: Shape, binary: bool = False) -> None:
    """A SELECT the proxy answers itself (plan.LOCAL_ANSWERS), from the session task."""
    await _send(s, local_answer(s, p, shape, binary))


_SHOW_LIST = re.compile(r"SHOW\s+(WARNINGS|ERRORS)(?:\s+LIMIT\s+(\d+)(?:\s*,\s*(\d+))?)?", re.I)
_SHOW_COUNT = re.compile(r"SHOW\s+COUNT\s*\(\s*\*\s*\)\s+(WARNINGS|ERRORS)", re.I)
_SELECT_COUNT = re.compile(r"SELECT\s+(@@(?:SESSION\.)?(WARNING|ERROR)_COUNT)", re.I)


async def carried(s: Statement, sql: str) -> bool:
    """SHOW WARNINGS / ERRORS [LIMIT], SHOW COUNT(*) WARNINGS / ERRORS and SELECT
    @@warning_count / @@error_count about a diagnostics area the session carried from a
    connection it left (state.Carried), in the text protocol; False for anything else (it runs
    on a connection, as before)."""
    d = s.stmt_conn
    if not isinstance(d, Carried):
        return False
    q = sql.strip().rstrip(";").strip()
    errors = [i for i, lv in enumerate(d.levels) if lv == "Error"]
    if m := _SHOW_LIST.fullmatch(q):
        rows = list(d.rows) if m.group(1).upper() == "WARNINGS" else [d.rows[i] for i in errors]
        if m.group(2) is not None:
            off, n = (int(m.group(2)), int(m.group(3))) if m.group(3) else (0, int(m.group(2)))
            rows = rows[off:off + n]
        await _write_result(s, list(d.coldefs), rows)
        s.row_count_local = -1  # as after any SHOW or SELECT (the area itself stays)
        return True
    if m := _SHOW_COUNT.fullmatch(q):
        name = f"@@session.{m.group(1).lower()[:-1]}_count"
        n = len(d.rows) if m.group(1).upper() == "WARNINGS" else len(errors)
    elif m := _SELECT_COUNT.fullmatch(q):
        name = m.group(1)
        n = len(d.rows) if m.group(2).upper() == "WARNING" else len(errors)
    else:
        return False
    await result_set(s, [P.column_def_count(name)], [[str(n)]], False)
    s.row_count_local = -1
    return True


async def result_set(s: Statement, defs: list[bytes], rows: list[list[str | None]],
                     binary: bool) -> None:
    """A result set the proxy builds: its column definitions (as this client negotiated
    them) and rows, in the text or the binary protocol."""
    await _send(s, result_packets(s, defs, rows, binary))


async def _write_result(s: Statement, defs: list[bytes], rows: list[bytes]) -> None:
    """A result set's packets, from column definitions and rows already encoded."""
    await _send(s, packets(s, defs, rows))


async def _send(s: Statement, packets: list[bytes]) -> None:
    assert s.connection is not None
    stream = s.connection.stream
    stream.write_many(packets)
    await stream.drain()


async def local_set(s: Statement, shape: Shape, sql: str, payload: bytes) -> None:
    """Settings the proxy keeps itself (Route.LOCAL_SET): the read watermark and
    consistency of the session, and `SET NAMES cs [COLLATE coll]` (what most drivers send
    on every connect), which is recorded, not sent: it travels with the session to
    whichever backend connection serves it next (state.py)."""
    names = names_of(shape)
    if names is None:
        m = _SET_PROXY_VAR.fullmatch(sql.strip().rstrip(";").strip())
        if m is None:
            raise ProxyError((1231, "42000"), "Variable can't be set to this value "
                             "(read_after_gtid and read_consistency take a quoted string)")
        name, value = m.group(1).lower(), m.group(2)
        if name == "read_after_gtid":
            if value:
                try:
                    gtid_parse(value)
                except GtidError as e:
                    raise ProxyError((1231, "42000"),
                                     f"Variable 'read_after_gtid' can't be set to the value of '{value}' ({e})") from None
            s.read_after_gtid = value or None
        else:
            if value.lower() not in CONSISTENCY:
                raise ProxyError((1231, "42000"),
                                 f"Variable 'read_consistency' can't be set to the value of '{value}'")
            s.read_consistency = value.lower()
        await s.send(s.ok_packet())
        return
    cs, coll = names
    cs = "utf8mb3" if cs == "utf8" else cs
    coll = coll or s.app.dial.catalog.default_collation(cs)
    if coll is None or s.app.dial.catalog.charset.get(coll) != cs:
        await general.forward(s, payload, shape)  # MySQL answers it (its errors included)
        return
    s.names = Names.uniform(cs, coll)
    s.state_stale = True
    # what MariaDB reports for SET NAMES to a client that tracks these variables
    state = s.track.block([(v, cs) for v in NAMES_VARS[:3]], None, True) if s.track else b""
    await s.send(s.ok_packet(state=state))



async def processlist(s: Statement, payload: bytes) -> None:
    """SHOW [FULL] PROCESSLIST, or a SELECT from information_schema.PROCESSLIST, from the
    server the session's statements go to, with the id of each backend thread a proxy client
    holds replaced by that client's id (the one its handshake and CONNECTION_ID() gave it), so
    a client finds itself and KILL works with it. Other threads (idle pooled connections, other
    clients of MySQL) keep their thread ids."""
    c = await s.primary_conn()
    ids = s.app.client_ids_by_thread(s.lease.pool)
    if s.app.peers is not None and s.lease.pool is not None:  # the other workers' clients
        ids.update(await s.app.peers.client_ids_by_thread(s.lease.pool.label))
    show = payload[1:].lstrip()[:4].upper() == b"SHOW"
    try:
        await c.command(payload)
        first = await c.read_packet()
        out = [first]
        if first[0] not in (0x00, 0xFF):
            ncols, _ = P.lenenc_int(first, 0)
            cols = [await c.read_packet() for _ in range(ncols)]
            out += cols
            out.append(await c.read_packet())  # their EOF
            at = [0] if show else [i for i, d in enumerate(cols) if _is_processlist_id(d)]
            while True:
                pkt = await c.read_packet()
                if pkt[0] == 0xFF or P.is_eof(pkt):
                    out.append(pkt)
                    break
                out.append(_with_client_ids(pkt, at, ids) if at else pkt)
    except BackendLost as e:
        await reply.lost(s, e, retry=False, shape=None)
        return
    s.stmt_conn = c
    s.settle()
    assert s.connection is not None
    s.connection.stream.write_many(out)
    await s.connection.stream.drain()


def _is_processlist_id(coldef: bytes) -> bool:
    """information_schema.PROCESSLIST's ID column (by its original table and name)."""
    names, _ = P.coldef_names(coldef)
    return names[3].upper() == b"PROCESSLIST" and names[5].upper() == b"ID"


def _with_client_ids(row: bytes, at: list[int], ids: dict[int, int]) -> bytes:
    """A text row with the thread ids in columns `at` that proxy clients hold replaced."""
    out = bytearray()
    pos = 0
    i = 0
    while pos < len(row):
        if row[pos] == 0xFB:  # NULL
            out.append(0xFB)
            pos += 1
        else:
            raw, end = P.lenenc_str(row, pos)
            cid = ids.get(int(raw)) if i in at and raw.isdigit() else None
            out += P.enc_lenenc_str(str(cid).encode()) if cid is not None else row[pos:end]
            pos = end
        i += 1
    return bytes(out)


_STATUS_LIKE = re.compile(
    r"\s*SHOW\s+(?:SESSION\s+|LOCAL\s+)?STATUS\s+LIKE\s+'([^']*)'\s*;?\s*", re.I)


def _client_rows(s: Statement, pattern: str) -> list[tuple[str, str]] | None:
    """The status rows about the client's own connection that `pattern` asks for, or None
    where the pattern is about anything else (MySQL answers). The TLS and the compression
    are between the client and the proxy: MySQL's would describe the backend connection."""
    conn = s.connection
    assert conn is not None
    p = pattern.lower()
    if p.startswith("ssl") and conn.tls is not None:
        cipher, version = conn.tls.cipher()
        rows = [("Ssl_cipher", cipher), ("Ssl_version", version)]
    elif p.startswith("compr"):  # MariaDB's only status variable there is Compression
        io = conn.stream.writer
        rows = [("Compression", "ON" if getattr(io, "zip", None) is not None else "OFF")]
    else:
        return None
    rx = re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c)
                            for c in pattern), re.I)
    return [r for r in rows if rx.fullmatch(r[0])]


async def client_status(s: Statement, sql: str, binary: bool = False) -> bool:
    """`SHOW STATUS LIKE 'Ssl_cipher'` from a TLS client, `... LIKE 'Compression'`: answered
    by the proxy (`_client_rows`), as text or (prepared) binary rows. Other patterns: False,
    MySQL answers."""
    m = _STATUS_LIKE.fullmatch(sql)
    rows = _client_rows(s, m.group(1)) if m is not None else None
    if rows is None:
        return False
    await result_set(s, [P.column_def("Variable_name"), P.column_def("Value")],
                     [[n, v] for n, v in rows], binary)
    return True
