"""The admin console of a proxy with several workers (peers.py) shows and changes the whole
proxy: what a command shows is every worker's part added up, what it changes every worker
changes. Pure merges here, table-tested in tests/test_workers.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Row = Sequence[Any]

# admin commands (AdminSession method names) whose answer is every worker's, added up
GATHER = frozenset({"_backends", "_hot_keys", "_digest"})
# admin commands every worker does (the answer is the worker's that was asked)
BROADCAST = frozenset({"_set_mode", "_reload", "_set_consistency", "_reset_digest", "_log_level"})


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float(v or 0)


def backends(parts: list[list[Row]]) -> list[tuple[Any, ...]]:
    """SHOW BACKENDS: one row per backend; pool counts and reads served summed (the monitor's
    view is every worker's alike: the first worker's is kept)."""
    out: dict[Any, list[Any]] = {}
    for rows in parts:
        for r in rows:
            have = out.get(r[0])
            if have is None:
                out[r[0]] = list(r)
            else:
                for i in (8, 9, 10, 11):
                    have[i] = int(_num(have[i]) + _num(r[i]))
    return [tuple(r) for r in out.values()]


def hot_keys(parts: list[list[Row]], n: int = 20) -> list[tuple[Any, ...]]:
    """SHOW HOT KEYS: one row per key; counts and rates summed, the average batch weighted by
    each worker's batches, the mode (and auto's reason) of the worker that ran the most
    statements on it."""
    out: dict[tuple[Any, Any], list[Any]] = {}
    for rows in parts:
        for r in rows:
            k = (r[0], r[1])
            have = out.get(k)
            if have is None:
                out[k] = list(r)
                continue
            b0, b1 = _num(have[5]), _num(r[5])
            have[6] = round((_num(have[6]) * b0 + _num(r[6]) * b1) / (b0 + b1), 1) if b0 + b1 else 0.0
            if _num(r[8]) > _num(have[8]):
                have[2] = r[2]
                have[10:] = r[10:]  # (auto's reason, from the same worker)
            for i in (3, 4, 7, 8, 9):
                have[i] = int(_num(have[i]) + _num(r[i]))
            have[5] = round(b0 + b1, 1)
    merged = sorted(out.values(), key=lambda r: (r[3] + r[4], r[5], r[8]), reverse=True)
    return [tuple(r) for r in merged[:n]]


def digest(parts: list[list[Row]], n: int = 50) -> list[tuple[Any, ...]]:
    """SHOW QUERY DIGEST: one row per (shape, route, hot-row mode); counts, time and rows
    summed, the maximum kept, the average recomputed."""
    out: dict[tuple[Any, Any, Any], list[Any]] = {}
    for rows in parts:
        for r in rows:
            k = (r[0], r[6], r[7])
            have = out.get(k)
            if have is None:
                out[k] = list(r)
                continue
            have[1] = int(_num(have[1]) + _num(r[1]))
            have[2] = int(_num(have[2]) + _num(r[2]))
            have[4] = int(max(_num(have[4]), _num(r[4])))
            have[5] = int(_num(have[5]) + _num(r[5]))
            have[3] = round(have[2] / have[1]) if have[1] else 0
    merged = sorted(out.values(), key=lambda r: _num(r[2]), reverse=True)
    return [tuple(r) for r in merged[:n]]


def merge(command: str, parts: list[list[Row]], arg: str | None = None) -> list[tuple[Any, ...]]:
    if command == "_backends":
        return backends(parts)
    if command == "_hot_keys":
        return hot_keys(parts)
    if command == "_digest":
        return digest(parts, int(arg) if arg else 50)
    raise ValueError(command)
