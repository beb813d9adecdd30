"""Pure classification and hot-row allocation: table-driven and property-based, no I/O."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.core.config import HotRowRule
from proxy.engines.hotalloc import MISMATCH, RUN_ALONE, Member, all_hit_bound, allocate, bind
from proxy.plan.classify import (
    classify,
    digest,
    hot_template,
    parse_hints,
    statement_values,
    with_conn_id,
)

RULES = {("shop", "inventory"): HotRowRule("shop", "inventory", "sku_id", "quantity")}

HOT = [
    # sql, params, expected (key, amount, guard_op, bound)
    ("UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 42 AND quantity > 0", None,
     (42, 1, ">", 0)),
    ("update inventory set quantity=quantity-3 where quantity>=3 and sku_id=7", None, (7, 3, ">=", 3)),
    ("UPDATE `shop`.`inventory` SET `quantity` = `quantity` - 2 WHERE `sku_id` = 9", None,
     (9, 2, None, None)),
    ("UPDATE inventory SET quantity = quantity - 2 WHERE sku_id = 5 AND quantity - 2 >= 0", None,
     (5, 2, ">=", 2)),
    ("UPDATE /*+ HOTROW(queue) */ shop.inventory SET quantity = quantity - ? WHERE sku_id = ? "
     "AND quantity >= ?", [4, 11, 4], (11, 4, ">=", 4)),
    ("  UPDATE inventory\n  SET quantity = quantity - 1\n  WHERE (sku_id = 'A-1') AND (quantity > 0);",
     None, ("A-1", 1, ">", 0)),
    ("UPDATE inventory SET quantity = quantity - ? WHERE sku_id = ? AND quantity > 0", [1, 3],
     (3, 1, ">", 0)),
]

NOT_HOT = [
    "UPDATE inventory SET quantity = quantity + 1 WHERE sku_id = 42",
    "UPDATE inventory SET quantity = 5 WHERE sku_id = 42",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 42 OR quantity > 0",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id > 42",
    "UPDATE inventory SET quantity = quantity - 1, updated_at = NOW() WHERE sku_id = 42",
    "UPDATE inventory SET quantity = other - 1 WHERE sku_id = 42",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 42 AND quantity > 0 AND x = 1",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id IN (1, 2)",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 42 LIMIT 1",
    "UPDATE inventory SET quantity = quantity - 1.5 WHERE sku_id = 42",
    "UPDATE inventory SET quantity = quantity - 0 WHERE sku_id = 42",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 0x2A",
    "UPDATE inventory SET quantity = quantity - 1 WHERE quantity = 42",
    "UPDATE inventory i JOIN x ON x.id = i.sku_id SET quantity = quantity - 1 WHERE sku_id = 1",
    "UPDATE other SET quantity = quantity - 1 WHERE sku_id = 42",
    "UPDATE inventory SET stock = stock - 1 WHERE sku_id = 42",
    "SELECT quantity - 1 FROM inventory WHERE sku_id = 42",
]


@pytest.mark.parametrize("sql,params,want", HOT)
def test_hot_decrements_recognised(sql: str, params: list[object] | None, want: tuple[object, ...]) -> None:
    shape = classify(sql)
    assert shape.hot is not None, sql
    hs = bind(shape.hot, statement_values(sql, params), "shop", RULES)
    assert hs is not None
    assert (hs.key_value, hs.amount, hs.guard_op, hs.bound) == want


@pytest.mark.parametrize("sql", NOT_HOT)
def test_not_hot_is_never_rewritten(sql: str) -> None:
    shape = classify(sql)
    hs = None if shape.hot is None else bind(shape.hot, statement_values(sql), "shop", RULES)
    assert hs is None, sql


def test_unqualified_table_needs_a_database() -> None:
    sql = HOT[0][0]
    assert bind(classify(sql).hot, statement_values(sql), None, RULES) is None  # type: ignore[arg-type]
    assert bind(classify(sql).hot, statement_values(sql), "other", RULES) is None  # type: ignore[arg-type]


def test_hints() -> None:
    assert parse_hints("UPDATE /*+ HOTROW(merge) */ t SET a=a-1") == {"HOTROW": "merge"}
    assert parse_hints("UPDATE /*+ QUEUE_ON_PK(1) TARGET_AFFECT_ROW(1) */ t") == {
        "QUEUE_ON_PK": "1", "TARGET_AFFECT_ROW": "1"}
    assert parse_hints("SELECT /*+ ROUTE(primary) READ_AFTER_GTID('0-1-5') */ 1") == {
        "ROUTE": "primary", "READ_AFTER_GTID": "0-1-5"}
    assert parse_hints("SELECT /* HOTROW(merge) */ 1") == {}


@pytest.mark.parametrize("sql,pin", [
    ("SELECT 1", None),
    ("SET @a = 1", "user variable"),
    ("SELECT @a := 5", "user variable"),
    ("SELECT 'mail@example.com'", None),
    ("SELECT @@version", None),
    ("CREATE TEMPORARY TABLE t (a int)", "temporary table"),
    ("SELECT GET_LOCK('x', 1)", "named lock"),
    ("LOCK TABLES t WRITE", "table lock"),
    ("PREPARE s FROM 'SELECT 1'", "connection-local statement"),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t", "found_rows"),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "next-transaction setting"),
    ("SELECT NEXTVAL(s)", "sequence"),
])
def test_pinning_rules(sql: str, pin: str | None) -> None:
    got = classify(sql).pin
    assert (got.value if got is not None else None) == pin


def test_digest_normalises_literals() -> None:
    a = digest("SELECT * FROM t WHERE id = 5 AND name = 'x''y' /* c */")
    b = digest("select * FROM t WHERE id =   77 AND name = \"zz\"")
    assert a == "SELECT * FROM t WHERE id = ? AND name = ?"
    assert b == "select * FROM t WHERE id = ? AND name = ?"
    assert digest("SELECT * FROM t WHERE id IN (1, 2, 3)") == "SELECT * FROM t WHERE id IN (?,...)"


# ---- properties -------------------------------------------------------------------------------

idents = st.sampled_from(["quantity", "`quantity`", "QUANTITY"])
spaces = st.sampled_from([" ", "  ", "\n", "\t "])


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(1, 10**6), key=st.integers(0, 2**62), bound=st.integers(0, 10**6),
    guard=st.sampled_from(["none", "gt", "ge", "sub"]), swap=st.booleans(), sp=spaces, col=idents,
    upper=st.booleans(),
)
def test_generated_hot_statements_bind_their_values(
    amount: int, key: int, bound: int, guard: str, swap: bool, sp: str, col: str, upper: bool
) -> None:
    preds = [f"sku_id{sp}={sp}{key}"]
    if guard == "gt":
        preds.append(f"{col} > {bound}")
    elif guard == "ge":
        preds.append(f"{col}>={bound}")
    elif guard == "sub":
        preds.append(f"{col} - {amount} >= 0")
    if swap:
        preds.reverse()
    sql = f"UPDATE{sp}inventory SET {col} ={sp}{col} - {amount} WHERE " + " AND ".join(preds)
    if upper:
        sql = sql.replace("WHERE", "where").replace("SET", "set")
    shape = classify(sql)
    assert shape.hot is not None, sql
    hs = bind(shape.hot, statement_values(sql), "shop", RULES)
    assert hs is not None
    assert (hs.key_value, hs.amount) == (key, amount)
    if guard == "none":
        assert hs.guard_op is None
    elif guard == "sub":
        assert (hs.guard_op, hs.bound) == (">=", amount)
    else:
        assert (hs.guard_op, hs.bound) == ({"gt": ">", "ge": ">="}[guard], bound)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("UPDATE inventorySETquantity=-+1 WHERsku_id>0AND()`'?,;")),
               min_size=0, max_size=90))
def test_random_text_is_rewritten_only_if_it_is_a_hot_decrement(text: str) -> None:
    """Whatever the text, a recognised statement re-renders to the same logical decrement."""
    shape = classify(text)
    if shape.hot is None:
        return
    hs = bind(shape.hot, statement_values(text), "shop", RULES)
    if hs is None:
        return
    # If recognised, the digest must have exactly the hot shape: UPDATE ... SET c = c - ? WHERE ...
    assert hot_template(shape.digest) == shape.hot
    assert hs.amount > 0


members_st = st.lists(
    st.tuples(st.integers(1, 5), st.sampled_from([None, ">", ">="]), st.integers(0, 5)),
    min_size=1, max_size=60,
)


@settings(max_examples=500, deadline=None)
@given(current=st.one_of(st.none(), st.integers(-10, 100)), exists=st.booleans(), ms=members_st,
       floor=st.sampled_from([None, 0, -5]), targets=st.lists(st.sampled_from([None, None, 0, 1]),
                                                              min_size=60, max_size=60))
def test_allocation_is_what_serial_execution_gives(
    current: int | None, exists: bool, ms: list[tuple[int, str | None, int]], floor: int | None,
    targets: list[int | None],
) -> None:
    """Each member's decision is what its statement alone would get, run one after the other
    as MySQL would with autocommit; a member MySQL would answer with a range error or a
    clipped value (below the type's floor) runs alone, one whose TARGET_AFFECT_ROW differs
    fails, and neither changes what the others get."""
    members = [Member(a, op, b if op else None, target=t, sub=a if op == ">=" and a % 2 else None)
               for (a, op, b), t in zip(ms, targets, strict=False)]
    decisions, total = allocate(current, members, floor, exists)
    cur = current
    expect = []
    for m in members:
        if cur is None:
            d = 0 if not exists or m.guard_op is not None else RUN_ALONE
            expect.append(MISMATCH if d >= 0 and m.target is not None and m.target != d else d)
            continue
        if m.sub is not None and floor == 0 and cur - m.sub < 0:
            expect.append(RUN_ALONE)  # MySQL: `c - s` out of UNSIGNED range in the guard
            continue
        ok = m.guard_op is None or (cur > m.bound if m.guard_op == ">" else cur >= m.bound)  # type: ignore[operator]
        if ok and floor is not None and cur - m.amount < floor:
            expect.append(RUN_ALONE)
            continue
        d = 1 if ok else 0
        if m.target is not None and m.target != d:
            expect.append(MISMATCH)
            continue
        if ok:
            cur -= m.amount
        expect.append(d)
    assert decisions == expect
    assert total == sum(m.amount for m, d in zip(members, decisions, strict=True) if d == 1)
    if current is not None and floor is not None and current >= floor:
        assert current - total >= floor  # never below the column type's range


@settings(max_examples=500, deadline=None)
@given(ms=members_st, floor=st.sampled_from([None, 0, -5]),
       targets=st.lists(st.sampled_from([None, None, None, 0, 1]), min_size=60, max_size=60),
       above=st.integers(0, 50))
def test_the_first_try_bound_is_the_least_value_that_serves_everyone(
    ms: list[tuple[int, str | None, int]], floor: int | None, targets: list[int | None],
    above: int,
) -> None:
    """A group's first try (hotmerge.py) guards its UPDATE with `all_hit_bound`: at or above
    it, the allocation gives every member its units and deducts the total; one below, it does
    not (so a guarded UPDATE that matches is exactly the one the allocation would run)."""
    members = [Member(a, op, b if op else None, target=t, sub=a if op == ">=" and a % 2 else None)
               for (a, op, b), t in zip(ms, targets, strict=False)]
    got = all_hit_bound(members, floor)
    if got is None:  # nothing bounds it from below, or a member wants other than one row
        assert floor is None and all(m.guard_op is None for m in members) or any(
            m.target not in (None, 1) for m in members)
        return
    need, total = got
    assert total == sum(m.amount for m in members)
    assert allocate(need + above, members, floor) == ([1] * len(members), total)
    assert allocate(need - 1, members, floor)[0] != [1] * len(members)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("SELECT *FROMtwhere=id'\\\"0123456789.eE-+x,()_ ")),
               max_size=80))
def test_fast_digest_equals_full_digest(text: str) -> None:
    from proxy.plan.classify import _TOKEN, _digest_sub

    full = " ".join(_TOKEN.sub(_digest_sub, text).split()).rstrip(";").strip()
    fast = digest(text)
    import re as _re

    assert fast == _re.sub(r"\(\s*\?(?:\s*,\s*\?)+\s*\)", "(?,...)", full)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("'\\\"0123456789٣.eEx+-$_aF= \n(,")), max_size=60))
def test_literal_regex_equals_the_plain_alternation(text: str) -> None:
    """`_LITERAL` starts with one character class for speed; it matches what the plain form
    (strings, then numbers not glued to a word) matches, at the same places."""
    import re as _re

    from proxy.plan.classify import _LITERAL
    from proxy.plan.hotshape import _STR

    plain = _re.compile(
        rf"{_STR}|(?<![\w$.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)", _re.S)
    assert [m.span() for m in _LITERAL.finditer(text)] == [m.span() for m in plain.finditer(text)]


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab'\"\\ \n")), max_size=40))
def test_string_literal_regex_equals_the_per_character_form(text: str) -> None:
    """`_STR` is written as an unrolled loop for speed (a 16 MB literal took the per-character
    form 1.5 s of the event loop); it matches what that form matches, at the same places."""
    import re as _re

    from proxy.plan.hotshape import _STR

    per_char = _re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"", _re.S)
    fast = _re.compile(_STR, _re.S)
    assert [m.span() for m in fast.finditer(text)] == [m.span() for m in per_char.finditer(text)]


@pytest.mark.parametrize("body", ["a" * 2_000_000, "it''s \\' \\\\" * 100_000, "x\n" * 500_000])
def test_a_large_literal_is_one_placeholder(body: str) -> None:
    from proxy.plan.classify import literals

    sql = f"INSERT INTO t (doc) VALUES ('{body}')"
    assert digest(sql) == "INSERT INTO t (doc) VALUES (?)"
    assert literals(sql) == [f"'{body}'"]
    assert classify(sql).verb == "INSERT"


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab'\\\\x"), min_size=1, max_size=300))
def test_hot_keys_are_bounded_by_their_record_size(key: str) -> None:
    """A string key goes the hot way only while its SQL literal fits the batch and
    reservation records (VARCHAR(255)); longer ones take the normal path."""
    from proxy.engines.hotalloc import MAX_KEY_SQL, sql_literal

    sql = "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = ? AND quantity > 0"
    hs = bind(classify(sql).hot, statement_values(sql, [key]), "shop", RULES)  # type: ignore[arg-type]
    assert (hs is not None) == (len(sql_literal(key)) <= MAX_KEY_SQL)


# ---- CONNECTION_ID() in writes: the client's id as a literal ------------------------------

WITH_CONN_ID = [
    ("INSERT INTO t VALUES (CONNECTION_ID())", "INSERT INTO t VALUES (42)"),
    ("SET @x = connection_id( )", "SET @x = 42"),
    ("UPDATE t SET a = shop.connection_id() WHERE b = CONNECTION_ID()",
     "UPDATE t SET a = shop.connection_id() WHERE b = 42"),  # a stored function keeps its name
    ("DO /*!50000 CONNECTION_ID() */ 1", "DO /*!50000 42 */ 1"),  # executable comments run
    ("INSERT INTO t VALUES ('CONNECTION_ID()', \"x CONNECTION_ID()\", `CONNECTION_ID()`)",
     "INSERT INTO t VALUES ('CONNECTION_ID()', \"x CONNECTION_ID()\", `CONNECTION_ID()`)"),
    ("DELETE FROM t /* CONNECTION_ID() */ WHERE c = CONNECTION_ID() -- CONNECTION_ID()\n",
     "DELETE FROM t /* CONNECTION_ID() */ WHERE c = 42 -- CONNECTION_ID()\n"),
    ("INSERT INTO t VALUES ('it\\'s', CONNECTION_ID())", "INSERT INTO t VALUES ('it\\'s', 42)"),
]


@pytest.mark.parametrize("sql,want", WITH_CONN_ID)
def test_with_conn_id(sql: str, want: str) -> None:
    assert with_conn_id(sql, 42) == want


_SEGMENTS = st.sampled_from([
    "'CONNECTION_ID()'", "'a''b CONNECTION_ID()'", '"CONNECTION_ID()"', "`CONNECTION_ID()`",
    "/* CONNECTION_ID() */", "-- CONNECTION_ID()\n", "# CONNECTION_ID()\n", " ", ", ", "x",
    "CONNECTION_ID()", "connection_id( )", "f(1)", "(", ")", "=",
])


@given(st.lists(_SEGMENTS, max_size=12))
def test_with_conn_id_touches_only_calls(parts: list[str]) -> None:
    """Whatever surrounds them, only the calls change: never a string, a quoted name or a
    comment (each segment stands alone: a call glued to a word is that word's)."""
    sql = " ".join(parts)
    want = " ".join("7" if p.lower().replace(" ", "") == "connection_id()" else p for p in parts)
    assert with_conn_id(sql, 7) == want


@pytest.mark.parametrize("sql,keeps", [
    ("COMMIT", True), ("ROLLBACK", True), ("BEGIN", True), ("START TRANSACTION", True),
    ("SET @a = 1", True), ("SET SESSION sql_mode = DEFAULT", True), ("DO 1", True),
    ("SELECT 1", True), ("SELECT NOW(), @a", True), ("SAVEPOINT s", True),
    ("SELECT * FROM t", False), ("SELECT 1 FROM DUAL", False),  # (DUAL: conservative)
    ("SET @a = (SELECT COUNT(*) FROM t)", False), ("SELECT f(1)", False),  # stored function
    ("SELECT 1 INTO @a", False), ("INSERT INTO t VALUES (1)", False), ("UPDATE t SET a = 1", False),
    ("SHOW WARNINGS", True), ("SHOW COUNT(*) ERRORS", True), ("SHOW SESSION STATUS", False),
    ("SHOW TABLES", False), ("SELECT @@warning_count", True), ("SELECT ROW_COUNT() AS n", True),
    ("CALL p()", False),
])
def test_statements_that_open_no_table(sql: str, keeps: bool) -> None:
    """Shape.keeps_diag: MariaDB clears the diagnostics area at the start of a statement only
    when it opens tables; the proxy carries the area across a change of connection for the
    others (session.leave)."""
    assert classify(sql).keeps_diag is keeps


# ---- the recogniser against a real parser (issue 21) -----------------------------------------

_HOT_PIECES = st.lists(st.sampled_from([
    "UPDATE ", "inventory ", "`shop`.`inventory` ", "shop.inventory ", "SET ", "quantity ", "= ",
    "quantity - ", "1 ", "3 ", "'195' ", "'a\\\\b' ", "'x''y' ", "WHERE ", "sku_id = ", "AND ",
    "quantity > ", "quantity >= ", "0 ", "( ", ") ", "quantity - 2 >= ", "OR ", "; ", "LIMIT ",
    "-- c\n", "/* c */ ", "\"q\" ", "IGNORE ", ", ", "sku_id ", "- ", "+ ",
]), min_size=6, max_size=22)
_HOT_SEEDS = [
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 1 AND quantity > 0",
    "UPDATE inventory SET quantity = quantity - 2 WHERE (sku_id = '195') AND (quantity >= 2)",
    "UPDATE shop.inventory SET quantity = quantity - 1 WHERE ((sku_id = 3 AND quantity - 1 >= 0))",
]


def _mutate(sql: str, rnd: random.Random) -> str:
    i = rnd.randrange(len(sql) + 1)
    op = rnd.randrange(3)
    if op == 0:
        return sql[:i] + rnd.choice("()'`;,- ") + sql[i:]
    if op == 1:
        return sql[:i] + sql[i + 1:]
    return sql[:i] + rnd.choice([" AND quantity > 0", ")", "(", " OR 1", " LIMIT 1"]) + sql[i:]


def _parser_agrees(sql: str) -> None:
    """A statement the recogniser takes for a hot decrement is, for sqlglot's MySQL parser, an
    UPDATE of one table with one assignment `c = c - n` and a WHERE of at most two conditions
    joined by AND: anything else must not be merged (`classify(...).hot is None`)."""
    import sqlglot
    from sqlglot import exp

    shape = classify(sql)
    if shape.hot is None or bind(shape.hot, statement_values(sql), "shop", RULES) is None:
        return
    tree = sqlglot.parse_one(sql, read="mysql")  # raises: a syntax error was recognised
    assert isinstance(tree, exp.Update), sql
    sets = tree.args.get("expressions") or []
    assert len(sets) == 1 and isinstance(sets[0].expression, exp.Sub), sql
    where = tree.args["where"].this
    while isinstance(where, exp.Paren):
        where = where.this
    conds = list(where.flatten()) if isinstance(where, exp.And) else [where]
    assert 1 <= len(conds) <= 2, sql
    for c in conds:
        while isinstance(c, exp.Paren):
            c = c.this
        assert isinstance(c, exp.EQ | exp.GT | exp.GTE), sql


@settings(max_examples=400, deadline=None)
@given(_HOT_PIECES)
def test_recogniser_agrees_with_a_real_parser_on_generated_text(pieces: list[str]) -> None:
    _parser_agrees("".join(pieces).strip())


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_HOT_SEEDS), st.integers(0, 2**32), st.integers(1, 4))
def test_recogniser_agrees_with_a_real_parser_on_near_misses(seed: str, r: int, n: int) -> None:
    """Hot statements with one to four random edits (a parenthesis, a quote, a clause)."""
    rnd = random.Random(r)
    sql = seed
    for _ in range(n):
        sql = _mutate(sql, rnd)
    _parser_agrees(sql)


@pytest.mark.parametrize("sql", [
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 901 AND quantity >= 1)",
    "UPDATE inventory SET quantity = quantity - 1 WHERE (sku_id = 901",
    "UPDATE inventory SET quantity = quantity - 1 WHERE (sku_id = 901) AND quantity >= 1)",
    "UPDATE inventory SET quantity = quantity - 1 WHERE sku_id = 901) AND (quantity >= 1",
])
def test_unbalanced_parentheses_are_never_hot(sql: str) -> None:
    assert classify(sql).hot is None


@pytest.mark.parametrize("body,value", [
    ("a\\\\b", "a\\b"), ("a\\nb", "a\nb"), ("a\\'b", "a'b"), ("a''b", "a'b"), ("a\\%b", "a\\%b"),
    ("a\\_b", "a\\_b"), ("a\\qb", "aqb"), ("\\0\\Z\\t\\r\\b", "\0\x1a\t\r\b"), ("a\\\"b", 'a"b'),
])
def test_string_literals_decode_as_mysql(body: str, value: str) -> None:
    from proxy.plan.classify import Escaped, mysql_unescape

    assert mysql_unescape(body, "'") == value
    v = statement_values(f"SELECT '{body}'")[0]
    assert (v.value if isinstance(v, Escaped) else v) == value


@pytest.mark.parametrize("key,kind,ci,want", [
    (195, "int", False, 195), ("195", "int", False, 195), ("0195", "int", False, None),
    (" 195", "int", False, None), ("195abc", "int", False, None), ("-3", "int", False, -3),
    ("abc", "str", True, "abc"), ("ABC", "str", True, "abc"), ("ABC", "str", False, "ABC"),
    ("abc ", "str", True, None), (195, "str", True, None), ("é", "str", True, None),
    ("a\nb", "str", False, None), ("x'y", "str", True, "x'y"),
])
def test_keys_are_normalised_to_the_key_column(key: object, kind: str, ci: bool,
                                               want: object) -> None:
    from proxy.engines.hotalloc import normal_key

    assert normal_key(key, kind, ci) == want  # type: ignore[arg-type]


@pytest.mark.parametrize("mode,blocks", [
    ("STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER,NO_ENGINE_SUBSTITUTION",
     None), ("", None), ("NO_BACKSLASH_ESCAPES", None), ("ANSI_QUOTES", "ANSI_QUOTES"),
    ("STRICT_ALL_TABLES,NO_UNSIGNED_SUBTRACTION", "NO_UNSIGNED_SUBTRACTION"),
    ("PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ANSI", "PIPES_AS_CONCAT"),
    ("EMPTY_STRING_IS_NULL", "EMPTY_STRING_IS_NULL"), ("ORACLE", "ORACLE"),
])
def test_sql_modes_that_keep_a_session_unmerged(mode: str, blocks: str | None) -> None:
    from proxy.engines.hotalloc import sql_mode_blocks

    assert sql_mode_blocks(mode) == blocks


_FLAGS = ["NO_BACKSLASH_ESCAPES", "no_backslash_escapes", "ANSI_QUOTES", "STRICT_TRANS_TABLES",
          "NO_ENGINE_SUBSTITUTION", "ANSI", ""]


@given(st.one_of(st.none(), st.lists(st.sampled_from(_FLAGS), max_size=5).map(",".join)))
def test_backslash_escapes_is_the_sql_modes_flag(mode: str | None) -> None:
    """Remembered per sql_mode text (asked per hot statement): the same answer as reading the
    flag each time, asked twice; None (the server's sql_mode not read yet) escapes."""
    from proxy.engines.hotalloc import backslash_escapes

    want = mode is None or "NO_BACKSLASH_ESCAPES" not in mode.upper()
    assert backslash_escapes(mode) is want
    assert backslash_escapes(mode) is want
