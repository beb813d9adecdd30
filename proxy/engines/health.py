"""What the monitor knows of one backend server (monitor.py writes it each round; the read
split, durability and the admin console read it through `ports.Health`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.core.config import Address


@dataclass
class BackendState:
    addr: Address
    role: str
    up: bool = False
    state: str = "unknown"
    reason: str = "not checked yet"
    read_only: bool | None = None
    lag_s: float | None = None
    gtid: str = ""
    durability: dict[str, str] = field(default_factory=dict)
    checked_at: float = 0.0
    replicating: bool = False
    # A replica whose GTID position stopped being comparable with the primary's (monitor.py:
    # RESET MASTER on the primary, or writes of its own): its position when that was seen. No
    # GTID test (read split, replica acks) trusts it until its position drops below this one
    # (a DBA re-pointed its replication).
    held: str | None = None
