"""The hot decrement's shape and a statement's values: pure, cached, no I/O.

`hot_template()` recognises `UPDATE t SET c = c - ? WHERE key = ? AND c >= ?` (and its
variants) from a digest, once per shape; `statement_values()` takes the literals and bound
parameters out of one statement in order, exactly as MySQL reads them (or `Unsupported` when
the hot path would not reproduce one exactly), so the engine can bind the template. Split from
classify.py, which builds a statement's whole `Shape` and keeps its hot template here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

# A string literal, written as an unrolled loop (a run of plain characters, then an escape
# or a doubled quote and the next run): the same matches as `'(?:[^'\\]|\\.|'')*'`, but the
# regex engine takes each run in one step instead of one alternation per character, 18x
# faster on a 16 MB literal (1.5 s of the event loop before; tests/test_classify.py).
_STR: Final = r"'[^'\\]*(?:(?:\\.|'')[^'\\]*)*'|\"[^\"\\]*(?:(?:\\.|\"\")[^\"\\]*)*\""

_IDENT: Final = r"(?:`(?:[^`]|``)+`|[A-Za-z_$][\w$]*)"
_HOT_UPDATE: Final = re.compile(
    rf"^UPDATE\s+(?:/\*\+.*?\*/\s*)?(?P<tbl>{_IDENT}(?:\s*\.\s*{_IDENT})?)\s+SET\s+"
    rf"(?P<c1>{_IDENT})\s*=\s*(?P<c2>{_IDENT})\s*-\s*(?P<amt>\?)\s+WHERE\s+(?P<where>.+)$",
    re.I | re.S,
)
_AND: Final = re.compile(r"\s+AND\s+", re.I)
_PAREN: Final = re.compile(r"[()]")
_P_KEY: Final = re.compile(rf"^(?P<col>{_IDENT})\s*=\s*\?$")
_P_CMP: Final = re.compile(rf"^(?P<col>{_IDENT})\s*(?P<op>>=|>)\s*\?$")
_P_SUB: Final = re.compile(rf"^(?P<col>{_IDENT})\s*-\s*\?\s*(?P<op>>=|>)\s*\?$")


def _closing(p: str) -> int:
    """Index of the parenthesis closing the one at p[0] (backquoted names skipped), or -1."""
    depth = 0
    i = 0
    while i < len(p):
        ch = p[i]
        if ch == "`":
            j = p.find("`", i + 1)
            while j != -1 and p[j + 1:j + 2] == "`":
                j = p.find("`", j + 2)
            if j == -1:
                return -1
            i = j
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def _unwrap(p: str) -> str:
    """A condition without parentheses that enclose all of it (`(a = ?)`, `((a = ?))`). Any
    other parenthesis is left, and then matches no pattern: `a = ?)` or `(a = ?` is a syntax
    error in MySQL and is never merged."""
    p = p.strip()
    while p.startswith("(") and _closing(p) == len(p) - 1:
        p = p[1:-1].strip()
    return p


def _ident(s: str) -> str:
    s = s.strip()
    return s[1:-1].replace("``", "`").lower() if s.startswith("`") else s.lower()


def _name(s: str) -> str:
    s = s.strip()
    return s[1:-1].replace("``", "`") if s.startswith("`") else s


@dataclass(frozen=True)
class HotTemplate:
    """`UPDATE [schema.]table SET c = c - ? WHERE key = ? [AND guard]`, with value positions.

    Positions index the statement's values in order (literals and `?` parameters alike). The
    guard is `c OP bound`, where bound = value[guard_pos] (+ value[guard_sub_pos] for the
    `c - N >= 0` form, which is `c >= N + 0`).
    """

    schema: str | None
    table: str
    column: str
    key: str
    amount_pos: int
    key_pos: int
    guard_op: str | None = None
    guard_pos: int | None = None
    guard_sub_pos: int | None = None
    need: int = 0  # the highest of the positions: a statement has more values (hot_template)


def hot_template(dg: str) -> HotTemplate | None:
    """Recognise the hot-decrement shape in a digest; anything else is None (never rewritten)."""
    m = _HOT_UPDATE.match(dg)
    if not m:
        return None
    c1, c2 = _ident(m.group("c1")), _ident(m.group("c2"))
    if c1 != c2:
        return None
    where = _unwrap(m.group("where"))
    parts = [_unwrap(p) for p in _AND.split(where)]
    if not 1 <= len(parts) <= 2 or any(_PAREN.search(p) for p in parts):
        return None
    # Schema and table keep their case: with lower_case_table_names=0 (the Linux default)
    # `SHOP.INVENTORY` is another table than `shop.inventory` and must not be merged as it.
    tbl = [_name(x) for x in re.split(r"\s*\.\s*(?=(?:[^`]*`[^`]*`)*[^`]*$)", m.group("tbl"))]
    schema, table = (tbl[0], tbl[1]) if len(tbl) == 2 else (None, tbl[0])
    pos = 1  # value 0 is the amount
    key = key_pos = None
    guard: tuple[str, int, int | None] | None = None
    for p in parts:
        km = _P_KEY.match(p)
        if km and key is None and _ident(km.group("col")) != c1:
            key, key_pos = _ident(km.group("col")), pos
            pos += 1
            continue
        cm = _P_CMP.match(p)
        if cm and guard is None and _ident(cm.group("col")) == c1:
            guard = (cm.group("op"), pos, None)
            pos += 1
            continue
        sm = _P_SUB.match(p)
        if sm and guard is None and _ident(sm.group("col")) == c1:
            guard = (sm.group("op"), pos + 1, pos)
            pos += 2
            continue
        return None
    if key is None or key_pos is None:
        return None
    return HotTemplate(
        schema, table, c1, key, 0, key_pos,
        guard[0] if guard else None, guard[1] if guard else None, guard[2] if guard else None,
        max(key_pos, guard[1]) if guard else key_pos,  # (amount 0; guard_sub_pos < guard_pos)
    )


@dataclass(frozen=True)
class Escaped:
    """A string literal written with a backslash escape: `value` is what MySQL makes of it by
    default; under NO_BACKSLASH_ESCAPES the backslashes are characters (hotalloc.bind)."""

    value: str


# MySQL's escapes in string literals (sql_lex.cc): these, `\%` and `\_` keep their backslash
# (they are LIKE patterns' escapes), and any other character stands for itself.
_ESCAPES: Final = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a",
            "%": "\\%", "_": "\\_"}


def mysql_unescape(body: str, quote: str) -> str:
    """The value of a quoted string literal's body (quotes removed), decoded as MySQL does
    without NO_BACKSLASH_ESCAPES: backslash escapes and doubled quotes."""
    out = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == "\\" and i + 1 < n:
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
        elif ch == quote and i + 1 < n and body[i + 1] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Unsupported:
    """A literal the hot path does not reproduce exactly (hex, decimal, float): normal path."""

    text: str


_VALUE: Final = re.compile(
    rf"(?P<s>{_STR})|(?P<q>`(?:[^`]|``)*`)|(?P<c>/\*.*?\*/|--[ \t][^\n]*|#[^\n]*)"
    r"|(?P<n>(?<![\w$.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+))|(?P<p>\?)",
    re.S,
)


@dataclass(frozen=True)
class Param:
    """Position of a `?` parameter marker in a prepared statement's value template."""

    index: int


# Caches are keyed by client text: bounded in entries and, by skipping long texts, in bytes.
CACHE_MAX_TEXT: Final = 4096


def value_template(sql: str) -> tuple[object, ...]:
    return _value_template_cached(sql) if len(sql) <= CACHE_MAX_TEXT else _value_template(sql)


def _value_template(sql: str) -> tuple[object, ...]:
    """The statement's literal values, with Param(i) where the i-th `?` marker stands: computed
    once per prepared statement text, then filled with each execution's parameters."""
    n = 0
    out: list[object] = []
    for v in _values(sql, None):
        if v is _MARKER:
            out.append(Param(n))
            n += 1
        else:
            out.append(v)
    return tuple(out)


def fill(template: tuple[object, ...], params: list[object]) -> list[object]:
    return [params[v.index] if isinstance(v, Param) and v.index < len(params) else v
            for v in template]


_MARKER: Final = object()


def statement_values(sql: str, params: list[object] | None = None) -> list[object]:
    """Literal values and bound parameters, in statement order (what `?` stands for in a digest).

    Numbers become int (Unsupported for hex and non-integers), strings lose their quotes.
    """
    if params is not None:
        return fill(value_template(sql), params)
    return _values(sql, None)


def _values(sql: str, params: list[object] | None) -> list[object]:
    out: list[object] = []
    for m in _VALUE.finditer(sql):
        if m.group("n") is not None:
            t = m.group("n")
            out.append(int(t) if t.isdigit() else Unsupported(t))
        elif m.group("s") is not None:
            t = m.group("s")
            q = t[0]
            if "\\" in t:
                out.append(Escaped(mysql_unescape(t[1:-1], q)))
            else:
                out.append(t[1:-1].replace(q + q, q))
        elif m.group("p") is not None:
            out.append(_MARKER)
    return out


_value_template_cached = lru_cache(maxsize=4096)(_value_template)
