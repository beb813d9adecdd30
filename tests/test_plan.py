"""The planner (plan.py) and session state (state.py): pure, in tables and with hypothesis."""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.backends.backend import BackendConn
from proxy.backends.lease import Lease, LeaseState
from proxy.core.config import Address
from proxy.core.errors import PinReason
from proxy.core.state import (
    LOGIN_NAMES,
    Answered,
    Catalog,
    Names,
    Wanted,
    absorb,
    split_reported,
    transition,
)
from proxy.engines.hotpick import AS_IS, LEAVING, MERGE, PLAIN, QUEUE, UNCHECKED, Way
from proxy.engines.readsplit import ReadRouter
from proxy.exec.fastlane import FastLane
from proxy.exec.general import row_count_setter
from proxy.net import protocol as P
from proxy.net.wire import ClientIO
from proxy.plan.classify import classify
from proxy.plan.plan import (
    LOCAL_ANSWERS,
    ROW_COUNT_SYNCABLE,
    Plan,
    PlanInputs,
    Policy,
    Route,
    Track,
    _plan,
    conn_id_alias,
    plan,
)
from proxy.session.session import ProxySession


@dataclass
class View:
    in_txn: bool = False
    autocommit_off: bool = False
    pin: PinReason | None = None
    consistency: str = "session"
    read_after_gtid: str | None = None
    replica_txn: bool = False
    answered_rows: int | None = None
    made_rows: int | None = None
    # what the lane stub needs besides the view
    last_gtid: str | None = None
    last_insert_id: int = 0
    state_stale: bool = False
    stmts: dict[int, Any] = field(default_factory=dict)

    def plan_inputs(self) -> PlanInputs:
        return (self.in_txn, self.autocommit_off, self.pin, self.consistency,
                self.read_after_gtid, self.replica_txn, self.answered_rows, self.made_rows)
    # and what a SELECT the lane answers itself (answers.local_answer) reads and sets
    connection: Any = field(default_factory=lambda: SimpleNamespace(connection_id=7))
    status: int = 2
    backend_caps: int = 0
    row_count_local: int | None = None

    def foreign_diag(self, c: Any) -> bool:
        return False  # (the stub's connection holds no conditions)


FULL = Policy(has_replicas=True, wants_ack=False, track_all=False, hotrow=True)

# (statement, view overrides, policy, expected route, track, hold, lane)
TABLE: list[tuple[str, dict[str, Any], Policy, Route, Track, bool, bool]] = [
    ("SET NAMES utf8mb4", {}, FULL, Route.LOCAL_SET, Track.NONE, False, False),
    ("SET NAMES latin1", {"in_txn": True}, FULL, Route.PRIMARY, Track.NONE, False, False),
    ("SET read_consistency = 'global'", {"in_txn": True}, FULL, Route.LOCAL_SET, Track.NONE,
     False, False),
    ("SELECT @@last_gtid", {}, FULL, Route.LOCAL_GTID, Track.NONE, False, False),
    ("SELECT * FROM t WHERE id = 1", {}, FULL, Route.REPLICA, Track.NONE, False, True),
    ("SELECT * FROM t WHERE id = 1", {"consistency": "global"}, FULL, Route.REPLICA,
     Track.NONE, False, False),
    ("SELECT * FROM t WHERE id = 1", {"in_txn": True}, FULL, Route.PRIMARY, Track.NONE, False,
     True),
    ("SELECT * FROM t WHERE id = 1", {}, Policy(), Route.PRIMARY, Track.NONE, False, True),
    # a stored function may write: its GTID is read after it (Plan.gtid_after), not on the lane
    ("SELECT f(id) FROM t", {}, FULL, Route.PRIMARY, Track.NONE, False, False),
    ("SELECT * FROM t /*!50000 FOR UPDATE */", {}, FULL, Route.PRIMARY, Track.NONE, False, True),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t", {}, FULL, Route.PRIMARY, Track.NONE, False, False),
    # server-local, and its ID column carries proxy clients' ids (local.processlist)
    ("SELECT * FROM information_schema.PROCESSLIST", {}, FULL, Route.PROCESSLIST, Track.NONE,
     False, False),
    ("SELECT * FROM information_schema.PROCESSLIST", {"pin": PinReason.USER_VARIABLE}, FULL,
     Route.PROCESSLIST, Track.NONE, False, False),
    ("INSERT INTO t VALUES (1)", {}, FULL, Route.PRIMARY, Track.NONE, False, True),
    ("INSERT INTO t VALUES (1)", {}, Policy(track_all=True), Route.PRIMARY, Track.AUTOCOMMIT,
     False, False),
    ("INSERT INTO t VALUES (1)", {"in_txn": True}, Policy(track_all=True), Route.PRIMARY,
     Track.NONE, False, True),
    ("INSERT INTO t VALUES (1)", {}, Policy(wants_ack=True), Route.PRIMARY, Track.NONE, True,
     False),
    ("COMMIT", {"in_txn": True}, Policy(track_all=True), Route.PRIMARY, Track.COMMIT, False,
     False),
    ("COMMIT", {"in_txn": True, "replica_txn": True}, Policy(track_all=True), Route.PRIMARY,
     Track.NONE, False, True),
    # the lane may run it if the engine's way for it needs no wait first (hotpick.Picker.decide)
    ("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0", {},
     FULL, Route.HOTROW, Track.NONE, False, True),
    ("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0",
     {"in_txn": True}, Policy(hotrow=True, wants_ack=True), Route.HOTROW, Track.NONE, True,
     False),
    ("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0", {},
     Policy(), Route.PRIMARY, Track.NONE, False, True),
    ("START TRANSACTION READ ONLY", {}, FULL, Route.REPLICA_TXN, Track.NONE, False, False),
    ("START TRANSACTION READ ONLY", {"pin": PinReason.USER_VARIABLE}, FULL, Route.PRIMARY, Track.NONE,
     False, False),
    ("SET @x = 1", {}, FULL, Route.PRIMARY, Track.NONE, False, False),
    ("BEGIN", {}, FULL, Route.PRIMARY, Track.NONE, False, True),
    ("SHOW WARNINGS", {}, FULL, Route.DIAG, Track.NONE, False, False),
    ("SHOW COUNT(*) ERRORS", {}, FULL, Route.DIAG, Track.NONE, False, False),
    ("SELECT @@warning_count", {}, FULL, Route.DIAG, Track.NONE, False, True),
    ("SHOW SESSION STATUS LIKE 'Handler%'", {}, FULL, Route.CLIENT_STATUS, Track.NONE, False,
     False),
    ("SELECT ROW_COUNT()", {}, FULL, Route.DIAG, Track.NONE, False, True),
    ("SELECT CONNECTION_ID()", {}, FULL, Route.LOCAL_CONN_ID, Track.NONE, False, False),
    ("select connection_id() AS `my id` FROM DUAL", {}, FULL, Route.LOCAL_CONN_ID, Track.NONE,
     False, False),
    ("SELECT CONNECTION_ID() cid", {}, FULL, Route.LOCAL_CONN_ID, Track.NONE, False, False),
    ("SELECT CONNECTION_ID() FROM", {}, FULL, Route.PRIMARY, Track.NONE, False, True),
    ("SELECT CONNECTION_ID() + 0", {}, FULL, Route.PRIMARY, Track.NONE, False, True),
    # after a merged UPDATE the proxy knows ROW_COUNT(); otherwise the last statement's connection does
    ("SELECT ROW_COUNT()", {"answered_rows": 1}, FULL, Route.LOCAL_ROW_COUNT, Track.NONE, False, False),
    ("SELECT ROW_COUNT()", {}, FULL, Route.DIAG, Track.NONE, False, True),
    ("SELECT ROW_COUNT() + 1", {"answered_rows": 1}, FULL, Route.DIAG, Track.NONE, False, True),
    # right after the proxy answered one itself (-1 now): the general path, which makes the
    # connection's -1 first (Plan.row_count_sync)
    ("SELECT ROW_COUNT() AS n", {"answered_rows": -1, "made_rows": -1}, FULL, Route.DIAG,
     Track.NONE, False, False),
    # after a merged UPDATE (1 made by the proxy) as well; after an UPDATE the connection ran
    # (the same 1, read from its OK) the connection says it already: the lane's
    ("SELECT ROW_COUNT() AS n", {"answered_rows": 1, "made_rows": 1}, FULL, Route.DIAG,
     Track.NONE, False, False),
    ("SELECT ROW_COUNT() AS n", {"answered_rows": 1}, FULL, Route.DIAG, Track.NONE, False, True),
    # every hot-row mode `off`: an unhinted hot decrement is a plain write (the lane's);
    # a hinted one still goes to the engine
    ("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0", {},
     Policy(hotrow=True, hotrow_engaged=False), Route.PRIMARY, Track.NONE, False, True),
    ("UPDATE /*+ HOTROW(merge) */ inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND "
     "quantity > 0", {}, Policy(hotrow=True, hotrow_engaged=False), Route.HOTROW, Track.NONE,
     False, False),
    ("KILL QUERY 12", {}, FULL, Route.KILL, Track.NONE, False, False),
]


@pytest.mark.parametrize(("sql", "view", "policy", "route", "track", "hold", "lane"), TABLE)
def test_plan_table(sql: str, view: dict[str, Any], policy: Policy, route: Route, track: Track,
                    hold: bool, lane: bool) -> None:
    p = plan(classify(sql), View(**view), policy)
    assert (p.route, p.track, p.hold_ack, p.lane) == (route, track, hold, lane)


STATEMENTS = [s for s, *_ in TABLE] + [
    "SELECT 1", "SELECT a FROM t WHERE b IN (1, 2, 3)", "SELECT /*+ ROUTE(primary) */ 1",
    "SELECT /*+ CONSISTENCY(eventual) */ x FROM t", "SELECT LAST_INSERT_ID()",
    "DELETE FROM t WHERE id = 3", "REPLACE INTO t VALUES (1)", "ROLLBACK", "START TRANSACTION",
    "CREATE TABLE x (a INT)", "CALL p()", "SELECT 1; SELECT 2", "SHOW WARNINGS", "USE shop",
    "SELECT GET_LOCK('a', 1)", "CREATE TEMPORARY TABLE t (a INT)", "LOCK TABLES t READ",
    "INSERT INTO t VALUES (1) RETURNING id", "SET SESSION sql_mode = ''",
]
views = st.builds(View, in_txn=st.booleans(), autocommit_off=st.booleans(),
                  pin=st.sampled_from([None, PinReason.USER_VARIABLE]),
                  consistency=st.sampled_from(["eventual", "session", "global", "primary"]),
                  read_after_gtid=st.sampled_from([None, "0-1-5"]), replica_txn=st.booleans())
policies = st.builds(Policy, has_replicas=st.booleans(), wants_ack=st.booleans(),
                     track_all=st.booleans(), hotrow=st.booleans(), hotrow_engaged=st.booleans())


@settings(max_examples=500)
@given(sql=st.sampled_from(STATEMENTS), view=views, policy=policies, cursor=st.booleans())
def test_lane_plans_only_forward(sql: str, view: View, policy: Policy, cursor: bool) -> None:
    """A plan the lane may run does nothing but send the statement and relay the reply."""
    shape = classify(sql)
    p = plan(shape, view, policy, cursor)
    assert p == plan(shape, view, policy, cursor)  # pure
    if p.lane:
        assert p.route in (Route.PRIMARY, Route.REPLICA, Route.DIAG, Route.HOTROW)
        assert p.track is Track.NONE and not p.hold_ack and p.pin is None and shape.lane
        assert not p.gtid_after  # the lane reads no GTID after a reply
        if p.route is Route.REPLICA:
            assert p.read is not None and p.read.consistency in ("session", "eventual")
    forward_only = (p.route in (Route.PRIMARY, Route.HOTROW) and p.track is Track.NONE and not p.hold_ack
                    and p.pin is None and bool(shape.lane) and not p.gtid_after)
    assert not forward_only or p.lane
    if shape.pin or cursor:
        assert p.route is not Route.REPLICA  # state must stay where the session is


@settings(max_examples=300)
@given(steps=st.lists(st.tuples(st.sampled_from(STATEMENTS), views, st.sampled_from([0, 1, 2]),
                                st.booleans(), st.sampled_from([None, 3, 0, -1, 1]),
                                st.booleans()),
                      min_size=1, max_size=40))
def test_memo_gives_the_plan_made_afresh(
        steps: list[tuple[str, View, int, bool, int | None, bool]]) -> None:
    """plan() looks plans up by shape and session view: any sequence of statements, views
    and policies (a RELOAD CONFIG's new policy among them) gets what `_plan` makes afresh."""
    pols = [FULL, Policy(), Policy(has_replicas=True, track_all=True, wants_ack=True)]
    for sql, view, pol, cursor, answered, made in steps:
        view.answered_rows = answered
        view.made_rows = answered if made else None
        shape = classify(sql)
        assert plan(shape, view, pols[pol], cursor) == _plan(shape, view, pols[pol], cursor, False)


def test_memo_keys_what_row_count_sync_reads() -> None:
    shape = classify("SELECT ROW_COUNT() AS n")
    got = []
    for made in (3, -1, 0, 2, None, -1, 1):
        got.append(plan(shape, View(answered_rows=made, made_rows=made), FULL).row_count_sync)
    assert got == [None, -1, 0, None, None, -1, 1]


def test_every_value_the_plan_syncs_has_a_statement() -> None:
    for value in ROW_COUNT_SYNCABLE:
        for mariadb in (True, False):
            assert row_count_setter(value, mariadb)


# ---- the lane's decision equals the plan's ----------------------------------------------

def _command(sql: str) -> bytes:
    payload = bytes((P.COM_QUERY,)) + sql.encode()
    return struct.pack("<I", len(payload)) + payload


def idle_conn() -> BackendConn:
    """A real BackendConn (the lane is compiled and checks its attributes' types) over a socket
    nobody reads: the test only asks the lane what it would do with a command."""
    transport = SimpleNamespace(set_protocol=lambda p: None, is_closing=lambda: False,
                                resume_reading=lambda: None, get_extra_info=lambda *a: None)
    login = SimpleNamespace(_writer=SimpleNamespace(transport=transport), _reader=None,
                            server_thread_id=(1,), get_server_info=lambda: "10.11.6-MariaDB")

    async def made() -> BackendConn:  # a protocol is made inside the loop it will run in
        return BackendConn(login, Address("127.0.0.1", 3306), "app")

    return asyncio.run(made())


class _Pool:
    def __init__(self, role: str) -> None:
        self.role = role
        self.label = role

    def hold_soft(self, c: Any, owner: Any) -> None: ...

    def unhold_soft(self, c: Any) -> None: ...


@settings(max_examples=500, deadline=None)  # (asyncio.run per example: slow under load)
@given(sql=st.sampled_from(STATEMENTS), view=views, policy=policies,
       on_replica=st.booleans(), replica_ready=st.booleans(), same_conn=st.booleans(),
       way=st.sampled_from([AS_IS, UNCHECKED, PLAIN, LEAVING, QUEUE, MERGE]),
       glanced=st.booleans())
def test_lane_takes_exactly_the_lane_plans(sql: str, view: View, policy: Policy,
                                           on_replica: bool, replica_ready: bool,
                                           same_conn: bool, way: int, glanced: bool) -> None:
    primary, replica = _Pool("primary"), _Pool("replica")
    view.replica_txn = False
    conn = idle_conn()
    lease = Lease()
    lease.state = LeaseState.TRANSACTION if view.in_txn else LeaseState.SOFT
    lease.conn = conn
    view.stmt_conn = conn if same_conn else None  # type: ignore[attr-defined]
    lease.pool = (replica if on_replica and not view.in_txn else primary)  # type: ignore[assignment]
    # the read router itself (a compiled class: no stand-in), its replica up or not
    st_replica = SimpleNamespace(role="replica", up=replica_ready, state="up", lag_s=0.0,
                                 addr=None)
    reads = ReadRouter(SimpleNamespace(  # type: ignore[arg-type]
        monitor=SimpleNamespace(states={"replica": st_replica}),
        cfg=SimpleNamespace(backends=SimpleNamespace(weight=lambda addr: 1))))
    # the hot-row engine's way for a hot decrement: the lane takes those that start at once,
    # and those the engine lets it send undecided (hotpick.Picker.glance)
    hotrow = SimpleNamespace(lane_way=lambda s, shape, values: Way(way),
                             plain_end=lambda t, ok: None, glance=lambda s, shape: glanced,
                             glance_end=lambda *a: None)
    app = SimpleNamespace(policy=policy, primary_pool=lambda: primary, reads=reads, hotrow=hotrow,
                          server_version="10.11.6-MariaDB")
    session = view
    session.app = app  # type: ignore[attr-defined]
    session.lease = lease  # type: ignore[attr-defined]
    client = ClientIO(lambda io: None)
    written: list[bytes] = []
    client.transport = SimpleNamespace(is_closing=lambda: False,  # type: ignore[assignment]
                                       write=written.append)
    lane = FastLane(session, client)  # type: ignore[arg-type]
    p: Plan = plan(classify(sql), view, policy)
    got = lane._decide(_command(sql))
    if p.route in LOCAL_ANSWERS and classify(sql).lane:
        # what the proxy answers itself, the lane answers at once (no connection needed)
        assert got is True and written and view.row_count_local == -1
        return
    assert not written
    on_primary = lease.pool is primary
    expect = p.lane and (
        (p.route is Route.REPLICA and lease.state is LeaseState.SOFT and not on_primary
         and p.read is not None and reads.ready_now(replica, p.read, view.last_gtid))
        or (p.route is Route.PRIMARY and (on_primary or lease.state is not LeaseState.SOFT))
        or (p.route is Route.HOTROW and (glanced or way in (AS_IS, PLAIN, MERGE))
            and (on_primary or lease.state is not LeaseState.SOFT))
        # diagnostics: on the previous statement's connection, wherever it is
        or (p.route is Route.DIAG and same_conn))
    if classify(sql).uses_last_insert_id:
        expect = expect and conn.last_insert_id == view.last_insert_id
    assert (got is not None) == expect
    if got is not None:
        assert not isinstance(got, bool) and got[3] == p  # the lane runs the plan the general path would run


# ---- session state -----------------------------------------------------------------------

CATALOG = Catalog([(8, "latin1_swedish_ci", "latin1", True), (45, "utf8mb4_general_ci",
                    "utf8mb4", True), (224, "utf8mb4_unicode_ci", "utf8mb4", False),
                   (35, "ucs2_general_ci", "ucs2", True), (7, "koi8r_general_ci", "koi8r", True)],
                  Names.uniform("latin1", "latin1_swedish_ci"))


def test_handshake_names() -> None:
    assert CATALOG.handshake_names(224, LOGIN_NAMES) == Names.uniform("utf8mb4",
                                                                      "utf8mb4_unicode_ci")
    assert CATALOG.handshake_names(35, LOGIN_NAMES) == LOGIN_NAMES  # ucs2: not a client charset
    assert CATALOG.handshake_names(250, LOGIN_NAMES) == LOGIN_NAMES  # unknown id


def test_absorb_set_names_without_reported_collation() -> None:
    rep = {"character_set_client": "koi8r", "character_set_connection": "koi8r",
           "character_set_results": "koi8r"}
    assert absorb(LOGIN_NAMES, rep, CATALOG) == Names.uniform("koi8r", "koi8r_general_ci")
    assert absorb(LOGIN_NAMES, {"collation_connection": "utf8mb4_unicode_ci"}, CATALOG) == \
        Names("utf8mb4", "utf8mb4", "utf8mb4", "utf8mb4_unicode_ci")
    assert absorb(LOGIN_NAMES, {"time_zone": "+01:00"}, CATALOG) is LOGIN_NAMES


def test_split_reported() -> None:
    keep, pin = split_reported({"timestamp": "1", "time_zone": "+01:00", "last_gtid": "0-1-2",
                                "character_set_client": "latin1"})
    assert keep == {"time_zone": "+01:00"} and pin == "timestamp"


def test_transition_table() -> None:
    latin = Names.uniform("latin1", "latin1_swedish_ci")
    assert transition("shop", LOGIN_NAMES, {}, "shop", LOGIN_NAMES, {}).statements == ()
    ch = transition("shop", latin, {"sql_mode": "ANSI"}, "other", LOGIN_NAMES, {"a": "1"})
    assert ch.statements == ("SET NAMES utf8mb4 COLLATE utf8mb4_general_ci, sql_mode=DEFAULT, a=1",)
    assert ch.database == "other"
    assert transition("shop", LOGIN_NAMES, {}, None, LOGIN_NAMES, {}).needs_fresh
    assert Wanted(None, LOGIN_NAMES, {}, any_db=True).change_from("shop", LOGIN_NAMES, {}) \
        .statements == ()
    odd = Names("latin1", "utf8mb4", "", "utf8mb4_bin")
    assert odd.sql() == ("character_set_client=latin1, character_set_results=NULL, "
                         "collation_connection=utf8mb4_bin")


names = st.builds(Names.uniform, st.sampled_from(["utf8mb4", "latin1", "koi8r"]),
                  st.sampled_from(["a_ci", "b_ci"]))
var_maps = st.dictionaries(st.sampled_from(["sql_mode", "time_zone", "autocommit", "x"]),
                           st.sampled_from(["1", "ON", "+01:00", "it's"]), max_size=4)
dbs = st.sampled_from([None, "shop", "o`dd"])


@given(hd=dbs, hn=names, hv=var_maps, wd=dbs, wn=names, wv=var_maps)
def test_transition_reaches_the_wanted_state(hd: str | None, hn: Names, hv: dict[str, str],
                                             wd: str | None, wn: Names,
                                             wv: dict[str, str]) -> None:
    """Applying the statements (simulated) turns the connection's state into the session's,
    or the change is flagged impossible (a database cannot be unselected)."""
    ch = transition(hd, hn, hv, wd, wn, wv)
    if wd is None and hd is not None:
        assert ch.needs_fresh and ch.statements == ()
        return
    db, nm, vs = hd, hn, dict(hv)
    for sql in ch.statements:
        body = sql[4:]
        if body.startswith("NAMES "):
            head, _, body = body.partition(", ") if ", " in body else (body, "", "")
            cs, coll = head[6:].split(" COLLATE ")
            nm = Names.uniform(cs, coll)
        for part in filter(None, _split_assignments(body)):
            k, v = part.split("=", 1)
            if v == "DEFAULT":
                vs.pop(k)
            else:
                vs[k] = v[1:-1].replace("''", "'").replace("\\\\", "\\") if v.startswith("'") else v
    if ch.database is not None:
        db = ch.database
    assert (db, nm, vs) == (wd if wd is not None else hd, wn, wv)
    assert (ch.statements == () and ch.database is None) == (db == hd and nm == hn and vs == hv)


def _split_assignments(body: str) -> list[str]:
    out, cur, q = [], "", False
    for ch in body:
        if ch == "'":
            q = not q
        if ch == "," and not q:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return out


def test_router_and_lane_share_one_rotation_test() -> None:
    """A replica weighted out (weight 0) or unhealthy is neither chosen by the router nor used
    by the fast lane from a connection the session kept (one predicate serves both)."""
    from proxy.engines.readsplit import ReadRouter
    from proxy.plan.plan import ReadPlan

    def router(weight: int, up: bool = True) -> tuple[ReadRouter, Any]:
        st = SimpleNamespace(role="replica", up=up, state="up", lag_s=0.0, addr="r")
        pool = SimpleNamespace(label="r")
        app = SimpleNamespace(monitor=SimpleNamespace(states={"r": st}), pools={"r": pool},
                              cfg=SimpleNamespace(backends=SimpleNamespace(weight=lambda a: weight)))
        return ReadRouter(app), pool  # type: ignore[arg-type]

    for consistency in ("session", "eventual"):
        rp = ReadPlan(True, consistency)
        for weight, up in ((1, True), (0, True), (1, False)):
            r, pool = router(weight, up)
            chosen = bool(r.candidates(consistency))
            assert chosen == r.ready_now(pool, rp, None) == (weight > 0 and up)


@pytest.mark.parametrize("sql,name", [
    ("SELECT CONNECTION_ID()", "CONNECTION_ID()"),
    ("select connection_id( )", "connection_id( )"),
    ("SELECT CONNECTION_ID() AS id", "id"),
    ("SELECT CONNECTION_ID() `a``b`", "a`b"),
    ("SELECT CONNECTION_ID() AS x FROM DUAL", "x"),
])
def test_connection_id_column_name(sql: str, name: str) -> None:
    """Named as MySQL names it: the alias, else the item as the client wrote it."""
    assert conn_id_alias(classify(sql)) == name


_VIEW_PROPS = ("in_txn", "autocommit_off", "pin", "consistency", "read_after_gtid", "replica_txn",
               "answered_rows", "made_rows")


@settings(max_examples=300, deadline=None)
@given(status=st.integers(0, 0xFFFF), autocommit=st.sampled_from([None, "ON", "off", "0", "1"]),
       pin=st.sampled_from([None, *PinReason]), mine=st.sampled_from([None, "strong", "eventual"]),
       token=st.sampled_from([None, "0-1-5"]), state=st.sampled_from(list(LeaseState)),
       local=st.sampled_from([None, -1, 0, 1, 5]), ok=st.sampled_from([None, -1, 0, 3]),
       answered=st.sampled_from([None, 0, 1, 2]))
def test_a_session_s_plan_inputs_are_its_properties(
        status: int, autocommit: str | None, pin: PinReason | None, mine: str | None,
        token: str | None, state: LeaseState, local: int | None, ok: int | None,
        answered: int | None) -> None:
    """plan.plan keys its memo on ProxySession.plan_inputs(), _plan reads the properties: the
    two must agree in every state (one call was made to replace eight property reads)."""
    s = ProxySession(SimpleNamespace(server_version="10.11", read_consistency="session"))
    s.status, s.pin, s.read_consistency, s.read_after_gtid = status, pin, mine, token
    if autocommit is not None:
        s.sysvars["autocommit"] = autocommit
    s.lease.state = state
    s._stmt_conn = Answered(answered) if answered is not None else None
    s.row_count_local, s.row_count_ok = local, ok
    assert s.plan_inputs() == tuple(getattr(s, p) for p in _VIEW_PROPS)
