"""Query digest (like ProxySQL's stats_mysql_query_digest): per statement shape, bounded memory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from proxy.plan.classify import Shape


@dataclass
class DigestRow:
    digest: str
    route: str
    count: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    rows: int = 0
    hot_mode: str = ""


class QueryDigest:
    """At most `limit` shapes; when full, new shapes are counted in one overflow row."""

    OVERFLOW = "(other statements: digest table full)"

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self.rows: dict[tuple[str, str], DigestRow] = {}

    def record(self, shape: Shape, seconds: float, route: str, rows: int = 0) -> None:
        hot_mode = route.split("-", 1)[1] if route.startswith("hotrow-") else ""
        key = (shape.digest[:1000], route)  # bounded bytes: a megabyte-long shape is not a key
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= self.limit:
                key = (self.OVERFLOW, route)
                row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = DigestRow(key[0], route)
        row.count += 1
        row.rows += rows
        row.total_s += seconds
        if seconds > row.max_s:
            row.max_s = seconds
        if hot_mode:
            row.hot_mode = hot_mode

    def top(self, n: int = 50) -> list[tuple[Any, ...]]:
        rows = sorted(self.rows.values(), key=lambda r: r.total_s, reverse=True)[:n]
        return [
            (r.digest, r.count, round(r.total_s * 1e6), round(r.total_s / r.count * 1e6),
             round(r.max_s * 1e6), r.rows, r.route, r.hot_mode or "-")
            for r in rows
        ]

    def reset(self) -> None:
        self.rows.clear()
