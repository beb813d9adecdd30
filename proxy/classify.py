"""Statement classification: pure functions, no I/O, cached by statement shape (digest).

Split as in PgCat: `digest()` normalises the text (literals become `?`), `shape_of()` infers
everything that depends only on the shape (verb, pinning reason, hints, hot-decrement template)
and is cached, so a statement the proxy has seen before costs two regex passes, not a parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

# Literal-aware tokenisation for digests: strings, quoted identifiers, numbers, comments.
_STR = r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\""
_TOKEN = re.compile(
    rf"(?P<s>{_STR})|(?P<q>`(?:[^`]|``)*`)|(?P<c>/\*(?!\+).*?\*/|--[ \t][^\n]*|#[^\n]*)"
    r"|(?P<n>(?<![\w$.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+))",
    re.S,
)
_WS = re.compile(r"\s+")
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")


def _digest_sub(m: re.Match[str]) -> str:
    if m.group("s") is not None or m.group("n") is not None:
        return "?"
    if m.group("c") is not None:
        return " "
    return m.group(0)


def digest(sql: str) -> str:
    """Normalised statement shape: literals → ?, comments dropped (hints kept), spaces folded."""
    d = _TOKEN.sub(_digest_sub, sql)
    d = _WS.sub(" ", d).strip().rstrip(";").strip()
    return _IN_LIST.sub("(?,...)", d)


def literals(sql: str) -> list[str]:
    """The literal values in order, as the digest replaced them (strings keep their quotes)."""
    return [
        m.group(0)
        for m in _TOKEN.finditer(sql)
        if m.group("s") is not None or m.group("n") is not None
    ]


# ---- hints -----------------------------------------------------------------------------

_HINT_BLOCK = re.compile(r"/\*\+(.*?)\*/", re.S)
_HINT = re.compile(r"([A-Za-z_]+)\s*\(([^)]*)\)")


def parse_hints(sql: str) -> dict[str, str]:
    """Optimizer-hint style comments: `/*+ HOTROW(merge) ROUTE(primary) */` → {HOTROW: merge}."""
    out: dict[str, str] = {}
    for block in _HINT_BLOCK.findall(sql):
        for name, arg in _HINT.findall(block):
            out[name.upper()] = arg.strip().strip("'\"")
    return out


# ---- shape inference -----------------------------------------------------------------------

_LEADING = re.compile(r"^(?:\s|/\*.*?\*/|\(|--[ \t][^\n]*\n|#[^\n]*\n)*", re.S)
_WORD = re.compile(r"[A-Za-z_]+")

# Statements that leave state on the backend connection that the proxy cannot replay on another
# one: the session then keeps its backend connection until it disconnects or resets.
_PIN_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?<![@\w$])@(?!@)[\w$.]|(?<![@\w$])@[`'\"]"), "user variable"),
    (re.compile(r"\bTEMPORARY\b", re.I), "temporary table"),
    (re.compile(r"\b(?:GET_LOCK|RELEASE_LOCK|RELEASE_ALL_LOCKS)\s*\(", re.I), "named lock"),
    (re.compile(r"\bLOCK\s+TABLES?\b|\bWITH\s+READ\s+LOCK\b", re.I), "table lock"),
    (re.compile(r"^\s*(?:PREPARE|EXECUTE|DEALLOCATE|HANDLER|XA)\b", re.I), "connection-local statement"),
    (re.compile(r"\bSQL_CALC_FOUND_ROWS\b|\bFOUND_ROWS\s*\(", re.I), "found_rows"),
    (re.compile(r"\bLAST_INSERT_ID\s*\(\s*[^)\s]", re.I), "last_insert_id(expr)"),
    (re.compile(r"^\s*SET\s+(?:SESSION\s+|LOCAL\s+)?TRANSACTION\b", re.I), "next-transaction setting"),
    (re.compile(r"\bNEXTVAL\s*\(|\bNEXT\s+VALUE\s+FOR\b|\bLASTVAL\s*\(", re.I), "sequence"),
]

_WRITE_VERBS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "TRUNCATE", "RENAME",
     "GRANT", "REVOKE", "CALL", "LOAD", "OPTIMIZE", "ANALYZE", "REPAIR"}
)


@dataclass(frozen=True)
class Shape:
    """Everything the proxy needs to know about a statement that depends only on its shape."""

    digest: str
    verb: str
    pin: str | None
    hints: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    uses_last_insert_id: bool = False
    multi: bool = False

    @property
    def is_write(self) -> bool:
        return self.verb in _WRITE_VERBS


def first_word(sql: str) -> str:
    m = _WORD.match(sql, _LEADING.match(sql).end())  # type: ignore[union-attr]
    return m.group(0).upper() if m else ""


@lru_cache(maxsize=8192)
def shape_of(dg: str) -> Shape:
    """Infer a statement's shape from its digest (cached: pure function of the digest)."""
    verb = first_word(dg)
    pin = None
    for rx, reason in _PIN_RULES:
        if rx.search(dg):
            pin = reason
            break
    return Shape(
        digest=dg,
        verb=verb,
        pin=pin,
        hints=parse_hints(dg),
        uses_last_insert_id="LAST_INSERT_ID" in dg.upper(),
        multi=";" in dg,
    )


def classify(sql: str) -> Shape:
    return shape_of(digest(sql))
