"""uservars.py, pure: which variables a statement names, and the literal that gives a variable
its value, type and collation back (the end-to-end check is in test_transparency.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.exec import uservars
from proxy.plan.classify import digest


@pytest.mark.parametrize(("sql", "names"), [
    ("SET @a = 1, @B = 2", {"a", "b"}),
    ("SELECT @x := 3, @@session.sql_mode, @@warning_count", {"x"}),
    ("SELECT c INTO @`we``ird` FROM t", {"we`ird"}),
    ("SET @'q' = 1, @\"d\" = 2", {"q", "d"}),
    ("SET @a.b = 1", {"a.b"}),
    ("SELECT 'me@example.com'", set()),
    ("SELECT a@b FROM t", set()),
])
def test_names(sql: str, names: set[str]) -> None:
    assert uservars.names(sql) == names  # the session reads the text (digests hide @'x')
    assert uservars.names(digest(sql)) <= names


@pytest.mark.parametrize(("col", "value", "hexed", "coll", "lit"), [
    (8, "42", "2A", "binary", "42"),
    (8, "-7", "-7", "binary", "-7"),
    (246, "1.50", "1.50", "binary", "1.50"),
    (5, "2.5", "2.5", "binary", "2.5e0"),
    (5, "1e+20", "", "binary", "1e+20"),
    (253, "h", "68", "utf8mb4_general_ci", "_utf8mb4 X'68' COLLATE utf8mb4_general_ci"),
    (252, "\x00", "00FF", "binary", "X'00FF'"),
    (6, None, None, None, "NULL"),
    (253, "x", "78'; DROP TABLE t; --", "utf8mb4_bin", "_utf8mb4 X'78' COLLATE utf8mb4_bin"),
    (253, "x", "78", "utf8mb4_bin; DROP", "X'78'"),
    (253, "", "", "_", "X''"),  # found by hypothesis in CI: no charset before the "_"
])
def test_literal(col: int, value: str | None, hexed: str | None, coll: str | None, lit: str) -> None:
    assert uservars.literal(col, value, hexed, coll) == lit


@given(st.text(max_size=40), st.sampled_from([1, 5, 8, 246, 253, 252, 15]),
       st.text(max_size=20), st.text(max_size=30))
def test_literal_never_carries_raw_text(value: str, col: int, hexed: str, coll: str) -> None:
    """Whatever the server returned, the literal is a number, NULL, or hex bytes with a word
    for a collation: nothing from the value reaches the SQL unencoded."""
    lit = uservars.literal(col, value, hexed, coll)
    import re
    assert re.fullmatch(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|X'[0-9A-Fa-f]*'|"
                        r"_\w+ X'[0-9A-Fa-f]*' COLLATE \w+", lit), lit
